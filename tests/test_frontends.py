"""The front ends nothing else runs: ``%memscope`` in drgn's own REPL (memscope is a drgn
plugin through its ``drgn.plugins`` entry point) and ``make demo`` (``python -m
memscope.demo``), each run once for real against a lab case and compared with the guest's
own /proc files (the truth) of that case."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

from memscope.lab import DEFAULT_KERNEL

from test_frag import zoneinfo_watermarks

KERNEL = DEFAULT_KERNEL  # the demo's kernel: the demo reuses this lab case


def drgn_repl(vmcore: Path, vmlinux: Path, typed: str, timeout: float = 300) -> str:
    """Run drgn's interactive REPL on VMCORE on a pseudo-terminal (it is interactive only
    when stdin is a terminal), type TYPED, and return everything it printed until it
    exited, with "\\r\\n" made "\\n".  The terminal does not echo, so what the commands
    print is not interleaved with what was typed."""
    master, slave = os.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    env = dict(os.environ, TERM="dumb")
    proc = subprocess.Popen([sys.executable, "-m", "drgn", "-q", "-c", str(vmcore), "-s",
                             str(vmlinux)], stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    out = b""
    try:
        os.write(master, typed.encode())
        deadline = time.monotonic() + timeout  # guards against a hang, measures nothing
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the REPL exited and closed the terminal
                break
            if not chunk:
                break
            out += chunk
        else:
            raise AssertionError(f"drgn's REPL did not exit; it printed:\n{out.decode()}")
        assert proc.wait(30) == 0, out.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return out.decode().replace("\r\n", "\n")


def after_prompts(text: str) -> list[str]:
    """The lines the REPL printed, with its ">>> " prompts taken off their start."""
    return [re.sub(r"^(>>> )+", "", line) for line in text.splitlines()]


def test_percent_memscope_in_drgns_repl_prints_the_guests_buddyinfo(lab_case):
    snap = lab_case(KERNEL)
    text = drgn_repl(snap.vmcore, snap.vmlinux,
                     "%memscope buddyinfo -f proc\n"
                     "print('==' + 'bad input')\n"
                     "%memscope frag --gfp bogus\n"
                     "%memscope pages --pfn 5-2\n"
                     "exit()\n")
    lines = after_prompts(text)
    mark = lines.index("==bad input")
    # /proc/buddyinfo, byte for byte (drgn's banner prints no "Node " line).
    assert [ln for ln in lines[:mark] if ln.startswith("Node ")] \
        == snap.truth_text("buddyinfo").splitlines()
    # Bad input: one line "memscope..." each, as on the command line; no traceback.
    errors = [ln for ln in lines[mark + 1:] if ln.strip()]
    assert "Traceback" not in text
    assert len(errors) == 2, errors
    assert errors[0].startswith("memscope frag: argument --gfp: invalid choice: 'bogus'")
    assert errors[1] == "memscope: --pfn '5-2': empty range"


def _sections(out: str) -> dict[str, list[str]]:
    """The demo's output cut at its "== memscope ... COMMAND" headers: {COMMAND: lines}."""
    sections: dict[str, list[str]] = {}
    cur: list[str] = []
    for line in out.splitlines():
        m = re.match(r"== memscope -c (\S+) -s (\S+) (\w+)$", line)
        if m:
            sections.setdefault("_vmcore", []).append(m[1])
            cur = sections.setdefault(m[3], [])
        else:
            cur.append(line)
    return sections


def _table_rows(lines: list[str]) -> list[list[str]]:
    """Rows of the tabulate tables in LINES (the lines after a "----" rule, to a blank)."""
    rows, inside = [], False
    for line in lines:
        if re.match(r"^[- ]+$", line) and "-" in line:
            inside = True
        elif not line.strip():
            inside = False
        elif inside:
            rows.append(line.split())
    return rows


def truth_pagetypeinfo(text: str) -> tuple[list[list[str]], list[list[str]]]:
    """/proc/pagetypeinfo: free blocks [node, zone, type, counts...] and pageblocks per
    migratetype [node, zone, counts...]."""
    free, blocks = [], []
    for line in text.splitlines():
        m = re.match(r"Node\s+(\d+), zone\s+(\S+), type\s+(\S+)\s+(.*)$", line)
        if m:
            free.append([m[1], m[2], m[3], *m[4].split()])
            continue
        m = re.match(r"Node (\d+), zone\s+(\S+)\s+(\d.*)$", line)
        if m:
            blocks.append([m[1], m[2], *m[3].split()])
    return free, blocks


def test_demo_reports_agree_with_the_truth_of_its_run(lab_case, tmp_path):
    """`make demo` runs ``python -m memscope.demo`` after its set-up.  The demo's run is the
    lab case of the default kernel, so with that case built (it is shared with the rest
    of the suite) the demo boots nothing: 37-52 s measured for its seven reports on a 2-CPU
    machine running four other guests (each report loads the vmlinux's debug info); the
    REPL test takes about 11 s."""
    snap = lab_case(KERNEL)
    r = subprocess.run([sys.executable, "-m", "memscope.demo"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout.startswith(f"== the lab's {KERNEL} case"), r.stdout[:300]
    assert not any(tmp_path.iterdir())  # it wrote nothing where it was run
    sec = _sections(r.stdout)
    assert set(sec["_vmcore"]) == {str(snap.vmcore)}  # the run whose truth is read below
    from memscope import commands
    from memscope.demo import DEMO

    commands._load()
    assert list(sec)[1:] == [c for c in DEMO if c in commands.COMMANDS]
    assert list(sec)[1:8] == ["buddyinfo", "pagetypeinfo", "freelists", "check", "pages",
                              "pageblocks", "frag"]

    truth_buddy = [re.match(r"Node (\d+), zone\s+(\S+)\s+(.*)$", ln).groups()
                   for ln in snap.truth_text("buddyinfo").splitlines()]
    assert _table_rows(sec["buddyinfo"]) == [[n, z, *c.split()] for n, z, c in truth_buddy]

    free, blocks = truth_pagetypeinfo(snap.truth_text("pagetypeinfo"))
    assert truth_buddy and free and blocks
    rows = _table_rows(sec["pagetypeinfo"])
    assert rows == free + blocks

    pb = _table_rows(sec["pageblocks"])
    assert [row[:len(blocks[0])] for row in pb] == blocks

    assert any(ln.startswith("ok: free lists agree with nr_free and NR_FREE_PAGES")
               for ln in sec["check"]), sec["check"]

    wm = {(str(z["node"]), z["zone"]): (z["min"], z["low"], z["high"])
          for z in zoneinfo_watermarks(snap)}
    heads = [re.match(r"Node (\d+), zone (\S+): .* watermarks min/low/high (\d+)/(\d+)/(\d+) "
                      r"boost (\d+)", ln) for ln in sec["frag"] if ln.startswith("Node ")]
    assert heads and all(heads) and len(heads) == len(wm)
    for h in heads:
        boost = int(h[6])
        assert tuple(int(h[i]) + boost for i in (3, 4, 5)) == wm[(h[1], h[2])]
