"""Boot a kernel with a workload, take snapshots (a vmcore plus the guest's own /proc
truth), and keep only snapshots whose dump agrees with the truth.

The protocol with the guest (see guest/init and guest/snapshot) is line based on the serial
console: the guest prints ``@@MEMSCOPE-FILE label`` / bytes / ``@@MEMSCOPE-EOF label`` for
each truth file and then ``@@MEMSCOPE-FREEZE name`` and waits.  The host stops the VM at
once, dumps it, and checks it against the truth with memscope.lab.verify (drgn's own
helpers, not memscope.mm: ``free_area[].nr_free`` against buddyinfo, and more).  If they
differ the kernel moved between the read and the freeze: the host
answers ``again`` and the guest prints its truth anew and refreezes.  A snapshot that never
agrees within the refreeze bound makes the lab boot the guest again (bounded by ``tries``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import LabError
from . import initramfs, kernels, qemu

FINAL = "-"  # the name the guest uses for the snapshot taken after the workload
MARK = b"@@MEMSCOPE-"
# fixtures/workloads in a source tree; memscope/lab/workloads (a link to it, copied into
# the wheel) in an installed package.
WORKLOADS = Path(__file__).parent / "workloads"


@dataclasses.dataclass
class RunOptions:
    kernel: str = kernels.DEFAULT_KERNEL
    workload: str = "idle"
    mem: int = 512
    smp: int = 2
    numa: int = 1
    append: str = ""
    disk: int = 64  # MiB of NVMe disk for the guest (/dev/nvme0n1; 0: none)
    mode: str = "dump"  # "dump", "keep" (frozen guest stays with gdbstub) or "live"
    tries: int = 4  # boots
    refreezes: int = 8  # refreezes per snapshot within one boot
    timeout: float = 600.0  # seconds for one boot, workload included
    progress: bool | None = None
    # Other forms of each accepted snapshot, dumped from the same stopped guest right
    # after its ELF dump into vmcore.FORMAT: QEMU's "kdump-zlib", "kdump-lzo",
    # "kdump-snappy" (written in makedumpfile's flattened form).
    dump_formats: tuple[str, ...] = ()
    # False: no ELF dump (a big guest's would be as large as its memory): each snapshot
    # is dumped in dump_formats[0] only, reassembled (makedumpfile -R) into DIR/vmcore,
    # a kdump-compressed file that acceptance reads with drgn like the ELF one.
    elf: bool = True
    trace: str = ""  # tracepoint groups turned on before the workload (trace_prologue)
    trace_kb: int = 4096  # with trace: ring buffer per CPU (buffer_size_kb)
    userland: bool = False  # a Debian userland with memscope and drgn (lab/userland.py)
    # The kdump path (lab/kdump.py): a --userland guest that panics after its workload and
    # whose capture kernel runs makedumpfile -d KDUMP_LEVEL with each of KDUMP_COMPRESS
    # (the first is the snapshot's vmcore, the others its forms "makedumpfile-COMP").
    kdump_level: int | None = None
    kdump_compress: tuple[str, ...] = ("zlib",)


def resolve_workload(workload: str) -> Path:
    """A workload is a path to a shell script, or the name of one in fixtures/workloads."""
    p = Path(workload)
    if p.is_file():
        return p
    for cand in (WORKLOADS / workload, WORKLOADS / f"{workload}.sh"):
        if cand.is_file():
            return cand
    names = sorted(q.stem for q in WORKLOADS.glob("*.sh")) if WORKLOADS.is_dir() else []
    raise LabError(f"workload {workload!r} is neither a file nor a built-in workload "
                   f"({', '.join(names) or 'none found'})", exit_status=2)


def trace_prologue(opts: RunOptions) -> bytes:
    """What runs before the workload for ``--trace``: the built-in workload trace-on.sh
    with the groups and the buffer size (a prologue, not a guest script: the guest
    scripts are in every case's key)."""
    if not opts.trace:
        return b""
    if not re.fullmatch(r"[a-z0-9_]+(,[a-z0-9_]+)*", opts.trace) or opts.trace_kb < 1:
        raise LabError(f"--trace wants tracepoint groups separated by commas (kmem,cma,"
                       f"vmalloc) and --trace-kb a positive size (got {opts.trace!r}, "
                       f"{opts.trace_kb})", exit_status=2)
    return f"sh /workloads/trace-on.sh '{opts.trace}' {int(opts.trace_kb)}\n".encode()


def library() -> list[Path]:
    """The built-in workloads, copied into every guest as /workloads/*.sh."""
    return sorted(WORKLOADS.glob("*.sh")) if WORKLOADS.is_dir() else []


class _Say:
    def __init__(self, progress: bool):
        self.progress = progress

    def __call__(self, msg: str) -> None:
        if self.progress:
            print(f"memscope lab: {msg}", file=sys.stderr, flush=True)


def run(opts: RunOptions, out: Path) -> dict:
    """Run OPTS and write the snapshots into OUT (which must not exist, or be empty).

    Returns the run's meta.json contents."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LabError(f"{out} already exists and is not empty: memscope lab never overwrites; "
                       "choose another -o or remove it", exit_status=2)
    if opts.mode not in ("dump", "keep", "live"):
        raise LabError(f"unknown mode {opts.mode}")
    if opts.kdump_level is not None:
        from . import kdump

        kdump.check_options(opts.kdump_level, opts.kdump_compress)
        kdump.crashkernel(opts.mem)
        if opts.mode != "dump" or opts.dump_formats:
            raise LabError("--kdump-level takes its dump by a panic: it goes with neither "
                           "--keep, --live nor --dump-format", exit_status=2)
    if not opts.timeout > 0:
        raise LabError(f"--timeout must be more than 0 seconds (got {opts.timeout:g})",
                       exit_status=2)
    if not opts.elf and not opts.dump_formats:
        raise LabError("--no-elf needs a kdump format to dump in (--dump-format kdump-zlib)",
                       exit_status=2)
    for what, value, low in (("--mem", opts.mem, 128), ("--smp", opts.smp, 1),
                             ("--numa", opts.numa, 1), ("--tries", opts.tries, 1),
                             ("--disk", opts.disk, 0)):
        if value < low:
            raise LabError(f"{what} must be at least {low} (got {value})", exit_status=2)
    progress = sys.stderr.isatty() if opts.progress is None else opts.progress
    say = _Say(progress)
    workload = resolve_workload(opts.workload)
    kernels.spec(opts.kernel)  # an unknown kernel is an error before anything else
    kernel = kernels.ensure(opts.kernel, progress=progress)
    qemu.require(kernel)
    out.parent.mkdir(parents=True, exist_ok=True)
    free_mb = shutil.disk_usage(out.parent).free // 2**20
    # Without the ELF dump, a kdump-compressed dump of mostly free memory is small: its
    # page descriptors (24 bytes a page) and the compressed pages in use.
    need_mb = opts.mem if opts.elf else opts.mem // 32 + 512
    if opts.mode != "live" and free_mb < need_mb + 16:
        raise LabError(f"not enough disk space in {out.parent}: a dump of a {opts.mem} MB guest "
                       f"needs about {need_mb} MB, {free_mb} MB free; free space or use another "
                       "-o")
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    stage.chmod(0o755)
    # Unix socket paths are limited to 108 bytes: keep the sockets in a short directory.
    sockdir = Path(tempfile.mkdtemp(prefix="memscope-"))
    meta = {
        "kernel": kernel.name, "release": kernel.release, "arch": kernel.spec.qemu_arch,
        "vmlinux": str(kernel.vmlinux), "vmlinuz": str(kernel.vmlinuz),
        "workload": str(workload), "workload_name": workload.stem,
        "mem_mb": opts.mem, "cpus": opts.smp, "numa_nodes": opts.numa, "append": opts.append,
        "mode": opts.mode, "tries": 0, "snapshots": [],
        # {"snapshot", "try", "reason"} for every refreeze; {"try", "reason"} for every
        # boot given up (verify.judge decides, independently of memscope.mm).
        "refreezes": [], "retries": [],
    }
    handed_over = False
    try:
        initrd = stage / "initrd.gz"
        programs = {"msproc": initramfs.compile_program(
            initramfs.GUEST / "msproc.c", kernel.spec.qemu_arch, stage)}
        script = trace_prologue(opts) + workload.read_bytes()
        disks: list[str] = []
        kdumping = opts.kdump_level is not None
        if opts.userland or kdumping:
            from . import userland

            ul = userland.ensure(kernel, progress=progress, kdump=kdumping)
            extra = None
            if kdumping:
                from . import kdump

                capture = sockdir / "capture.gz"
                kdump.build_capture_initrd(capture, kernel, ul, level=opts.kdump_level,
                                           compress=opts.kdump_compress)
                extra = kdump.payload(kernel, capture, opts.mem)
                script = kdump.workload(script)
                meta["kdump"] = {"level": opts.kdump_level,
                                 "compress": list(opts.kdump_compress),
                                 "crashkernel": kdump.crashkernel(opts.mem),
                                 "append": kdump.APPEND,
                                 "capture_append": kdump.CAPTURE_APPEND}
            userland.build_initrd(initrd, kernel, ul, workload=script,
                                  conf={"MEMSCOPE_MODE": opts.mode}, library=library(),
                                  programs=programs, extra=extra)
            disks = ul.qemu_args()
            meta["userland"] = userland.describe(kernel, kdump=kdumping)
        else:
            initramfs.build(initrd, busybox=kernel.busybox, modules=kernel.modules,
                            workload=script, conf={"MEMSCOPE_MODE": opts.mode},
                            library=library(), programs=programs)
        last_error: LabError | None = None
        for attempt in range(1, opts.tries + 1):
            meta["tries"] = attempt
            meta["snapshots"] = []  # a boot given up keeps none of its snapshots
            _clear_attempt(stage)
            boot = _Boot(kernel, opts, stage, sockdir, initrd, say, meta, disks)
            try:
                handed_over = boot.run()
                last_error = None
                break
            except _Retry as e:
                last_error = LabError(str(e))
                meta["retries"].append({"try": attempt, "reason": str(e)})
                say(f"try {attempt}/{opts.tries}: {e}; booting again")
            finally:
                if not handed_over:
                    boot.stop()
        if last_error is not None:
            raise LabError(f"no boot of {opts.tries} gave a snapshot whose dump agrees with the "
                           f"guest's /proc (last: {last_error}); for drift, use a quieter "
                           "workload; for a dying guest, see the console line")
        initrd.unlink()
        if out.exists():
            out.rmdir()
        os.rename(stage, out)
        _fix_paths(meta, stage, out)
        (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return meta
    except KeyboardInterrupt:
        raise LabError("interrupted; nothing was kept", exit_status=130) from None
    except OSError as e:
        if e.errno == 28:
            raise LabError(f"disk full while writing {out}: free space (a dump is as large as "
                           "the guest's memory) and run again") from None
        raise LabError(f"lab run failed: {e}") from e
    finally:
        if not handed_over:
            shutil.rmtree(sockdir, ignore_errors=True)
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _fix_paths(meta: dict, old: Path, new: Path) -> None:
    for snap in meta["snapshots"]:
        for key in ("vmcore", "truth"):
            snap[key] = snap[key].replace(str(old), str(new), 1)
        for fmt, path in snap.get("forms", {}).items():
            snap["forms"][fmt] = path.replace(str(old), str(new), 1)
    if "console_log" in meta:
        meta["console_log"] = meta["console_log"].replace(str(old), str(new), 1)


def _save_result(stage: Path, name: str, data: bytes) -> None:
    """Write a file of the guest's /results to STAGE/results/NAME (never outside it)."""
    dest = (stage / "results" / name).resolve()
    if not dest.is_relative_to((stage / "results").resolve()):
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)


def _clear_attempt(stage: Path) -> None:
    for p in stage.iterdir():
        if p.name == "initrd.gz":
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


class _Retry(Exception):
    """A boot that may go better the next time: a snapshot whose dump never agreed with its
    truth, or a guest that died on the way (the message says which)."""


class _Boot:
    """One boot of the guest, from QEMU's start to its end (or hand-over)."""

    def __init__(self, kernel, opts: RunOptions, stage: Path, sockdir: Path, initrd: Path,
                 say: _Say, meta: dict, disks: list[str] = ()):
        self.kernel, self.opts, self.stage, self.say, self.meta = kernel, opts, stage, say, meta
        self.disks = list(disks)  # QEMU options attaching the --userland disks
        self.sockdir = sockdir
        self.initrd = initrd
        self.qmp_path = sockdir / "qmp.sock"
        self.console_path = sockdir / "console.sock"
        for p in (self.qmp_path, self.console_path):
            if p.exists():
                p.unlink()
        self.proc: subprocess.Popen | None = None
        self.qmp: qemu.QMP | None = None
        self.console: qemu.Console | None = None

    def stop(self) -> None:
        if self.qmp is not None:
            self.qmp.close()
        if self.console is not None:
            self.console.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _fail(self, what: str) -> LabError:
        detail = ""
        if self.console is not None:
            detail = f" (last console line: {self.console.last_lines()})"
        return LabError(what + detail)

    def run(self) -> bool:
        """Boot, follow the protocol, take the snapshots.  True when the guest was handed
        over to the user (--keep or --live) and must not be stopped."""
        opts = self.opts
        gdb_port = qemu.free_port() if opts.mode in ("keep", "live") else None
        log = self.stage / "console.log"
        disk = None
        if opts.disk:
            # Sparse, beside the sockets: it lives as long as the guest (a --keep or --live
            # guest outlives this run; the directory goes with it).
            disk = self.sockdir / "disk.img"
            with open(disk, "wb") as f:
                f.truncate(opts.disk << 20)
        append = opts.append
        self.kdump_disk = None
        if opts.kdump_level is not None:
            from . import kdump

            append = f"{append} crashkernel={kdump.crashkernel(opts.mem)} {kdump.APPEND}".strip()
            # In the staging directory (the output's file system): the dumps are written
            # into it and copied out after QEMU exits.
            self.kdump_disk = self.stage / "kdump.ext4"
            self.disks += kdump.make_disk(self.kdump_disk, opts.mem)
        cmd = qemu.command(self.kernel, initrd=self.initrd, mem=opts.mem, smp=opts.smp,
                           numa=opts.numa, append=append, qmp=self.qmp_path,
                           console=self.console_path, console_log=log, gdb_port=gdb_port,
                           disk=disk)
        cmd += self.disks
        t0 = time.monotonic()
        deadline = t0 + opts.timeout
        self.say(f"booting {self.kernel.name} ({self.kernel.release}), try {self.meta['tries']}")
        qemu_log = self.stage / "qemu.log"
        self.proc = qemu.spawn(cmd, qemu_log, outlive=opts.mode != "dump")
        self.console = qemu.Console(self.console_path, t0 + 30, self.proc, qemu_log)
        self.qmp = qemu.QMP(self.qmp_path, t0 + 30, self.proc, qemu_log)
        if opts.dump_formats:  # before the workload runs, not after the first snapshot
            offered = self.qmp.execute("query-dump-guest-memory-capability")["formats"]
            lacking = [f for f in opts.dump_formats if f not in offered]
            if lacking:
                raise LabError(f"this QEMU cannot dump {', '.join(lacking)}: it offers "
                               f"{', '.join(offered)}", exit_status=2)
        self.meta.update(qemu_command=cmd, console_log=str(log), gdb_port=gdb_port,
                         qemu_pid=self.proc.pid)
        truth: dict[str, bytes] = {}
        label: str | None = None
        body: list[bytes] = []
        sink = truth  # where the file being received goes: the truth, or "results"
        refreezes = 0
        t_workload = None
        t_panic = None  # the kdump path: when the guest said it panics
        while True:
            try:
                line = self.console.readline(deadline)
            except TimeoutError:
                raise self._fail(f"the guest did not finish within {opts.timeout:.0f} s; "
                                 "raise --timeout or check the workload") from None
            if line is None and t_panic is not None:
                raise _Retry("the capture kernel did not finish its dump (QEMU exited; last "
                             f"console line: {self.console.last_lines()})")
            if line is None:
                raise _Retry("the guest stopped unexpectedly (QEMU exited: kernel panic or "
                             f"poweroff before the workload ended; last console line: "
                             f"{self.console.last_lines()})")
            if label is not None:
                if line == MARK + b"EOF " + label.encode():
                    if sink is truth:
                        truth[label] = b"\n".join(body)
                    else:
                        _save_result(self.stage, label, b"\n".join(body))
                    label, body = None, []
                else:
                    body.append(line)
                continue
            if not line.startswith(MARK):
                continue
            word, _, arg = line[len(MARK):].decode(errors="replace").partition(" ")
            if word == "BOOTED":
                t_workload = time.monotonic()
                self.meta["boot_seconds"] = round(t_workload - t0, 2)
                self.meta["guest_release"] = arg.strip()
                self.say(f"booted in {self.meta['boot_seconds']} s, running {self.meta['workload_name']}")
            elif word == "LIVE":
                self._hand_over()
                return True
            elif word == "SNAPSHOT":
                truth = {}
            elif word == "FILE":
                label, body, sink = arg, [], truth
            elif word == "RESULT":  # a file the workload left in the guest's /results
                label, body, sink = arg, [], None
            elif word == "KDUMP-LOADED":
                self.meta["kdump"]["kexec"] = arg.strip()
                self.say("capture kernel loaded (kexec -p)")
            elif word == "PANIC":
                t_panic = time.monotonic()
                if t_workload is not None:
                    self.meta["workload_seconds"] = round(t_panic - t_workload, 2)
                self.say("truth read; the guest panics")
                self.console.send("go\n")  # all of the truth arrived: panic
            elif word == "KDUMP-CAPTURE":
                self.meta["kdump"]["capture_boot_seconds"] = round(time.monotonic() - t_panic, 2) \
                    if t_panic is not None else None
                self.say("capture kernel up, running makedumpfile")
            elif word == "KDUMP-FAILED":
                raise self._fail(f"the kdump path failed: {arg.strip()}")
            elif word == "KDUMP-DONE":
                self.meta["kdump"]["capture_seconds"] = round(time.monotonic() - t_panic, 2) \
                    if t_panic is not None else None
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                status = arg.strip()
                self._kdump_snapshot(truth, int(status) if status.isdigit() else 1)
                return False
            elif word == "WORKLOAD-FAILED":
                # (the staging directory with console.log is removed: _fail quotes the
                # console's last line instead)
                raise self._fail(f"the workload failed inside the guest (exit status {arg})")
            elif word == "FREEZE":
                name = arg.strip()
                if name == FINAL and t_workload is not None:
                    self.meta["workload_seconds"] = round(time.monotonic() - t_workload, 2)
                agreed = self._freeze(name, truth)
                if not agreed:
                    refreezes += 1
                    if refreezes > opts.refreezes:
                        raise _Retry(f"snapshot {name!r} differed from the truth "
                                     f"{refreezes} times")
                    self.qmp.execute("cont")
                    self.console.send("again\n")
                    continue
                refreezes = 0
                if name == FINAL and opts.mode == "keep":
                    self._hand_over()
                    return True
                self.qmp.execute("cont")
                self.console.send("go\n")
            elif word == "DONE":
                # The guest powers itself off right after DONE and QEMU exits: asking QEMU
                # to quit as well races with that exit (the QMP socket may be gone already).
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                return False

    def _freeze(self, name: str, truth: dict[str, bytes]) -> bool:
        """Stop the VM, dump it, and keep the dump if it agrees with TRUTH."""
        t0 = time.monotonic()
        self.qmp.execute("stop")
        t_stop = time.monotonic()
        where = self.stage if name == FINAL else self.stage / name
        where.mkdir(parents=True, exist_ok=True)
        vmcore = where / "vmcore"
        tmp = where / "vmcore.partial"
        try:
            if self.opts.elf:
                self.qmp.execute("dump-guest-memory", paging=False, protocol=f"file:{tmp}")
            else:
                _dump_kdump(self.qmp, where, tmp, self.opts.dump_formats[0])
        except LabError as e:
            tmp.unlink(missing_ok=True)
            if "space" in str(e).lower():
                raise LabError(f"disk full while dumping into {where}: a dump needs about "
                               f"{self.opts.mem} MB; free space and run again") from None
            raise
        t_dump = time.monotonic()
        from .verify import judge

        # Without buddyinfo the truth was garbled on the console (a kernel message in the
        # middle of a marker): print it again, like a truth that moved.
        if "buddyinfo" not in truth:
            why, accepted_by = "the guest's truth arrived incomplete", []
        else:
            verdict = judge(tmp, self.kernel.vmlinux, truth)
            why, accepted_by = verdict.reason, verdict.accepted_by
        if why is not None:
            tmp.unlink()
            for fmt in self.opts.dump_formats[:0 if self.opts.elf else 1]:
                (where / f"vmcore.{fmt}.partial").unlink(missing_ok=True)
            self.say(f"snapshot {name!r}: {why}; refreezing")
            # Every refreeze is kept with its reason (a state-dependent difference shows
            # up here rather than vanishing).
            self.meta["refreezes"].append({"snapshot": "" if name == FINAL else name,
                                           "try": self.meta["tries"], "reason": why})
            return False
        tmp.rename(vmcore)
        forms = {}
        if not self.opts.elf:  # dumped once, above: the flattened stream is kept
            fmt = self.opts.dump_formats[0]
            forms[fmt] = str(where / f"vmcore.{fmt}")
            (where / f"vmcore.{fmt}.partial").rename(forms[fmt])
        for fmt in self.opts.dump_formats[0 if self.opts.elf else 1:]:
            # the guest is still stopped: the same memory
            forms[fmt] = str(where / f"vmcore.{fmt}")
            self.qmp.execute("dump-guest-memory", paging=False, protocol=f"file:{forms[fmt]}",
                             format=fmt)
        tdir = where / "truth"
        for label, data in truth.items():
            p = tdir / label
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        snap = {"name": "" if name == FINAL else name, "vmcore": str(vmcore), "truth": str(tdir),
                "stop_seconds": round(t_stop - t0, 3), "dump_seconds": round(t_dump - t_stop, 3),
                "files": sorted(truth), "accepted_by": accepted_by}
        if forms:
            snap["forms"] = forms
        self.meta["snapshots"].append(snap)
        self.say(f"snapshot {name if name != FINAL else 'final'}: dumped in "
                 f"{snap['dump_seconds']} s, accepted by {', '.join(accepted_by) or 'no check'}")
        return True

    def _kdump_snapshot(self, truth: dict[str, bytes], rc: int) -> None:
        """The kdump path's snapshot: the capture kernel's dumps copied off its disk, kept
        if the first agrees with the truth read before the panic (memscope.lab.kdump)."""
        from . import kdump
        from .verify import judge

        opts = self.opts
        got = kdump.extract(self.kdump_disk, self.stage / "kdump")
        self.kdump_disk.unlink()
        version = (self.stage / "kdump" / "makedumpfile.version")
        if version.exists():
            self.meta["kdump"]["makedumpfile"] = version.read_text().strip().splitlines()[0]
        if rc != 0:
            logs = [self.stage / "kdump" / f"makedumpfile.{c}.log" for c in opts.kdump_compress]
            last = [ln for p in logs if p.exists() for ln in p.read_text().splitlines()
                    if ln.strip() and ln.strip() != "makedumpfile Failed."]
            raise LabError(f"makedumpfile failed in the capture kernel (exit status {rc}): "
                           f"{last[-1] if last else 'no message'}")
        missing = [c for c in opts.kdump_compress if f"vmcore.{c}" not in got]
        if missing or "buddyinfo" not in truth:
            raise _Retry(f"the capture kernel wrote no {', '.join(missing)} dump" if missing
                         else "the guest's truth arrived incomplete")
        vmcore = self.stage / "vmcore"
        (self.stage / "kdump" / f"vmcore.{opts.kdump_compress[0]}").rename(vmcore)
        forms = {}
        for c in opts.kdump_compress[1:]:
            fmt = kdump.FORM.format(c)
            forms[fmt] = str(self.stage / f"vmcore.{fmt}")
            (self.stage / "kdump" / f"vmcore.{c}").rename(forms[fmt])
        t0 = time.monotonic()
        verdict = judge(vmcore, self.kernel.vmlinux, truth)
        if verdict.reason is not None:
            # A panic is not repeated: the boot is (bounded by --tries).
            self.meta["retries_drift"] = self.meta.get("retries_drift", []) + [
                {"try": self.meta["tries"], "truth_drift": kdump.drift(truth)}]
            raise _Retry(f"the dump differs from the truth read before the panic: "
                         f"{verdict.reason}")
        first = judge(vmcore, self.kernel.vmlinux, kdump.first_reading(truth))
        tdir = self.stage / "truth"
        for label, data in truth.items():
            p = tdir / label
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        snap = {"name": "", "vmcore": str(vmcore), "truth": str(tdir),
                "dump_seconds": self.meta["kdump"].get("capture_seconds"),
                "files": sorted(truth), "accepted_by": verdict.accepted_by,
                "verify_seconds": round(time.monotonic() - t0, 2),
                # how far the kernel moved within one reading (memscope.lab.kdump.drift),
                # and whether the dump would have agreed with the earlier reading
                "truth_drift": kdump.drift(truth),
                "first_reading": first.reason or "agrees"}
        if forms:
            snap["forms"] = forms
        self.meta["snapshots"].append(snap)
        self.say(f"kdump snapshot: makedumpfile -d {opts.kdump_level} "
                 f"({', '.join(opts.kdump_compress)}), accepted by "
                 f"{', '.join(verdict.accepted_by) or 'no check'}")

    def _hand_over(self) -> None:
        """Leave the guest running (or frozen) for the user; close our connections so that
        drgn --qemu and gdb can have them (QMP serves one client at a time)."""
        self.meta.update(qmp_socket=str(self.qmp_path), console_socket=str(self.console_path),
                         gdb=f"127.0.0.1:{self.meta['gdb_port']}")
        self.qmp.close()
        self.console.close()
        self.qmp = self.console = None
        self.say(f"guest handed over: gdbstub 127.0.0.1:{self.meta['gdb_port']}, "
                 f"QMP {self.qmp_path}; end it with 'memscope lab stop DIR'")


def _dump_kdump(qmp, where: Path, out: Path, fmt: str) -> None:
    """Dump the stopped guest in the kdump format FMT (flattened, as QEMU writes it) into
    WHERE/vmcore.FMT.partial and reassemble it into OUT, the kdump-compressed file drgn
    reads (makedumpfile -R; QEMU's empty utsname filled as memscope's reader does)."""
    from ..target.flattened import fill_empty_utsname, reassemble

    flat = where / f"vmcore.{fmt}.partial"
    try:
        qmp.execute("dump-guest-memory", paging=False, protocol=f"file:{flat}", format=fmt)
        reassemble(flat, out)
        fill_empty_utsname(out)
    except BaseException:
        flat.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
        raise


def stop(directory: Path) -> None:
    """End the guest that `lab run --keep/--live` left running for DIRECTORY."""
    try:
        meta = json.loads((Path(directory) / "meta.json").read_text())
    except (OSError, ValueError):
        raise LabError(f"{directory} has no lab meta.json", exit_status=2) from None
    pid = meta.get("qemu_pid")
    if not pid or meta.get("mode") == "dump":
        raise LabError(f"{directory} has no running guest (it was not run with --keep or --live)",
                       exit_status=2)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    if meta.get("qmp_socket", "").encode() in cmdline:
        qemu.kill(pid)
    sock = meta.get("qmp_socket")
    if sock:
        shutil.rmtree(Path(sock).parent, ignore_errors=True)
