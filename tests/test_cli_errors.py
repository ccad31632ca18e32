"""Bad input, for every command, through the real command line: one line "memscope: ..."
on stderr naming the cause, exit status 2, nothing on stdout, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from memscope import commands

commands._load()
COMMANDS = sorted(commands.COMMANDS)
KERNEL = "6.12"  # any real dump will do; the errors happen before any analysis
#: The arguments a command cannot run without (the errors tested here come before any use
#: of them).
ARGS = {"slab": ["dentry"], "whatis": ["0xffff888000000000"], "maps": ["1"], "heap": ["1"],
        "smaps_rollup": ["1"],
        "vtop": ["0xffff888000000000"], "mempool": ["0xffff888000000000"],
        "cma": ["reserved", "--can-alloc", "16"]}


def argv(cmd: str) -> list[str]:
    return [cmd, *ARGS.get(cmd, [])]
NOBODY = 65534


def run_cli(*args: str, as_nobody: bool = False):
    if as_nobody:
        # Drop to an unprivileged uid inside the interpreter, after importing what the CLI
        # needs (the interpreter and the package live under /root, unreadable to nobody),
        # then run the real main() on ARGS.
        code = ("import os, stat, sys, memscope.cli, memscope.target.drgn, memscope.commands, "
                "memscope.mm.zone, memscope.target.flattened, memscope.target.dumpfile, "
                "memscope.target.debuginfo_cache, memscope.target.elf\n"
                "memscope.cli.build_parser()\n"
                f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
                "sys.exit(memscope.cli.main(sys.argv[1:]))")
        argv = [sys.executable, "-c", code, *args]
    else:
        argv = [sys.executable, "-m", "memscope.cli", *args]
    # The timeout guards against a hang, it measures nothing.
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def assert_one_line_error(r, *needles: str):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("memscope"), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def snap(lab_case):
    return lab_case(KERNEL)


@pytest.fixture(scope="module")
def dead_socket(tmp_path_factory):
    """A unix socket file nobody listens on (its creator closed it)."""
    path = tmp_path_factory.mktemp("qmp") / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    return path


@pytest.mark.parametrize("cmd", COMMANDS)
def test_a_missing_vmcore_is_named(cmd, snap, tmp_path):
    missing = tmp_path / "no-such-vmcore"
    assert_one_line_error(run_cli("-c", str(missing), "-s", str(snap.vmlinux), *argv(cmd)),
                          str(missing), "no such file")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_an_unreadable_vmcore_is_named(cmd, snap):
    # The cached dumps are root-only (mode 0400): unreadable to nobody.
    assert not os.stat(snap.vmcore).st_mode & 0o004
    assert_one_line_error(run_cli("-c", str(snap.vmcore), "-s", str(snap.vmlinux), *argv(cmd),
                                  as_nobody=True), str(snap.vmcore), "permission denied")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_a_vmlinux_that_does_not_match_the_dump_is_named(cmd, snap, lab_case):
    other = lab_case("6.1").vmlinux
    assert_one_line_error(run_cli("-c", str(snap.vmcore), "-s", str(other), *argv(cmd)),
                          str(other), "does not match")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_live_kernel_as_non_root_says_root_is_needed(cmd):
    assert_one_line_error(run_cli("-k", *argv(cmd), as_nobody=True), "needs root")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_a_dead_qmp_socket_is_named(cmd, snap, dead_socket):
    assert_one_line_error(run_cli("--qemu", str(dead_socket), "-s", str(snap.vmlinux), *argv(cmd)),
                          str(dead_socket), "Connection refused")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_a_nonexistent_qmp_socket_is_named(cmd, snap, tmp_path):
    path = tmp_path / "no-such.sock"
    assert_one_line_error(run_cli("--qemu", str(path), "-s", str(snap.vmlinux), *argv(cmd)),
                          str(path), "no such QMP socket")


def test_an_unknown_command_is_named(snap):
    assert_one_line_error(run_cli("-c", str(snap.vmcore), "-s", str(snap.vmlinux), "frobnicate"),
                          "frobnicate", "invalid choice")


def test_an_unknown_format_is_named(snap):
    assert_one_line_error(run_cli("-c", str(snap.vmcore), "-s", str(snap.vmlinux), "buddyinfo",
                                  "-f", "xml"), "xml")


def test_a_file_that_is_not_a_dump_is_named(snap):
    assert_one_line_error(run_cli("-c", str(snap.vmlinux), "-s", str(snap.vmlinux), "check"),
                          "not a usable kernel core dump")


def test_no_target_is_named():
    assert_one_line_error(run_cli("check"), "no target")


def test_events_parse_refuses_a_file_with_no_trace_line(tmp_path):
    """A trace.dat or random bytes given to ``events parse`` (a new user's review: exit 0,
    "0 events ... garbled 511" and the bytes on the terminal) is one line, exit 2; a trace
    file with its header and no event yet is an empty answer, not an error."""
    junk = tmp_path / "trace.dat"
    junk.write_bytes(bytes(range(256)) * 64 + b"\n\x00\x01 not a trace\n")
    assert_one_line_error(run_cli("events", "parse", str(junk)), "not trace text?")
    empty = tmp_path / "trace"
    empty.write_text("# tracer: nop\n#\n")
    r = run_cli("events", "parse", str(empty))
    assert r.returncode == 0 and r.stdout.startswith("0 events in 2 lines"), r


@pytest.mark.parametrize("options, needle", [
    (["--kdump-compress", "zlib"], "goes with --kdump-level"),
    (["--kdump-level", "31", "--kdump-compress", "snappy"], "without snappy"),
    (["--timeout", "-5"], "--timeout must be more than 0")])
def test_lab_run_refuses_kdump_and_timeout_options_before_any_boot(options, needle, tmp_path):
    """Found by a new user's review: each of these reached QEMU (and snappy would have
    failed only after boot, workload and panic).  No QEMU on PATH here: a boot would be
    another error."""
    env = {**os.environ, "PATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "memscope.cli", "lab", "run", "6.12", *options,
                        "-o", str(tmp_path / "run")], capture_output=True, text=True,
                       timeout=120, env=env)
    assert_one_line_error(r, needle)
    assert not (tmp_path / "run").exists()
