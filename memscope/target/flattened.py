"""makedumpfile's flattened format, reassembled as ``makedumpfile -R`` does.

``makedumpfile -F`` (a dump sent over a pipe) and QEMU's ``dump-guest-memory`` in its
kdump formats write a dump as a stream: a 4096-byte header (``"makedumpfile"``, type 1,
version 1, big-endian), then records ``{int64 offset; int64 buf_size}`` (big-endian) each
followed by BUF_SIZE bytes that belong at OFFSET of the real file, ended by a record with
offset -1 (makedumpfile.h: ``struct makedumpfile_header``, ``struct
makedumpfile_data_header``, ``END_FLAG_FLAT_HEADER``).  drgn cannot open it; the
reassembled file is an ordinary kdump-compressed dump.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

__all__ = ("SIZE_FLAT_HEADER", "FlattenedError", "fill_empty_utsname", "reassemble",
           "reassembled_path")

SIZE_FLAT_HEADER = 4096
_SIGNATURE = b"makedumpfile"
_END = -1


class FlattenedError(ValueError):
    """The flattened stream is damaged (bad header, a record past the end)."""


def reassemble(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write the dump that the flattened stream SRC describes to DST (created anew).

    :raises FlattenedError: not a flattened dump, or it ends inside a record or before
        its end marker.
    :raises OSError: SRC cannot be read or DST written."""
    with open(src, "rb") as fin:
        head = fin.read(SIZE_FLAT_HEADER)
        if len(head) < 32 or not head.startswith(_SIGNATURE):
            raise FlattenedError(f"{src}: not a flattened dump (no makedumpfile header)")
        ftype, version = struct.unpack_from(">qq", head, 16)
        if ftype != 1:
            raise FlattenedError(f"{src}: flattened header of unknown type {ftype}")
        with open(dst, "wb") as fout:
            while True:
                rec = fin.read(16)
                if len(rec) < 16:
                    raise FlattenedError(f"{src}: the flattened stream ends before its end "
                                         "marker (a truncated dump)")
                offset, size = struct.unpack(">qq", rec)
                if offset == _END:
                    break
                if offset < 0 or size < 0:
                    raise FlattenedError(f"{src}: a damaged record (offset {offset}, size "
                                         f"{size})")
                fout.seek(offset)
                left = size
                while left:
                    chunk = fin.read(min(left, 1 << 20))
                    if not chunk:
                        raise FlattenedError(f"{src}: the flattened stream ends inside a "
                                             "record (a truncated dump)")
                    fout.write(chunk)
                    left -= len(chunk)
    return Path(dst)


def reassembled_path(src: str | os.PathLike, cache: str | os.PathLike) -> Path:
    """The reassembled copy of the flattened dump SRC in CACHE (``CACHE/reassembled/``),
    made on first use: named by SRC's path, size and modification time, so that a changed
    file is reassembled again; written under a temporary name and renamed when whole.

    :raises FlattenedError: as :func:`reassemble`."""
    src = Path(src).resolve()
    st = src.stat()
    key = hashlib.sha256(f"{src}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = Path(cache) / "reassembled" / f"{src.name}-{key}.kdump"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    try:
        reassemble(src, tmp)
        fill_empty_utsname(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def fill_empty_utsname(path: str | os.PathLike) -> bool:
    """QEMU's kdump output (dump/dump.c, QEMU 7.2) leaves the header's utsname empty but
    for ``machine``, and libkdumpfile then refuses the file ("KDUMP_ATTR_ARCH_NAME: Key
    has no value"); makedumpfile writes all six fields.  In the reassembled copy, fill the
    empty ones as the kernel would print them: sysname "Linux", release from VMCOREINFO's
    OSRELEASE, "(none)" for the rest.  Returns whether the header was changed; a header
    with a sysname is left alone."""
    from .dumpfile import read_dump_file

    with open(path, "r+b") as f:
        head = f.read(12 + 6 * 65)
        if not head.startswith(b"KDUMP   ") or head[12] != 0:
            return False
        release = read_dump_file(path).vmcoreinfo_fields().get("OSRELEASE", "")
        fields = [b"Linux", b"(none)", release.encode()[:64], b"(none)", None, b"(none)"]
        for k, value in enumerate(fields):
            at = 12 + 65 * k
            if value is not None and head[at] == 0:
                f.seek(at)
                f.write(value)
    return True
