"""What a dump file holds and what it left out, read from its own headers.

drgn reads a dump's memory but says nothing of its holes: in an ELF dump a ``PT_LOAD``
whose file size is shorter than its memory size (``makedumpfile -E`` writes the pages it
filters out this way) reads as zeros, and a kdump-compressed dump's excluded pages raise a
fault with no reason.  This module reads the headers itself (elf(5); makedumpfile's
``diskdump_mod.h`` for the kdump-compressed format) and returns every physical range the
dump describes but does not hold, with why, so that the adapter can make a read of such a
range fail with the page named (:mod:`memscope.target.drgn`) and ``memscope info`` can say
what is missing.

Nothing here imports drgn.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import struct
from pathlib import Path

import numpy as np

from .elf import PT_LOAD, NotElf64, notes

PT_NOTE = 4

__all__ = ("DUMP_LEVEL_BITS", "Missing", "DumpFile", "NotADump", "read_dump_file",
           "describe_dump_level")

#: makedumpfile's dump level bits (makedumpfile(8) "-d"): what each bit drops.
DUMP_LEVEL_BITS = ((1, "zero pages"), (2, "page-cache pages"),
                   (4, "private page-cache pages"), (8, "user pages"), (16, "free pages"))

#: makedumpfile's header status bits (diskdump_mod.h DUMP_DH_COMPRESSED_*).
_COMPRESSION = ((0x1, "zlib"), (0x2, "lzo"), (0x4, "snappy"), (0x20, "zstd"))

KDUMP_SIGNATURE = b"KDUMP   "
FLATTENED_SIGNATURE = b"makedumpfile"


class NotADump(ValueError):
    """The file is neither an ELF core nor a kdump-compressed dump."""


def describe_dump_level(level: int) -> str:
    """What makedumpfile's dump LEVEL (0-31) leaves out, in words: "zero pages, free
    pages" (level 17), "nothing" (0)."""
    parts = [what for bit, what in DUMP_LEVEL_BITS if level & bit]
    return ", ".join(parts) if parts else "nothing"


@dataclasses.dataclass(frozen=True)
class Missing:
    """A physical range [start, end) (bytes) that the dump describes as memory of the
    machine but does not hold, and why (one phrase: "excluded by makedumpfile at dump
    level 31 (zero pages, ...)", "cut off: the file ends at byte N")."""

    start: int
    end: int
    why: str
    vaddr: int | None = None  # the kernel virtual address of START when the dump maps it

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclasses.dataclass
class DumpFile:
    """A dump file's own description of itself.

    ``format``: "elf", "kdump" (makedumpfile's kdump-compressed) or "flattened"
    (makedumpfile -F / QEMU's kdump output, to be reassembled before use).
    ``compression``: None, or "zlib", "lzo", "snappy", "zstd" (kdump).
    ``dump_level``: makedumpfile's -d level (kdump; None for ELF, which does not record it).
    ``segments``: the physical ranges [start, end) the dump describes, in bytes.
    ``missing``: :class:`Missing` ranges, sorted by start, not overlapping.
    ``release``: the kernel release in the kdump header's utsname (None for ELF).
    ``page_size``: the dump's block size (kdump) or None.
    ``vmcoreinfo``: the kernel's VMCOREINFO text (kernel/vmcore_info.c), from the ELF
    note or the kdump sub-header; :meth:`vmcoreinfo_fields` splits it."""

    path: Path
    format: str
    compression: str | None = None
    dump_level: int | None = None
    segments: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    missing: list[Missing] = dataclasses.field(default_factory=list)
    release: str | None = None
    page_size: int | None = None
    vmcoreinfo: bytes = b""  # the VMCOREINFO note's text, b"" when the dump has none
    machine: str | None = None  # "x86_64", "aarch64", ... (ELF e_machine, kdump utsname)

    def __post_init__(self):
        self.missing.sort(key=lambda m: m.start)
        self._starts = [m.start for m in self.missing]

    def missing_at(self, phys: int) -> Missing | None:
        """The missing range that holds physical address PHYS, or None."""
        i = bisect.bisect_right(self._starts, phys) - 1
        if i >= 0 and self.missing[i].start <= phys < self.missing[i].end:
            return self.missing[i]
        return None

    def vmcoreinfo_fields(self) -> dict[str, str]:
        """VMCOREINFO's KEY=VALUE lines ("OSRELEASE", "BUILD-ID", "PAGESIZE", ...)."""
        out = {}
        for line in self.vmcoreinfo.decode(errors="replace").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key] = value
        return out

    @property
    def build_id(self) -> str | None:
        """The kernel's GNU build ID in hex (VMCOREINFO ``BUILD-ID``, Linux 5.9+), or
        None."""
        return self.vmcoreinfo_fields().get("BUILD-ID") or None

    @property
    def memory_size(self) -> int:
        """Bytes of physical memory the dump describes (the sum of its segments)."""
        return sum(e - s for s, e in self.segments)

    @property
    def missing_size(self) -> int:
        return sum(m.size for m in self.missing)


ET_CORE = 4  # e_type of a core file (elf.h)


def read_dump_file(path: str | os.PathLike) -> DumpFile:
    """Read the headers of the dump at PATH.

    :raises NotADump: neither ELF64 nor kdump-compressed nor flattened.
    :raises OSError: the file cannot be read."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
        if head.startswith(FLATTENED_SIGNATURE):
            return DumpFile(path, "flattened")
        if head.startswith(KDUMP_SIGNATURE):
            return _kdump(path, f)
        try:
            return _elf(path, f)
        except NotElf64:
            raise NotADump(f"{path}: neither an ELF core nor a kdump-compressed dump") from None


def _elf(path: Path, f) -> DumpFile:
    """Segments and holes of an ELF64 core: p_filesz < p_memsz (makedumpfile -E's
    filtered pages), and file bytes past the end of a truncated file."""
    f.seek(0)
    ident = f.read(64)
    if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2:
        raise NotElf64()
    endian = "<" if ident[5] == 1 else ">"
    e_type, = struct.unpack_from(endian + "H", ident, 0x10)
    if e_type != ET_CORE:
        kind = {1: "relocatable", 2: "an executable: a vmlinux?", 3: "shared"}.get(e_type, "")
        raise NotADump(f"{path}: an ELF file but not a core dump (ELF type {e_type}"
                       + (f", {kind})" if kind else ")"))
    e_phoff, = struct.unpack_from(endian + "Q", ident, 0x20)
    e_phentsize, e_phnum = struct.unpack_from(endian + "HH", ident, 0x36)
    f.seek(e_phoff)
    raw = f.read(e_phentsize * e_phnum)
    if len(raw) < e_phentsize * e_phnum:
        raise NotADump(f"{path}: truncated: the file ends inside its ELF program headers")
    size = os.fstat(f.fileno()).st_size
    segments, missing, vmcoreinfo = [], [], b""
    for i in range(len(raw) // e_phentsize if e_phentsize else 0):
        # Elf64_Phdr: p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz
        p_type, _, off, vaddr, paddr, filesz, memsz = struct.unpack_from(
            endian + "IIQQQQQ", raw, i * e_phentsize)
        if p_type == PT_NOTE and not vmcoreinfo:
            f.seek(off)
            vmcoreinfo = _note(f.read(min(filesz, 1 << 20)), b"VMCOREINFO", endian)
        if p_type != PT_LOAD:
            continue
        segments.append((paddr, paddr + memsz))
        # makedumpfile's and /proc/vmcore's segments carry the kernel's own virtual address
        # (the direct map, the kernel image); QEMU's carry the physical one again.
        virt = vaddr if vaddr not in (0, paddr) else None
        held = max(0, min(filesz, size - off))
        if held < filesz:
            missing.append(Missing(paddr + held, paddr + filesz,
                                   f"cut off: the dump file ends at byte {size}, before "
                                   "this part of its segment (a truncated dump)",
                                   None if virt is None else virt + held))
        if filesz < memsz:
            missing.append(Missing(paddr + filesz, paddr + memsz,
                                   "excluded from the dump (its segment's file size is "
                                   "shorter than its memory size: the pages makedumpfile "
                                   "filters out of an ELF dump)",
                                   None if virt is None else virt + filesz))
    e_machine, = struct.unpack_from(endian + "H", ident, 0x12)
    return DumpFile(path, "elf", segments=segments, missing=missing, vmcoreinfo=vmcoreinfo,
                    machine=_E_MACHINE.get(e_machine, f"ELF machine {e_machine}"))


_E_MACHINE = {62: "x86_64", 183: "aarch64", 3: "i386", 40: "arm", 22: "s390x", 21: "ppc64",
              243: "riscv64"}


def _note(data: bytes, name: bytes, endian: str) -> bytes:
    """The descriptor of the first ELF note called NAME in DATA, or b""."""
    return next((desc for n, _, desc in notes(data, endian) if n == name), b"")


# struct disk_dump_header (makedumpfile diskdump_mod.h), 64-bit: signature[8],
# header_version (int), utsname (6 x 65 chars), pad to 8, timestamp (2 x long), status,
# block_size, sub_hdr_size, bitmap_blocks, max_mapnr (unsigned int / int each).
_UTS_OFF, _UTS_LEN = 12, 65
_AFTER_UTS = 12 + 6 * 65  # 402
_TIMESTAMP_OFF = (_AFTER_UTS + 7) & ~7  # 408
_STATUS_OFF = _TIMESTAMP_OFF + 16  # 424


def _kdump(path: Path, f) -> DumpFile:
    """Header, sub-header and bitmaps of a kdump-compressed dump: a page the first bitmap
    marks as memory and the second as not dumped was excluded by makedumpfile."""
    f.seek(0)
    hdr = f.read(4096)
    if len(hdr) < _STATUS_OFF + 20:
        raise NotADump(f"{path}: truncated at byte {len(hdr)}: the file ends inside its "
                       "kdump header")
    status, block_size, sub_hdr_size, bitmap_blocks, max_mapnr = struct.unpack_from(
        "<IiiII", hdr, _STATUS_OFF)
    uts = [hdr[_UTS_OFF + k * _UTS_LEN:_UTS_OFF + (k + 1) * _UTS_LEN].split(b"\0")[0].decode(
        errors="replace") for k in range(6)]  # sysname, nodename, release, version, machine
    release = uts[2]
    compression = next((name for bit, name in _COMPRESSION if status & bit), None)
    # struct kdump_sub_header, one block after the header: phys_base (ul), dump_level
    # (int), split (int), start_pfn, end_pfn, offset_vmcoreinfo, size_vmcoreinfo (at
    # 0x20, 0x28), ..., max_mapnr_64 at 0x60 (header version 6+).
    f.seek(block_size)
    sub = f.read(0x68)
    if len(sub) < 0x30:
        raise NotADump(f"{path}: truncated at byte {block_size + len(sub)}: the file ends "
                       "inside its kdump sub-header")
    dump_level, = struct.unpack_from("<i", sub, 8)
    vi_off, vi_size = struct.unpack_from("<QQ", sub, 0x20)
    if len(sub) >= 0x68:
        mapnr64, = struct.unpack_from("<Q", sub, 0x60)
        if mapnr64:
            max_mapnr = mapnr64
    size = os.fstat(f.fileno()).st_size
    if block_size <= 0 or block_size & (block_size - 1) or bitmap_blocks <= 0 \
            or sub_hdr_size < 0:
        raise NotADump(f"{path}: not a kdump-compressed dump: its header is garbage "
                       f"(block size {block_size}, {bitmap_blocks} bitmap blocks)")
    vmcoreinfo = b""
    if vi_off and vi_size:
        f.seek(vi_off)
        vmcoreinfo = f.read(vi_size)
        if len(vmcoreinfo) < vi_size:
            raise NotADump(f"{path}: truncated at byte {size}: the file ends inside its "
                           "VMCOREINFO")
    bitmap_off = block_size * (1 + sub_hdr_size)
    f.seek(bitmap_off)
    bitmaps = f.read(block_size * bitmap_blocks)
    if len(bitmaps) < block_size * bitmap_blocks:
        raise NotADump(f"{path}: truncated at byte {size}: the file ends inside its page "
                       "bitmaps, so what it holds cannot be told")
    half = len(bitmaps) // 2
    n = min(max_mapnr, 8 * half)
    first, second = memoryview(bitmaps)[:half], memoryview(bitmaps)[half:]
    segments = [(s * block_size, e * block_size) for s, e in _bit_runs(first, None, n)]
    why = (f"excluded by makedumpfile at dump level {dump_level} "
           f"({describe_dump_level(dump_level)})")
    dumped = _bit_runs(second, None, n)
    missing = [Missing(s * block_size, e * block_size, why)
               for s, e in _bit_runs(first, second, n)]
    cut = f"cut off: the dump file ends at byte {size}, before this page's data (a truncated dump)"
    missing += [Missing(s * block_size, e * block_size, cut)
                for s, e in _cut_runs(f, size, bitmap_off + len(bitmaps), dumped)]
    return DumpFile(path, "kdump", compression, dump_level, segments, missing, release,
                    block_size, vmcoreinfo, uts[4] or None)


#: struct page_desc (makedumpfile's diskdump_mod.h): off_t offset; unsigned int size, flags;
#: unsigned long long page_flags — one per dumped page, in pfn order, after the bitmaps.
_PAGE_DESC = np.dtype([("offset", "<i8"), ("size", "<u4"), ("flags", "<u4"), ("pflags", "<u8")])
#: _cut_runs() reads this many page descriptors at a time (1.5 MiB).
_DESC_PIECE = 1 << 16


def _cut_runs(f, size: int, desc_off: int,
              dumped: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[start, end) pfn runs of the dumped pages (DUMPED, the second bitmap's runs) whose
    page descriptor or data lies past the end of the file (SIZE bytes): a dump cut short.
    makedumpfile and QEMU write the data in pfn order (zero pages all share one block,
    written first), so the last descriptor whose data is not that shared block ends the
    file: only when it lies past the end are the descriptors read, a piece at a time."""
    pfns = sum(e - s for s, e in dumped)
    if not pfns:
        return []
    data_start = desc_off + pfns * _PAGE_DESC.itemsize

    def descs(i: int, count: int) -> np.ndarray:
        f.seek(desc_off + i * _PAGE_DESC.itemsize)
        raw = f.read(count * _PAGE_DESC.itemsize)
        return np.frombuffer(raw[:len(raw) - len(raw) % _PAGE_DESC.itemsize], _PAGE_DESC)

    if data_start <= size:  # the table is whole: is the data?  From the last page back.
        i = pfns
        while i > 0:
            d = descs(max(0, i - _DESC_PIECE), min(i, _DESC_PIECE))
            ends = d["offset"] + d["size"].astype(np.int64)
            if (ends > size).any():
                break
            if (d["offset"] > data_start + 2 * 65536).any():  # past the shared zero block
                return []
            i -= len(d)
        else:
            return []
    past = np.zeros(pfns, bool)  # whose descriptor or data the file does not hold
    for i in range(0, pfns, _DESC_PIECE):
        d = descs(i, min(_DESC_PIECE, pfns - i))
        past[i:i + len(d)] = d["offset"] + d["size"].astype(np.int64) > size
        past[i + len(d):i + min(_DESC_PIECE, pfns - i)] = True
    out: list[tuple[int, int]] = []
    k = 0
    for s, e in dumped:
        for a, b in _runs(past[k:k + e - s]):
            if out and out[-1][1] == s + a:
                out[-1] = (out[-1][0], s + b)
            else:
                out.append((s + a, s + b))
        k += e - s
    return out


#: _bit_runs() unpacks this many bitmap bytes at a time (512 Ki pfns): its memory stays the
#: same whatever the machine's size.
_BITMAP_PIECE = 1 << 16


def _bit_runs(bits, clear, n: int) -> list[tuple[int, int]]:
    """[start, end) runs of the pfns below N whose bit is set in the little-endian bitmap
    BITS and, when CLEAR is given, not set in CLEAR (ram & ~dumped), unpacked piece by
    piece (:data:`_BITMAP_PIECE` bytes) and merged across the pieces."""
    out: list[tuple[int, int]] = []
    for off in range(0, (n + 7) // 8, _BITMAP_PIECE):
        end = min(off + _BITMAP_PIECE, (n + 7) // 8)
        a = np.unpackbits(np.frombuffer(bits[off:end], np.uint8), bitorder="little")
        if clear is not None:
            a &= ~np.unpackbits(np.frombuffer(clear[off:end], np.uint8), bitorder="little")
        a = a[:n - 8 * off].view(bool)
        for s, e in _runs(a):
            s, e = s + 8 * off, e + 8 * off
            if out and out[-1][1] == s:
                out[-1] = (out[-1][0], e)
            else:
                out.append((s, e))
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index runs where the bool array MASK is True."""
    z = np.zeros(1, np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate((z, mask.view(np.int8), z))))
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2])]
