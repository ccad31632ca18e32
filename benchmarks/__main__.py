"""``python3 -m benchmarks`` (``make bench``): every benchmark, one table of ratios.

On the 4 GiB lab case (default "6.12-4g", built and cached by memscope.lab.cases on first
use, ~40 s): bench_buddy (issue 3), bench_pages (issue 4), bench_slub (issue 9),
bench_vmalloc, bench_meminfo and bench_mempool (issue 10) on one drgn Program, then
bench_gdb (the GDB backend and the QMP target on a paused guest against the drgn backend on
its dump; it boots its own guest) in a subprocess, its ratios read from its --json file.
--no-gdb skips it.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from pathlib import Path

from . import DEFAULT_CASE, Row, machine, open_prog, render, snapshot

ROOT = Path(__file__).resolve().parents[1]


def gdb_rows(kernel: str, repeat: int, timeout: float, log) -> tuple[list[Row], str]:
    """Run bench_gdb.py standalone; (rows from its --json file, its printed tables)."""
    import json
    import tempfile

    script = ROOT / "benchmarks" / "bench_gdb.py"
    if not script.exists():
        return [], "bench_gdb.py not found: GDB backend not benchmarked"
    log(f"bench_gdb: booting {kernel} with 4096 MB and timing gdb and QMP (minutes) ...")
    with tempfile.TemporaryDirectory(prefix="memscope-bench-") as tmp:
        out = Path(tmp) / "gdb.json"
        try:
            p = subprocess.run([sys.executable, str(script), kernel, "--repeat", str(repeat),
                                "--json", str(out)],
                               capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return [], f"bench_gdb.py did not finish within {timeout:.0f} s: skipped"
        if p.returncode != 0 or not out.exists():
            last = (p.stderr.strip().splitlines() or ["?"])[-1]
            return [], f"bench_gdb.py failed (exit {p.returncode}: {last}): skipped"
        res = json.loads(out.read_text())
    rows = []
    for name, r in res["gdb"].items():
        rows.append(Row("gdb", f"gdb memscope {name} (cold)", r["cold"],
                        f"drgn memscope {name} (its vmcore)", r["drgn"], "<= 3",
                        f"paused guest, -f {r['format']}; "
                        + ("same answer" if r["same"] else "ANSWERS DIFFER")))
    for name, r in res["qmp"].items():
        rows.append(Row("qmp", f"--qemu memscope {name}", r["qmp"],
                        f"drgn memscope {name} (its vmcore)", r["drgn"], "<= 3",
                        f"paused guest, -f {r['format']}; "
                        + ("same answer" if r["same"] else "ANSWERS DIFFER")))
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

    from . import bench_buddy, bench_meminfo, bench_mempool, bench_pages, bench_slub, \
        bench_vmalloc

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
    log("bench_vmalloc ...")
    rows += bench_vmalloc.run(snap, args.repeat, prog, log=log)
    log("bench_meminfo ...")
    rows += bench_meminfo.run(snap, args.repeat, prog, log=log)
    log("bench_mempool ...")
    rows += bench_mempool.run(snap, min(args.repeat, 5), prog, log=log)
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
