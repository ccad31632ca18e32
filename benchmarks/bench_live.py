"""Benchmark (issue 15): each command on the live kernel (``memscope -k`` inside a
``lab run --userland`` guest) against the same command on a dump of that guest.

The live times are the guest's own (tests/live_userland_guest.py records each command's
time in DIR/results/plan-quiet.json: one run each on one ``-k`` target whose debug info is
loaded, on the quiet guest, through the command line's code path).  The dump is the
run's final snapshot (DIR/vmcore, taken after the workload), read on the host through the
same code path, best of REPEAT.  The guest runs under TCG, so its CPU is many times slower
than the host's: the table also gives the ratio divided by that slowdown, measured with
the same pure-Python loop in the guest (DIR/results/cpu.json) and here.  That normalised
ratio is what reading /proc/kcore costs against reading a file, give or take how unlike a
Python loop each command is.

    python3 -m benchmarks.bench_live DIR [--repeat N]

DIR: a ``lab run --userland`` directory whose workload ran live_userland_guest.py (the
test's guest, kept with ``--basetemp``; or ``--boot KERNEL`` to boot one here, minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import best_of, warm_file

ROOT = Path(__file__).resolve().parents[1]


def cpu_loop() -> float:
    """The guest driver's reference loop, timed here (seconds)."""
    t = time.monotonic()
    sum(i * i for i in range(3_000_000))
    return time.monotonic() - t


def boot(kernel: str, out: Path) -> None:
    """A --userland run of KERNEL whose workload is the test's guest driver."""
    from memscope import lab

    script = out.parent / f"{out.name}-workload.sh"
    guest = (ROOT / "tests" / "live_userland_guest.py").read_text()
    script.write_text("mkdir -p /results\ncat > /root/guest.py <<'MEMSCOPE_GUEST_PY'\n"
                      f"{guest}\nMEMSCOPE_GUEST_PY\ncd /root\n"
                      "python3 guest.py main > /results/main.log 2>&1\nexit 0\n")
    lab.run(lab.RunOptions(kernel=kernel, workload=str(script), userland=True,
                           timeout=5400, progress=True), out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--boot", metavar="KERNEL", help="boot a --userland guest of KERNEL into DIR first")
    a = ap.parse_args()
    if a.boot:
        boot(a.boot, a.dir)
    from memscope import cli
    from memscope.target.drgn import DrgnTarget, open_core

    meta = json.loads((a.dir / "meta.json").read_text())
    live = json.loads((a.dir / "results" / "plan-quiet.json").read_text())
    load = json.loads((a.dir / "results" / "load.json").read_text())
    guest_cpu = json.loads((a.dir / "results" / "cpu.json").read_text())["loop_seconds"]
    host_cpu = min(cpu_loop() for _ in range(3))
    slow = guest_cpu / host_cpu
    vmcore = meta["snapshots"][0]["vmcore"]
    warm_file(vmcore)
    t = time.perf_counter()
    target = DrgnTarget(open_core(vmcore, meta["vmlinux"]))
    open_s = time.perf_counter() - t
    rows = []
    for r in live:
        argv = r["argv"]
        if argv[0] in ("maps", "heap", "vtop"):
            continue  # the guest driver's own pid: not in the dump (it had exited)
        args = cli.build_parser().parse_args(["-c", vmcore, "-s", meta["vmlinux"], *argv])
        dump_s = best_of(lambda: cli._run_command(args, target), a.repeat)
        rows.append((" ".join(argv), r["seconds"], dump_s))
    print(f"# {meta['kernel']} ({meta['release']}), {meta['mem_mb']} MiB guest, "
          f"{meta['cpus']} vCPUs under TCG; guest CPU {slow:.1f}x slower than the host's "
          f"(pure-Python loop {guest_cpu:.2f} s vs {host_cpu:.2f} s)")
    print(f"# opening: -k in the guest {load['open_seconds']} s (import "
          f"{load['import_seconds']} s); the dump on the host {open_s:.2f} s")
    print("| command | live -k (guest) s | dump (host) s | live/dump | live/dump / CPU slowdown |")
    print("|---|---:|---:|---:|---:|")
    for name, live_s, dump_s in rows:
        ratio = live_s / dump_s if dump_s else float("inf")
        print(f"| `{name}` | {live_s:.2f} | {dump_s:.3f} | {ratio:.0f} | {ratio / slow:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
