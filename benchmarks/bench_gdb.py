"""Benchmark: every command through the GDB backend on a paused guest against the drgn
backend on that guest's vmcore (the same frozen state), measured in one run.

Targets: GDB within 3x of drgn (issue 3); ``slabinfo --format proc`` inside GDB and on
the guest through QMP (``--qemu``) within 3x of drgn on the dump (issue 9).

The commands are :data:`COMMANDS` (those that need no argument), each in the format named
there: slabinfo, vmallocinfo and meminfo as their /proc files, the others as JSON (or
--format).  Each one's output inside GDB (its last cold run) and through QMP is compared
with drgn's on the dump ("same" column).

    python3 benchmarks/bench_gdb.py [KERNEL] [--mem MB] [--repeat N] [--format FMT]

Boots KERNEL (default 6.12, 4096 MB) with ``lab run --keep`` (a vmcore and the paused guest
with its gdbstub), then:

- drgn: opens the vmcore once, then runs each command N times on a fresh context/target (so
  that every run reads and decodes again; drgn keeps its parsed debug info, as gdb does);
- gdb: one gdb session (``file``, ``target remote``, ``source``), the KASLR offset found
  and the session's one-time probes done by a first ``memscope buddyinfo``, then each
  command through the ``memscope`` gdb command N times *cold* (the guest memory memscope
  kept is dropped before each run, as when the guest ran and stopped again: nothing read
  before is reused, gdb keeps its debug info and memscope its probed layouts), then N
  times *warm* (again while the guest stays paused: memory read by the previous run is
  kept).  Three sessions: the default (local QEMU's memory read through /proc/PID/mem),
  MEMSCOPE_GDB_PROCMEM=0 (bulk reads through QEMU's monitor, memsave) and
  MEMSCOPE_GDB_MEMSAVE=0 (gdbstub packets only);
- QMP: ``memscope --qemu SOCKET`` on the same paused guest (drgn's QMP target: every
  read is a QMP ``memsave``/``pmemsave`` round trip), opened once like the vmcore, each
  of :data:`QMP_COMMANDS` N times through the CLI's code path (a fresh target each).

The headline ratio is gdb cold (best of N) / drgn (best of N); warm is the second.
The gdb session ends with ``disconnect`` so that the guest stays paused for the next run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the benchmarks package beside it

from benchmarks import best_of, run_command  # noqa: E402

#: command -> the format timed (None: --format); commands that need an argument are left out
COMMANDS = {"buddyinfo": None, "check": None, "frag": None, "freelists": None,
            "pageblocks": None, "pages": None, "pagetypeinfo": None,
            "slabinfo": "proc", "vmallocinfo": "proc", "meminfo": "proc"}
#: the commands also timed through QMP (--qemu): issue 9's
QMP_COMMANDS = ("slabinfo",)

DRIVER = r'''
import json, time, gdb
from memscope.target import gdb as tgdb
plan = json.load(open(PLAN))
out = {}
t = time.perf_counter()
gdb.execute("memscope kaslr", to_string=True)
out["kaslr_seconds"] = time.perf_counter() - t
# The session's first command pays the one-time probes (QEMU's monitor, its memory).
t = time.perf_counter()
gdb.execute("memscope buddyinfo --format json", to_string=True)
out["setup_seconds"] = time.perf_counter() - t

text = {}

def run(name, fmt):
    t = time.perf_counter()
    try:
        text[name] = gdb.execute(f"memscope {name} --format {fmt}", to_string=True)
    except gdb.error:
        pass  # `check` may report problems (exit status 1): still timed
    return time.perf_counter() - t

for name, fmt in plan["commands"].items():
    # cold: what the guest's last pause left cached is dropped before each run, as when
    # the guest ran and stopped again (gdb's stop event does the same)
    cold = []
    for i in range(plan["repeat"]):
        tgdb.invalidate_memory()
        cold.append(run(name, fmt))
    out[name] = {"cold": cold, "text": text.get(name)}
    # warm: the same command again while the guest stays paused (kept target and memory)
    out[name]["warm"] = [run(name, fmt) for i in range(plan["repeat"])]
json.dump(out, open(plan["output"], "w"))
'''


def qmp_session(socket: str, vmlinux: str, formats: dict, repeat: int,
                drgn_text: dict) -> tuple[dict, dict]:
    """Each of QMP_COMMANDS through ``--qemu SOCKET`` on the paused guest, best of REPEAT
    (a fresh target each, the Program opened once); ({name: seconds}, {name: same answer
    as drgn's on the dump})."""
    import gc

    from memscope.target.drgn import open_qemu

    prog = open_qemu(socket, vmlinux)
    times, same = {}, {}
    for name in QMP_COMMANDS:
        text = run_command(prog, name, formats[name])
        same[name] = text == drgn_text[name]
        times[name] = best_of(lambda: run_command(prog, name, formats[name]), repeat)
    del prog  # its QMP connection: QEMU serves one client at a time
    gc.collect()
    return times, same


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kernel", nargs="?", default="6.12")
    ap.add_argument("--mem", type=int, default=4096, metavar="MB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--format", default="json")
    ap.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON "
                    "(python3 -m benchmarks reads them from there)")
    args = ap.parse_args()

    from memscope import commands, lab
    from memscope.errors import LabError
    from memscope.target.drgn import open_core

    commands._load()
    names = sorted(COMMANDS)
    formats = {n: COMMANDS[n] or (args.format if args.format in commands.COMMANDS[n].formats
                                  else "json") for n in names}
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
        drgn_times, drgn_text = {}, {}
        for name in names:
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    drgn_text[name] = run_command(prog, name, formats[name])
                times.append(time.perf_counter() - t)
            drgn_times[name] = times

        # gdb on the paused guest
        plan = {"commands": formats, "repeat": args.repeat, "output": str(tmp / "gdb.json")}
        (tmp / "plan.json").write_text(json.dumps(plan))
        (tmp / "driver.py").write_text(f"PLAN = {str(tmp / 'plan.json')!r}\n" + DRIVER)
        import os

        def gdb_session(mode: str):
            (tmp / "gdb.json").unlink(missing_ok=True)
            t = time.perf_counter()
            subprocess.run([gdb_bin, "-nx", "-batch", "-iex", "set index-cache enabled on",
                            "-ex", f"file {vmlinux}",
                            "-ex", f"target remote 127.0.0.1:{meta['gdb_port']}",
                            "-ex", f"source {ROOT / 'gdb_scripts' / 'memscope.py'}",
                            "-ex", f"source {tmp / 'driver.py'}", "-ex", "disconnect"],
                           check=True, stdin=subprocess.DEVNULL, capture_output=True,
                           env={**os.environ,
                                "MEMSCOPE_GDB_MEMSAVE": "0" if mode == "packets" else "1",
                                "MEMSCOPE_GDB_PROCMEM": "1" if mode == "procmem" else "0"})
            total = time.perf_counter() - t
            return json.loads((tmp / "gdb.json").read_text()), total

        sessions = {mode: gdb_session(mode) for mode in ("procmem", "memsave", "packets")}
        qmp_times, qmp_same = qmp_session(meta["qmp_socket"], vmlinux, formats, args.repeat,
                                          drgn_text)
    finally:
        with contextlib.suppress(LabError):
            lab.stop(d)
        shutil.rmtree(tmp, ignore_errors=True)  # a 4 GiB dump per run

    from tabulate import tabulate

    rows = []
    for name in names:
        best = min(drgn_times[name])
        same = sessions["procmem"][0][name]["text"] == drgn_text[name]
        row = [name, f"{best * 1000:.1f}"]
        for mode in ("procmem", "memsave", "packets"):
            g = sessions[mode][0][name]
            cold, warm = min(g["cold"]), min(g["warm"])
            if mode == "procmem":
                row += [f"{cold * 1000:.1f}", f"{cold / best:.2f}x", f"{warm * 1000:.1f}",
                        f"{warm / best:.2f}x"]
            else:
                row += [f"{cold / best:.2f}x", f"{warm / best:.2f}x"]
        row.append(formats[name] + (" same" if same else " DIFFERS"))
        rows.append(row)
    print(f"{args.kernel}, {args.mem} MB guest, best of {args.repeat} "
          "(ms); gdb cold: guest memory kept by memscope dropped before each run; warm: "
          "the command again while the guest stays paused.  gdb: a local QEMU's memory "
          "read via /proc/PID/mem; memsave: MEMSCOPE_GDB_PROCMEM=0 (QEMU's monitor for "
          "bulk reads); packets: MEMSCOPE_GDB_MEMSAVE=0 (gdbstub packets only)")
    print(tabulate(rows, headers=["command", "drgn ms", "gdb cold ms", "COLD gdb/drgn",
                                  "gdb warm ms", "warm gdb/drgn", "memsave cold", "memsave warm",
                                  "packets cold", "packets warm",
                                  "format, gdb's answer"]))
    print(tabulate([[name, f"{min(drgn_times[name]) * 1000:.1f}", f"{qmp_times[name] * 1000:.1f}",
                     f"{qmp_times[name] / min(drgn_times[name]):.2f}x",
                     formats[name] + (" same" if qmp_same[name] else " DIFFERS")]
                    for name in QMP_COMMANDS],
                   headers=["qmp command", "drgn ms", "qmp ms", "QMP/drgn", "format, answer"]))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "gdb": {n: {"drgn": min(drgn_times[n]), "cold": min(sessions["procmem"][0][n]["cold"]),
                        "warm": min(sessions["procmem"][0][n]["warm"]), "format": formats[n],
                        "same": sessions["procmem"][0][n]["text"] == drgn_text[n]}
                    for n in names},
            "qmp": {n: {"drgn": min(drgn_times[n]), "qmp": qmp_times[n], "format": formats[n],
                        "same": qmp_same[n]} for n in QMP_COMMANDS}}))
    for mode, (g, total) in sessions.items():
        print(f"gdb session {mode}: KASLR {g['kaslr_seconds'] * 1000:.0f} ms, first command "
              f"(one-time probes) {g['setup_seconds'] * 1000:.0f} ms, all runs {total:.1f} s")
    print(f"drgn open_core (vmcore + DWARF): {drgn_open:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
