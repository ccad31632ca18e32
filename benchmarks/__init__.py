"""memscope's benchmarks: ratios against a baseline measured in the same run.

``python3 -m benchmarks`` (``make bench``) runs them all on the 4 GiB lab case "6.12-4g"
and prints one table; each module also runs alone (``python3 -m benchmarks.bench_buddy``).
Benchmarks are not tests: nothing here asserts a time.

How times are taken (shared by every benchmark, see :func:`best_of`): each contender runs
``repeat`` times in the same process and the minimum is kept (other processes on the machine
only ever add time); "cold" is one run on a freshly opened drgn Program (DWARF index and
caches built from scratch), including the open.  The vmcore is read once beforehand so that
every contender reads it from the page cache.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import platform
import time
from typing import Any, Callable

DEFAULT_CASE = "6.12-4g"


@dataclasses.dataclass
class Row:
    """One line of the results table: SUBJECT against BASELINE.

    ``ratio`` is subject time / baseline time (below 1: the subject is faster); ``target``
    says what the issue asks of that ratio, e.g. "<= 0.02" for "at least 50x faster"."""

    bench: str
    subject: str
    subject_s: float
    baseline: str
    baseline_s: float
    target: str = ""
    note: str = ""
    subject_cold_s: float | None = None
    baseline_cold_s: float | None = None

    @property
    def ratio(self) -> float:
        return self.subject_s / self.baseline_s if self.baseline_s else float("inf")

    def verdict(self) -> str:
        if not self.target:
            return ""
        op, val = self.target.split()
        ok = self.ratio <= float(val) if op == "<=" else self.ratio >= float(val)
        return "met" if ok else "NOT met"


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    """The shortest of REPEAT timed calls of FN (stdout swallowed)."""
    best = float("inf")
    for _ in range(repeat):
        with contextlib.redirect_stdout(io.StringIO()):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
    return best


def interleaved(contenders: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    """The best of REPEAT rounds for each of CONTENDERS (name -> function), one call of
    each per round, so that a burst of load elsewhere on the machine hits them alike."""
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(repeat):
        for name, fn in contenders.items():
            best[name] = min(best[name], best_of(fn, 1))
    return best


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    with contextlib.redirect_stdout(io.StringIO()):
        t = time.perf_counter()
        r = fn()
        return time.perf_counter() - t, r


def warm_file(path) -> None:
    """Read PATH once so that the page cache holds it for every contender."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def snapshot(case: str):
    from memscope.lab import cases

    return cases.snapshot(case)


def open_prog(snap):
    """A drgn Program on the case's vmcore, opened as memscope's CLI opens it."""
    from memscope.target.drgn import open_core

    return open_core(snap.vmcore, snap.vmlinux)


def open_case(case: str):
    """(snapshot, Program) for a lab case, saying how long the Program took to open."""
    snap = snapshot(case)
    t = time.perf_counter()
    prog = open_prog(snap)
    print(f"{case}: {snap.meta.get('release', '')}; Program opened in "
          f"{time.perf_counter() - t:.2f} s")
    return snap, prog


def cli_args(name: str, fmt: str, **extra) -> argparse.Namespace:
    """The argparse namespace the CLI would build for ``memscope NAME --format FMT``."""
    from memscope import commands

    commands._load()
    cmd = commands.COMMANDS[name]
    p = argparse.ArgumentParser()
    if cmd.add_arguments:
        cmd.add_arguments(p)
    # positional arguments (a pid, an address) come from EXTRA, as the command line's would
    positional = [str(extra[a.dest]) for a in p._actions if not a.option_strings
                  and a.dest in extra]
    ns = p.parse_args(positional)
    ns.command, ns.format = name, fmt
    for k, v in extra.items():
        setattr(ns, k, v)
    return ns


def run_command(prog, name: str, fmt: str, **extra) -> str:
    """One command through the CLI's code path: a fresh target and context, run, render."""
    from memscope import commands
    from memscope.mm.context import KernelContext
    from memscope.target.drgn import DrgnTarget

    commands._load()
    args = cli_args(name, fmt, **extra)
    return commands.COMMANDS[name].run(KernelContext(DrgnTarget(prog)), args) \
        .render(fmt)


def simple_main(doc: str, run: Callable[..., list[Row]], repeat: int) -> None:
    """The command line of a benchmark module whose ``run(snap, repeat, prog)`` needs
    nothing else: ``python3 -m benchmarks.NAME [CASE] [--repeat N]``, its table printed."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("case", nargs="?", default=DEFAULT_CASE)
    ap.add_argument("--repeat", type=int, default=repeat)
    args = ap.parse_args()
    snap, prog = open_case(args.case)
    print(render(run(snap, args.repeat, prog)))


def machine() -> str:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import drgn
    import numpy

    return (f"{cpu or platform.processor()}, {os.cpu_count()} CPUs, Linux "
            f"{platform.release()}, Python {platform.python_version()}, drgn "
            f"{drgn.__version__}, numpy {numpy.__version__}")


def render(rows: list[Row]) -> str:
    from tabulate import tabulate

    body = []
    for r in rows:
        body.append([r.bench, r.subject, f"{r.subject_s * 1e3:.1f}", r.baseline,
                     f"{r.baseline_s * 1e3:.1f}", f"{r.ratio:.3g}",
                     f"{1 / r.ratio:.1f}x faster" if r.ratio < 1 else f"{r.ratio:.2f}x the time",
                     r.target, r.verdict(), r.note])
    return tabulate(body, headers=["bench", "subject", "ms", "baseline", "ms",
                                   "subject/baseline", "", "target", "", "note"])
