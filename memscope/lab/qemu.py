"""QEMU for the lab: the command line, the QMP client and the guest's console."""

from __future__ import annotations

import os
import shutil
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from ..errors import LabError
from ..target.qmp import QMPConnection
from .kernels import Kernel

APT_PACKAGE = {"qemu-system-x86_64": "qemu-system-x86", "qemu-system-aarch64": "qemu-system-arm"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require(kernel: Kernel) -> str:
    """The QEMU binary for KERNEL's architecture.

    :raises LabError: it is not installed (the message names its Debian package)"""
    binary = kernel.spec.qemu
    if shutil.which(binary) is None:
        raise LabError(f"{binary} not found: install it (apt-get install {APT_PACKAGE[binary]})")
    return binary


def command(kernel: Kernel, *, initrd: Path, mem: int, smp: int, numa: int, append: str,
            qmp: Path, console: Path, console_log: Path, gdb_port: int | None,
            disk: Path | None = None) -> list[str]:
    """The QEMU command line: TCG (single-threaded: KVM fails on these kernels' decompressor
    here and multi-threaded TCG once oopsed at boot), no network, a vmcoreinfo device, the
    serial console on a Unix socket (logged), QMP on another; DISK (a raw image), if given,
    as an NVMe drive (the x86_64 cloud kernels have the NVMe driver built in: the guest
    sees /dev/nvme0n1, and its block queue's bio_sets and the driver's mempools exist)."""
    binary = require(kernel)
    if kernel.spec.qemu_arch == "aarch64":
        machine = ["-M", "virt"]
        tty = "ttyAMA0"
    else:
        machine = ["-M", "pc"]
        tty = "ttyS0"
    cmd = [binary, *machine, "-accel", "tcg,thread=single", "-cpu", "max",
           "-m", f"{mem}M", "-smp", str(smp), "-nodefaults", "-no-user-config",
           "-display", "none", "-nic", "none", "-device", "vmcoreinfo",
           "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
           "-append", f"console={tty} loglevel=1 panic=-1 oops=panic {append}".strip(),
           "-chardev", f"socket,id=con,path={console},server=on,wait=on,logfile={console_log}",
           "-serial", "chardev:con",
           "-qmp", f"unix:{qmp},server=on,wait=off",
           "-action", "reboot=shutdown"]
    if numa > 1:
        if mem % numa:
            raise LabError(f"--mem {mem} does not split evenly into {numa} NUMA nodes")
        for node in range(numa):
            cmd += ["-object", f"memory-backend-ram,id=m{node},size={mem // numa}M"]
            cpus = [c for c in range(smp) if c % numa == node]
            spec = f"node,nodeid={node},memdev=m{node}"
            if cpus:
                spec += "".join(f",cpus={c}" for c in cpus)
            cmd += ["-numa", spec]
    if disk is not None:
        cmd += ["-drive", f"file={disk},if=none,id=disk,format=raw,cache=unsafe",
                "-device", "nvme,drive=disk,serial=memscope"]
    if gdb_port is not None:
        cmd += ["-gdb", f"tcp:127.0.0.1:{gdb_port}"]
    return cmd


def _connect(path: Path, deadline: float, proc: subprocess.Popen, log: Path,
             what: str) -> socket.socket:
    """Connect to one of QEMU's Unix sockets, waiting for QEMU to create it."""
    sock = socket.socket(socket.AF_UNIX)
    while True:
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            if proc.poll() is not None:
                sock.close()
                raise LabError(f"QEMU exited at start ({proc.returncode}): "
                               f"{_last_line(log)}") from None
            if time.monotonic() > deadline:
                sock.close()
                raise LabError(f"QEMU's {what} socket never came up") from None
            time.sleep(0.02)


class QMP(QMPConnection):
    """The lab's QMP client (memscope.target.qmp's, failing with LabError).  QEMU serves
    one QMP client at a time: close this before handing the guest to drgn --qemu."""

    error = LabError

    def __init__(self, path: Path, deadline: float, proc: subprocess.Popen, log: Path):
        super().__init__(_connect(path, deadline, proc, log, "QMP"))


class Console:
    """The guest's serial console: bytes in, lines out (with the raw bytes kept)."""

    def __init__(self, path: Path, deadline: float, proc: subprocess.Popen, log: Path):
        self.sock = _connect(path, deadline, proc, log, "console")
        self.buf = b""
        self.tail: list[bytes] = []  # the last lines, for error messages

    def readline(self, deadline: float) -> bytes | None:
        """The next line (without its newline), or None when QEMU closed the console."""
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(min(remaining, 1.0))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            if not data:
                if self.buf:
                    line, self.buf = self.buf, b""
                    return line
                return None
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        self.tail = (self.tail + [line])[-5:]
        return line

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def last_lines(self) -> str:
        text = [ln.decode(errors="replace").strip() for ln in self.tail]
        text = [t for t in text if t and not t.startswith("@@MEMSCOPE-")  # the guest's own
                # the kernel's last word on poweroff -f says nothing of why
                and not re.search(r"reboot: (Power down|Restarting system)$", t)]
        return text[-1] if text else "(nothing)"

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return lines[-1] if lines else "no message"


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel sends QEMU SIGKILL when the thread that started it
    # ends, however it ends (SIGTERM, SIGKILL, a crash), so no guest outlives its lab run.
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def spawn(cmd: list[str], stderr_path: Path, *, outlive: bool) -> subprocess.Popen:
    """Start QEMU in its own session.  Unless OUTLIVE (--keep/--live, where the guest is
    handed to the user), QEMU is killed when the lab process dies."""
    with open(stderr_path, "wb") as err:
        try:
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                    start_new_session=True,
                                    preexec_fn=None if outlive else _die_with_parent)
        except OSError as e:
            raise LabError(f"cannot start {cmd[0]}: {e.strerror}") from None


def alive(pid: int) -> bool:
    """PID is running (a zombie, whose parent has not reaped it yet, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
