"""memscope on a live system, for real: ``memscope -k`` and the drgn plugin inside a running
Debian guest (``lab run --userland``: Debian's python3, numpy, tabulate and drgn, memscope
from this tree, the kernel's vmlinux at /usr/lib/debug/boot/vmlinux-RELEASE where Debian's
-dbg package puts it, found by drgn's default lookup).

The guest runs tests/live_userland_guest.py (see its docstring), which records under
/results what memscope printed next to the kernel's own /proc files read right before and
right after; the lab copies /results to DIR/results/ and the tests here judge it:

- quiet system: ``-k buddyinfo --format proc`` and ``-k pagetypeinfo --format proc``
  equal /proc/buddyinfo and /proc/pagetypeinfo whenever the reads before and after agree
  (the guest repeats the triple until three agree, at most TRIPLES times; no agreeing
  triple fails); ``check`` is ok whenever neither /proc/buddyinfo nor memscope saw
  anything move around it, and its problems always come with the note that it saw a race;
- every command in every format completes on the quiet system and under the churn
  workload: no traceback, no hang, status 0 (``check`` 1 only with its problems listed);
  races are findings: under churn the kernel is seen to move (the note), never an error;
- ``%memscope buddyinfo -f proc`` in drgn's REPL (``drgn -k``) prints what the command
  line's path and ``memscope.drgn_api.buddyinfo`` give on the same program and what
  /proc/buddyinfo says around them;
- a non-root user gets the one-line "needs root" error; with the vmlinux deleted, the
  one-line error names the paths drgn's default lookup tried.

The kernels: MEMSCOPE_LIVE_KERNELS (comma-separated lab kernel names, default 6.12).
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from memscope import lab
from memscope.commands import MOVED_NOTE

HERE = Path(__file__).resolve().parent
#: The guest's memory (MiB).  drgn's index of the vmlinux's DWARF and the vmlinux's page
#: cache (345-630 MB files) do not fit in the lab's default 512 MiB: those guests ran
#: with ~1500 free pages (5.10, 6.1, 7.2; the zones' high watermarks add up to ~1030) and
#: the page cache was reclaimed under the reads (measured on 5.10: a check moved
#: NR_FREE_PAGES, the LRU counters, inactive file -2500 pages as anon grew, and the pcp
#: lists), so no check was quiet in 40 on 5.10 (vmlinux 628 MB), the first came after 16
#: on 7.2 and 26 on 6.1.  In 1 GiB 5.10 passed (first quiet check the 15th), but 6.12
#: once still had none in 40 (buddyinfo still around 14 of them; status 1 with the note
#: every 2-3 checks) while check was watched whole: its seconds-long slab walk is now left
#: out of the watch (memscope.mm.live.watched), and up to 80 checks are made.
KERNELS = os.environ.get("MEMSCOPE_LIVE_KERNELS", "6.12").split(",")
NOTE = MOVED_NOTE + "\n"
MEM = 1024

WORKLOAD = """\
mkdir -p /results /dev/pts
mount -t devpts devpts /dev/pts
cat > /root/guest.py <<'MEMSCOPE_GUEST_PY'
{guest}
MEMSCOPE_GUEST_PY
cd /root
# vmstat_update folds each CPU's counter deltas into vm_zone_stat[]/vm_node_stat[] every
# stat_interval seconds (1 by default), and check (~2 s here) reads those counters before and
# after: with the default, every check saw them move (measured: 7 of 7), so none was quiet.
# The lab's own guests slow it the same way (memscope/lab/guest/init).
echo 3600 > /proc/sys/vm/stat_interval
# The checks' own process must not move the page allocator's per-CPU lists either: its
# memory comes from a heap that glibc never gives back (no mmap'd chunks, no trim) and
# Python's small objects come from that heap too, so the checks after the first take no
# new pages.
PYTHONMALLOC=malloc MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184 \
	python3 guest.py main > /results/main.log 2>&1
python3 guest.py drgn > /results/drgn.log 2>&1
python3 guest.py errors nobody,root > /results/errors.log 2>&1
# /proc unmounted in a private mount namespace: no /proc/kcore
unshare -m sh -c 'umount /proc && memscope -k buddyinfo' > /results/nokcore.out 2> /results/nokcore.err
echo $? > /results/nokcore.status
rm -f /usr/lib/debug/boot/vmlinux-*
python3 guest.py errors-novmlinux root >> /results/errors.log 2>&1
exit 0
"""


def boot(kernel: str, work: Path) -> Path:
    """One --userland boot of KERNEL in WORK: its DIR (results/, vmcore, meta.json)."""
    script = work / "workload.sh"
    script.write_text(WORKLOAD.format(guest=(HERE / "live_userland_guest.py").read_text()))
    out = work / "run"
    lab.run(lab.RunOptions(kernel=kernel, workload=str(script), userland=True, mem=MEM,
                           timeout=5400, tries=2, progress=False), out)
    return out


#: Boots started when the tests were collected (tests/conftest.py): a boot runs ~9 minutes
#: in its guest, needs nothing the other tests make, and overlaps them.
_started: dict[str, Future] = {}
_pool = ThreadPoolExecutor(1, thread_name_prefix="userland")


def start(tmp_path_factory) -> None:
    """Start every kernel's boot, one after the other, in the background."""
    for kernel in KERNELS:
        if kernel not in _started:
            work = tmp_path_factory.mktemp(f"userland-{kernel}")
            _started[kernel] = _pool.submit(boot, kernel, work)


@pytest.fixture(scope="module", params=KERNELS)
def guest(request, tmp_path_factory):
    """One --userland boot per kernel (started at collection when the whole suite runs)."""
    if request.param in _started:
        return _started.pop(request.param).result()
    return boot(request.param, tmp_path_factory.mktemp(f"userland-{request.param}"))


def result(guest: Path, name: str):
    path = guest / "results" / f"{name}.json"
    assert path.exists(), f"the guest left no {name}.json; its log: " + _logs(guest)
    return json.loads(path.read_text())


def _logs(guest: Path) -> str:
    return "".join(f"\n== {p.name}\n{p.read_text()[-3000:]}"
                   for p in sorted((guest / "results").glob("*.log")))


@pytest.mark.parametrize("name", ["buddyinfo", "pagetypeinfo"])
def test_quiet_proc_format_equals_the_kernels_file_read_around_it(guest, name):
    triples = result(guest, f"quiet-{name}")
    agreeing = [t for t in triples if t["before"] == t["after"]]
    assert agreeing, f"/proc/{name} never read the same twice around memscope in " \
                     f"{len(triples)} tries"
    for t in agreeing:
        assert (t["status"], t["traceback"]) == (0, None), t
        assert t["out"] == t["before"]
        assert t["err"] in ("", NOTE)
    # A quiet read is an exact one: memscope saw no race in at least one of them.
    assert any(t["err"] == "" for t in agreeing), [t["err"] for t in agreeing]


def test_check_is_ok_when_nothing_moved_and_its_problems_are_races_it_saw(guest):
    """The checker's problems on a live kernel are races, said to be: a check that finds a
    problem also says that the kernel moved under it (a problem without the note would be
    corruption, which a healthy guest has none of); and a check around which
    /proc/buddyinfo did not move and during which memscope saw nothing move is ok.  (The
    per-CPU lists move without /proc/buddyinfo moving: the test's own Python allocates.)"""
    checks = result(guest, "quiet-check")
    for c in checks:
        assert c["traceback"] is None and c["status"] in (0, 1), c
        report = json.loads(c["out"])
        assert (c["status"] == 1) == bool(report["problems"]) == (not report["ok"]), report
        if report["problems"]:
            assert c["err"] == NOTE, (c["err"], report["problems"])
    quiet = [c for c in checks if c["before"] == c["after"] and c["err"] == ""]
    assert quiet, f"something moved around every one of {len(checks)} checks"
    for c in quiet:
        assert c["status"] == 0 and json.loads(c["out"])["ok"] is True, c


def _problems(data) -> list:
    """The problems of check's JSON (a dict) or freelists' (a list of zones)."""
    if isinstance(data, dict):
        return data["problems"]
    return [p for z in data for p in z["problems"]]


def _assert_completed(runs: list[dict]) -> None:
    """Every run ended in an answer: no traceback or hang, status 0, or 1 (problems found)
    only with the note that the kernel moved (races; check and freelists with their
    problems listed); heap finds nothing wrong; stderr empty or the note."""
    assert runs
    for r in runs:
        assert r["traceback"] is None, (r["argv"], r["traceback"])
        if r["argv"][0] in ("check", "freelists") and r["status"] == 1:
            assert r["problems"] and r["err"] == NOTE, r  # a race, seen and said
        elif r["argv"][0] == "heap":
            # pid 1 is the lab's init under sid's static busybox (glibc 2.43: the tcache
            # of 2.42, num_slots[76], made when first used, not the heap's first chunk);
            # every tcache entry is a chunk of the heap, as glibc keeps them
            assert r["status"] == 0 and not r.get("problems"), r
        elif r["status"] == 1:  # a walk found problems (slab, vmallocinfo): while racing
            assert r["err"] == NOTE, r
        else:
            assert r["status"] == 0, r
        assert r["err"] in ("", NOTE), r


def test_every_command_completes_live_on_a_quiet_system(guest):
    runs = result(guest, "plan-quiet")
    _assert_completed(runs)


def test_every_command_completes_under_churn_and_races_are_findings(guest):
    runs = result(guest, "plan-churn")
    _assert_completed(runs)
    # The churn really raced with the reads (otherwise this test could not fail): some
    # answers say so.
    assert any(r["err"] == NOTE for r in runs)
    for c in result(guest, "churn-check"):
        assert c["traceback"] is None and c["status"] in (0, 1), c
        report = json.loads(c["out"])
        assert (c["status"] == 1) == bool(report["problems"])
        assert not report["problems"] or c["err"] == NOTE, c


def _sections(text: str) -> dict[str, str]:
    """The REPL's output between '@@NAME' and '@@end' lines."""
    out, name, lines = {}, None, []
    for line in text.splitlines():
        line = re.sub(r"^(>>> |\.\.\. )+", "", line)
        if line.startswith("@@") and name is None and line != "@@end":
            name, lines = line[2:], []
        elif line == "@@end" and name is not None:
            out[name] = "".join(f"{ln}\n" for ln in lines)
            name = None
        elif name is not None and line != MOVED_NOTE:  # the note goes to stderr, here too
            lines.append(line)
    return out


def test_percent_memscope_in_drgn_prints_what_memscope_k_prints(guest):
    repl = result(guest, "drgn-repl")
    text = repl["text"]
    assert "Traceback" not in text, text
    s = _sections(text)
    rounds = [i for i in range(4) if f"after{i}" in s]
    assert rounds, text
    quiet = [i for i in rounds if s[f"before{i}"] == s[f"mid{i}"] == s[f"after{i}"]]
    # (the api section sits between mid and after)
    assert quiet, f"/proc/buddyinfo moved in every round: {text}"
    for i in quiet:
        assert s[f"percent{i}"] == s[f"cli{i}"] == s[f"api{i}"] == s[f"before{i}"], (i, text)


def test_non_root_gets_the_one_line_needs_root_error(guest):
    r = result(guest, "errors")
    assert r["nobody"] == {"status": 2, "out": "", "err": "memscope: -k reads /proc/kcore, "
                           "which needs root: run as root (sudo)\n"}
    # The same process as root, with the vmlinux where Debian puts it, answers.
    assert r["root"]["status"] == 0, r["root"]
    assert r["root"]["out"].split()[:3] == ["node", "zone", "0"], r["root"]


def test_without_the_vmlinux_the_one_line_error_names_the_paths_looked_in(guest):
    r = result(guest, "errors-novmlinux")["root"]
    release = result(guest, "load")["release"]
    assert r["status"] == 2 and r["out"] == "", r
    assert r["err"].count("\n") == 1 and r["err"].startswith("memscope: no debug info "
                                                             f"for the running kernel {release}")
    for path in (f"/usr/lib/debug/boot/vmlinux-{release}", f"/boot/vmlinux-{release}",
                 f"/lib/modules/{release}/vmlinux"):
        assert path in r["err"], r["err"]


def test_without_proc_kcore_the_one_line_error_says_so(guest):
    status = (guest / "results" / "nokcore.status").read_text().strip()
    err = (guest / "results" / "nokcore.err").read_text()
    assert (status, err) == ("2", "memscope: -k needs /proc/kcore, and this system has none "
                             "(a kernel without CONFIG_PROC_KCORE, or /proc not mounted)\n")
