"""``memscope info``: what a dump file is, from its own headers (no debug info needed).

JSON record (one object): ``dump`` (path), ``format`` ("elf", "kdump", "flattened"),
``compression`` (null, "zlib", "lzo", "snappy", "zstd"), ``dump_level`` (makedumpfile's
-d, null for ELF, which does not record it) and ``dump_level_drops`` (what that level
leaves out, in words), ``release`` and ``build_id`` (VMCOREINFO's OSRELEASE and BUILD-ID;
the kdump header's utsname when VMCOREINFO has no OSRELEASE), ``machine`` (architecture),
``page_size`` (bytes, VMCOREINFO PAGESIZE), ``memory_bytes`` (the physical memory the
dump describes: the sum of its segments), ``segments`` (``[start, end)`` physical byte
ranges), ``missing`` (``{"start", "end", "bytes", "why"}`` for each range the dump
describes but does not hold: pages a filter left out, a part cut off by truncation),
``missing_bytes``, ``reassembled`` (for a flattened dump, format "flattened": the path of
its reassembled copy in the cache, whose headers the other fields describe; null
otherwise), and ``vmlinux_matches`` (true/false when a vmlinux was given with -s:
its GNU build ID equals the dump's; null otherwise).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .errors import MemscopeError
from .target.dumpfile import DumpFile, NotADump, describe_dump_level, read_dump_file

__all__ = ("DumpInfo", "dump_info", "format_info", "vmlinux_build_id")


@dataclasses.dataclass
class DumpInfo:
    """What :func:`dump_info` finds; the keys of ``memscope info --format json`` (see the
    module docstring for each field's meaning and units)."""

    dump: str
    format: str
    compression: str | None
    dump_level: int | None
    dump_level_drops: str | None
    release: str | None
    build_id: str | None
    machine: str | None
    page_size: int | None
    memory_bytes: int
    segments: list[list[int]]
    missing: list[dict]
    missing_bytes: int
    vmlinux_matches: bool | None = None
    reassembled: str | None = None


def vmlinux_build_id(path: str | os.PathLike) -> str | None:
    """The GNU build ID of the vmlinux at PATH (hex), or None when it has none or is not
    an ELF64 file."""
    from .target.elf import NotElf64, build_id

    try:
        with open(path, "rb") as f:
            return build_id(f)
    except (NotElf64, ValueError, OSError):
        return None


def dump_info(path: str | os.PathLike, vmlinux: str | os.PathLike | None = None) -> DumpInfo:
    """Read what the dump at PATH says of itself.

    :raises MemscopeError: the file is missing, unreadable, or not a dump (one line)."""
    from .target.drgn import _reassembled

    path = Path(path)
    real = _reassembled(path)  # a flattened dump: its reassembled copy
    try:
        d: DumpFile = read_dump_file(real)
    except NotADump as e:
        raise MemscopeError(str(e)) from None
    except OSError as e:
        raise MemscopeError(f"{path}: cannot read: {e.strerror or e}") from None
    vi = d.vmcoreinfo_fields()
    matches = None
    if vmlinux is not None:
        from .target.drgn import _readable_file

        _readable_file(Path(vmlinux))
        matches = d.build_id is not None and vmlinux_build_id(vmlinux) == d.build_id
    return DumpInfo(
        dump=str(path), format="flattened" if real != path else d.format, compression=d.compression, dump_level=d.dump_level,
        dump_level_drops=None if d.dump_level is None else describe_dump_level(d.dump_level),
        release=vi.get("OSRELEASE") or d.release, build_id=d.build_id, machine=d.machine,
        page_size=int(vi["PAGESIZE"]) if vi.get("PAGESIZE", "").isdigit() else d.page_size,
        memory_bytes=d.memory_size, segments=[[s, e] for s, e in d.segments],
        missing=[dict(start=m.start, end=m.end, bytes=m.size, why=m.why) for m in d.missing],
        missing_bytes=d.missing_size, vmlinux_matches=matches,
        reassembled=str(real) if real != path else None)


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def format_info(info: DumpInfo, max_ranges: int = 20) -> str:
    """The table view: one "key: value" line per field, then the missing ranges (the
    first MAX_RANGES, and how many more)."""
    fmt = info.format + (f", {info.compression}-compressed" if info.compression else "")
    if info.reassembled:
        fmt += f" (makedumpfile -F); reassembled as makedumpfile -R would: {info.reassembled}"
    rows = [("dump", info.dump), ("format", fmt),
            ("dump level", "not recorded (ELF)" if info.dump_level is None else
             f"{info.dump_level} (leaves out {info.dump_level_drops})"),
            ("release", info.release or "unknown (no VMCOREINFO)"),
            ("build ID", info.build_id or "unknown (VMCOREINFO has no BUILD-ID)"),
            ("machine", info.machine or "unknown"),
            ("page size", str(info.page_size) if info.page_size else "unknown"),
            ("memory", f"{_size(info.memory_bytes)} ({info.memory_bytes} bytes) in "
                       f"{len(info.segments)} segments")]
    if info.vmlinux_matches is not None:
        rows.append(("vmlinux", "matches the dump's build ID" if info.vmlinux_matches else
                     "does NOT match the dump's build ID"))
    if info.missing:
        rows.append(("missing", f"{_size(info.missing_bytes)} in {len(info.missing)} ranges"))
    else:
        rows.append(("missing", "nothing"))
    out = [f"{k + ':':<11} {v}" for k, v in rows]
    for m in info.missing[:max_ranges]:
        out.append(f"  {m['start']:#014x}-{m['end']:#014x} {_size(m['bytes']):>10}  {m['why']}")
    if len(info.missing) > max_ranges:
        out.append(f"  ... and {len(info.missing) - max_ranges} more ranges")
    return "\n".join(out) + "\n"
