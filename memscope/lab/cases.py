"""Lab cases for tests and benchmarks: one lab run per (kernel, workload, options), built
once and cached across runs under ``$MEMSCOPE_CACHE/lab-cases/<key>``.

The key includes the bytes of the workload (and of the built-in workloads it runs) and of
the guest scripts, so that changing what the guest does builds a new case rather than
reusing a stale one."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import re
import shutil
import threading
from pathlib import Path

from . import kernels, runner as labrun, verify

# The cases the test suite and benchmarks use, by name.
CASES: dict[str, dict] = {
    "5.10": dict(kernel="5.10", workload="mixed"),
    "6.1": dict(kernel="6.1", workload="mixed"),
    "6.12": dict(kernel="6.12", workload="mixed"),
    "7.2": dict(kernel="7.2", workload="mixed"),
    # 1 GiB guests: their boot and workload take 4-8 minutes of TCG on a busy machine.
    "6.12-arm64": dict(kernel="6.12-arm64", workload="mixed", mem=1024, timeout=1200),
    "6.12-numa": dict(kernel="6.12", workload="numa", mem=1024, numa=2, timeout=1200),
    # Two named snapshots of one run with page-cache work in between, plus the final one.
    "6.12-snapshots": dict(kernel="6.12", workload="snapshots"),
    "6.12-4g": dict(kernel="6.12", workload="mixed", mem=4096),  # benchmarks only
    # The dentry cache past 10000 slabs on node 0's partial list: /proc/slabinfo's
    # approximation (count_partial_free_approx(), 6.10+) and long walks.
    "6.12-slab": dict(kernel="6.12", workload="slab-partial", timeout=1200),
    "7.2-slab": dict(kernel="7.2", workload="slab-partial", timeout=1200),
    # SLUB debugging on every cache (red zones, poison, consistency checks, stored owners and
    # kmalloc's requested sizes): the slab half of `check` and `kmalloc`'s requested bytes.
    "6.12-slub-debug": dict(kernel="6.12", workload="slub-debug", append="slub_debug=FZPU"),
    "7.2-slub-debug": dict(kernel="7.2", workload="slub-debug", append="slub_debug=FZPU"),
    # The same snapshot as QEMU writes it in its dump formats: ELF (vmcore) and
    # kdump-compressed, flattened (vmcore.kdump-zlib; Debian 12's QEMU 7.2 offers no lzo
    # or snappy: query-dump-guest-memory-capability).
    "6.12-kdump": dict(kernel="6.12", workload="idle", dump_formats=("kdump-zlib",)),
    # Big machines (issue 14): idle guests of 4 and 16 GiB dumped kdump-compressed only
    # (no ELF dump: it would be as large as the guest; QEMU allocates the guest's memory
    # lazily and the dump of free memory is small): memory bounded whatever the size.
    "6.12-4g-kdump": dict(kernel="6.12", workload="idle", mem=4096,
                          dump_formats=("kdump-zlib",), elf=False),
    "6.12-16g": dict(kernel="6.12", workload="idle", mem=16384, dump_formats=("kdump-zlib",),
                     elf=False),
    # CMA (memscope.mm.cma): memory filled with page cache and anonymous memory, a third
    # of the page cache freed again, so that the areas hold movable, buddy-free and pcp
    # pages, and pipes holding page cache pages (which migration cannot move).  7.2 x86_64
    # reserves an area only with cma=; 7.2 arm64 has its default 64 MiB area (multi-range
    # struct cma, CONFIG_CMA_SYSFS on both).
    "7.2-cma": dict(kernel="7.2", workload="cma", append="cma=128M"),
    # 384 MiB: a case's directory is named by kernel, workload and sizes, not by its
    # append, and a build removes the older ones of the same name (_remove_stale): at
    # 512 MiB this case and 7.2-cma would remove each other.
    "7.2-cma16": dict(kernel="7.2", workload="cma", append="cma=16M", mem=384),
    "7.2-arm64": dict(kernel="7.2-arm64", workload="cma", mem=1024, timeout=1200),
    # kmem, cma and vmalloc tracepoints on before the workload; a quiet second between the
    # named snapshots "before" and "after" (the replay window), then tracing stopped and the
    # guest's own trace file kept as the final snapshot's truth "trace/label" (the dump's
    # buffer and the file then hold the same events).
    "5.10-trace": dict(kernel="5.10", workload="trace-quiet", trace="kmem,cma,vmalloc"),
    "6.1-trace": dict(kernel="6.1", workload="trace-quiet", trace="kmem,cma,vmalloc"),
    "6.12-trace": dict(kernel="6.12", workload="trace-quiet", trace="kmem,cma,vmalloc"),
    "7.2-trace": dict(kernel="7.2", workload="trace-quiet", trace="kmem,cma,vmalloc"),
    # The CMA bitmap and the vmap areas between "before" and "after": the NVMe driver
    # unbound, bound and unbound again (its I/O queues' rings come from the default CMA
    # area) and 40 processes' vmalloc()ed stacks (fixtures/workloads/trace-cma-vmalloc.sh).
    # Each unbind and bind runs the ACPI interpreter (a first build saw some 110,000
    # Acpi-State objects allocated and freed per unbind, and lost half of a 16 MiB
    # buffer's window): an 80 MiB ring buffer per CPU keeps the whole window.
    "7.2-trace-cma": dict(kernel="7.2", workload="trace-cma-vmalloc", trace="kmem,cma,vmalloc",
                          trace_kb=81920, append="cma=64M"),
    # Over 1.1M events between "before" and "after" (trace-busy.sh): the throughput
    # benchmark's window (benchmarks/bench_events.py).  64 MiB of ring buffer per CPU (the
    # events take ~60 bytes each, and one CPU may record most of them) in a 1 GiB guest.
    "6.12-trace-busy": dict(kernel="6.12", workload="trace-busy", trace="kmem,cma,vmalloc",
                            trace_kb=65536, mem=1024, timeout=2400),
    # A swap area on the NVMe disk holding anonymous pages of a tracked shell, some shared
    # by 66 children forked after the swap-out (swap counts past SWAP_MAP_MAX, in the swap
    # map's continuation pages), some its own: smaps_rollup's Swap and SwapPss lines.
    "6.12-swap": dict(kernel="6.12", workload="swap"),
    # The kdump path (memscope/lab/kdump.py): after the workload the guest panics and its
    # capture kernel (kexec -p, crashkernel=256M) runs Debian's makedumpfile -d 31 from
    # /proc/vmcore: free, zero, page-cache and user pages left out.  vmcore is zlib (-c),
    # vmcore.makedumpfile-lzo and -zstd the same /proc/vmcore compressed otherwise (formats
    # Debian 12's QEMU cannot write).  The truth is read right before the panic; a panic
    # is not repeated as a freeze is, so a dump that moved away costs a boot (about 4
    # minutes of TCG each): the heap workload (a process with user pages, tracked as
    # "heap"), quieter than mixed, and more tries.
    "6.12-kdump31": dict(kernel="6.12", workload="heap", mem=1024, kdump_level=31,
                         kdump_compress=("zlib", "lzo", "zstd"), timeout=1200, tries=8),
}
REAL_KERNEL_CASES = ["5.10", "6.1", "6.12", "7.2", "6.12-arm64", "6.12-numa"]


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One snapshot of a lab case: a vmcore and the guest's truth."""

    dir: Path
    vmcore: Path
    vmlinux: Path
    meta: dict

    def truth(self, name: str) -> bytes:
        return (self.vmcore.parent / "truth" / name).read_bytes()

    def truth_text(self, name: str) -> str:
        return self.truth(name).decode()

    def tracked(self) -> dict[int, str]:
        """The processes the workload tracked (``track PID LABEL``): pid -> label.  Their
        maps, smaps_rollup and label are in the truth as ``PID/...``; every task's status
        is (``PID/status``), tracked or not."""
        truth = self.vmcore.parent / "truth"
        return {int(d.name): (d / "label").read_text().strip() for d in truth.iterdir()
                if d.name.isdigit() and (d / "label").is_file()}

    def tracked_as(self, label: str) -> int:
        """The pid the workload tracked as LABEL.

        :raises LookupError: none, or more than one"""
        pids = [pid for pid, lab in self.tracked().items() if lab == label]
        if len(pids) != 1:
            raise LookupError(f"{self.vmcore}: {len(pids)} processes tracked as {label!r}")
        return pids[0]

    @property
    def kernel(self) -> str:
        return self.meta["kernel"]

    @property
    def arch(self) -> str:
        return self.meta["arch"]

    def form(self, fmt: str) -> Path:
        """The snapshot as QEMU dumped it in format FMT ("elf": the vmcore itself;
        "kdump-zlib", ...: the flattened file of RunOptions.dump_formats).

        :raises KeyError: the case was not dumped in that format."""
        if fmt == "elf":
            return self.vmcore
        name = "" if (self.dir / "meta.json").exists() else self.dir.name
        for rec in self.meta.get("snapshots", []):
            if rec.get("name") == name and fmt in rec.get("forms", {}):
                return self.vmcore.with_name(f"vmcore.{fmt}")  # beside it, wherever it moved
        raise KeyError(fmt)

    @property
    def accepted_by(self) -> list[str]:
        """The checks of memscope/lab/verify.py this snapshot passed when the lab kept it
        (empty for a case built before they were recorded)."""
        # The final snapshot lives beside meta.json, a named one in a directory NAME.
        name = "" if (self.dir / "meta.json").exists() else self.dir.name
        for rec in self.meta.get("snapshots", []):
            if rec.get("name") == name:
                return list(rec.get("accepted_by", []))
        return []


def acceptance_problem(snap: Snapshot) -> str | None:
    """Why SNAP cannot serve as evidence, or None: every test that reads a case relies on
    the lab having kept it only after all of verify.CHECKS (drgn's reading of the dump
    and the kernel's formulas, independent of memscope.mm) ran and passed."""
    # On a slub_debug= kernel /proc/slabinfo counts its own reader (verify.slub_debug_on()):
    # no freeze can agree with it, so that check cannot have run.
    exempt = verify.NOT_CHECKED_WITH_SLUB_DEBUG if "slub_debug" in snap.meta.get("append", "") \
        else ()
    missing = [c for c in verify.CHECKS if c not in snap.accepted_by and c not in exempt]
    if missing:
        return (f"lab snapshot {snap.vmcore} was not accepted by the independent checks "
                f"{missing} (accepted_by: {snap.accepted_by}; see its meta.json)")
    return None


# Bump when what makes a snapshot acceptable changes, so that cached cases are rebuilt.
# 2: the truth's pagetypeinfo must agree with its buddyinfo too.
# 3: ... and every free list's length in the dump with the truth's pagetypeinfo.
# 4: ... and the global free/file/anon/shmem counters with the truth's vmstat.
# 5: buddyinfo is compared with the dump's nr_free read by drgn, not by memscope.mm; the
#    truth's extfrag files must match the kernel's formulas on its buddyinfo; meta.json
#    records every refreeze's reason and each snapshot's accepted_by.
# 6: ... and every line of the truth's /proc/slabinfo with get_slabinfo() on the dump.
# 7: ... and /proc/meminfo's counter lines (read just before buddyinfo now) with the dump's
#    global counters, exactly.
ACCEPTANCE = 7


# How a workload runs a built-in one inside the guest: "sh /workloads/NAME.sh".
_LIBRARY_REF = re.compile(rb"/workloads/([A-Za-z0-9_.+-]+?\.sh)\b")


def workloads_used(workload: Path) -> list[Path]:
    """WORKLOAD and the built-in workloads it runs as /workloads/NAME.sh, transitively
    (each once, in the order first referenced)."""
    library = {p.name: p for p in labrun.library()}
    seen, todo = [workload], [workload]
    while todo:
        for name in _LIBRARY_REF.findall(todo.pop(0).read_bytes()):
            p = library.get(name.decode())
            if p is not None and p not in seen:
                seen.append(p)
                todo.append(p)
    return seen


def case_key(opts: labrun.RunOptions) -> str:
    """The cache key of OPTS: its options, the acceptance version, the guest scripts, and
    the bytes of the workload and of the built-in workloads it runs (not of the others:
    adding a workload does not rebuild every case)."""
    h = hashlib.sha256()
    h.update(b"acceptance %d" % ACCEPTANCE)
    for f in workloads_used(labrun.resolve_workload(opts.workload)):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    for f in sorted((Path(labrun.__file__).parent / "guest").iterdir()):
        h.update(f.read_bytes())
    h.update(json.dumps([opts.kernel, opts.mem, opts.smp, opts.numa, opts.append, opts.disk]).encode())
    if opts.trace:  # only traced cases: the others keep their keys
        h.update(labrun.trace_prologue(opts) + (labrun.WORKLOADS / "trace-on.sh").read_bytes())
    name = Path(opts.workload).stem
    if opts.kdump_level is not None:  # its userland's and capture's scripts and packages
        from . import kdump, userland

        h.update(json.dumps([opts.kdump_level, list(opts.kdump_compress), kdump.APPEND,
                             list(userland.KDUMP_PACKAGES)]).encode())
        for f in sorted(userland.GUEST.iterdir()):
            h.update(f.read_bytes())
        name += f"-kdump{opts.kdump_level}"
    if opts.dump_formats:  # a name of its own: _remove_stale never takes the ELF-only case
        h.update(json.dumps(list(opts.dump_formats)).encode())
        if not opts.elf:  # only these cases: the others keep their keys
            h.update(b"no elf")
        name += "-" + "+".join(opts.dump_formats)
    return f"{opts.kernel}-{name}-{opts.mem}m-{opts.smp}c-{opts.numa}n-{h.hexdigest()[:12]}"


_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


def build(opts: labrun.RunOptions) -> Path:
    """The directory of the lab run OPTS, built if not cached.

    Safe to call from several threads and processes at once (pytest sessions, benchmarks):
    one builds, the others wait on a lock file and then use the result."""
    root = kernels.cache_dir() / "lab-cases"
    d = root / case_key(opts)
    with _guard:
        lock = _locks.setdefault(str(d), threading.Lock())
    with lock:
        if (d / "meta.json").exists():
            return d
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f".{d.name}.lock", "w") as lockfile:
            fcntl.flock(lockfile, fcntl.LOCK_EX)
            if not (d / "meta.json").exists():
                # A build killed outright (SIGKILL) leaves its staging directory behind;
                # under the lock nobody else is building this case.
                for stale in root.glob(f".{d.name}.*"):
                    if stale.is_dir():
                        shutil.rmtree(stale, ignore_errors=True)
                labrun.run(opts, d)
                _remove_stale(d)
    return d


def _remove_stale(current: Path) -> None:
    """Delete older builds of the same case (same options, older guest scripts or
    workloads): each holds a dump as large as the guest's memory."""
    prefix = current.name.rsplit("-", 1)[0] + "-"
    for old in current.parent.iterdir():
        if old != current and old.is_dir() and old.name.startswith(prefix) \
                and len(old.name) == len(current.name):
            shutil.rmtree(old, ignore_errors=True)
            (old.parent / f".{old.name}.lock").unlink(missing_ok=True)


def snapshot(case: str, name: str = "") -> Snapshot:
    """Snapshot NAME ("" for the final one) of the named case in CASES."""
    d = build(labrun.RunOptions(**CASES[case]))
    meta = json.loads((d / "meta.json").read_text())
    sub = d / name if name else d
    k = kernels.cached(meta["kernel"])
    return Snapshot(sub, sub / "vmcore", k.vmlinux if k else Path(meta["vmlinux"]), meta)
