"""Filtered copies of real lab dumps, written the way ``makedumpfile -E`` writes an ELF
dump that leaves pages out: each PT_LOAD is split around the excluded pages, the part
before them keeps its bytes in the file and its memory size covers the excluded pages
(``p_filesz < p_memsz``), and the part after starts a new PT_LOAD.  Readers that do not
look at the headers get zeros there (drgn does); memscope must not."""

from __future__ import annotations

import os
import struct
from pathlib import Path

PT_LOAD = 1


def read_loads(path) -> tuple[bytes, list[tuple], list[tuple]]:
    """(the 64-byte ELF header, non-LOAD program headers as raw (phdr, data) pairs,
    PT_LOADs as (offset, vaddr, paddr, filesz, memsz))."""
    with open(path, "rb") as f:
        ehdr = f.read(64)
        assert ehdr[:4] == b"\x7fELF" and ehdr[4] == 2 and ehdr[5] == 1
        phoff, = struct.unpack_from("<Q", ehdr, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", ehdr, 0x36)
        f.seek(phoff)
        raw = f.read(phentsize * phnum)
        others, loads = [], []
        for i in range(phnum):
            ph = raw[i * phentsize:(i + 1) * phentsize]
            p_type, _, off, vaddr, paddr, filesz, memsz = struct.unpack_from("<IIQQQQQ", ph)
            if p_type == PT_LOAD:
                loads.append((off, vaddr, paddr, filesz, memsz))
            else:
                f.seek(off)
                others.append((ph, f.read(filesz)))
    return ehdr, others, loads


def write_filtered(src, dst, exclude: list[int], page_size: int = 4096) -> Path:
    """Copy the ELF vmcore SRC to DST with the physical pages at EXCLUDE (page-aligned
    physical addresses) left out, makedumpfile -E style.  Returns DST."""
    ehdr, others, loads = read_loads(src)
    excl = sorted(set(p & ~(page_size - 1) for p in exclude))
    pieces = []  # (vaddr, paddr, filesz, memsz, src offset)
    for off, vaddr, paddr, filesz, memsz in loads:
        start = paddr
        for page in [p for p in excl if paddr <= p < paddr + filesz]:
            if page < start:  # adjacent excluded pages: extend the previous hole
                continue
            end = page
            while end + page_size in excl and end + page_size < paddr + filesz:
                end += page_size
            end += page_size
            pieces.append((vaddr + start - paddr, start, page - start, end - start,
                           off + start - paddr))
            start = end
        if start < paddr + memsz:
            pieces.append((vaddr + start - paddr, start, max(0, min(filesz, memsz) - (start - paddr)),
                           memsz - (start - paddr), off + start - paddr))
    phnum = len(others) + len(pieces)
    data_off = 64 + 56 * phnum
    out_ph, blobs = [], []
    for ph, data in others:
        p = bytearray(ph)
        struct.pack_into("<Q", p, 8, data_off)
        out_ph.append(bytes(p))
        blobs.append(data)
        data_off += len(data)
    for vaddr, paddr, filesz, memsz, _ in pieces:
        out_ph.append(struct.pack("<IIQQQQQQ", PT_LOAD, 0, data_off, vaddr, paddr, filesz,
                                  memsz, 0))
        data_off += filesz
    hdr = bytearray(ehdr)
    struct.pack_into("<Q", hdr, 0x20, 64)
    struct.pack_into("<Q", hdr, 0x28, 0)  # no section headers (e_shoff)
    struct.pack_into("<HHH", hdr, 0x3A, 0, 0, 0)  # e_shentsize, e_shnum, e_shstrndx
    struct.pack_into("<HH", hdr, 0x36, 56, phnum)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(bytes(hdr))
        fout.write(b"".join(out_ph))
        for b in blobs:
            fout.write(b)
        for _, _, filesz, _, src_off in pieces:
            left, pos = filesz, src_off
            while left:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), left, pos)
                if n <= 0:
                    raise OSError("short copy")
                left -= n
                pos += n
    return Path(dst)


def write_kdump(src, dst, exclude: list[int] = (), dump_level: int = 0,
                page_size: int = 4096) -> Path:
    """Write the ELF vmcore SRC as a kdump-compressed dump DST (makedumpfile's format,
    header version 6, diskdump_mod.h), each page zlib-compressed where that makes it
    smaller (raw otherwise, as makedumpfile does), with the physical pages at EXCLUDE
    left out: marked as memory in the first bitmap, not dumped in the second.  DUMP_LEVEL
    is what the sub-header records.  libkdumpfile (through drgn) is the reader that
    judges the result."""
    import zlib

    import numpy as np

    ehdr, others, loads = read_loads(src)
    vmcoreinfo = b""
    notes = b"".join(data for _, data in others)
    pos = 0
    while pos + 12 <= len(notes):  # the VMCOREINFO note's descriptor
        namesz, descsz, _ = struct.unpack_from("<III", notes, pos)
        name = notes[pos + 12:pos + 12 + namesz].rstrip(b"\0")
        desc_at = pos + 12 + ((namesz + 3) & ~3)
        if name == b"VMCOREINFO":
            vmcoreinfo = notes[desc_at:desc_at + descsz]
        pos = desc_at + ((descsz + 3) & ~3)
    info = dict(line.split("=", 1) for line in vmcoreinfo.decode().splitlines() if "=" in line)
    machine = {62: "x86_64", 183: "aarch64"}[struct.unpack_from("<H", ehdr, 0x12)[0]]
    max_pfn = max(p + m for _, _, p, _, m in loads) // page_size
    ram = np.zeros(max_pfn, bool)
    for _, _, p, _, m in loads:
        ram[p // page_size:(p + m) // page_size] = True
    dumped = ram.copy()
    for e in exclude:
        dumped[e // page_size] = False
    bitmap_bytes = -(-max_pfn // 8)
    bitmap_blocks = 2 * -(-bitmap_bytes // page_size)
    half = bitmap_blocks // 2 * page_size
    bitmaps = bytearray(2 * half)
    bitmaps[:bitmap_bytes] = np.packbits(ram, bitorder="little").tobytes()
    bitmaps[half:half + bitmap_bytes] = np.packbits(dumped, bitorder="little").tobytes()
    # Block 0: the header; block 1..: the sub-header and VMCOREINFO; then the bitmaps,
    # the page descriptors (one per dumped page, pfn order) and the pages.
    sub = bytearray(0x68)
    vi_off = page_size + 0x68  # right after the sub-header, in block 1
    note_off = vi_off + len(vmcoreinfo)  # then the ELF notes (PRSTATUS, VMCOREINFO...)
    sub_hdr_size = -(-(0x68 + len(vmcoreinfo) + len(notes)) // page_size)
    struct.pack_into("<QiiQQQQQQ", sub, 0, 0, dump_level, 0, 0, max_pfn, vi_off,
                     len(vmcoreinfo), note_off, len(notes))
    struct.pack_into("<QQQ", sub, 0x50, 0, max_pfn, max_pfn)
    hdr = bytearray(page_size)
    hdr[:8] = b"KDUMP   "
    struct.pack_into("<i", hdr, 8, 6)
    uts = [b"Linux", b"memscope-test", info["OSRELEASE"].encode(), b"#1", machine.encode(),
           b"(none)"]
    for k, field in enumerate(uts):
        hdr[12 + 65 * k:12 + 65 * k + len(field)] = field
    nr_dumped = int(dumped.sum())
    struct.pack_into("<IiiIIIIIIi", hdr, 424, 1, page_size, sub_hdr_size, bitmap_blocks,
                     min(max_pfn, 0xFFFFFFFF), int(ram.sum()), 0, 0, 0, 1)
    desc_off = (1 + sub_hdr_size + bitmap_blocks) * page_size
    data_off = desc_off + 24 * nr_dumped
    segs = sorted((p // page_size, (p + f) // page_size, off) for off, _, p, f, _ in loads)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(bytes(hdr))
        subblk = bytes(sub) + vmcoreinfo + notes
        fout.write(subblk + bytes(sub_hdr_size * page_size - len(subblk)))
        fout.write(bytes(bitmaps))
        descs, datas, at = [], [], data_off
        for lo, hi, off in segs:
            fin.seek(off)
            for pfn in range(lo, hi):
                page = fin.read(page_size)
                if not dumped[pfn]:
                    continue
                z = zlib.compress(page, 1)
                data, flags = (z, 1) if len(z) < page_size else (page, 0)
                descs.append(struct.pack("<QIIQ", at, len(data), flags, 0))
                datas.append(data)
                at += len(data)
        # pages in the memory size but not the file size of a segment are not dumped
        assert len(descs) == nr_dumped, (len(descs), nr_dumped)
        fout.write(b"".join(descs))
        for d in datas:
            fout.write(d)
    return Path(dst)


def write_flattened(src, dst, record: int = 1 << 20) -> Path:
    """Write the file SRC as makedumpfile's flattened stream DST (what makedumpfile -F and
    QEMU's kdump output look like): the 4096-byte header, then (offset, size) records of
    RECORD bytes each, big-endian, in an order that is not the file's (the second half
    first), then the end marker."""
    size = os.path.getsize(src)
    starts = list(range(0, size, record))
    order = starts[len(starts) // 2:] + starts[:len(starts) // 2]
    head = bytearray(4096)
    head[:12] = b"makedumpfile"
    struct.pack_into(">qq", head, 16, 1, 1)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(bytes(head))
        for off in order:
            fin.seek(off)
            data = fin.read(record)
            fout.write(struct.pack(">qq", off, len(data)))
            fout.write(data)
        fout.write(struct.pack(">qq", -1, 0))
    return Path(dst)
