"""The lab's kdump path (``memscope lab run KERNEL --kdump-level LEVEL``): what a production
machine does when its kernel panics, rather than a dump taken by QEMU from outside.

The guest is a --userland guest whose root image also holds Debian's kexec-tools and
makedumpfile of the kernel's own suite (memscope.lab.userland.KDUMP_PACKAGES).  It boots with
``crashkernel=`` (:func:`crashkernel`), and after the workload userland_guest/kdump-panic
loads a capture kernel with ``kexec -p`` (the same vmlinuz, the initramfs of
:func:`build_capture_initrd`, :data:`CAPTURE_APPEND`), prints the truth (the guest's /proc
files) on the console and panics the kernel (``echo c > /proc/sysrq-trigger``).  The
capture kernel's init (userland_guest/kdump-capture) runs ``makedumpfile -d LEVEL`` with
each chosen compression from /proc/vmcore onto a disk the host made (:func:`make_disk`),
and powers off; the host copies the dumps out of that disk's ext4 (:func:`extract`,
debugfs: no mount, no root).

What the truth means here.  The lab's other cases stop the guest from outside right after
the truth is read and dump it, and refreeze until the dump agrees.  A panic cannot be
repeated: the kernel runs on between the last read (buddyinfo) and the panic (the shell's
write to sysrq-trigger, the panic path, the other CPUs stopped by NMI), and the dump is
that later state.  The host then checks the dump against the truth with the same
independent checks (memscope.lab.verify) and keeps the boot only if they pass; a boot
whose dump moved away is booted again (``tries``).  To measure how far the kernel moves
within one reading, the guest reads the compared files twice (``first/...``, then the
truth, /proc/uptime before each); :func:`drift` compares the two readings and the run
records it in meta.json (``truth_drift``), with the first reading's own verdict against
the dump.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

from ..errors import LabError
from . import initramfs, kernels, userland

#: makedumpfile's compression options (makedumpfile(8)): -c zlib, -l lzo, -p snappy,
#: -z zstd.  The first chosen is the snapshot's vmcore; the others are its forms.
COMPRESSIONS = {"zlib": "-c", "lzo": "-l", "snappy": "-p", "zstd": "-z"}
#: The capture kernel's command line, as Debian's kdump-tools gives it (KDUMP_CMDLINE_APPEND:
#: "reset_devices systemd.unit=kdump-tools-dump.service nr_cpus=1 irqpoll nousb"), with the
#: lab's console; panic=-1: a capture kernel that panics reboots, which ends QEMU.
CAPTURE_APPEND = ("reset_devices nr_cpus=1 irqpoll nousb console={tty} loglevel=1 "
                  "panic=-1 oops=panic")
#: What the crashing guest's command line adds besides crashkernel=: nohz=off.  A CPU
#: that stops its tick on going idle folds its per-CPU vmstat deltas into the global
#: counters (kernel/time/tick-sched.c tick_nohz_stop_tick() -> quiet_vmstat()), and the
#: guest idles between its last read of the truth and the panic (it waits until the host
#: has the whole truth): two boots in two, the dump's meminfo counters had moved by
#: 5-6 pages (NR_ACTIVE_ANON, NR_SLAB_RECLAIMABLE_B).  A freeze is taken before the tick
#: stops; a panic comes after.  With the tick kept, the counters move only when a delta
#: passes its threshold (vmstat_update's interval is an hour: guest/init).
APPEND = "nohz=off"
#: The name a form of a kdump-path snapshot has in meta.json (Snapshot.form).
FORM = "makedumpfile-{}"
#: The files the guest reads twice (``first/NAME`` and NAME).
TWICE = ("vmstat", "zoneinfo", "slabinfo", "pagetypeinfo", "meminfo", "buddyinfo")


def crashkernel(mem_mb: int) -> str:
    """``crashkernel=`` for a guest of MEM_MB: 256M from 768 MiB up, 192M below.  The
    capture kernel holds the kernel, its initramfs unpacked (about 15 MB) and
    makedumpfile's buffers; the 1 GiB lab guest's capture kernel ran makedumpfile in
    256M (192M for smaller guests is not measured yet).

    :raises LabError: the guest is too small to reserve it and still run a workload."""
    if mem_mb < 512:
        raise LabError(f"--kdump-level needs --mem 512 or more (a capture kernel's reserve "
                       f"leaves too little of {mem_mb} MB)", exit_status=2)
    return "256M" if mem_mb >= 768 else "192M"


def check_options(level: int, compress: tuple[str, ...]) -> None:
    """:raises LabError: LEVEL is not makedumpfile's dump level (0-31), or a compression
    is unknown (one line each)."""
    if not 0 <= level <= 31:
        raise LabError(f"--kdump-level is makedumpfile's dump level, 0-31 (got {level})",
                       exit_status=2)
    unknown = [c for c in compress if c not in COMPRESSIONS]
    if unknown or not compress:
        raise LabError(f"--kdump-compress takes {', '.join(COMPRESSIONS)} (got "
                       f"{', '.join(compress) or 'none'})", exit_status=2)
    if "snappy" in compress:  # found after boot, workload and panic otherwise
        raise LabError("--kdump-compress snappy: Debian's makedumpfile is built without "
                       "snappy (zlib, lzo and zstd are there)", exit_status=2)


def build_capture_initrd(path: Path, kernel: kernels.Kernel, ul: userland.Userland, *,
                         level: int, compress: tuple[str, ...]) -> None:
    """The capture kernel's initramfs, gzip'd to PATH: busybox, the modules the disks need
    (in load order, /lib/modules/order), /conf (the dump level and compressions) and /init
    (userland_guest/kdump-capture)."""
    a = initramfs._Newc()
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules"):
        a.add(d, stat.S_IFDIR | 0o755)
    a.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    a.add("bin/busybox", stat.S_IFREG | 0o755, kernel.busybox.read_bytes())
    a.add("init", stat.S_IFREG | 0o755, (userland.GUEST / "kdump-capture").read_bytes())
    a.add("conf", stat.S_IFREG | 0o644,
          f"KDUMP_LEVEL={int(level)}\nKDUMP_COMPRESS='{' '.join(compress)}'\n".encode())
    for m in ul.modules:
        a.add(f"lib/modules/{m.name}", stat.S_IFREG | 0o644, m.read_bytes())
    a.add("lib/modules/order", stat.S_IFREG | 0o644,
          "".join(f"{m.name}\n" for m in ul.modules).encode())
    initramfs.write(path, a)


def payload(kernel: kernels.Kernel, capture: Path, mem_mb: int) -> dict[str, tuple[bytes, int]]:
    """What the first kernel's userland gets for the kdump path (userland.build_initrd's
    EXTRA): /boot/kdump/{vmlinuz,capture.gz,conf} and /usr/bin/kdump-panic."""
    tty = "ttyAMA0" if kernel.spec.qemu_arch == "aarch64" else "ttyS0"
    conf = (f"KDUMP_APPEND='{CAPTURE_APPEND.format(tty=tty)}'\n"
            f"KDUMP_CRASHKERNEL='{crashkernel(mem_mb)}'\n")
    return {"boot/kdump/vmlinuz": (kernel.vmlinuz.read_bytes(), 0o644),
            "boot/kdump/capture.gz": (capture.read_bytes(), 0o644),
            "boot/kdump/conf": (conf.encode(), 0o644),
            "usr/bin/kdump-panic": ((userland.GUEST / "kdump-panic").read_bytes(), 0o755)}


def workload(script: bytes) -> bytes:
    """The guest's workload: SCRIPT (its own file, so that its exit status is the
    workload's), then kdump-panic, which does not come back."""
    return (b"cat > /workload-user.sh <<'MEMSCOPE_EOF'\n" + script.rstrip(b"\n")
            + b"\nMEMSCOPE_EOF\nsh /workload-user.sh || exit $?\nexec kdump-panic\n")


def make_disk(path: Path, mem_mb: int) -> list[str]:
    """An empty ext4 image at PATH (sparse, as large as the guest's memory and 64 MiB: a
    dump at level 0 without compression fits) marked ``/.memscope-kdump``, and the QEMU
    options attaching it on virtio-blk (written in place: the host reads it afterwards)."""
    tree = path.with_suffix(".tree")
    tree.mkdir()
    (tree / ".memscope-kdump").write_text("the disk kdump-capture writes its dumps to\n")
    userland._run(["mke2fs", "-q", "-t", "ext4", "-O", "^has_journal,^metadata_csum",
                   "-L", "memscope-kdump", "-E", "root_owner=0:0", "-d", str(tree),
                   str(path), f"{mem_mb + 64}M"], "make the kdump disk (e2fsprogs)")
    shutil.rmtree(tree)
    return ["-drive", f"file={path},if=none,id=kdump,format=raw,cache=unsafe",
            "-device", "virtio-blk-pci,drive=kdump"]


def extract(disk: Path, into: Path) -> list[str]:
    """Copy /out of the kdump DISK's ext4 into INTO (debugfs rdump: no mount, no root);
    the names copied.

    :raises LabError: debugfs is missing or the disk holds no /out (one line)."""
    into.mkdir(parents=True, exist_ok=True)
    userland._run(["debugfs", "-R", f"rdump /out {into}", str(disk)],
                  "read the kdump disk (debugfs, e2fsprogs)")
    out = into / "out"
    if not out.is_dir():
        raise LabError(f"the capture kernel left no /out on the kdump disk {disk}")
    names = sorted(p.name for p in out.iterdir())
    for n in names:
        (out / n).rename(into / n)
    out.rmdir()
    return names


def drift(truth: dict[str, bytes]) -> dict:
    """How far the kernel moved between the guest's two readings (``first/NAME`` and
    NAME): the seconds between them (/proc/uptime) and, per file of TWICE, the number of
    lines that differ, with buddyinfo's and meminfo's differing lines' numbers as
    ``{"Node 0, zone Normal": [[first], [second]]}`` and ``{"MemFree": [first, second]}``
    (kB)."""
    out: dict = {}
    try:
        t0 = float(truth["first/uptime"].split()[0])
        t1 = float(truth["uptime"].split()[0])
        out["seconds"] = round(t1 - t0, 2)
    except (KeyError, ValueError, IndexError):
        pass
    for name in TWICE:
        a, b = truth.get(f"first/{name}"), truth.get(name)
        if a is None or b is None:
            continue
        la, lb = a.decode(errors="replace").splitlines(), b.decode(errors="replace").splitlines()
        differ = sum(x != y for x, y in zip(la, lb)) + abs(len(la) - len(lb))
        out[name] = {"lines_differing": differ}
        if name in ("buddyinfo", "meminfo"):
            changed = {}
            for x, y in zip(la, lb):
                if x == y:
                    continue
                if name == "buddyinfo":  # "Node 0, zone Normal": [[first], [second]]
                    key = " ".join(x.split()[:4])
                    changed[key] = [[int(v) for v in x.split()[4:]],
                                    [int(v) for v in y.split()[4:]]]
                else:  # "MemFree": [first, second] (kB)
                    changed[x.split(":")[0]] = [int(x.split()[1]), int(y.split()[1])]
            out[name]["changed"] = changed
    return out


def first_reading(truth: dict[str, bytes]) -> dict[str, bytes]:
    """The guest's first reading as a truth of its own (``first/NAME`` -> NAME)."""
    return {k[len("first/"):]: v for k, v in truth.items() if k.startswith("first/")}


