"""gdb's connection to the guest, as the GDB adapter's modules need it: the target
architecture, whether gdb is attached, a key for the connection, and reads and registers
straight through gdb (no cache).  Imported only inside gdb."""

from __future__ import annotations

import gdb  # noqa: F401  (gdb's embedded module; this adapter runs only inside gdb)

from ..errors import MemscopeError

MASK64 = (1 << 64) - 1
KERNEL_HALF = 1 << 63


def _u64(v) -> int:
    return int(v) & MASK64


def _arch() -> str:
    name = gdb.selected_inferior().architecture().name()
    if "aarch64" in name:
        return "aarch64"
    if "x86-64" in name or "x86_64" in name:
        return "x86_64"
    raise MemscopeError(f"gdb's target architecture is {name}: memscope reads x86_64 and "
                        "aarch64 kernels (for arm64 use gdb-multiarch)")


def _check_connected() -> None:
    inf = gdb.selected_inferior()
    if inf.pid == 0 or not inf.threads():
        raise MemscopeError("gdb is not attached to a guest: connect to QEMU's gdbstub "
                            "first with 'target remote HOST:PORT'")


def _connection_key() -> tuple:
    inf = gdb.selected_inferior()
    conn = getattr(inf, "connection", None)
    if conn is None:
        return (inf.num,)
    return (conn.num, conn.details)


def _try_read(address: int, size: int) -> bytes | None:
    try:
        return bytes(gdb.selected_inferior().read_memory(address & MASK64, size))
    except (gdb.MemoryError, gdb.error, OverflowError):
        return None


def _register(name: str) -> int | None:
    try:
        v = gdb.parse_and_eval(f"${name}")
    except gdb.error:
        return None
    if v.type.code == gdb.TYPE_CODE_VOID:
        return None  # gdb has no such register for this target
    try:
        return _u64(v)
    except (gdb.error, ValueError):
        return None
