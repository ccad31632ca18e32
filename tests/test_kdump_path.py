"""A dump made as a production machine makes it (lab case "6.12-kdump31",
memscope/lab/kdump.py): the guest booted with crashkernel=, loaded a capture kernel with
kexec -p, read its truth and panicked (sysrq c); the capture kernel ran Debian's
makedumpfile -d 31 (zero, page-cache, private page-cache, user and free pages left out) on
/proc/vmcore, compressed with zlib (vmcore), lzo and zstd (its forms, from the same
/proc/vmcore).

The truth is the guest's /proc read right before the panic, and the lab kept the boot only
when the dump agreed with it by memscope/lab/verify.py's checks (drgn's own helpers); what
the kernel did between that read and the panic is what the truth cannot say
(meta.json's ``truth_drift`` measures one reading's worth of it).  Truths here: those
files, drgn's helpers on the dump, the vmlinux's own build ID (readelf), makedumpfile's
header as libkdumpfile reads it (drgn faults on an excluded page)."""

from __future__ import annotations

import json
import subprocess
import sys

import drgn
import pytest
from drgn.helpers.linux.mm import follow_phys
from drgn.helpers.linux.pid import find_task

from memscope import commands
from memscope.cli import build_parser
from memscope.commands import execute
from memscope.errors import MemscopeError
from memscope.target.drgn import DrgnTarget, open_core

CASE = "6.12-kdump31"
FORMS = ["makedumpfile-lzo", "makedumpfile-zstd"]
LEVEL_31 = ("excluded by makedumpfile at dump level 31 (zero pages, page-cache pages, "
            "private page-cache pages, user pages, free pages)")


@pytest.fixture(scope="module")
def snap(lab_case):
    return lab_case(CASE)


@pytest.fixture(scope="module")
def target(snap):
    return DrgnTarget(open_core(snap.vmcore, snap.vmlinux))


@pytest.fixture(scope="module")
def prog(snap):
    """drgn alone on the dump (libkdumpfile's reading, no memscope segment on top)."""
    p = drgn.Program()
    p.set_core_dump(str(snap.vmcore))
    p.load_debug_info([str(snap.vmlinux)])
    return p


def run(target, *argv: str):
    """ARGV as the command line runs it on TARGET: (stdout, one-line error or None,
    exit status)."""
    args = build_parser().parse_args(list(argv))
    try:
        text, status = execute(target, args)
        return text, None, status
    except MemscopeError as e:
        return "", str(e), e.exit_status


def _cli(path, *argv):
    return subprocess.run([sys.executable, "-m", "memscope.cli", "-c", str(path), *argv],
                          capture_output=True, text=True, timeout=600)


def _heap_pid(snap) -> int:
    return snap.tracked_as("heap")


def test_the_lab_took_it_by_a_panic_and_makedumpfile(snap):
    k = snap.meta["kdump"]
    assert (k["level"], k["compress"]) == (31, ["zlib", "lzo", "zstd"])
    assert k["makedumpfile"].startswith("makedumpfile: version ")
    assert k["kexec"].startswith("kexec-tools ")
    for path in [snap.vmcore] + [snap.form(f) for f in FORMS]:
        with open(path, "rb") as f:
            assert f.read(8) == b"KDUMP   "  # makedumpfile's own file, not flattened
    # What the truth means is recorded: how far one reading drifted, and whether the dump
    # agreed with the earlier reading too (memscope.lab.kdump.drift).
    rec = snap.meta["snapshots"][0]
    assert rec["truth_drift"]["seconds"] > 0 and "buddyinfo" in rec["truth_drift"]
    assert rec["first_reading"]
    # The console shows the crashed kernel's panic and the capture kernel's start.
    log = (snap.dir / "console.log").read_bytes()
    assert b"Kernel panic - not syncing: sysrq triggered crash" in log
    assert log.index(b"sysrq triggered crash") < log.index(b"@@MEMSCOPE-KDUMP-CAPTURE")


def test_info_says_what_the_dump_is(snap):
    notes = subprocess.run(["readelf", "-n", str(snap.vmlinux)], capture_output=True,
                           text=True).stdout
    build_id = next(line.split()[-1] for line in notes.splitlines() if "Build ID" in line)
    for path, comp in [(snap.vmcore, "zlib")] + [(snap.form(f), f.split("-")[1])
                                                  for f in FORMS]:
        r = _cli(path, "info", "-f", "json")
        assert (r.returncode, r.stderr) == (0, "")
        info = json.loads(r.stdout)
        assert (info["format"], info["compression"], info["dump_level"]) == \
            ("kdump", comp, 31)
        assert info["release"] == snap.meta["release"] and info["build_id"] == build_id
        assert info["machine"] == "x86_64"
        # What is missing is makedumpfile's exclusion, said once per range.
        assert info["missing"] and {m["why"] for m in info["missing"]} == {LEVEL_31}
        assert 0 < info["missing_bytes"] < info["memory_bytes"]
    table = _cli(snap.vmcore, "info")
    assert table.returncode == 0 and "dump level 31" in table.stdout and "zlib" in table.stdout


def test_libkdumpfile_faults_where_info_says_pages_are_missing(snap, prog):
    """The premise of every "not in the dump" answer: drgn (libkdumpfile) itself refuses a
    page info lists, and reads the page of node_data[0], which it does not list."""
    info = json.loads(_cli(snap.vmcore, "info", "-f", "json").stdout)
    with pytest.raises(drgn.FaultError):
        prog.read(info["missing"][0]["start"], 8, True)
    node_data = int(follow_phys(prog["init_mm"].address_of_(), prog["node_data"][0].value_()))
    assert not any(m["start"] <= node_data < m["end"] for m in info["missing"])
    assert len(prog.read(node_data, 8, True)) == 8


def test_info_s_missing_pages_are_exactly_those_libkdumpfile_refuses(snap, prog):
    """Every page of the segments info lists is read by drgn (libkdumpfile) page by
    page: the ones it refuses ("Excluded page") are exactly info's missing ranges.
    Measured on the 1 GiB guest: 162958 pages (636.6 MiB) in 100 ranges; the segments
    leave out the capture kernel's 256 MiB reserve, which /proc/vmcore does not have."""
    info = json.loads(_cli(snap.vmcore, "info", "-f", "json").stdout)
    refused = []
    for lo, hi in info["segments"]:
        for phys in range(lo, hi, 4096):
            try:
                prog.read(phys, 1, True)
            except drgn.FaultError as e:
                assert "Excluded page" in str(e), e
                refused.append(phys)
    runs = []
    for phys in refused:
        if runs and runs[-1][1] == phys:
            runs[-1][1] = phys + 4096
        else:
            runs.append([phys, phys + 4096])
    assert [[m["start"], m["end"]] for m in info["missing"]] == runs
    assert info["missing_bytes"] == 4096 * len(refused)
    gap = info["segments"][1][0] - info["segments"][0][1]
    assert gap == 256 << 20 and snap.meta["kdump"]["crashkernel"] == "256M"


@pytest.mark.parametrize("name", ["buddyinfo", "pagetypeinfo"])
def test_the_free_lists_are_the_guest_s(snap, target, name):
    # Free pages are left out; their struct pages and the zones' free_area are not.
    out, err, status = run(target, name, "-f", "proc")
    assert (err, status) == (None, 0)
    assert out == snap.truth_text(name)


@pytest.mark.parametrize("form", FORMS)
def test_each_compression_gives_the_zlib_answer(snap, target, form):
    other = DrgnTarget(open_core(snap.form(form), snap.vmlinux))
    for argv in (["pagetypeinfo", "-f", "proc"], ["pages", "-f", "json"]):
        assert run(other, *argv) == run(target, *argv)


def test_check_finds_nothing_wrong(target):
    out, err, status = run(target, "check", "-f", "json")
    assert (err, status) == (None, 0), out
    assert json.loads(out)["ok"]


def test_pages_counts_what_the_memmap_says(snap, target):
    """The memmap (struct pages) is kernel memory and level 31 keeps it: every page is
    classified, those whose contents were left out included.  Buddy blocks equal the
    guest's buddyinfo; slab and anon pages equal the dump's counters as on a frozen dump
    (tests/test_pages.py's formulas, drgn's reading of the counters)."""
    from test_pages import (class_pages, large_kmalloc_candidates, mm_for, node_stat_exact,
                            unmapped_anon_pages, unmapped_small_anon_pages)

    out, err, status = run(target, "pages", "-f", "json")
    assert (err, status) == (None, 0)
    truth = [[int(x) for x in line.split()[4:]]
             for line in snap.truth_text("buddyinfo").splitlines()]
    assert [z["buddy_blocks"] for z in json.loads(out) if "zone" in z] == truth
    mm = mm_for(snap)
    prog = mm.t.prog
    tot = class_pages(mm)
    counted = (node_stat_exact(prog, "NR_SLAB_RECLAIMABLE_B")
               + node_stat_exact(prog, "NR_SLAB_UNRECLAIMABLE_B"))
    candidates = sum(1 << order for _, order in large_kmalloc_candidates(prog))
    assert 0 <= counted - tot["slab"] <= candidates
    # Anon pages are counted although their contents are gone: the mapped anon counter,
    # as tests/test_pages.py has it on every frozen dump.
    assert tot["anon"] == (node_stat_exact(prog, "NR_ANON_MAPPED") + unmapped_anon_pages(prog)
                           + unmapped_small_anon_pages(prog))
    assert tot["pagecache"] > 0


def test_what_needs_a_user_page_names_it_and_the_level_that_dropped_it(snap, target, prog):
    """heap walks the process's brk heap: user memory, which level 31 leaves out.  The
    page named is the heap's first, as drgn translates it through the process's page
    tables (kernel memory, kept) on this dump, and libkdumpfile has no such page."""
    pid = _heap_pid(snap)
    out, err, status = run(target, "heap", str(pid))
    assert (out, status) == ("", 2) and err is not None and "\n" not in err
    lo = next(int(line.split("-")[0], 16) for line in
              (snap.dir / "truth" / str(pid) / "maps").read_text().splitlines()
              if line.endswith("[heap]"))
    page = int(follow_phys(find_task(prog, pid).mm, lo)) & ~4095
    with pytest.raises(drgn.FaultError):
        prog.read(page, 8, True)
    assert err.startswith("heap: ")
    assert f"physical page {page:#x} (pfn {page >> 12:#x}) is not in the dump: {LEVEL_31}" \
        in err, err
    # maps needs only the VMAs (slab memory): it is the guest's own.
    out, err, status = run(target, "maps", str(pid), "-f", "proc")
    assert (err, status) == (None, 0)
    assert out == snap.truth_text(f"{pid}/maps")


def _argvs(snap, target) -> list[list[str]]:
    """Every command once in each of its formats, with the arguments it needs (the heap
    process, its cache and addresses)."""
    commands._load()
    pid = str(_heap_pid(snap))
    prog = target.prog
    args = {"heap": [pid], "maps": [pid], "smaps_rollup": [pid], "slab": ["dentry"],
            "mempool": ["fs_bio_set.bio_pool"],
            "vtop": [hex(prog["init_task"].address_of_().value_())],
            "whatis": [hex(prog["init_task"].address_of_().value_())]}
    return [[name, *args.get(name, []), "-f", fmt]
            for name, cmd in sorted(commands.COMMANDS.items()) if name != "events"
            for fmt in cmd.formats] + [["events"], ["slabinfo", "--walk"],
                                      ["freelists", "-f", "json"]]


def test_every_command_answers_or_says_why_in_one_line(snap, target):
    """No traceback on the filtered dump: each command answers (exit 0 or 1: check's
    findings) or fails with one line; a failure for want of a page names the page and
    the level that dropped it."""
    failures = {}
    for argv in _argvs(snap, target):
        try:
            out, err, status = run(target, *argv)
        except SystemExit as e:  # argparse: the argv itself is wrong, a test bug
            pytest.fail(f"{argv}: not a command line ({e})")
        if err is not None:
            assert "\n" not in err and status == 2, (argv, err)
            failures[" ".join(argv)] = err
            if "is not in the dump" in err:
                assert LEVEL_31 in err, (argv, err)
        else:
            assert status in (0, 1), argv
    # Only what needs user or free pages' contents, or trace events, may fail.
    assert {k.split()[0] for k in failures} <= {"heap", "events"}, failures


def _page_desc_end(vmcore) -> tuple[int, int]:
    """(offset of the page descriptors, offset where the page data begins), by
    makedumpfile's own layout (diskdump_mod.h): the header block, sub-header blocks, the
    two bitmaps, then one 24-byte page_desc per page the second bitmap marks dumped."""
    import struct

    with open(vmcore, "rb") as f:
        hdr = f.read(4096)
        block_size, sub_hdr_size, bitmap_blocks = struct.unpack_from("<iiI", hdr, 0x1ac)
        f.seek(block_size * (1 + sub_hdr_size))
        bitmaps = f.read(block_size * bitmap_blocks)
    second = bitmaps[len(bitmaps) // 2:]
    dumped = sum(bin(b).count("1") for b in second)
    desc = block_size * (1 + sub_hdr_size + bitmap_blocks)
    return desc, desc + 24 * dumped


@pytest.mark.parametrize("where", ["header", "bitmaps", "descriptors", "data", "last page"])
def test_a_truncated_copy_is_refused_or_names_the_cut_off_page(snap, tmp_path, where):
    """A kdump-compressed dump cut short (found by a new user: cut at its last 781 bytes it
    gave pages all holes and check 253 wrong slabs, exit 0 and 1; cut in its header, a
    SIGBUS): cut in its headers or bitmaps, every command refuses it in one line saying
    where; cut in its pages, info lists the cut-off part, and each command answers as on
    the whole dump or names a page the cut took — never an answer from zeros."""
    desc, data = _page_desc_end(snap.vmcore)
    size = snap.vmcore.stat().st_size
    cut = {"header": 8192, "bitmaps": desc - 4096, "descriptors": (desc + data) // 2,
           "data": data + (size - data) // 2, "last page": size - 781}[where]
    part = tmp_path / "vmcore"
    with open(snap.vmcore, "rb") as f, open(part, "wb") as out:
        out.write(f.read(cut))
    r = _cli(part, "-s", str(snap.vmlinux), "buddyinfo")
    if where in ("header", "bitmaps"):
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"truncated at byte {cut}" in r.stderr
        return
    info = json.loads(_cli(part, "info", "-f", "json").stdout)
    assert any(m["why"].startswith("cut off") for m in info["missing"]), info["missing"]
    whole = DrgnTarget(open_core(snap.vmcore, snap.vmlinux))
    t = DrgnTarget(open_core(part, snap.vmlinux))
    for argv in (["buddyinfo", "-f", "proc"], ["pagetypeinfo", "-f", "proc"], ["pages"],
                 ["check", "-f", "json"], ["meminfo", "-f", "proc"], ["slabinfo", "-f", "proc"]):
        text, err, status = run(t, *argv)
        if err is None:
            want = run(whole, *argv)
            if argv[0] == "check":  # a missing page is a finding: the rest must agree
                got = json.loads(text)
                kinds = {p["kind"] for p in got["problems"]}
                assert kinds <= {"missing_page", "unreadable"}, kinds
                assert status == (1 if kinds else 0)
            else:
                assert (text, status) == want[::2], argv
        else:
            assert status == 2 and "cut off: the dump file ends at byte" in err, (argv, err)
