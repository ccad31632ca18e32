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


def _cpu_index(thread) -> int | None:
    """QEMU's index of the vCPU behind gdb THREAD: its gdbstub numbers each vCPU as a
    thread whose id is cpu_index + 1 (gdbstub/gdbstub.c, gdb_get_cpu_index)."""
    _pid, lwp, tid = thread.ptid
    tid = lwp or tid
    return tid - 1 if tid and tid > 0 else None


def _monitor_cpu() -> int | None:
    """The vCPU QEMU's monitor (gdb's ``monitor`` commands: memsave) reads through: the one
    ``info cpus`` marks with ``*``."""
    try:
        text = gdb.execute("monitor info cpus", to_string=True)
    except gdb.error:
        return None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*") and "#" in line:
            num = line.split("#", 1)[1].split(":", 1)[0]
            if num.isdigit():
                return int(num)
    return None


def _set_monitor_cpu(index: int | None) -> None:
    if index is not None:
        try:
            gdb.execute(f"monitor cpu {index}", to_string=True)
        except gdb.error:
            pass


class KernelView:
    """Which vCPU gdb reads the kernel through.  gdbstub reads virtual memory through the
    MMU of gdb's selected thread (one per vCPU), and a vCPU stopped in user mode under
    KPTI has the kernel unmapped: x86_64 PTI's user CR3 maps only the entry trampoline
    (arch/x86/mm/pti.c), and arm64 at EL0 runs on tramp_pg_dir (arch/arm64/kernel/entry.S,
    tramp_exit).  A guest frozen between a user instruction and the next syscall (the lab's
    snapshot script between its printf and its read) is that case.

    :meth:`select` keeps the selected thread when it reads the kernel, else selects the
    first thread that does and points QEMU's monitor (memsave) at the same vCPU;
    :meth:`restore` gives the user back the thread and monitor vCPU they had."""

    def __init__(self):
        self.thread = None  # the thread selected before, when select() switched
        self.monitor_cpu = None

    def select(self, address: int, want: bytes) -> bool:
        """Whether some vCPU reads WANT at kernel ADDRESS (that vCPU is then selected)."""
        if _try_read(address, len(want)) == want:
            return True
        current = gdb.selected_thread()
        for th in gdb.selected_inferior().threads():
            if th == current or not th.is_valid():
                continue
            th.switch()
            if _try_read(address, len(want)) == want:
                if self.thread is None:
                    self.thread = current
                    self.monitor_cpu = _monitor_cpu()
                _set_monitor_cpu(_cpu_index(th))
                return True
        if current is not None and current.is_valid():
            current.switch()
        return False

    def restore(self) -> None:
        if self.thread is not None and self.thread.is_valid():
            self.thread.switch()
            _set_monitor_cpu(self.monitor_cpu)
        self.thread = None
