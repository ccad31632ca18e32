"""ELF64 program headers, read from a file: the vmlinux's PT_LOAD segments (the GDB
adapter reads ``linux_banner`` out of the file) and a vmcore's (the drgn adapter checks that
a dump is not truncated).  Only the header fields memscope needs (elf(5))."""

from __future__ import annotations

import dataclasses
import struct
from typing import BinaryIO

__all__ = ("PT_LOAD", "ProgramHeader", "NotElf64", "program_headers")

PT_LOAD = 1


class NotElf64(ValueError):
    """The file does not start with a 64-bit ELF header."""


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
    f.seek(0)
    ident = f.read(64)
    if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2:
        raise NotElf64()
    endian = "<" if ident[5] == 1 else ">"
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
