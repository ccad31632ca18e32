"""The debug-info cache: what memscope asked of one kernel build's DWARF, kept per build ID.

Loading a vmlinux's DWARF is most of what a command on a dump costs.  The answers memscope
needs from it are few (a few hundred symbols, layouts, enumerators), the same for every
dump of that build.  :class:`CachedDrgnTarget` answers them from
``$MEMSCOPE_CACHE/debuginfo/BUILD_ID.json`` and loads the DWARF only for a question the
cache has never seen (a command that asks something new), recording the answer, errors
included, for next time.  Memory is read through drgn as always: drgn translates a kernel
dump's virtual addresses with VMCOREINFO alone.

Keyed by the dump's VMCOREINFO ``BUILD-ID`` (the kernel's GNU build ID), written only when
the vmlinux's own build ID is the same, and checked against every dump before use: its
release (VMCOREINFO ``OSRELEASE``) and every address VMCOREINFO exports
(``SYMBOL(name)``) must be what the cache gives for them after relocation by the dump's
``KERNELOFFSET`` (KASLR).  A cache that fails a check is not used (the DWARF is loaded
and the cache written anew), never trusted.

Addresses in the kernel half (>= 2^63) are stored without the KASLR offset and relocated
on use; per-CPU offsets and other small values are stored as they are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .base import Layout, Member, TargetError

__all__ = ("FORMAT", "DebugInfoCache", "cache_path")

#: Bump when what is stored changes meaning.
#: 2: symbols drgn leaves unrelocated (arm64's ``_end``) are stored relocated-then-
#: unrelocated like the others (format 1 stored them with the first dump's offset taken off).
FORMAT = 2
_KERNEL_HALF = 1 << 63


def cache_path(root: str | os.PathLike, build_id: str) -> Path:
    """Where the cache of the kernel build BUILD_ID lives under ROOT."""
    return Path(root) / "debuginfo" / f"{build_id}.json"


class DebugInfoCache:
    """One build's answers: ``entries[kind][name]`` is ``{"v": value}`` or ``{"error":
    message}``; kinds: symbol, variable, constant, layout, enum, sizeof, array_length.

    :param path: the cache file (read if it exists)
    :param build_id: the dump's build ID
    :param release: the dump's OSRELEASE
    :param kaslr: the dump's KERNELOFFSET (bytes; 0 without KASLR)"""

    def __init__(self, path: Path, build_id: str, release: str, kaslr: int):
        self.path, self.build_id, self.release, self.kaslr = path, build_id, release, kaslr
        self.entries: dict[str, dict[str, dict]] = {}
        self.dirty = False
        self.loaded_from_file = False

    def load(self, vmcoreinfo: dict[str, str]) -> str | None:
        """Read the file and check it against the dump; None when it is usable, else why
        not (missing, another format, another build or release, a VMCOREINFO address
        that differs).  An unusable cache is left empty."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return "no cache yet"
        except (OSError, ValueError) as e:
            return f"unreadable cache: {e}"
        if data.get("format") != FORMAT:
            return "another cache format"
        if data.get("build_id") != self.build_id or data.get("release") != self.release:
            return "another build or release"
        entries = data.get("entries", {})
        symbols = entries.get("symbol", {})
        for key, value in vmcoreinfo.items():
            if not (key.startswith("SYMBOL(") and key.endswith(")")):
                continue
            name = key[7:-1]
            e = symbols.get(name)
            if e is not None and "v" in e and self._relocate(e["v"]) != int(value, 16):
                return f"{name} is at {int(value, 16):#x} in the dump, not where the cache says"
        self.entries = entries
        self.loaded_from_file = True
        return None

    def save(self) -> None:
        """Write the cache (atomically: a temporary file renamed) if anything was added."""
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(dict(format=FORMAT, build_id=self.build_id,
                                       release=self.release, entries=self.entries)))
        os.replace(tmp, self.path)
        self.dirty = False

    def _relocate(self, v: int) -> int:
        return (v + self.kaslr) & ((1 << 64) - 1) if v >= _KERNEL_HALF else v

    def _unrelocate(self, v: int) -> int:
        return (v - self.kaslr) & ((1 << 64) - 1) if v >= _KERNEL_HALF else v

    # --- one entry ------------------------------------------------------------------
    def get(self, kind: str, name: str):
        """(True, value) or (True, TargetError to raise) when cached; (False, None) not."""
        e = self.entries.get(kind, {}).get(name)
        if e is None:
            return False, None
        if "error" in e:
            return True, TargetError(e["error"])
        return True, _DECODE[kind](self, e["v"])

    def put(self, kind: str, name: str, value=None, error: str | None = None) -> None:
        self.entries.setdefault(kind, {})[name] = (
            {"error": error} if error is not None else {"v": _ENCODE[kind](self, value)})
        self.dirty = True


def _layout_enc(c, lay: Layout):
    return [lay.name, lay.size, [[m.name, m.offset, m.size, m.type_name, m.array_length,
                                  m.bit_offset, m.bit_size] for m in lay.members.values()]]


def _layout_dec(c, v) -> Layout:
    name, size, members = v
    return Layout(name, size, {m[0]: Member(*m) for m in members})


_ENCODE = {
    "symbol": lambda c, v: c._unrelocate(v),
    "variable": lambda c, v: [c._unrelocate(v.address), v.size, v.type_name, v.array_length],
    "constant": lambda c, v: v,
    "layout": _layout_enc,
    "enum": lambda c, v: v,
    "sizeof": lambda c, v: v,
    "array_length": lambda c, v: v,
}
_DECODE = {
    "symbol": lambda c, v: c._relocate(v),
    "variable": lambda c, v: (c._relocate(v[0]), v[1], v[2], v[3]),  # Variable(name, *v)
    "constant": lambda c, v: v,
    "layout": _layout_dec,
    "enum": lambda c, v: dict(v),
    "sizeof": lambda c, v: v,
    "array_length": lambda c, v: v,
}
