"""`--qemu SOCKET --pause`: the guest is stopped over QMP while memscope reads it and runs
again afterwards, on every exit path.  On a guest that keeps churning (lab run --live, churn
workload), paused reads are exact: `check` finds the kernel's own invariants hold
(free_area[].nr_free against the lists, NR_FREE_PAGES against the pages), which an unpaused
read of the same guest breaks in most runs (measured: 2 of 3 runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memscope import lab
from memscope.target.qmp import connect, run_state

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def churning_guest(tmp_path_factory):
    out = tmp_path_factory.mktemp("pause") / "guest"
    try:
        yield lab.run(lab.RunOptions(kernel="6.12", workload="churn", mode="live",
                                     progress=False), out)
    finally:
        if (out / "meta.json").exists():
            lab.stop(out)


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "memscope.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def test_paused_check_on_a_churning_guest_is_exact_and_the_guest_runs_on(churning_guest):
    qmp, vmlinux = churning_guest["qmp_socket"], churning_guest["vmlinux"]
    for _ in range(3):
        assert run_state(qmp) == "running"
        p = cli("--qemu", qmp, "-s", vmlinux, "--pause", "check")
        out, err = p.communicate(timeout=300)
        assert (p.returncode, err) == (0, ""), out + err
        assert run_state(qmp) == "running"


def test_an_unpaused_read_of_a_running_guest_says_it_is_approximate(churning_guest):
    p = cli("--qemu", churning_guest["qmp_socket"], "-s", churning_guest["vmlinux"],
            "buddyinfo", "-f", "proc")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0 and out.startswith("Node 0")
    assert err == ("memscope: note: the guest ran while it was read: the answer is "
                   "approximate (--pause stops it for the read)\n")


def _children(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_a_paused_read_lets_the_guest_run_again(churning_guest, sig):
    """Interrupted while its child reads the stopped guest: status 130, one line, no child
    left behind, and the guest runs again."""
    qmp, vmlinux = churning_guest["qmp_socket"], churning_guest["vmlinux"]
    p = cli("--qemu", qmp, "-s", vmlinux, "--pause", "pages", "-f", "json")
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


def test_a_guest_that_was_already_paused_stays_paused(churning_guest):
    qmp, vmlinux = churning_guest["qmp_socket"], churning_guest["vmlinux"]
    q = connect(qmp)
    q.execute("stop")
    q.close()
    try:
        p = cli("--qemu", qmp, "-s", vmlinux, "--pause", "buddyinfo", "-f", "proc")
        out, err = p.communicate(timeout=300)
        assert (p.returncode, err) == (0, "") and out.startswith("Node 0")
        assert run_state(qmp) == "paused"
    finally:
        q = connect(qmp)
        q.execute("cont")
        q.close()


def test_pause_without_qemu_is_a_one_line_error():
    p = cli("-c", "/nonexistent", "--pause", "buddyinfo")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2
    assert err == ("memscope: --pause needs --qemu SOCKET (a dump does not change; the "
                   "running kernel of -k cannot be paused)\n")
