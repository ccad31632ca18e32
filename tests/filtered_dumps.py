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
