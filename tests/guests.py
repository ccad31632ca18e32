"""Frozen lab guests for the GDB and QMP tests, and the plumbing that runs memscope against
them: the command line (on a vmcore, or over QMP with ``--qemu``) and the gdb front end.

One frozen guest per lab kernel (``lab run --keep``: the guest stays paused with its
gdbstub and QMP socket open, and its vmcore is a dump of exactly that paused state), and
the CMA guests of tests/test_cma.py.  POOL boots them in the background, ahead of the
tests that need them (tests/conftest.py: the ``frozen_guest`` and ``kept_guest``
fixtures), and each is stopped as soon as no later test needs it.

Every comparison runs the same PLAN (every registered command in every format, plus the
flags that take other paths: ``pages --pfn``, ``pages/pageblocks --png``, ``frag --gfp``
and ``--proc-file``, ``freelists --no-pcp``) through each backend; what drgn prints on the
vmcore is the reference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from memscope import commands, lab
from memscope.lab import qemu as lab_qemu
from memscope.errors import LabError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "gdb_scripts" / "memscope.py"

#: The frozen guests: lab.RunOptions for each (the kernels and sizes of
#: memscope.lab.cases.CASES' real-kernel cases; tests/frozen-workload.sh: every kind of
#: page without the minutes-long compaction and memory fill of "mixed", which only the
#: comparisons with /proc need; kept out of fixtures/workloads, whose every file is part
#: of each lab case's cache key).
FROZEN_WORKLOAD = str(Path(__file__).resolve().parent / "frozen-workload.sh")
GUESTS: dict[str, dict] = {
    "5.10": dict(kernel="5.10", workload=FROZEN_WORKLOAD),
    "6.1": dict(kernel="6.1", workload=FROZEN_WORKLOAD),
    "6.12": dict(kernel="6.12", workload=FROZEN_WORKLOAD),
    "7.2": dict(kernel="7.2", workload=FROZEN_WORKLOAD),
    "6.12-arm64": dict(kernel="6.12-arm64", workload=FROZEN_WORKLOAD, mem=1024),
    "6.12-numa": dict(kernel="6.12", workload=FROZEN_WORKLOAD, mem=1024, numa=2, smp=2),
}
#: The guests of tests/test_cma.py's GDB test: the cma workload on 7.2 x86_64 with
#: cma=128M (gdb) and on the 6.12 and 7.2 arm64 kernels' default areas (gdb-multiarch).
CMA_GUESTS: dict[str, dict] = {
    "7.2-cma": dict(kernel="7.2", workload="cma", append="cma=128M"),
    "6.12-arm64-cma": dict(kernel="6.12-arm64", workload="cma", mem=1024),
    "7.2-arm64-cma": dict(kernel="7.2-arm64", workload="cma", mem=1024),
}
#: Every guest POOL boots, by name.
KEPT: dict[str, dict] = {**GUESTS, **CMA_GUESTS}
GDB_BINARY = {"6.12-arm64": "gdb-multiarch", "6.12-arm64-cma": "gdb-multiarch",
              "7.2-arm64-cma": "gdb-multiarch"}  # else gdb


@dataclasses.dataclass
class Guest:
    """A frozen guest handed over by ``lab run --keep`` and its dump."""

    name: str
    dir: Path
    meta: dict

    @property
    def vmcore(self) -> str:
        return self.meta["snapshots"][0]["vmcore"]

    @property
    def vmlinux(self) -> str:
        return self.meta["vmlinux"]

    @property
    def qmp_socket(self) -> str:
        return self.meta["qmp_socket"]

    @property
    def gdb_port(self) -> int:
        return self.meta["gdb_port"]

    @property
    def gdb(self) -> str:
        return GDB_BINARY.get(self.name, "gdb")

    @property
    def arch(self) -> str:
        return self.meta["arch"]


def boot(name: str, d: Path) -> Guest:
    """Boot guest NAME of KEPT frozen (lab run --keep) into the new directory D."""
    # The timeout guards against a hang, not speed: on a shared 2-CPU machine with other
    # guests booting, a boot and its workload took more than the lab's default 600 s.
    opts = lab.RunOptions(**KEPT[name], mode="keep", progress=False, timeout=1800)
    return Guest(name, d, lab.run(opts, d))


def stop(d: Path) -> None:
    with contextlib.suppress(LabError):
        lab.stop(d)


# --- booting the guests ahead of the tests ------------------------------------------------
class Pool:
    """Boots guests of KEPT in the background, one at a time, in the order the tests will
    use them (``plan``), so that a boot overlaps the tests before it instead of keeping
    the session waiting with a CPU idle.  At most BOUND of its guests are up at once
    (booting, waiting or in use: 512 MiB-1 GiB of RAM each); a guest a test asks for
    (``get``) boots next whatever the bound, so no order of tests can dead-lock it.

    ``get`` returns the guest once booted, or raises the boot's error (every test of that
    guest fails with it; a boot is bounded by lab.run's timeout).  ``release`` stops a
    guest no later test needs (a guest still booting is stopped when its boot ends; one
    not started never boots).  ``close`` (session end, Ctrl-C included) starts no other
    boot, kills the QEMU of the boot under way and stops every guest: every QEMU that the
    pool's boots spawned is recorded (memscope.lab.qemu.spawn, wrapped in the pool's
    thread) and killed."""

    def __init__(self, bound: int):
        self.bound = max(1, bound)
        self.cond = threading.Condition()
        self.order: list[str] = []  # first use first
        self.dirs: dict[str, Path] = {}
        # planned -> booting -> ready | failed; any -> released
        self.state: dict[str, str] = {}
        self.result: dict[str, Guest | BaseException] = {}
        self.demanded: set[str] = set()
        self.unwanted: set[str] = set()  # released while booting
        self.up = 0  # guests booting or booted and not yet stopped
        self.closing = False
        self.procs: list[subprocess.Popen] = []
        self.thread: threading.Thread | None = None
        self.mkdir = lambda name: Path(tempfile.mkdtemp(prefix=f"kept-{name}-")) / "guest"

    def plan(self, names: list[str], mkdir) -> None:
        """Boot NAMES (in that order) into directories MKDIR(NAME) makes."""
        with self.cond:
            self.mkdir = mkdir
            for name in names:
                self._add(name)
            self._start()

    def _add(self, name: str) -> None:
        if name not in KEPT:
            raise LabError(f"no guest {name!r} in tests/guests.py KEPT")
        if self.state.get(name) in (None, "released"):
            if name not in self.order:
                self.order.append(name)
            self.dirs[name] = self.mkdir(name)
            self.state[name] = "planned"
            self.cond.notify_all()

    def _start(self) -> None:
        if self.thread is None and not self.closing:
            self.thread = threading.Thread(target=self._run, name="guest-pool", daemon=True)
            self.thread.start()

    def get(self, name: str) -> Guest:
        with self.cond:
            if self.closing:
                raise LabError("the test session is ending: no guest is booted now")
            self.demanded.add(name)
            self.unwanted.discard(name)
            while True:
                # a guest nothing planned, or stopped already: boot it now
                self._add(name)
                self._start()
                st = self.state[name]
                if st == "ready":
                    return self.result[name]
                if st == "failed":
                    e = self.result[name]
                    raise LabError(f"the boot of guest {name} failed: {e}") from e
                if not self.thread.is_alive():
                    raise LabError(f"the guest pool's thread ended before {name} booted")
                self.cond.wait(1.0)

    def release(self, name: str) -> None:
        """Stop guest NAME (no later test needs it)."""
        with self.cond:
            st = self.state.get(name)
            if st == "booting":
                self.unwanted.add(name)
                return
            if st in ("planned", "failed", "ready"):
                self.state[name] = "released"
                self.demanded.discard(name)
                if st == "ready":
                    self.up -= 1
                self.cond.notify_all()
        if st == "ready":
            self._stop(name)

    def _stop(self, name: str) -> None:
        """Stop guest NAME and reap its QEMU (a process the pool holds would otherwise
        stay a zombie, which ``pgrep qemu`` still lists, until the session ends)."""
        d = self.dirs[name]
        pid = None
        with contextlib.suppress(OSError, ValueError):
            pid = json.loads((d / "meta.json").read_text()).get("qemu_pid")
        stop(d)
        with self.cond:  # an RLock: _run calls this holding it
            for p in list(self.procs):
                if p.pid == pid:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.wait(10)
                if p.poll() is not None:
                    self.procs.remove(p)

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
            ready = [n for n, st in self.state.items() if st == "ready"]
            for n in ready:
                self.state[n] = "released"
            procs = list(self.procs)
        for p in procs:  # the boot under way ends with its QEMU, and starts no other
            if p.poll() is None:
                p.kill()
        if self.thread is not None:
            self.thread.join(120)
        for n in ready:
            self._stop(n)
        for p in self.procs:
            with contextlib.suppress(OSError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)

    def _next(self) -> str | None:
        """The next guest to boot (under the lock): a guest a test waits for first, else
        the next planned one while fewer than BOUND are up; None: wait."""
        planned = [n for n in self.order if self.state[n] == "planned"]
        for n in planned:
            if n in self.demanded:
                return n
        if planned and self.up < self.bound:
            return planned[0]
        return None

    def _run(self) -> None:
        _pool_thread.pool = self
        while True:
            with self.cond:
                while not self.closing and (name := self._next()) is None:
                    self.cond.wait()
                if self.closing:
                    return
                self.state[name] = "booting"
                self.up += 1
                d = self.dirs[name]
            try:
                result: Guest | BaseException = boot(name, d)
            except BaseException as e:  # noqa: BLE001 - handed to the test that waits
                result = e
            with self.cond:
                booted = isinstance(result, Guest)
                if booted and (name in self.unwanted or self.closing):
                    self.unwanted.discard(name)
                    self.state[name] = "released"
                    self.up -= 1
                    self._stop(name)
                elif booted:
                    self.state[name], self.result[name] = "ready", result
                else:
                    self.state[name], self.result[name] = "failed", result
                    self.unwanted.discard(name)
                    self.up -= 1
                self.cond.notify_all()


_pool_thread = threading.local()


def _spawn(cmd, stderr_path, *, outlive, _real=lab_qemu.spawn):
    """memscope.lab.qemu.spawn, recording in the pool's thread every QEMU it starts (and
    starting none once the pool is closing)."""
    pool = getattr(_pool_thread, "pool", None)
    if pool is None:
        return _real(cmd, stderr_path, outlive=outlive)
    with pool.cond:
        if pool.closing:
            raise LabError("the test session is ending: no guest is booted now")
        proc = _real(cmd, stderr_path, outlive=outlive)
        pool.procs.append(proc)
        return proc


lab_qemu.spawn = _spawn

#: The session's pool (tests/conftest.py plans it and closes it).  MEMSCOPE_TEST_GUESTS:
#: how many of its guests may be up at once (default 3: about 3 GiB of RAM at most).
POOL = Pool(int(os.environ.get("MEMSCOPE_TEST_GUESTS", "3")))


# --- the plan ---------------------------------------------------------------------------
PNG = "{png}"  # replaced by a directory of the backend's own


def plan(guest: Guest) -> list[list[str]]:
    """Every command in every format, then the other flags.  ``--pfn`` ranges: the first
    1024 pfns of RAM (x86_64: pfn 0, reserved, and the legacy hole at 0x9f-0xff), 1024
    across the middle (the node boundary of the NUMA guest) and 1024 near the end."""
    commands._load()
    args = command_arguments(guest)
    runs = [[name, *a, "--format", fmt] for name, cmd in sorted(commands.COMMANDS.items())
            for a in args.get(name, [[]]) for fmt in cmd.formats]
    start = 0x40000 if guest.arch == "aarch64" else 0  # arm64 virt: RAM at 1 GiB
    n = guest.meta["mem_mb"] << 8  # 4 KiB pages
    # The last range ends 256 pfns below the memory's size: x86_64's firmware keeps the top
    # pages out of RAM (a 512 MiB guest's last pfn is 0x1ffdf), and a range past the last
    # pfn is an error.
    for lo in (start, start + n // 2 - 512, start + n - 1024 - 256):
        span = f"{lo:#x}-{lo + 1023:#x}"
        runs += [["pages", "--pfn", span, "-f", "json"], ["pages", "--pfn", span]]
    runs += [["pages", "--png", f"{PNG}/pages.png"],
             ["pageblocks", "--png", f"{PNG}/pageblocks.png"],
             ["vmalloc", "--png", f"{PNG}/vmalloc.png"],
             ["maps", "1", "--rss"], ["maps", "1", "--rss", "-f", "json"],
             ["freelists", "--no-pcp", "-f", "json"],
             ["slabinfo", "--walk", "-f", "json"], ["slabinfo", "--walk"],
             ["frag", "-f", "proc", "--proc-file", "extfrag_index"]]
    if guest.arch == "aarch64":  # the arm64 kernels reserve a CMA area: draw it
        runs.append(["cma", "reserved", "--png", f"{PNG}/cma.png"])
    from memscope.mm.frag import GFP_CLASSES

    for gfp in GFP_CLASSES:
        if gfp != "kernel":  # the default, run above
            runs += [["frag", "--gfp", gfp, "-f", fmt] for fmt in commands.COMMANDS["frag"].formats]
    return runs


def command_arguments(guest: Guest) -> dict[str, list[list[str]]]:
    """The arguments each command is run with (one run per list and format; a command
    not named runs once without any): the slab commands take a cache or an address, which
    for ``whatis`` are an allocated and a free dentry (at an inner offset) and a page of
    the direct map that no slab holds, found on the guest's dump."""
    from memscope.mm import slub
    from memscope.mm.context import KernelContext
    from memscope.target.drgn import DrgnTarget, open_core

    slab = [["dentry"], ["kmalloc-64", "--objects", "--free"]]
    # init (pid 1) has an address space on every guest; ps also with its threads
    # cma: the default DMA area of cma= is called "reserved"; a kernel without CMA or
    # without an area answers every form with one line
    fixed = {"slab": slab, "maps": [["1"]], "heap": [["1"]], "smaps_rollup": [["1"]],
             "ps": [[], ["--threads"]], "kmalloc": [[], ["--kind", "reclaim"]],
             "cma": [[], ["reserved", "--map"], ["reserved", "--can-alloc", "64", "--align", "4"],
                     ["reserved", "--can-alloc", "1000000"]]}
    try:
        vmcore = guest.vmcore
    except (KeyError, IndexError):
        vmcore = None
    if not vmcore or not os.path.exists(vmcore):
        # A live guest without a dump of its own: addresses would be stale anyway.
        return {**fixed, "whatis": [], "vtop": [], "mempool": []}
    ctx = KernelContext(DrgnTarget(open_core(vmcore, guest.vmlinux)))
    w = slub.cache_walk(ctx, slub.find_kmem_cache(ctx, "dentry"))
    addr, _, _ = slub.object_addresses(w)
    alloc = slub.allocated_mask(w, addr)
    whatis = [[hex(int(addr[alloc][0]) + 24)]]
    if (~alloc).any():
        whatis.append([hex(int(addr[~alloc][-1]) + 8)])
    whatis.append([hex(int(w.slabs.base[0]) - 4096 * 64)])
    # vtop: a kernel address and init's heap; mempool: fs_bio_set's bio_pool
    from memscope.kernel.fields import offsetof
    from memscope.mm import task as mtask

    t = ctx.t
    init = mtask.find_task(ctx, 1)
    brk = t.read_u64(init.mm + t.layout("struct mm_struct").offset("start_brk"))
    vtop = [[hex(t.symbol("linux_banner") + 5)], ["--pid", "1", hex(brk + 0x10)]]
    pool = t.symbol("fs_bio_set") + offsetof(t, "struct bio_set", "bio_pool")
    return {**fixed, "whatis": whatis, "vtop": vtop, "mempool": [[hex(pool)]]}


def concrete(argv: list[str], png_dir: Path) -> list[str]:
    return [a.replace(PNG, str(png_dir)) for a in argv]


def png_files(argv: list[str]) -> list[str]:
    """The file names of the PNGs ARGV writes (relative to its PNG directory)."""
    return [a[len(PNG) + 1:] for a in argv if a.startswith(PNG + "/")]


# --- the command line -------------------------------------------------------------------
# Runs in a child process: every argv through memscope.cli.main, with the drgn Program
# opened once (loading a vmlinux's debug info costs ~1 s; the CLI path is otherwise the
# command line's own), and the QMP connection closed when the child exits.  With --qemu
# the CLI asks QEMU for the guest's run state (a second QMP client, which QEMU would not
# serve while the kept Program holds the socket): asked once, before the Program
# connects; the guest is paused throughout (the tests check before and after).
_CLI_RUNNER = r'''
import contextlib, io, json, os, sys
# One Program per dump for all runs (memo below), its DWARF loaded once: not the
# debug-info cache's lazily loaded Programs.
os.environ["MEMSCOPE_DEBUGINFO_CACHE"] = "0"
from memscope import cli
from memscope.target import drgn as tdrgn
req = json.load(open(sys.argv[1]))
if req["source"][0] == "--qemu":
    try:
        from memscope.target import qmp as tqmp
    except ImportError:
        tqmp = None
    if tqmp is not None and hasattr(tqmp, "run_state"):
        state = tqmp.run_state(req["source"][1])
        tqmp.run_state = lambda address, state=state: state
memo = {}
for fn in ("open_core", "open_qemu"):
    def cached(a, b, real=getattr(tdrgn, fn), fn=fn, **kw):
        key = (fn, a, b, tuple(sorted(kw.items())))
        if key not in memo:
            memo[key] = real(a, b, **kw)
        return memo[key]
    setattr(tdrgn, fn, cached)
out = []
for argv in req["runs"]:
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        status = cli.main(req["source"] + argv)
    out.append({"argv": argv, "out": o.getvalue(), "err": e.getvalue(), "status": status})
json.dump(out, open(req["output"], "w"))
'''


def run_cli(source: list[str], runs: list[list[str]], work: Path, png_dir: Path,
            timeout: float = 1800) -> list[dict]:
    """memscope SOURCE... ARGV for each argv of RUNS (PNGs into PNG_DIR): a list of
    {"argv" (as in RUNS), "out", "err", "status"}.  The timeout guards against a hang."""
    work.mkdir(parents=True, exist_ok=True)
    png_dir.mkdir(parents=True, exist_ok=True)
    req = work / "cli-request.json"
    req.write_text(json.dumps({"source": source, "runs": [concrete(a, png_dir) for a in runs],
                               "output": str(work / "cli-result.json")}))
    p = subprocess.run([sys.executable, "-c", _CLI_RUNNER, str(req)], capture_output=True,
                       text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"the CLI runner failed:\n{p.stdout}\n{p.stderr}"
    result = json.loads((work / "cli-result.json").read_text())
    for r, argv in zip(result, runs):
        r["argv"] = argv
    return result


_ON_VMCORE: dict[str, tuple[list[dict], Path]] = {}


def cli_on_vmcore(guest: Guest, work: Path) -> tuple[list[dict], Path]:
    """What the command line prints for the PLAN on the guest's vmcore (the reference),
    run once per guest: (runs, the directory of its PNGs)."""
    if guest.vmcore not in _ON_VMCORE:
        png = work / "png-vmcore"
        runs = run_cli(["-c", guest.vmcore, "-s", guest.vmlinux], plan(guest), work / "vmcore",
                       png)
        _ON_VMCORE[guest.vmcore] = runs, png
    return _ON_VMCORE[guest.vmcore]


def assert_same(got: list[dict], want: list[dict], got_png: Path, want_png: Path,
                what: str) -> None:
    """Every run of GOT printed exactly what the same run of WANT printed, both succeeded
    (status 0, nothing on stderr but gdb's KASLR note), and wrote the same PNG bytes."""
    assert [g["argv"] for g in got] == [w["argv"] for w in want]
    for g, w in zip(got, want):
        cmd = " ".join(w["argv"])
        assert w["status"] == 0 and w["err"] == "", f"drgn on the vmcore: {cmd}: {w['err']}"
        assert g["status"] == 0 and not g.get("error") and not g["err"], \
            f"{what}: {cmd}: {g.get('error') or g['err']}"
        assert g["out"] == w["out"], f"{what}: memscope {cmd} differs from drgn on the vmcore"
        for f in png_files(w["argv"]):
            assert (got_png / f).read_bytes() == (want_png / f).read_bytes(), f"{what}: {f}"


# --- QMP --------------------------------------------------------------------------------
class QMP:
    """A minimal QMP client (QEMU serves one client at a time: close it before
    ``--qemu`` connects)."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(120)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        self._read()
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        while True:
            line = self.file.readline()
            assert line, "QEMU closed its QMP socket"
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def execute(self, cmd: str, **arguments):
        req = {"execute": cmd, **({"arguments": arguments} if arguments else {})}
        self.file.write(json.dumps(req).encode() + b"\n")
        self.file.flush()
        reply = self._read()
        assert "error" not in reply, (cmd, reply)
        return reply["return"]

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def qmp(path: str, cmd: str, **arguments):
    with QMP(path) as q:
        return q.execute(cmd, **arguments)


def dump(path: str, vmcore: Path) -> None:
    """QMP dump-guest-memory of the (paused) guest into VMCORE, as the lab dumps."""
    qmp(path, "dump-guest-memory", paging=False, protocol=f"file:{vmcore}")


def locks_held(vmcore: Path, vmlinux: str) -> list[str]:
    """The zone and per-CPU page list (pcp) locks held in the dump, read with drgn's own
    helpers: a guest paused with one held may be in the middle of moving pages between
    the free lists, nr_free, NR_FREE_PAGES and the pcp lists (e.g. rmqueue_bulk() takes a
    batch off the lists and subtracts it from NR_FREE_PAGES once, at the end), so check
    may rightly find them disagreeing.  Empty: every update of them is complete."""
    import drgn
    from drgn.helpers.linux.cpumask import for_each_possible_cpu
    from drgn.helpers.linux.mmzone import for_each_online_pgdat
    from drgn.helpers.linux.percpu import per_cpu_ptr

    prog = drgn.Program()
    prog.set_core_dump(str(vmcore))
    with contextlib.suppress(drgn.MissingDebugInfoError):
        prog.load_debug_info([vmlinux])

    def held(lock) -> bool:  # spinlock_t -> raw_spinlock -> arch_spinlock_t (qspinlock)
        raw = lock.rlock.raw_lock
        return (raw.val.counter if hasattr(raw, "val") else raw.locked).value_() != 0

    out = []
    for pgdat in for_each_online_pgdat(prog):
        for i in range(len(pgdat.node_zones)):
            zone = pgdat.node_zones[i]
            name = f"node {pgdat.node_id.value_()} {zone.name.string_().decode()}"
            if held(zone.lock):
                out.append(f"{name}: zone->lock")
            pcp = getattr(zone, "per_cpu_pageset", None)
            if pcp is None or not pcp.type_.type.has_member("lock"):
                continue  # 5.10: pcp lists are protected by disabling interrupts
            for cpu in for_each_possible_cpu(prog):
                if held(per_cpu_ptr(pcp, cpu).lock):
                    out.append(f"{name}: cpu {cpu} pcp->lock")
    return out


def status(path: str) -> str:
    return qmp(path, "query-status")["status"]


# --- gdb --------------------------------------------------------------------------------
#: Python for a gdb driver (DRIVER strings run inside gdb): run(LINE) -> (text, error,
#: $memscope_status), a gdb command's output or its error.
GDB_RUN = r"""
def run(line):
    try:
        text, err = gdb.execute(line, to_string=True), None
    except gdb.error as e:
        text, err = None, str(e)
    return text, err, int(gdb.convenience_variable("memscope_status"))
"""


def gdb_batch(guest_gdb: str, vmlinux: str, port: int, driver: str, work: Path,
              end: str = "disconnect", timeout: float = 1200) -> subprocess.CompletedProcess:
    """gdb attached to the guest's gdbstub with memscope loaded: runs DRIVER (python, with
    ``PLAN`` the path of work/plan.json), then END (disconnect leaves the guest paused,
    detach resumes it)."""
    d = work / "driver.py"
    d.write_text(f"PLAN = {str(work / 'plan.json')!r}\n" + driver)
    cmd = [guest_gdb, "-nx", "-batch", "-iex", "set index-cache enabled on",
           "-ex", f"file {vmlinux}",
           "-ex", f"target remote 127.0.0.1:{port}",
           "-ex", f"source {SCRIPT}",
           "-ex", f"source {d}",
           "-ex", end]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env={**os.environ})


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


def wait_until(pred, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


# --- a guest stopped at its first instruction ---------------------------------------------
@dataclasses.dataclass
class StoppedGuest:
    """A lab kernel's QEMU started with ``-S`` (stopped before its first instruction, the
    gdbstub open): gdb can set breakpoints anywhere in the boot."""

    name: str
    vmlinux: str
    gdb_port: int
    arch: str

    @property
    def gdb(self) -> str:
        return GDB_BINARY.get(self.name, "gdb")


@contextlib.contextmanager
def stopped_at_reset(name: str, work: Path, append: str = "nokaslr"):
    """Boot lab kernel NAME (lab.qemu's command line, the frozen guest's memory size, 2
    CPUs) with QEMU's ``-S``:
    the guest waits at its reset vector for gdb.  Its initramfs is the lab's, with no
    workload (a test of the boot stops long before init runs).  QEMU is killed on exit."""
    from memscope.lab import initramfs, kernels as lk, qemu as lq

    k = lk.ensure(name)
    work.mkdir(parents=True, exist_ok=True)
    initrd = work / "initrd.gz"
    initramfs.build(initrd, busybox=k.busybox, modules=k.modules, workload=b"",
                    conf={"MEMSCOPE_MODE": "dump"})
    port = lq.free_port()
    sock = Path(tempfile.mkdtemp(prefix="memscope-early-"))  # Unix socket paths are short
    cmd = lq.command(k, initrd=initrd, mem=GUESTS[name].get("mem", 512), smp=2, numa=1,
                     append=append,
                     qmp=sock / "qmp.sock", console=sock / "console.sock",
                     console_log=work / "console.log", gdb_port=port) + ["-S"]
    proc = lq.spawn(cmd, work / "qemu.log", outlive=False)
    console = None
    try:
        # the console is a server waiting for its client: QEMU starts once it connects
        console = lq.Console(sock / "console.sock", time.monotonic() + 30, proc,
                             work / "qemu.log")
        yield StoppedGuest(name, str(k.vmlinux), port, k.spec.qemu_arch)
    finally:
        if console is not None:
            console.close()
        proc.kill()
        proc.wait()
        shutil.rmtree(sock, ignore_errors=True)
