"""``python3 -m benchmarks`` (``make bench``): every benchmark, one table of ratios.

On the 4 GiB lab case (default "6.12-4g", built and cached by memscope.lab.cases on first
use, ~40 s): bench_buddy (issue 3), bench_pages (issue 4) and bench_slub (issue 9) on one drgn
Program, then
bench_gdb (the GDB backend on a paused guest against the drgn backend on its dump; it
boots its own guest) in a subprocess, its ratios parsed from its table.  --no-gdb skips it.
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
import time
from pathlib import Path

from . import DEFAULT_CASE, Row, machine, open_prog, render, snapshot

ROOT = Path(__file__).resolve().parents[1]


def gdb_rows(kernel: str, repeat: int, timeout: float, log) -> tuple[list[Row], str]:
    """Run bench_gdb.py standalone; (rows, note)."""
    script = ROOT / "benchmarks" / "bench_gdb.py"
    if not script.exists():
        return [], "bench_gdb.py not found: GDB backend not benchmarked"
    log(f"bench_gdb: booting {kernel} with 4096 MB and timing gdb (minutes) ...")
    try:
        p = subprocess.run([sys.executable, str(script), kernel, "--repeat", str(repeat)],
                           capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return [], f"bench_gdb.py did not finish within {timeout:.0f} s: skipped"
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        return [], f"bench_gdb.py failed (exit {p.returncode}: {last}): skipped"
    rows = []
    for line in p.stdout.splitlines():
        # command, drgn first, drgn best, gdb first, gdb best, gdb/drgn, ...
        m = re.match(r"\s*(\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x", line)
        if m and float(m[6]):
            # the printed ratio, not the rounded seconds (buddyinfo's drgn best prints 0)
            gdb_s, ratio = float(m[5]), float(m[6])
            rows.append(Row("gdb", f"gdb memscope {m[1]}", gdb_s,
                            f"drgn memscope {m[1]} (its vmcore)", gdb_s / ratio, "<= 3",
                            "paused guest; ms rounded by bench_gdb"))
    if not rows:
        return [], "bench_gdb.py output not understood: skipped. Its output:\n" + p.stdout
    return rows, "bench_gdb.py:\n" + p.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", nargs="?", default=DEFAULT_CASE)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--sample", type=int, default=100000,
                    help="pages timed in the naive drgn loop of bench_pages (0: all)")
    ap.add_argument("--slub-sample", type=int, default=8,
                    help="caches drgn's slab iterator is timed on in bench_slub, scaled to "
                    "all (0: every cache, about 20 minutes on the 4 GiB case)")
    ap.add_argument("--no-gdb", action="store_true", help="skip bench_gdb (boots a guest)")
    ap.add_argument("--gdb-timeout", type=float, default=1800)
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from . import bench_buddy, bench_pages, bench_slub

    log(f"case {args.case} (built on first use, ~40 s) ...")
    snap = snapshot(args.case)
    t = time.perf_counter()
    prog = open_prog(snap)
    t_open = time.perf_counter() - t
    log("bench_buddy ...")
    rows = bench_buddy.run(snap, args.repeat, prog, log=log)
    log("bench_pages ...")
    rows += bench_pages.run(snap, args.repeat, prog, args.sample, log=log)
    log("bench_slub ...")
    rows += bench_slub.run(snap, min(args.repeat, 3), prog, args.slub_sample, log=log)
    note = "bench_gdb skipped (--no-gdb)"
    if not args.no_gdb:
        g, note = gdb_rows(snap.kernel, 3, args.gdb_timeout, log)
        rows += g

    print(f"memscope benchmarks, {datetime.date.today()}, case {args.case} "
          f"({snap.meta.get('release', '')}); {machine()}")
    print(f"best of {args.repeat} runs in one process (ms); subject/baseline < 1: the subject "
          f"is faster; drgn Program opened once ({t_open:.2f} s), outside the timings\n")
    print(render(rows))
    print("\ncold: a new Program (open + first run), seconds\n" + bench_buddy.cold_table(rows))
    print("\n" + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
