"""Build the guest's initramfs: a newc cpio archive written directly (no cpio binary, no
root needed for the /dev/console node)."""

from __future__ import annotations

import gzip
import platform
import shutil
import stat
import subprocess
from pathlib import Path

from ..errors import LabError

GUEST = Path(__file__).parent / "guest"


class _Newc:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.ino = 1

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self.ino += 1
        namez = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(namez), 0)
        hdr = b"070701" + b"".join(b"%08x" % f for f in fields)
        self.parts.append(self._pad(hdr + namez) + self._pad(data))

    @staticmethod
    def _pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)

    def bytes(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return b"".join(self.parts)


# The C compiler that builds static programs for a guest architecture (uname -m), from the
# Makefile's packages (gcc, gcc-aarch64-linux-gnu and their libc6-dev).
COMPILERS = {"x86_64": "x86_64-linux-gnu-gcc", "aarch64": "aarch64-linux-gnu-gcc"}


def compile_program(source: Path, arch: str, workdir: Path) -> bytes:
    """SOURCE (one C file of the lab's guest programs) compiled static for ARCH (uname -m:
    "x86_64" or "aarch64"): the executable's bytes.

    :raises LabError: no compiler for ARCH, or the compilation failed (the compiler's last
        line in the message)"""
    candidates = [COMPILERS[arch]] + (["gcc"] if platform.machine() == arch else [])
    cc = next((c for c in candidates if shutil.which(c)), None)
    if cc is None:
        raise LabError(f"{COMPILERS[arch]} not found: the lab builds its guest programs with "
                       "it (make setup installs it)")
    out = workdir / source.stem
    r = subprocess.run([cc, "-static", "-O1", "-Wall", "-pthread", "-o", str(out), str(source)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        raise LabError(f"{cc} could not build {source.name}: {last}")
    data = out.read_bytes()
    out.unlink()
    return data


def build(path: Path, *, busybox: Path, modules: list[Path], workload: bytes,
          conf: dict[str, str], library: list[Path] = (),
          programs: dict[str, bytes] | None = None) -> None:
    """Write a gzip'd initramfs to PATH holding busybox, the lab's init and helpers, the
    modules, the workload script (/workload.sh), the built-in workloads (/workloads/*.sh,
    which a workload may call), PROGRAMS (name: executable, in /bin) and the run's
    configuration."""
    a = _Newc()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp", "run", "root",
              "workloads"):
        a.add(d, stat.S_IFDIR | 0o755)
    a.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    a.add("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes())
    a.add("bin/sh", stat.S_IFLNK | 0o777, b"busybox")
    a.add("init", stat.S_IFREG | 0o755, (GUEST / "init").read_bytes())
    for helper in ("snapshot", "track"):
        a.add(f"bin/{helper}", stat.S_IFREG | 0o755, (GUEST / helper).read_bytes())
    for name, exe in (programs or {}).items():
        a.add(f"bin/{name}", stat.S_IFREG | 0o755, exe)
    for m in modules:
        a.add(f"lib/modules/{m.name}", stat.S_IFREG | 0o644, m.read_bytes())
    a.add("workload.sh", stat.S_IFREG | 0o755, workload)
    for w in library:
        a.add(f"workloads/{w.name}", stat.S_IFREG | 0o755, w.read_bytes())
    a.add("etc/memscope.conf", stat.S_IFREG | 0o644,
          "".join(f"{k}='{v}'\n" for k, v in conf.items()).encode())
    write(path, a)


def write(path: Path, archive: _Newc) -> None:
    """ARCHIVE gzip'd to PATH (through a temporary name: PATH is whole or absent)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(gzip.compress(archive.bytes(), compresslevel=1))
    tmp.rename(path)
