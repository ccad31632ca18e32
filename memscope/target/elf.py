"""ELF64 program headers, read from a file: the vmlinux's PT_LOAD segments (the GDB
adapter reads ``linux_banner`` out of the file) and a vmcore's (the drgn adapter checks that
a dump is not truncated).  Only the header fields memscope needs (elf(5))."""

from __future__ import annotations

import dataclasses
import struct
from typing import BinaryIO

import numpy as np

__all__ = ("PT_LOAD", "ProgramHeader", "NotElf64", "build_id", "notes", "program_headers",
           "section_names", "symbol_size")

PT_LOAD = 1


class NotElf64(ValueError):
    """The file does not start with a 64-bit ELF header."""


def _header(f: BinaryIO) -> tuple[bytes, str]:
    f.seek(0)
    ident = f.read(64)
    if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2:
        raise NotElf64()
    return ident, "<" if ident[5] == 1 else ">"


def _sections(f: BinaryIO) -> tuple[bytes, int, int, str]:
    """(the section header table, e_shentsize, e_shnum, byte order) of the ELF64 file F."""
    ident, endian = _header(f)
    e_shoff, = struct.unpack_from(endian + "Q", ident, 0x28)
    e_shentsize, e_shnum = struct.unpack_from(endian + "HH", ident, 0x3A)
    f.seek(e_shoff)
    table = f.read(e_shentsize * e_shnum)
    if not e_shnum or len(table) < e_shentsize * e_shnum:
        raise ValueError("truncated ELF section table")
    return table, e_shentsize, e_shnum, endian


def _sections_of_type(f: BinaryIO, sh_type: int):
    """Yield (sh_offset, sh_size, sh_link, byte order, section table, e_shentsize) for
    each section of type SH_TYPE of the ELF64 file F."""
    table, entsize, num, endian = _sections(f)
    for i in range(num):
        # Elf64_Shdr: sh_type (u32) at 4, sh_offset, sh_size at 0x18, sh_link (u32) at 0x28
        if struct.unpack_from(endian + "I", table, i * entsize + 4)[0] != sh_type:
            continue
        off, size = struct.unpack_from(endian + "QQ", table, i * entsize + 0x18)
        link, = struct.unpack_from(endian + "I", table, i * entsize + 0x28)
        yield off, size, link, endian, table, entsize


def symbol_size(f: BinaryIO, name: str) -> int | None:
    """``st_size`` of the symbol NAME in the ELF64 file F's ``.symtab`` (the bytes an object
    takes: the definition's size, whatever a declaration elsewhere says), or None when
    the file has no such symbol.

    :raises NotElf64: F does not start with an ELF64 header.
    :raises ValueError: the section table lies outside the file."""
    for off, size, link, endian, table, entsize in _sections_of_type(f, 2):  # SHT_SYMTAB
        str_off, str_size = struct.unpack_from(endian + "QQ", table, link * entsize + 0x18)
        f.seek(str_off)
        strtab = f.read(str_size)
        f.seek(off)
        syms = f.read(size)
        # Every place the name ends the string table's strings: linkers merge a name into
        # the tail of a longer one ("node_data" inside "__ksymtab_node_data").
        want = name.encode() + b"\0"
        names = set()
        pos = strtab.find(want)
        while pos >= 0:
            names.add(pos)
            pos = strtab.find(want, pos + 1)
        # Elf64_Sym (24 bytes): st_name (u32), st_info, st_other, st_shndx, st_value, st_size
        sym = np.frombuffer(syms, np.dtype([("name", endian + "u4"), ("info", "u1"),
                                            ("other", "u1"), ("shndx", endian + "u2"),
                                            ("value", endian + "u8"), ("size", endian + "u8")]),
                            count=len(syms) // 24)
        hit = np.isin(sym["name"], np.array(sorted(names), np.uint32)) & (sym["shndx"] != 0)
        for k in np.flatnonzero(hit)[:1]:  # defined here, not SHN_UNDEF
            return int(sym["size"][k])
        return None
    return None


def build_id(f: BinaryIO) -> str | None:
    """The GNU build ID (hex) of the ELF64 file F: the ``NT_GNU_BUILD_ID`` note of its
    SHT_NOTE sections (a vmlinux's ``.note.gnu.build-id``; the kernel prints the same
    bytes in VMCOREINFO's ``BUILD-ID``), or None when it has none.

    :raises NotElf64: F does not start with an ELF64 header.
    :raises ValueError: the section table lies outside the file."""
    for off, size, _, endian, _, _ in _sections_of_type(f, 7):  # SHT_NOTE
        f.seek(off)
        for name, ntype, desc in notes(f.read(min(size, 1 << 16)), endian):
            if name == b"GNU" and ntype == 3:  # NT_GNU_BUILD_ID
                return desc.hex()
    return None


def notes(data: bytes, endian: str = "<"):
    """Yield (name without its NUL, type, descriptor) for each ELF note in DATA
    (Elf64_Nhdr: namesz, descsz, type as u32; name and descriptor each padded to 4
    bytes); ENDIAN is struct's "<" or ">"."""
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from(endian + "III", data, pos)
        name = data[pos + 12:pos + 12 + namesz].rstrip(b"\0")
        desc_at = pos + 12 + ((namesz + 3) & ~3)
        yield name, ntype, data[desc_at:desc_at + descsz]
        pos = desc_at + ((descsz + 3) & ~3)


def section_names(f: BinaryIO) -> set[str]:
    """The names of the sections of the ELF64 file F (e.g. ".debug_info" when it has DWARF).

    :raises NotElf64: F does not start with an ELF64 header.
    :raises ValueError: the section table or its string table lies outside the file."""
    return set(_named_sections(f))


def section_data(f: BinaryIO, name: str) -> bytes | None:
    """The bytes of the ELF64 file F's section NAME (e.g. a kernel module's ``.modinfo``),
    or None when it has none.

    :raises NotElf64: F does not start with an ELF64 header.
    :raises ValueError: the section table or its string table lies outside the file."""
    where = _named_sections(f).get(name)
    if where is None:
        return None
    f.seek(where[0])
    return f.read(where[1])


def _named_sections(f: BinaryIO) -> dict[str, tuple[int, int]]:
    """{section name: (sh_offset, sh_size)} of the ELF64 file F (the first of each name)."""
    table, e_shentsize, e_shnum, endian = _sections(f)
    e_shstrndx, = struct.unpack_from(endian + "H", _header(f)[0], 0x3E)
    if e_shstrndx >= e_shnum:
        raise ValueError("truncated ELF section table")
    # Elf64_Shdr: sh_name (u32) at 0, sh_offset (u64) at 0x18, sh_size (u64) at 0x20.
    str_off, str_size = struct.unpack_from(endian + "QQ", table, e_shstrndx * e_shentsize + 0x18)
    f.seek(str_off)
    strtab = f.read(str_size)
    if len(strtab) < str_size:
        raise ValueError("truncated ELF section name table")
    names: dict[str, tuple[int, int]] = {}
    for i in range(e_shnum):
        name, = struct.unpack_from(endian + "I", table, i * e_shentsize)
        where = struct.unpack_from(endian + "QQ", table, i * e_shentsize + 0x18)
        names.setdefault(strtab[name:strtab.find(b"\0", name)].decode(errors="replace"), where)
    return names


@dataclasses.dataclass(frozen=True)
class ProgramHeader:
    """One Elf64_Phdr: its type, where its bytes are in the file, its virtual address."""

    p_type: int
    p_offset: int
    p_vaddr: int
    p_filesz: int


def program_headers(f: BinaryIO) -> tuple[list[ProgramHeader], int]:
    """The program headers of the ELF64 file F (any byte order), and how many there should
    be (``e_phnum``: fewer were read when the file ends inside the table).

    :raises NotElf64: F does not start with an ELF64 header."""
    ident, endian = _header(f)
    e_phoff, = struct.unpack_from(endian + "Q", ident, 0x20)
    e_phentsize, e_phnum = struct.unpack_from(endian + "HH", ident, 0x36)
    f.seek(e_phoff)
    raw = f.read(e_phentsize * e_phnum)
    out = []
    for i in range(min(e_phnum, len(raw) // e_phentsize if e_phentsize else 0)):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            endian + "IIQQQQ", raw, i * e_phentsize)
        out.append(ProgramHeader(p_type, p_offset, p_vaddr, p_filesz))
    return out, e_phnum
