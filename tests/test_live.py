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
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import guests
from memscope import lab
from memscope.target.qmp import connect, run_state

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


# --- --pause ---------------------------------------------------------------------------
# `--qemu SOCKET --pause`: the guest is stopped over QMP while memscope reads it and runs
# again afterwards, on every exit path.  On the churning guest paused reads are exact:
# `check` finds the kernel's own invariants hold (free_area[].nr_free against the lists,
# NR_FREE_PAGES against the pages), which an unpaused read of the same guest breaks in most
# runs (measured: 2 of 3 runs).

def pause_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "memscope.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def test_paused_check_on_a_live_guest_is_exact_and_the_guest_runs_on(live_guest):
    qmp, vmlinux = live_guest.qmp_socket, live_guest.vmlinux
    for _ in range(3):
        assert run_state(qmp) == "running"
        p = pause_cli("--qemu", qmp, "-s", vmlinux, "--pause", "check")
        out, err = p.communicate(timeout=300)
        assert (p.returncode, err) == (0, ""), out + err
        assert run_state(qmp) == "running"


def test_an_unpaused_read_of_a_running_guest_says_it_is_approximate(live_guest):
    p = pause_cli("--qemu", live_guest.qmp_socket, "-s", live_guest.vmlinux,
            "buddyinfo", "-f", "proc")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0 and out.startswith("Node 0")
    assert err == ("memscope: note: the guest ran while it was read: the answer is "
                   "approximate (--pause stops it for the read)\n")


def _children(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_a_paused_read_lets_the_guest_run_again(live_guest, sig):
    """Interrupted while its child reads the stopped guest: status 130, one line, no child
    left behind, and the guest runs again."""
    qmp, vmlinux = live_guest.qmp_socket, live_guest.vmlinux
    p = pause_cli("--qemu", qmp, "-s", vmlinux, "--pause", "pages", "-f", "json")
    deadline = time.monotonic() + 60
    while not _children(p.pid):  # the child exists only while the guest is stopped
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.02)
    child = _children(p.pid)[0]
    os.kill(p.pid, sig)
    out, err = p.communicate(timeout=60)
    assert (p.returncode, out, err) == (130, "", "memscope: interrupted\n")
    assert not Path(f"/proc/{child}").exists()
    assert run_state(qmp) == "running"


def test_a_guest_that_was_already_paused_stays_paused(live_guest):
    qmp, vmlinux = live_guest.qmp_socket, live_guest.vmlinux
    q = connect(qmp)
    q.execute("stop")
    q.close()
    try:
        p = pause_cli("--qemu", qmp, "-s", vmlinux, "--pause", "buddyinfo", "-f", "proc")
        out, err = p.communicate(timeout=300)
        assert (p.returncode, err) == (0, "") and out.startswith("Node 0")
        assert run_state(qmp) == "paused"
    finally:
        q = connect(qmp)
        q.execute("cont")
        q.close()


def test_pause_without_qemu_is_a_one_line_error():
    p = pause_cli("-c", "/nonexistent", "--pause", "buddyinfo")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2
    assert err == ("memscope: --pause needs --qemu SOCKET (a dump does not change; the "
                   "running kernel of -k cannot be paused)\n")
