"""Benchmark (issue 14): what one dump costs, with a cold and a warm debug-info cache, and
`memscope fleet` throughput with 1 and 2 Dask workers.

- per dump: ``memscope -c VMCORE -s VMLINUX COMMAND`` as a fresh process (what a fleet
  task does), wall time and peak RSS, with the debug-info cache off (every run loads the
  DWARF) and warm (a cache made by an earlier run);
- fleet: ``memscope fleet DIR --vmlinux-dir DIR COMMAND`` over N dumps (the lab cases'
  dumps, each linked several times) on a LocalCluster of 1 and of 2 workers, warm cache;
  dumps per minute.

    python3 -m benchmarks.bench_fleet [--cases 5.10,6.1,6.12,7.2] [--copies 2]
                                      [--command buddyinfo] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memscope.lab import cases


def _run(argv, env) -> float:
    """Wall seconds of one memscope process."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "memscope.cli", *argv], env=env,
                       capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode not in (0, 1):
        raise SystemExit(f"memscope {' '.join(argv)} failed: {r.stderr.strip()}")
    return dt


def per_dump(snap, command: str, repeat: int, cache: str) -> dict:
    argv = ["-c", str(snap.vmcore), "-s", str(snap.vmlinux), command]
    cold_env = dict(os.environ, MEMSCOPE_DEBUGINFO_CACHE="0")
    warm_env = dict(os.environ, MEMSCOPE_CACHE=cache)
    _run(argv, warm_env)  # makes the cache
    cold = min(_run(argv, cold_env) for _ in range(repeat))
    warm = min(_run(argv, warm_env) for _ in range(repeat))
    # peak RSS: one run each in a fresh interpreter that reports its own children
    rss = {}
    for name, env in (("cold", cold_env), ("warm", warm_env)):
        code = ("import resource,subprocess,sys;"
                f"subprocess.run([sys.executable,'-m','memscope.cli',*{argv!r}],"
                "capture_output=True);"
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss//1024)")
        rss[name] = int(subprocess.run([sys.executable, "-c", code], env=env,
                                       capture_output=True, text=True).stdout)
    return dict(cold=cold, warm=warm, rss_cold=rss["cold"], rss_warm=rss["warm"])


def fleet(snaps, copies: int, command: str, workers: int, cache: str) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        dumps, vml = Path(tmp) / "dumps", Path(tmp) / "vmlinux"
        n = 0
        for name, snap in snaps.items():
            (vml / name).mkdir(parents=True)
            (vml / name / "vmlinux").symlink_to(snap.vmlinux)
            for k in range(copies):
                d = dumps / f"{name}-{k}"
                d.mkdir(parents=True)
                (d / "vmcore").symlink_to(snap.vmcore)
                n += 1
        env = dict(os.environ, MEMSCOPE_CACHE=cache)
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "memscope.cli", "fleet", str(dumps),
                            "--vmlinux-dir", str(vml), "--workers", str(workers), command],
                           env=env, capture_output=True, text=True)
        dt = time.perf_counter() - t
        if r.returncode != 0:
            raise SystemExit(f"fleet failed: {r.stderr.strip() or r.stdout[-500:]}")
        return n, dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="5.10,6.1,6.12,7.2")
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--command", default="buddyinfo")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    snaps = {name: cases.snapshot(name) for name in a.cases.split(",")}
    with tempfile.TemporaryDirectory() as cache:
        print(f"per dump ({a.command}, best of {a.repeat}, fresh process each):")
        print(f"{'case':<12} {'cold s':>7} {'warm s':>7} {'cold MB':>8} {'warm MB':>8}")
        for name, snap in snaps.items():
            r = per_dump(snap, a.command, a.repeat, cache)
            print(f"{name:<12} {r['cold']:>7.2f} {r['warm']:>7.2f} {r['rss_cold']:>8} "
                  f"{r['rss_warm']:>8}", flush=True)
        print(f"\nfleet ({a.command}, warm cache):")
        for workers in (1, 2):
            n, dt = fleet(snaps, a.copies, a.command, workers, cache)
            print(f"{workers} worker(s): {n} dumps in {dt:.1f} s = {60 * n / dt:.1f} dumps/min "
                  "(cluster start included)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
