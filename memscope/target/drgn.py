"""The drgn adapter: a vmcore (-c), the live kernel (-k) or a QEMU guest over QMP (--qemu).

Only this module (and the drgn front end) imports drgn."""

from __future__ import annotations

import os
from pathlib import Path

import drgn

from ..errors import MemscopeError
from .base import FaultError, Layout, Member, Target, TargetError


def _flatten(t: drgn.Type, base: int, out: dict[str, Member]) -> None:
    for m in t.members:
        mt = m.type
        while mt.kind == drgn.TypeKind.TYPEDEF:
            mt = mt.type
        off = base + m.bit_offset // 8
        if m.name is None:
            if mt.kind in (drgn.TypeKind.STRUCT, drgn.TypeKind.UNION):
                _flatten(mt, off, out)
            continue
        if m.name in out:
            continue
        try:
            size = drgn.sizeof(mt)
        except (TypeError, ValueError):
            size = 0
        length = mt.length if mt.kind == drgn.TypeKind.ARRAY else None
        out[m.name] = Member(m.name, off, size, str(m.type.type_name()), length,
                             m.bit_offset % 8, m.bit_field_size)


class DrgnTarget(Target):
    def __init__(self, prog: drgn.Program):
        self.prog = prog
        self.arch = "aarch64" if prog.platform.arch == drgn.Architecture.AARCH64 else "x86_64"
        self._layouts: dict[str, Layout] = {}

    def symbol(self, name: str) -> int:
        try:
            return self.prog.symbol(name).address
        except LookupError:
            try:
                return self.prog[name].address_
            except (KeyError, LookupError):
                raise TargetError(f"symbol {name} not found") from None

    def _type(self, type_name: str) -> drgn.Type:
        try:
            t = self.prog.type(type_name)
        except LookupError:
            raise TargetError(f"type {type_name} not found in the debug info") from None
        while t.kind == drgn.TypeKind.TYPEDEF:
            t = t.type
        return t

    def layout(self, type_name: str) -> Layout:
        lay = self._layouts.get(type_name)
        if lay is None:
            t = self._type(type_name)
            if t.kind not in (drgn.TypeKind.STRUCT, drgn.TypeKind.UNION):
                raise TargetError(f"{type_name} is not a struct or union")
            members: dict[str, Member] = {}
            _flatten(t, 0, members)
            lay = self._layouts[type_name] = Layout(type_name, t.size, members)
        return lay

    def enum(self, type_name: str) -> dict[str, int]:
        t = self._type(type_name)
        if t.kind != drgn.TypeKind.ENUM:
            raise TargetError(f"{type_name} is not an enum")
        return {e.name: e.value for e in t.enumerators}

    def sizeof(self, type_name: str) -> int:
        return drgn.sizeof(self._type(type_name))

    def read(self, address: int, size: int) -> bytes:
        try:
            return self.prog.read(address, size)
        except drgn.FaultError:
            raise FaultError(address, size) from None

    def vmcoreinfo(self) -> bytes:
        # drgn exposes the VMCOREINFO note it found (in the dump, or from the live kernel).
        try:
            return self.prog["VMCOREINFO"].string_()
        except (KeyError, LookupError):
            return b""

    @property
    def release(self) -> str:
        return self.prog["UTS_RELEASE"].string_().decode()


def open_core(vmcore: str | os.PathLike, vmlinux: str | os.PathLike | None) -> drgn.Program:
    """A drgn Program for VMCORE with debug info from VMLINUX; one-line errors."""
    vmcore = Path(vmcore)
    if not vmcore.exists():
        raise MemscopeError(f"{vmcore}: no such file")
    if not os.access(vmcore, os.R_OK):
        raise MemscopeError(f"{vmcore}: permission denied")
    prog = drgn.Program()
    try:
        prog.set_core_dump(str(vmcore))
    except (drgn.FaultError, ValueError, OSError, drgn.MissingDebugInfoError) as e:
        raise MemscopeError(f"{vmcore}: not a usable kernel core dump ({e})") from None
    if not (prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL):
        raise MemscopeError(f"{vmcore}: not a Linux kernel core dump (no VMCOREINFO)")
    _load_debug_info(prog, vmlinux)
    return prog


def _load_debug_info(prog: drgn.Program, vmlinux) -> None:
    try:
        if vmlinux is None:
            prog.load_default_debug_info()
        else:
            if not Path(vmlinux).exists():
                raise MemscopeError(f"{vmlinux}: no such file")
            prog.load_debug_info([str(vmlinux)])
    except drgn.MissingDebugInfoError:
        pass  # modules without debug info: the core kernel is what we need
    except OSError as e:
        raise MemscopeError(f"cannot load debug info: {e}") from None
    try:
        prog["init_uts_ns"]
    except (KeyError, LookupError):
        raise MemscopeError(
            f"{vmlinux or 'the default vmlinux'} does not match this kernel "
            "(its debug info was not accepted for the dump's kernel release)") from None


def open_live(vmlinux: str | os.PathLike | None) -> drgn.Program:
    """The running kernel through /proc/kcore (root only)."""
    if os.geteuid() != 0:
        raise MemscopeError("-k reads /proc/kcore, which needs root: run as root (sudo)")
    prog = drgn.Program()
    try:
        prog.set_kernel()
    except (OSError, ValueError) as e:
        raise MemscopeError(f"cannot open the running kernel: {e}") from None
    _load_debug_info(prog, vmlinux)
    return prog


def open_qemu(address: str, vmlinux: str | os.PathLike | None) -> drgn.Program:
    """A running QEMU guest over its QMP socket (drgn's own QMP target)."""
    if "/" in address or not ":" in address:
        if not Path(address).exists():
            raise MemscopeError(f"{address}: no such QMP socket")
    prog = drgn.Program()
    try:
        prog.set_qemu_qmp(address)
    except (OSError, ValueError, drgn.FaultError) as e:
        raise MemscopeError(f"cannot talk to QEMU at {address}: {e}") from None
    _load_debug_info(prog, vmlinux)
    return prog
