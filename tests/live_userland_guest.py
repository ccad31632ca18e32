"""Runs INSIDE a ``lab run --userland`` guest, as root, for tests/test_live_userland.py
(which boots the guest with this file as part of its workload and judges what it leaves
in /results on the host).  It judges nothing itself: it records, as JSON files under
/results, what memscope printed on the running kernel next to what the kernel's own /proc
files said right before and right after.

The debug info of a 300-400 MB vmlinux takes minutes to load under TCG, so memscope's
command line runs in this process on one ``-k`` target (``memscope.cli._run_command``,
the command line's own path after the target is open) rather than as a new process per
command; the one-line errors (non-root, no debug info) and the drgn REPL are real
processes.

Usage: python3 live_userland_guest.py STEP  (STEP: main, errors)"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback

R = "/results"
#: Bound on the quiet triples (before, memscope, after) per /proc file.
TRIPLES = 16
#: At most this many checks, until one is quiet (see quiet_triples).
CHECKS = 80
#: A command that takes longer than this (seconds, TCG) counts as hung.
HANG = 900


def save(name: str, obj) -> None:
    with open(f"{R}/{name}.json", "w") as f:
        json.dump(obj, f, indent=1)
    say(f"{name}: {len(obj) if isinstance(obj, list) else 1} record(s)")


def say(msg: str) -> None:
    """A progress line on the console (the lab's log of the run; not part of the protocol)."""
    try:
        with open("/dev/console", "w") as f:
            f.write(f"live_userland_guest: {msg}\n")
    except OSError:
        pass


def proc(name: str) -> str:
    with open(f"/proc/{name}") as f:
        return f.read()


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang


def cli_in_process(target, argv: list[str]) -> dict:
    """Run ``memscope -k ARGV`` through the command line's own code on TARGET; what it
    printed, its status, the time, and a traceback if it raised anything but the one-line
    errors."""
    from memscope import cli
    from memscope.errors import MemscopeError

    out, err = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    tb = None
    signal.alarm(HANG)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                args = cli.build_parser().parse_args(["-k", *argv])
                status = cli._run_command(args, target)
            except MemscopeError as e:
                print(f"memscope: {e}", file=sys.stderr)
                status = e.exit_status
            except SystemExit as e:
                status = e.code
    except _Hang:
        status, tb = None, f"hang: no answer within {HANG} s"
    except BaseException:  # noqa: BLE001 - a traceback is what the test looks for
        status, tb = None, traceback.format_exc()
    finally:
        signal.alarm(0)
    return {"argv": argv, "status": status, "out": out.getvalue(), "err": err.getvalue(),
            "seconds": round(time.monotonic() - t0, 3), "traceback": tb}


def plan(target, formats: tuple[str, ...]) -> list[list[str]]:
    """Every command in each of FORMATS it has, with arguments that exist in this guest:
    init (pid 1), a dentry, init_task.  (Each run reads the kernel
    afresh, which under TCG on a shared machine takes seconds to minutes: the table
    format, another view of the same records as json, is left out.)"""
    from memscope import commands

    commands._load()
    # init (pid 1, the lab's busybox sh: static glibc, a small malloc heap).  Not this
    # process: drgn's index of the vmlinux's DWARF makes its heap hundreds of MB, which
    # `heap` walks chunk by chunk (measured: no answer in 15 minutes under TCG, then the
    # guest's OOM killer).
    kernel_addr = hex(target.symbol("init_task"))
    args = {"slab": [["dentry"]], "maps": [["1"], ["1", "--rss"]], "heap": [["1"]],
            "smaps_rollup": [["1"]],
            "ps": [[], ["--threads"]], "vtop": [[kernel_addr]],
            "whatis": [[kernel_addr]], "mempool": []}
    return [[name, *a, "--format", fmt] for name, cmd in sorted(commands.COMMANDS.items())
            for a in args.get(name, [[]]) for fmt in cmd.formats if fmt in formats
            if not ("--rss" in a and fmt == "proc")]  # maps --rss has no /proc file


def run_plan(target, label: str, formats: tuple[str, ...]) -> list[dict]:
    runs = []
    for argv in plan(target, formats):
        r = cli_in_process(target, argv)
        if argv[0] in ("check", "freelists") and r["status"] in (0, 1):
            data = json.loads(r["out"])  # check: a dict; freelists: a list of zones
            r["problems"] = data["problems"] if isinstance(data, dict) else \
                [p for z in data for p in z["problems"]]
        if argv[0] == "heap" and r["status"] == 1:
            data = json.loads(r["out"])
            r["problems"] = ([data["error"]] if data["error"] else []) + data["tcache_problems"]
        r["out"] = r["out"][:2000]  # enough to see what it was; the host needs no more
        runs.append(r)
        save(label, runs)
    return runs


def quiet_triples(target) -> None:
    """Each proc-format reading bracketed by the kernel's own file, until three brackets
    agree (or TRIPLES tries)."""
    for name in ("buddyinfo", "pagetypeinfo"):
        triples = []
        for _ in range(TRIPLES):
            before = proc(name)
            r = cli_in_process(target, [name, "--format", "proc"])
            after = proc(name)
            triples.append({"before": before, "after": after, **r})
            save(f"quiet-{name}", triples)
            if sum(t["before"] == t["after"] for t in triples) >= 3:
                break
    # A quiet check (neither /proc/buddyinfo nor memscope, watching check's buddy half,
    # saw anything move) came 1 in 7 and 1 in 8 in measured runs, the first few not at
    # all (this process's heap still growing): check until the first quiet one, at most
    # CHECKS times (7/8 ** 80: a quiet run missed once in ~40,000).
    checks = []
    for _ in range(CHECKS):
        before = proc("buddyinfo")
        r = cli_in_process(target, ["check", "--format", "json"])
        after = proc("buddyinfo")
        checks.append({"before": before, "after": after, **r})
        save("quiet-check", checks)
        if any(c["before"] == c["after"] and c["err"] == "" for c in checks):
            break


def drgn_repl() -> None:
    """drgn's own REPL on the running kernel (``drgn -k``, memscope loaded as its plugin
    through the entry point) on a pseudo-terminal: rounds of /proc/buddyinfo, ``%memscope
    buddyinfo -f proc``, /proc/buddyinfo, the command line's path on the same program,
    /proc/buddyinfo, ``memscope.drgn_api.buddyinfo`` (formatted as the file),
    /proc/buddyinfo, each between markers."""
    rounds = 4
    typed = ["import memscope.cli, memscope.drgn_api, memscope.target.drgn as T",
             "tgt = T.DrgnTarget(prog)",
             # (a lambda: a one-line def would wait for a blank line in the REPL)
             "show = lambda n: print('@@' + n + chr(10) + open('/proc/buddyinfo').read() "
             "+ '@@end')"]
    for i in range(rounds):
        typed += [f"show('before{i}')", f"print('@@percent{i}')",
                  "%memscope buddyinfo -f proc", "print('@@end')", f"show('mid{i}')",
                  f"print('@@cli{i}')",
                  "_ = memscope.cli._run_command(memscope.cli.build_parser().parse_args("
                  "['-k', 'buddyinfo', '-f', 'proc']), tgt)", "print('@@end')",
                  f"print('@@api{i}')",
                  "print(memscope.drgn_api.format_buddyinfo(memscope.drgn_api.buddyinfo("
                  "prog)), end='')", "print('@@end')", f"show('after{i}')"]
    typed += ["exit()"]
    master, slave = os.openpty()
    import termios

    attrs = termios.tcgetattr(slave)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "drgn", "-q", "-k"], stdin=slave,
                         stdout=slave, stderr=slave,
                         # Python 3.14's new REPL needs terminfo, which the userland
                         # lacks ("terminal doesn't have the required clear capability"):
                         # drgn takes the basic one (readline) with this.
                         env=dict(os.environ, TERM="dumb", PYTHON_BASIC_REPL="1"),
                         start_new_session=True)
    os.close(slave)
    os.write(master, ("\n".join(typed) + "\n").encode())
    out = b""
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if not ready:
            if p.poll() is not None:
                break
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    if p.poll() is None:
        p.kill()
    save("drgn-repl", {"text": out.decode(errors="replace").replace("\r\n", "\n"),
                       "status": p.wait(), "seconds": round(time.monotonic() - t0, 1)})


def one_line_errors(name: str, users: list[str]) -> None:
    """``memscope -k buddyinfo`` as a real process, as each of USERS: "nobody" (uid
    65534) or "root"."""
    def as_nobody():
        os.setgid(65534)
        os.setuid(65534)

    res = {}
    for who in users:
        pre = as_nobody if who == "nobody" else None
        p = subprocess.run(["memscope", "-k", "buddyinfo"], capture_output=True, text=True,
                           preexec_fn=pre, timeout=HANG)
        res[who] = {"status": p.returncode, "out": p.stdout, "err": p.stderr}
    save(name, res)


def main() -> None:
    t0 = time.monotonic()
    import memscope.cli  # noqa: F401 - timed: Python, numpy, tabulate, memscope
    from memscope.target import drgn as tdrgn

    t1 = time.monotonic()
    target = tdrgn.DrgnTarget(tdrgn.open_live(None))
    t2 = time.monotonic()
    save("load", {"import_seconds": round(t1 - t0, 2), "open_seconds": round(t2 - t1, 2),
                  "release": os.uname().release})
    quiet_triples(target)
    run_plan(target, "plan-quiet", ("json", "proc"))
    churn = subprocess.Popen(["sh", "/workloads/churn.sh"], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(5)
        run_plan(target, "plan-churn", ("json",))
        checks = [cli_in_process(target, ["check", "--format", "json"]) for _ in range(3)]
        save("churn-check", checks)
    finally:
        os.killpg(churn.pid, signal.SIGKILL)
        churn.wait()
    # A pure-Python loop: how much slower this guest's CPU is than the host's (the
    # benchmark's live-against-dump comparison runs the dump on the host).
    t = time.monotonic()
    sum(i * i for i in range(3_000_000))
    save("cpu", {"loop_seconds": round(time.monotonic() - t, 3)})


if __name__ == "__main__":
    signal.signal(signal.SIGALRM, _alarm)
    os.makedirs(R, exist_ok=True)
    step = sys.argv[1]
    if step == "main":
        main()
    elif step == "drgn":
        drgn_repl()
    elif step.startswith("errors"):
        one_line_errors(step, sys.argv[2].split(","))
