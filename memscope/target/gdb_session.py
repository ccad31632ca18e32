"""Caches between commands.  Each command used to build its parser and target anew
(argparse, gdb look-ups, VMCOREINFO and zone reads: ~3 ms of a 0.3 ms buddyinfo).  The
target and the guest memory it has read are now kept from one command to the next while
the guest stays stopped (:func:`session_target`), and dropped on gdb's cont, stop,
memory_changed, inferior_call and exited events, when QEMU's monitor says the VM is not
paused, or when ``jiffies`` changed; symbols, layouts and the KASLR offset are kept per
vmlinux and connection, dropped when objfiles change.


The kernel offset is found by gdb_kaslr; finding it anew (or setting it) drops the kept
target (:func:`kernel_offset`, :func:`set_kernel_offset`).  Imported only inside gdb."""

from __future__ import annotations

import os

import gdb  # noqa: F401  (gdb's embedded module; this adapter runs only inside gdb)

from . import gdb_kaslr
from .base import TargetError
from .gdb_connection import _check_connected, _connection_key, _try_read
from .gdb_debuginfo import _debuginfo, debuginfo
from .gdb_kaslr import METHODS, _offsets
from .qemu_memory import _memsave, _procmem, read_path

#: The target of the current connection, kept from one command to the next while the guest
#: stays stopped (see session_target): {"key": ..., "target": GdbTarget}.
_session: dict[str, object] = {}


def kernel_offset(force: bool = False, quiet: bool = False,
                  methods: tuple[str, ...] = METHODS) -> int:
    """The kernel offset for the current connection (gdb_kaslr.kernel_offset); a kept
    target is dropped when the offset is looked for anew."""
    di = debuginfo()
    _check_connected()
    if force or (_connection_key(), di.path) not in _offsets:
        _session.pop("target", None)
    return gdb_kaslr.kernel_offset(force, quiet, methods)


def set_kernel_offset(offset: int) -> None:
    """Set the kernel offset by hand (gdb_kaslr.set_kernel_offset) and drop a kept target."""
    gdb_kaslr.set_kernel_offset(offset)
    _session.pop("target", None)


def forget() -> None:
    """Drop cached offsets and debug info (a new vmlinux or connection)."""
    _offsets.clear()
    _debuginfo.clear()
    _memsave.clear()
    for pm in _procmem.values():
        if pm is not None:
            try:
                os.close(pm.fd)
            except OSError:
                pass
    _procmem.clear()
    _session.clear()


def invalidate_memory(*_event) -> None:
    """The guest may have run or its memory been written: drop the kept target and with it
    every byte of guest memory cached (connected to gdb's cont, stop, memory_changed,
    inferior_call and exited events by :func:`install_hooks`).

    A failed probe of the faster read paths is forgotten too: a guest stopped early in
    boot (at start_kernel the direct map is not in init_top_pgt yet, and an arm64 kernel
    has no VMCOREINFO before its subsys initcalls) fails the /proc/PID/mem probe, which
    must be tried again once the kernel has run on; a path that works stays."""
    _session.clear()
    for cache in (_procmem, _memsave):
        for key in [k for k, v in cache.items() if v is None]:
            del cache[key]


def install_hooks() -> None:
    """Connect the cache invalidations to gdb's events (once per gdb session)."""
    if _hooked:
        return
    ev = gdb.events
    for name in ("cont", "stop", "exited", "memory_changed", "inferior_call",
                 "new_inferior", "inferior_deleted", "new_thread"):
        registry = getattr(ev, name, None)
        if registry is not None:
            registry.connect(invalidate_memory)
    for name in ("new_objfile", "clear_objfiles"):
        registry = getattr(ev, name, None)
        if registry is not None:
            registry.connect(lambda _ev: forget())
    _hooked.append(True)


_hooked: list[bool] = []


def _guest_paused() -> bool | None:
    """Whether QEMU says the VM is paused (``monitor info status``), None when the remote
    does not say.  A guest resumed behind gdb's back (QMP ``cont``) sends gdb no event."""
    if _session.get("no_status"):
        return None
    try:
        msg = gdb.execute("monitor info status", to_string=True)
    except gdb.error:
        msg = ""
    if "VM status" not in msg:
        _session.clear()
        _session["no_status"] = True
        return None
    return "running" not in msg


def session_target() -> "GdbTarget":
    """The GdbTarget for a command: the previous command's (with the guest memory it has
    read) when the guest has not run since, else a new one.

    Guest memory is kept only while nothing says the guest may have run: gdb's events
    (:func:`install_hooks`) drop it, and so do QEMU reporting the VM not paused and a
    changed ``jiffies`` (a guest resumed and paused again through QMP sends gdb nothing).  Debug
    info (symbols, layouts) and the KASLR offset are kept per vmlinux and connection."""
    from .gdb import GdbTarget

    inf = gdb.selected_inferior()
    if inf.pid == 0:
        _session.pop("target", None)
        debuginfo()  # raises the one-line errors, the missing vmlinux first
        _check_connected()
    def key() -> tuple:
        # the connection, the read path, and whether/how QEMU's monitor reads were probed
        # for it (a cleared _memsave or a changed MEMSCOPE_GDB_READS starts afresh)
        conn = (_connection_key(), read_path())
        return conn, inf.num, inf.pid, id(_memsave[conn]) if conn in _memsave else None

    target = _session.get("target")
    paused = _guest_paused() if _hooked else False
    if target is not None:
        target.select_kernel_view()  # the user may have selected another thread since
    if target is not None and (_session.get("key") != key() or paused is False
                               or _session.get("jiffies") != _jiffies(target)):
        target.view.restore()
        target = None
    if target is None:
        target = GdbTarget()
        if _hooked and paused is not False:
            _session["key"], _session["target"] = key(), target
            _session["jiffies"] = _jiffies(target)
        else:
            _session.pop("target", None)
    return target


def _jiffies(target: "GdbTarget") -> bytes | None:
    """jiffies, read past every cache: a guest that ran between two commands (paused and
    resumed through QEMU's monitor, which tells gdb nothing) has ticked it."""
    try:
        return _try_read(target.symbol("jiffies"), 8)
    except TargetError:
        return None
