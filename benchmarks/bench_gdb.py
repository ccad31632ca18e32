"""Benchmark: every command through the GDB backend on a paused guest against the drgn
backend on that guest's vmcore (the same frozen state), measured in one run.

Target (issue 3): GDB within 3x of drgn.

    python3 benchmarks/bench_gdb.py [KERNEL] [--mem MB] [--repeat N] [--format FMT]

Boots KERNEL (default 6.12, 4096 MB) with ``lab run --keep`` (a vmcore and the paused guest
with its gdbstub), then:

- drgn: opens the vmcore once, then runs each command N times on a fresh MM/target (so
  that every run reads and decodes again; drgn keeps its parsed debug info, as gdb does);
- gdb: one gdb session (``file``, ``target remote``, ``source``), the KASLR offset found
  once, then each command N times through the ``memscope`` gdb command (a fresh target per
  run, as for a user; gdb keeps its debug info and memscope its probed layouts).

Both sides report the best of N and the first run; the ratio is gdb / drgn (best of N).
The gdb session ends with ``disconnect`` so that the guest stays paused for the next run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DRIVER = r'''
import json, time, gdb
plan = json.load(open(PLAN))
out = {}
t = time.perf_counter()
gdb.execute("memscope kaslr", to_string=True)
out["kaslr_seconds"] = time.perf_counter() - t
for name in plan["commands"]:
    times = []
    for i in range(plan["repeat"]):
        t = time.perf_counter()
        try:
            gdb.execute(f"memscope {name} --format {plan['format']}", to_string=True)
        except gdb.error:
            pass  # `check` may report problems (exit status 1): still timed
        times.append(time.perf_counter() - t)
    out[name] = times
json.dump(out, open(plan["output"], "w"))
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kernel", nargs="?", default="6.12")
    ap.add_argument("--mem", type=int, default=4096, metavar="MB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--format", default="json")
    args = ap.parse_args()

    from memscope import commands, lab
    from memscope.errors import LabError
    from memscope.mm.zone import MM
    from memscope.target.drgn import DrgnTarget, open_core

    commands._load()
    names = sorted(commands.COMMANDS)
    tmp = Path(tempfile.mkdtemp(prefix="bench-gdb-"))
    d = tmp / "run"
    gdb_bin = "gdb-multiarch" if "arm64" in args.kernel else "gdb"
    print(f"booting {args.kernel} with {args.mem} MB (lab run --keep) ...", file=sys.stderr)
    try:
        meta = lab.run(lab.RunOptions(kernel=args.kernel, workload="mixed", mem=args.mem,
                                      mode="keep", progress=False), d)
        vmcore, vmlinux = meta["snapshots"][0]["vmcore"], meta["vmlinux"]

        # drgn on the vmcore
        t = time.perf_counter()
        prog = open_core(vmcore, vmlinux)
        drgn_open = time.perf_counter() - t
        drgn_times = {}
        for name in names:
            cmd = commands.COMMANDS[name]
            fmt = args.format if args.format in cmd.formats else "json"
            ns = argparse.Namespace(command=name, format=fmt)
            # the command's own defaults for its extra arguments
            p = argparse.ArgumentParser()
            if cmd.add_arguments:
                cmd.add_arguments(p)
            for k, v in vars(p.parse_args([])).items():
                setattr(ns, k, v)
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    cmd.run(MM(DrgnTarget(prog)), ns).render(fmt)
                times.append(time.perf_counter() - t)
            drgn_times[name] = times

        # gdb on the paused guest
        plan = {"commands": names, "repeat": args.repeat, "format": args.format,
                "output": str(tmp / "gdb.json")}
        (tmp / "plan.json").write_text(json.dumps(plan))
        (tmp / "driver.py").write_text(f"PLAN = {str(tmp / 'plan.json')!r}\n" + DRIVER)
        import os

        def gdb_session(memsave: bool):
            (tmp / "gdb.json").unlink(missing_ok=True)
            t = time.perf_counter()
            subprocess.run([gdb_bin, "-nx", "-batch", "-iex", "set index-cache enabled on",
                            "-ex", f"file {vmlinux}",
                            "-ex", f"target remote 127.0.0.1:{meta['gdb_port']}",
                            "-ex", f"source {ROOT / 'gdb_scripts' / 'memscope.py'}",
                            "-ex", f"source {tmp / 'driver.py'}", "-ex", "disconnect"],
                           check=True, stdin=subprocess.DEVNULL, capture_output=True,
                           env={**os.environ, "MEMSCOPE_GDB_MEMSAVE": "1" if memsave else "0"})
            total = time.perf_counter() - t
            return json.loads((tmp / "gdb.json").read_text()), total

        g, gdb_total = gdb_session(True)
        gp, gdbp_total = gdb_session(False)
    finally:
        with contextlib.suppress(LabError):
            lab.stop(d)

    from tabulate import tabulate

    rows = []
    for name in names:
        dt, gt, pt = drgn_times[name], g[name], gp[name]
        rows.append([name, f"{dt[0]:.3f}", f"{min(dt):.3f}", f"{gt[0]:.3f}", f"{min(gt):.3f}",
                     f"{min(gt) / min(dt):.2f}x", f"{min(pt):.3f}", f"{min(pt) / min(dt):.2f}x"])
    print(f"{args.kernel}, {args.mem} MB guest, --format {args.format}, best of {args.repeat} "
          "(seconds); gdb: bulk reads via QEMU's monitor (memsave); gdb-packets: gdbstub "
          "memory packets only (MEMSCOPE_GDB_MEMSAVE=0)")
    print(tabulate(rows, headers=["command", "drgn first", "drgn best", "gdb first", "gdb best",
                                  "gdb/drgn", "gdb-packets best", "gdb-packets/drgn"]))
    print(f"drgn open_core (vmcore + DWARF): {drgn_open:.2f} s; gdb sessions (file, connect, "
          f"KASLR {g['kaslr_seconds']:.3f} s, all runs): {gdb_total:.1f} s with memsave, "
          f"{gdbp_total:.1f} s without")
    return 0


if __name__ == "__main__":
    sys.exit(main())
