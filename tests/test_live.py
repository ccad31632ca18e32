"""Live targets: a 6.12 guest still running the churn workload (lab run --live), read over
QMP (drgn's QEMU target) and inside GDB on its gdbstub.  Walks that race with the kernel stay
bounded and report what moved under them; nothing raises or hangs.

The guest burns a CPU while it churns, so it lives only as long as this module."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from memscope import commands, lab

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "gdb_scripts" / "memscope.py"


@pytest.fixture(scope="module")
def live_guest(tmp_path_factory):
    """meta.json of a 6.12 guest running the churn workload (qmp_socket, gdb_port, ...)."""
    out = tmp_path_factory.mktemp("live") / "guest"
    try:
        yield lab.run(lab.RunOptions(kernel="6.12", workload="churn", mode="live",
                                     progress=False), out)
    finally:
        if (out / "meta.json").exists():
            lab.stop(out)


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    # The timeout guards against a hang (a failure), it does not measure speed.
    return subprocess.run([sys.executable, "-m", "memscope.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def query_status(qmp_path: str) -> dict:
    s = socket.socket(socket.AF_UNIX)
    s.connect(qmp_path)
    f = s.makefile("rwb")
    f.readline()
    for cmd in ("qmp_capabilities", "query-status"):
        f.write(json.dumps({"execute": cmd}).encode() + b"\n")
        f.flush()
        while "event" in (msg := json.loads(f.readline())):
            pass
    s.close()
    return msg["return"]


LIVE_RUNS = [("buddyinfo", "proc"), ("pagetypeinfo", "proc"), ("pagetypeinfo", "json"),
             ("freelists", "json"), ("check", "json")]


def test_every_buddy_command_completes_on_a_churning_live_guest_over_qmp(live_guest):
    """Walks race with the kernel: they stay bounded and report what moved under them
    (check/freelists may exit 1 with problems), never an exception or a hang."""
    qmp, vmlinux = live_guest["qmp_socket"], live_guest["vmlinux"]
    for cmd, fmt in LIVE_RUNS:
        r = run_cli("--qemu", qmp, "-s", str(vmlinux), cmd, "-f", fmt)
        assert r.stderr == "", (cmd, r.stderr)
        if cmd in ("check", "freelists"):
            assert r.returncode in (0, 1), (cmd, r.returncode)
            data = json.loads(r.stdout)
            problems = data["problems"] if cmd == "check" else \
                [p for z in data for p in z["problems"]]
            assert (r.returncode == 1) == bool(problems)
            for p in problems:
                assert p["message"] and p["kind"]
        else:
            assert r.returncode == 0, (cmd, r.stdout)
            if fmt == "json":
                json.loads(r.stdout)
            else:
                assert r.stdout.startswith("Node 0" if cmd == "buddyinfo" else "Page block order")


@pytest.mark.parametrize("cmd", [["pages"], ["frag"]])
def test_live_guest_commands_complete_and_report_changed_pages(live_guest, cmd):
    p = run_cli("--qemu", live_guest["qmp_socket"], "-s", live_guest["vmlinux"], *cmd,
                "-f", "json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    zones = [z for z in data if "zone" in z]
    assert zones
    if cmd == ["pages"]:
        # Pages changing under the read are counted, never fatal.
        assert all(isinstance(z["inconsistent"], int) for z in zones)


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_every_command_completes_in_gdb_on_a_churning_live_guest_which_then_runs_on(live_guest):
    """6.12 x86_64, churn workload, not frozen: gdb stops the guest while it is attached;
    every command completes (walks that raced with the kernel before the stop are bounded;
    check may report problems), and after detach the guest runs again."""
    commands._load()
    ex = ["-ex", f"file {live_guest['vmlinux']}",
          "-ex", f"target remote 127.0.0.1:{live_guest['gdb_port']}",
          "-ex", f"source {SCRIPT}"]
    for name in sorted(commands.COMMANDS):
        ex += ["-ex", f"echo @@{name}\\n", "-ex", f"memscope {name} -f json",
               "-ex", 'printf "@@status %d\\n", $memscope_status']
    ex += ["-ex", "detach"]
    p = subprocess.run(["gdb", "-nx", "-batch", "-iex", "set index-cache enabled on", *ex],
                       capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert "Traceback" not in p.stderr and "Python Exception" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines()
              if line.startswith("memscope:") and "kernel offset" not in line]
    assert errors == []
    blocks = p.stdout.split("@@")[1:]
    outputs = {b.split("\n", 1)[0]: b.split("\n", 1)[1] for b in blocks
               if not b.startswith("status")}
    statuses = [int(b.split()[1]) for b in blocks if b.startswith("status")]
    assert sorted(outputs) == sorted(commands.COMMANDS)
    for text in outputs.values():
        json.loads(text)  # every command printed a whole JSON document
    assert all(s in (0, 1) for s in statuses), statuses
    assert query_status(live_guest["qmp_socket"])["running"] is True
