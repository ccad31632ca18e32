"""Benchmark (issue 14, item 3): big machines with bounded memory.

``pages``, ``check``, ``frag`` and ``slabinfo --walk`` on lab guests of different sizes
(default: "6.12-4g-kdump" and "6.12-16g", the same idle workload at 4 and 16 GiB, both
dumped kdump-compressed), each command in a process of its own so that its peak is its
own.  Per case and command:

- time: the best of REPEAT runs through the CLI's code path (fresh target and context,
  rendered as a table) on a Program opened once, against the baseline of the same run: a
  raw read of every struct page (``target.read`` of each present section, each chunk
  dropped at once), the floor of any command that looks at every page;
- the baseline alone as a row of its own ("raw read"), its memory measured the same way:
  what the reader (drgn, and libkdumpfile for a kdump-compressed dump) takes;
- memory: the process's peak RSS (``getrusage`` ``ru_maxrss``) over the first run, and
  how far it rose above the RSS of the opened Program before the command (what the
  command itself needs), and the peak of Python and numpy allocations during it
  (``tracemalloc``);

then the growth from the first case to each other one: the ratio of pfns, of times, of
times per pfn (linear: 1) and of the command's memory (bounded: 1).

    python3 -m benchmarks.bench_big [CASE ...] [--repeat N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: "raw read" is no command: the baseline alone (what the reader, drgn and libkdumpfile,
#: takes to hand over every struct page), in a process of its own like the commands.
COMMANDS = (("raw read", {}), ("pages", {}), ("check", {}), ("frag", {}),
            ("slabinfo --walk", {"walk": True}))
DEFAULT_CASES = ("6.12-4g-kdump", "6.12-16g")
ROOT = Path(__file__).resolve().parents[1]


def _rss_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _raw_read(prog) -> tuple[float, int]:
    """(seconds, pfns): one read of every present section's struct pages, dropped."""
    from memscope.mm import memmap
    from memscope.mm.context import KernelContext
    from memscope.target.drgn import DrgnTarget

    ctx = KernelContext(DrgnTarget(prog))
    s = memmap.sections(ctx)
    sz = memmap.page_layout(ctx).size
    vm = memmap.vmemmap_base(ctx)
    n = memmap.max_pfn(ctx)
    pps = s.pages_per_section
    chunks = [(vm + nr * pps * sz, (min(nr * pps + pps, n) - nr * pps) * sz)
              for nr in np.flatnonzero(s.present()).tolist() if nr * pps < n]
    t = time.perf_counter()
    for a, size in chunks:
        ctx.t.read(a, size)
    return time.perf_counter() - t, n


def one(case: str, command: str, repeat: int) -> dict:
    """Run in the child process: COMMAND on CASE, measured (see the module)."""
    import tracemalloc

    from . import best_of, open_prog, run_command, snapshot, warm_file

    snap = snapshot(case)
    warm_file(snap.vmcore)
    prog = open_prog(snap)
    name, extra = next((c.split()[0], e) for c, e in COMMANDS if c == command)

    def work():
        if command == "raw read":
            _raw_read(prog)
        else:
            run_command(prog, name, "table", **extra)

    rss0 = _rss_kib()
    tracemalloc.start()
    t0 = time.perf_counter()
    work()
    first = time.perf_counter() - t0
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best = min(first, best_of(work, repeat))
    raw = min(_raw_read(prog)[0] for _ in range(repeat))
    return {"case": case, "command": command, "pfns": _raw_read(prog)[1],
            "mem_mb": snap.meta.get("mem_mb"), "s": best, "first_s": first, "raw_s": raw,
            "peak_rss_kib": peak, "rss_before_kib": rss0, "tracemalloc_peak": traced}


def run(cases, repeat: int = 3, log=print) -> list[dict]:
    out = []
    for case in cases:
        for command, _ in COMMANDS:
            p = subprocess.run([sys.executable, "-m", "benchmarks.bench_big", "--one", case,
                                command, "--repeat", str(repeat)], cwd=ROOT,
                               capture_output=True, text=True)
            if p.returncode:
                last = (p.stderr.strip().splitlines() or ["?"])[-1]
                raise SystemExit(f"{case} {command}: {last}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            log(f"  {case} {command}: {r['s'] * 1e3:.0f} ms, peak RSS "
                f"{r['peak_rss_kib'] >> 10} MiB (+{(r['peak_rss_kib'] - r['rss_before_kib']) >> 10}"
                f" MiB over the opened Program), tracemalloc peak "
                f"{r['tracemalloc_peak'] / 2**20:.1f} MiB")
            out.append(r)
    return out


def render(results: list[dict]) -> str:
    from tabulate import tabulate

    body = []
    for r in results:
        body.append([r["case"], r["command"], r["pfns"], f"{r['s'] * 1e3:.0f}",
                     f"{r['raw_s'] * 1e3:.0f}", f"{r['s'] / r['raw_s']:.1f}",
                     f"{r['s'] / r['pfns'] * 1e9:.0f}", r["peak_rss_kib"] >> 10,
                     (r["peak_rss_kib"] - r["rss_before_kib"]) >> 10,
                     f"{r['tracemalloc_peak'] / 2**20:.1f}"])
    out = tabulate(body, headers=["case", "command", "pfns", "ms", "raw read ms",
                                  "ms / raw read", "ns per pfn", "peak RSS MiB",
                                  "RSS rise MiB", "tracemalloc MiB"]) + "\n"
    first = {r["command"]: r for r in results if r["case"] == results[0]["case"]}
    growth = []
    for r in results:
        b = first.get(r["command"])
        if b is None or r["case"] == b["case"]:
            continue
        rise = max(r["peak_rss_kib"] - r["rss_before_kib"], 1)
        rise0 = max(b["peak_rss_kib"] - b["rss_before_kib"], 1)
        growth.append([f"{b['case']} -> {r['case']}", r["command"],
                       f"{r['pfns'] / b['pfns']:.2f}", f"{r['s'] / b['s']:.2f}",
                       f"{(r['s'] / r['pfns']) / (b['s'] / b['pfns']):.2f}",
                       f"{r['peak_rss_kib'] / b['peak_rss_kib']:.2f}", f"{rise / rise0:.2f}",
                       f"{r['tracemalloc_peak'] / b['tracemalloc_peak']:.2f}"])
    if growth:
        out += "\ngrowth:\n" + tabulate(growth, headers=[
            "cases", "command", "pfns x", "time x", "time per pfn x", "peak RSS x",
            "RSS rise x", "tracemalloc x"]) + "\n"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*", default=list(DEFAULT_CASES))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--one", nargs=2, metavar=("CASE", "COMMAND"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.repeat)))
        return
    from . import machine

    print(machine())
    results = run(args.cases, args.repeat)
    print(render(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")

if __name__ == "__main__":
    main()
