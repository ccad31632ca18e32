"""Live targets: a 6.12 guest still running the churn workload (lab run --live), read over
QMP (``--qemu``, drgn's QEMU target) and inside GDB on its gdbstub, each compared byte for
byte with the command line on a dump of the same paused state.

- QMP: the test stops the guest over QMP, dumps it (``dump-guest-memory``, as the lab
  does), runs every command, format and flag over ``--qemu`` and on the dump, and lets the
  guest run again (``cont``).
- GDB: gdb stops the guest when it attaches; the driver inside gdb dumps it over QMP while
  it is stopped, runs every command, and ``detach`` lets the guest run again.

A pause lands anywhere, also inside a critical section of the page allocator, where the
free lists, nr_free, NR_FREE_PAGES and the pcp lists may rightly disagree for a moment
(``check`` would say so).  Which pause is consistent is decided from the dump alone, with
drgn's helpers (guests.locks_held: no zone->lock or pcp->lock held); an inconsistent pause
is let go and taken again (at most PAUSES times, each recorded).  What memscope prints does
not take part in that choice, and on the pause that is kept every command must succeed
(status 0, ``check`` included) and print exactly what the dump gives.

The guest burns a CPU while it churns, so it lives only as long as this module."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import guests
from memscope import lab

ROOT = Path(__file__).resolve().parents[1]
#: Pauses tried before giving up on a consistent one (see the module docstring).
PAUSES = 8


@pytest.fixture(scope="module")
def live_guest(tmp_path_factory):
    """A 6.12 guest running the churn workload (guests.Guest: qmp_socket, gdb_port, ...)."""
    out = tmp_path_factory.mktemp("live") / "guest"
    try:
        meta = lab.run(lab.RunOptions(kernel="6.12", workload="churn", mode="live",
                                      progress=False), out)
        yield guests.Guest("6.12-live", out, meta)
    finally:
        if (out / "meta.json").exists():
            lab.stop(out)


def pause_consistently(g: guests.Guest, work: Path) -> tuple[Path, list[list[str]]]:
    """Stop the guest over QMP and dump it, until a pause holds no zone or pcp lock.
    Returns (the dump, the locks each rejected pause held); the guest stays paused."""
    rejected = []
    for i in range(PAUSES):
        guests.qmp(g.qmp_socket, "stop")
        vmcore = work / f"vmcore-{i}"
        guests.dump(g.qmp_socket, vmcore)
        held = guests.locks_held(vmcore, g.vmlinux)
        if not held:
            return vmcore, rejected
        rejected.append(held)
        vmcore.unlink()
        guests.qmp(g.qmp_socket, "cont")
        time.sleep(0.3)
    pytest.fail(f"no consistent pause in {PAUSES}: locks held {rejected}")


def test_every_command_over_qmp_on_a_paused_live_guest_prints_what_drgn_prints_on_its_dump(
        live_guest, tmp_path):
    g = live_guest
    assert guests.status(g.qmp_socket) == "running"
    vmcore, rejected = pause_consistently(g, tmp_path)
    try:
        got = guests.run_cli(["--qemu", g.qmp_socket, "-s", g.vmlinux], guests.plan(g),
                             tmp_path / "qmp", tmp_path / "png-qmp")
        assert guests.status(g.qmp_socket) == "paused"  # nothing resumed it
        want = guests.run_cli(["-c", str(vmcore), "-s", g.vmlinux], guests.plan(g),
                              tmp_path / "dump", tmp_path / "png-dump")
    finally:
        guests.qmp(g.qmp_socket, "cont")
    print(f"\nlive QMP: {len(rejected)} pauses rejected ({rejected})")
    guests.assert_same(got, want, tmp_path / "png-qmp", tmp_path / "png-dump", "live --qemu")
    assert guests.status(g.qmp_socket) == "running"


# Runs inside gdb, attached (so the guest is stopped): dump the guest over QMP, then run
# every command of the plan.  QMP here is a few lines of socket code (no memscope, no drgn).
DRIVER = r"""
import json, socket, gdb
plan = json.load(open(PLAN))
s = socket.socket(socket.AF_UNIX)
s.connect(plan["qmp"])
f = s.makefile("rwb")
def qmp(cmd, **args):
    f.write(json.dumps({"execute": cmd, **({"arguments": args} if args else {})}).encode() + b"\n")
    f.flush()
    while True:
        msg = json.loads(f.readline())
        if "event" not in msg:
            return msg
f.readline()
qmp("qmp_capabilities")
out = {"status": qmp("query-status"), "dump": qmp("dump-guest-memory", paging=False,
                                                  protocol="file:" + plan["vmcore"])}
f.close(); s.close()
gdb.execute("memscope kaslr", to_string=True)  # the KASLR note, which to_string would capture
out["runs"] = []
for argv in plan["runs"]:
    try:
        text, err = gdb.execute("memscope " + " ".join(argv), to_string=True), None
    except gdb.error as e:
        text, err = None, str(e)
    out["runs"].append({"out": text, "error": err,
                        "status": int(gdb.convenience_variable("memscope_status"))})
json.dump(out, open(plan["output"], "w"))
"""


def test_every_command_in_gdb_on_a_live_guest_prints_what_drgn_prints_on_its_dump(
        live_guest, tmp_path):
    """gdb stops the churning guest while attached; every command prints exactly what the
    command line prints on a dump of that stop, and after detach the guest runs on."""
    g = live_guest
    if not guests.have("gdb"):
        pytest.skip("gdb is not installed")
    runs = guests.plan(g)
    rejected = []
    for i in range(PAUSES):
        work = tmp_path / f"attach-{i}"
        work.mkdir()
        (work / "png").mkdir()
        vmcore = work / "vmcore"
        (work / "plan.json").write_text(json.dumps({
            "qmp": g.qmp_socket, "vmcore": str(vmcore), "output": str(work / "result.json"),
            "runs": [guests.concrete(a, work / "png") for a in runs]}))
        p = guests.gdb_batch("gdb", g.vmlinux, g.gdb_port, DRIVER, work, end="detach")
        assert (work / "result.json").exists(), f"gdb failed:\n{p.stdout}\n{p.stderr}"
        res = json.loads((work / "result.json").read_text())
        assert res["status"]["return"]["running"] is False, res["status"]  # gdb stopped it
        assert "error" not in res["dump"], res["dump"]
        held = guests.locks_held(vmcore, g.vmlinux)
        if not held:
            break
        rejected.append(held)
        vmcore.unlink()
    else:
        pytest.fail(f"no consistent stop in {PAUSES}: locks held {rejected}")
    print(f"\nlive gdb: {len(rejected)} stops rejected ({rejected})")
    assert "Traceback" not in p.stderr and "Python Exception" not in p.stderr, p.stderr
    got = [{**r, "argv": a, "err": ""} for r, a in zip(res["runs"], runs)]
    want = guests.run_cli(["-c", str(vmcore), "-s", g.vmlinux], runs, work / "dump",
                          work / "png-dump")
    guests.assert_same(got, want, work / "png", work / "png-dump", "live gdb")
    assert guests.wait_until(lambda: guests.status(g.qmp_socket) == "running", 10)


def test_plumbing_walks_on_a_running_guest_over_qmp_end_in_records_not_exceptions(live_guest):
    """Plumbing: on a guest that runs while it is read, walks that race with the kernel
    stay bounded and report what moved under them as problems (check/freelists may exit 1),
    never a traceback or a hang.  Nothing here says the answers are right."""
    g = live_guest
    for cmd in (["freelists", "-f", "json"], ["check", "-f", "json"], ["pages", "-f", "json"]):
        r = subprocess.run([sys.executable, "-m", "memscope.cli", "--qemu", g.qmp_socket, "-s",
                            g.vmlinux, *cmd], capture_output=True, text=True, timeout=300,
                           cwd=ROOT)
        assert "Traceback" not in r.stderr, (cmd, r.stderr)
        assert r.returncode in (0, 1), (cmd, r.returncode, r.stderr)
        data = json.loads(r.stdout)
        if cmd[0] == "check":
            assert (r.returncode == 1) == bool(data["problems"])
    assert guests.status(g.qmp_socket) == "running"
