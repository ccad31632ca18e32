"""Dumps with holes: filtered copies of real lab dumps (tests/filtered_dumps.py writes them
as makedumpfile -E does, p_filesz < p_memsz) with one chosen page left out, and a dump
cut short.  Every command either gives the answer the guest's kernel gave (its /proc files
in the snapshot's truth) where it does not need the page, or fails in one line naming the
page, whose address drgn finds on the unfiltered dump.  Never a traceback, never an
answer made of the zeros a reader gets from the hole.

The pages excluded: the page holding node_data[0] (the pglist_data every command starts
from), the page of struct pages holding the first block of the longest top-order free
list, a page of the "heap" process's brk heap (a user page), and the first page of a free
top-order block (a free page: its contents are needed by nobody)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import drgn
import pytest
from drgn.helpers.linux.list import list_for_each
from drgn.helpers.linux.mm import follow_phys, page_to_pfn
from drgn.helpers.linux.pid import find_task

from filtered_dumps import write_filtered, write_kdump
from memscope.cli import build_parser
from memscope.commands import execute
from memscope.errors import MemscopeError
from memscope.target.drgn import DrgnTarget, open_core

KERNEL = "6.12"


def _truth_pages(snap) -> dict[str, int]:
    """Physical addresses of the pages the tests leave out, found with drgn's own helpers
    on the unfiltered dump (never with memscope)."""
    prog = drgn.Program()
    prog.set_core_dump(str(snap.vmcore))
    prog.load_debug_info([str(snap.vmlinux)])
    init_mm = prog["init_mm"].address_of_()

    def phys(addr) -> int:
        return int(follow_phys(init_mm, int(addr))) & ~4095

    page_t = prog.type("struct page")
    link = page_t.member("buddy_list" if page_t.has_member("buddy_list") else "lru").offset
    best = None
    pgdat = prog["node_data"][0]
    for zone in pgdat.node_zones:
        if not zone.present_pages:
            continue
        fa = zone.free_area[len(zone.free_area) - 1]
        for mt in range(len(fa.free_list)):
            entries = [int(e) for e in list_for_each(fa.free_list[mt].address_of_())]
            if entries and (best is None or len(entries) > len(best)):
                best = entries
    assert best, "no top-order free block in the dump: nothing to exclude"
    struct_page = best[0] - link
    free_pfn = int(page_to_pfn(drgn.Object(prog, "struct page *", struct_page)))
    pid = _heap_pid(snap)
    task_mm = find_task(prog, pid).mm
    heap = next(v for v in _vmas(snap, pid) if v[2] == "[heap]")
    user = int(follow_phys(task_mm, heap[0])) & ~4095
    # the first process on init_task.tasks (init): its task_struct's page cut out, the walk
    # to every later process stops there
    first = prog["init_task"].tasks.next.value_() - \
        prog.type("struct task_struct").member("tasks").offset
    return dict(node_data=phys(pgdat.value_()), struct_page=phys(struct_page),
                user=user, free=free_pfn * 4096, pid=pid, task=phys(first))


def _heap_pid(snap) -> int:
    for d in snap.dir.joinpath("truth").iterdir():
        if (d / "label").is_file() and (d / "label").read_text().strip() == "heap":
            return int(d.name)
    pytest.fail("the workload tracked no heap process", pytrace=False)


def _vmas(snap, pid):
    for line in (snap.dir / "truth" / str(pid) / "maps").read_text().splitlines():
        f = line.split()
        lo, hi = (int(x, 16) for x in f[0].split("-"))
        yield lo, hi, f[5] if len(f) > 5 else ""


@pytest.fixture(scope="module")
def snap(lab_case):
    return lab_case(KERNEL)


@pytest.fixture(scope="module")
def excluded(snap):
    return _truth_pages(snap)


class Filtered:
    """A filtered copy, opened once; ``run(argv)`` runs a command as the CLI does
    (memscope.commands.execute): (stdout, one-line error or None, exit status)."""

    def __init__(self, path, vmlinux):
        self.path, self.vmlinux = path, vmlinux
        self.target = DrgnTarget(open_core(path, vmlinux))

    def run(self, *argv: str):
        args = build_parser().parse_args(list(argv))
        try:
            text, status = execute(self.target, args)
            return text, None, status
        except MemscopeError as e:
            return "", str(e), e.exit_status


@pytest.fixture(scope="module")
def filtered(snap, excluded, tmp_path_factory):
    """filtered(WHICH, FORM="elf"): a copy of the snapshot's dump without the page
    excluded[WHICH] ("" for none), as an ELF dump (makedumpfile -E style) or a
    kdump-compressed one (zlib, dump level 31 recorded)."""
    made = {}

    def get(which: str, form: str = "elf") -> Filtered:
        if (which, form) not in made:
            path = tmp_path_factory.mktemp(f"holes-{which or 'none'}-{form}") / "vmcore"
            pages = [excluded[which]] if which else []
            if form == "elf":
                write_filtered(snap.vmcore, path, pages)
            else:
                write_kdump(snap.vmcore, path, pages, dump_level=31 if which else 0)
            made[which, form] = Filtered(path, snap.vmlinux)
        return made[which, form]

    return get


FORMS = ["elf", "kdump"]


def _names_the_page(err, page: int, command: str) -> None:
    assert err is not None, f"{command}: an answer although it needs page {page:#x}"
    assert "\n" not in err
    assert err.startswith(f"{command}: ")
    assert f"physical page {page:#x} (pfn {page >> 12:#x}) is not in the dump" in err, err
    assert ("excluded from the dump (its segment's file size is shorter" in err
            or "excluded by makedumpfile at dump level 31 (" in err), err


def test_the_copies_have_the_hole_where_drgn_reads_zeros(snap, excluded, filtered):
    # The premise: drgn alone reads the excluded page as zeros, with no fault.
    f = filtered("node_data")
    prog = drgn.Program()
    prog.set_core_dump(str(f.path))
    assert prog.read(excluded["node_data"], 4096, True) == bytes(4096)
    with open(snap.vmcore, "rb") as whole:
        assert whole.read(1)  # the original is readable
    # ... and memscope's target faults there, naming the page.
    from memscope.target.base import FaultError

    with pytest.raises(FaultError) as e:
        f.target.read_phys(excluded["node_data"] + 8, 8)
    assert e.value.missing is not None and e.value.missing.phys == excluded["node_data"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("argv", [["buddyinfo"], ["buddyinfo", "-f", "proc"], ["frag"],
                                  ["check"], ["pages"], ["pagetypeinfo"], ["meminfo"],
                                  ["pagetypeinfo", "-f", "proc"]])
def test_without_node_data_every_command_names_the_page(filtered, excluded, argv, form):
    out, err, status = filtered("node_data", form).run(*argv)
    _names_the_page(err, excluded["node_data"], argv[0])
    assert status == 2 and out == ""


@pytest.mark.parametrize("form", FORMS)
def test_without_a_page_of_struct_pages(snap, filtered, excluded, form):
    f = filtered("struct_page", form)
    page = excluded["struct_page"]
    # buddyinfo reads nr_free only: the kernel's own numbers.
    out, err, _ = f.run("buddyinfo", "-f", "proc")
    assert err is None and out == snap.truth_text("buddyinfo")
    # The free-list walks go through the excluded struct page: no count made of zeros
    # (the bug: 1 where the kernel printed 78 blocks).
    for argv in (["pagetypeinfo", "-f", "proc"], ["pages"], ["freelists"]):
        out, err, status = f.run(*argv)
        _names_the_page(err, page, argv[0])
        assert status == 2
    # check reports what it could not check as a finding, exit status 1.
    out, err, status = f.run("check", "-f", "json")
    assert (err, status) == (None, 1)
    report = json.loads(out)
    missing = [p for p in report["problems"] if p["kind"] == "missing_page"]
    assert not report["ok"] and len(missing) == 1
    assert missing[0]["message"].startswith(
        f"physical page {page:#x} (pfn {page >> 12:#x}) is not in the dump: ")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("which", ["user", "free", ""])
def test_a_page_no_mm_answer_reads_changes_nothing(snap, filtered, which, form):
    f = filtered(which, form)
    out, err, status = f.run("buddyinfo", "-f", "proc")
    assert (err, status, out) == (None, 0, snap.truth_text("buddyinfo"))
    out, err, status = f.run("pagetypeinfo", "-f", "proc")
    assert (err, status, out) == (None, 0, snap.truth_text("pagetypeinfo"))
    out, err, status = f.run("check", "-f", "json")
    assert (err, status) == (None, 0) and json.loads(out)["ok"]
    out, err, status = f.run("pages", "-f", "json")
    assert err is None, err
    truth = [[int(x) for x in line.split()[4:]]
             for line in snap.truth_text("buddyinfo").splitlines()]
    assert [z["buddy_blocks"] for z in json.loads(out) if "zone" in z] == truth


@pytest.mark.parametrize("form", FORMS)
def test_the_heap_walk_needs_the_user_page(filtered, excluded, form):
    out, err, status = filtered("user", form).run("heap", str(excluded["pid"]))
    _names_the_page(err, excluded["user"], "heap")


@pytest.mark.parametrize("argv", [["maps", "{pid}"], ["smaps_rollup", "{pid}"],
                                  ["heap", "{pid}"], ["maps", "{pid}", "--rss"]])
def test_without_a_task_on_the_way_the_pid_commands_name_the_page(filtered, excluded, argv):
    """The task list's walk to the heap process passes init's task_struct, whose page is
    cut out: the command names that page, never "no process with pid N" (a false fact)."""
    out, err, status = filtered("task").run(*[a.format(pid=excluded["pid"]) for a in argv])
    _names_the_page(err, excluded["task"], argv[0])
    assert status == 2 and out == ""


def test_the_command_line_prints_one_line(filtered, excluded):
    f = filtered("node_data")
    for cmd in ("buddyinfo", "pages"):
        r = subprocess.run([sys.executable, "-m", "memscope.cli", "-c", str(f.path), "-s",
                            str(f.vmlinux), cmd], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and r.stdout == ""
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"memscope: {cmd}: cannot answer: ")
        assert f"{excluded['node_data']:#x}" in lines[0]


def test_a_dump_that_lacks_only_the_bios_rom_is_read_whole(snap, tmp_path):
    # QEMU writes the BIOS ROM (0xfffc0000, 256 KiB) last: cut it off, keep every RAM byte.
    from filtered_dumps import read_loads

    _, _, loads = read_loads(snap.vmcore)
    rom = max(loads, key=lambda l: l[2])
    assert rom[2] >= 0xF0000000 and rom[3] == 256 << 10
    cut = tmp_path / "vmcore"
    with open(snap.vmcore, "rb") as src, open(cut, "wb") as dst:
        left = rom[0]
        while left:
            n = src.read(min(left, 64 << 20))
            dst.write(n)
            left -= len(n)
    info = _info(cut)
    assert [(m["start"], m["end"]) for m in info["missing"]] == [(rom[2], rom[2] + rom[4])]
    assert "cut off" in info["missing"][0]["why"]
    f = Filtered(cut, snap.vmlinux)
    for cmd, truth in (("buddyinfo", "buddyinfo"), ("pagetypeinfo", "pagetypeinfo")):
        out, err, status = f.run(cmd, "-f", "proc")
        assert (err, status, out) == (None, 0, snap.truth_text(truth))
    out, err, status = f.run("check")
    assert (err, status) == (None, 0)


def test_the_drgn_api_raises_instead_of_counting_zeros(snap, filtered, excluded):
    from memscope import drgn_api
    from memscope.target.base import FaultError

    prog = filtered("struct_page").target.prog
    with pytest.raises(FaultError) as e:
        drgn_api.pagetypeinfo(prog)
    assert e.value.missing.phys == excluded["struct_page"]
    report = drgn_api.check(prog)  # check reports it: a finding
    assert not report.ok
    assert [p.message for p in report.problems if p.kind == "missing_page"] == [
        f"physical page {excluded['struct_page']:#x} (pfn {excluded['struct_page'] >> 12:#x}) "
        f"is not in the dump: " + report.problems[-1].message.split(": ", 1)[1]]
    assert drgn_api.format_buddyinfo(drgn_api.buddyinfo(prog)) == snap.truth_text("buddyinfo")


# --- memscope info ----------------------------------------------------------------------
def _readelf_loads(path) -> list[tuple[int, int, int]]:
    """(paddr, filesz, memsz) of each PT_LOAD as binutils' readelf prints them."""
    out = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "LOAD":
            rows.append((int(f[3], 16), int(f[4], 16), int(f[5], 16)))
    return rows


def _info(path, *extra):
    r = subprocess.run([sys.executable, "-m", "memscope.cli", "-c", str(path), *extra, "info",
                        "-f", "json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_info_says_what_the_dump_is(snap):
    info = _info(snap.vmcore, "-s", str(snap.vmlinux))
    notes = subprocess.run(["readelf", "-n", str(snap.vmlinux)], capture_output=True,
                           text=True).stdout
    build_id = next(line.split()[-1] for line in notes.splitlines() if "Build ID" in line)
    assert info["build_id"] == build_id and info["vmlinux_matches"] is True
    assert info["release"] == snap.meta["release"]
    assert (info["format"], info["compression"], info["dump_level"]) == ("elf", None, None)
    assert info["machine"] == snap.arch
    assert info["memory_bytes"] == sum(m for _, _, m in _readelf_loads(snap.vmcore))
    assert info["missing"] == [] and info["missing_bytes"] == 0


def test_info_and_commands_refuse_what_is_not_a_whole_dump_header(snap, tmp_path):
    """A vmlinux (an ELF executable) and a dump cut inside its program headers are not
    dumps to describe: info says so in one line, exit status 2, as the commands do (found
    by a new-user review: info printed "0 bytes in 0 segments, missing: nothing")."""
    cut = tmp_path / "cut"
    with open(snap.vmcore, "rb") as f:
        cut.write_bytes(f.read(64))
    for path, says in ((snap.vmlinux, "not a core dump"), (cut, "truncated")):
        for argv in (["info"], ["-s", str(snap.vmlinux), "buddyinfo"]):
            r = subprocess.run([sys.executable, "-m", "memscope.cli", "-c", str(path), *argv],
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 2 and r.stdout == "", (path, argv)
            assert len(r.stderr.splitlines()) == 1, r.stderr
            if argv == ["info"]:
                assert says in r.stderr, r.stderr


def test_info_names_the_excluded_page(filtered, excluded, lab_case):
    f = filtered("struct_page")
    info = _info(f.path, "-s", str(lab_case("6.1").vmlinux))
    assert info["vmlinux_matches"] is False
    page = excluded["struct_page"]
    assert [(m["start"], m["end"]) for m in info["missing"]] == [(page, page + 4096)]
    assert "excluded" in info["missing"][0]["why"]
    k = _info(filtered("struct_page", "kdump").path)
    assert (k["format"], k["compression"], k["dump_level"]) == ("kdump", "zlib", 31)
    assert k["release"] == info["release"] and k["build_id"] == info["build_id"]
    assert k["missing"] == [dict(start=page, end=page + 4096, bytes=4096,
                                 why=k["missing"][0]["why"])]
    assert "dump level 31 (zero pages, page-cache pages" in k["missing"][0]["why"]
    # readelf sees the same hole: a PT_LOAD whose file size ends at the page.
    assert any(p + fs == page and ms - fs == 4096 for p, fs, ms in _readelf_loads(f.path))


# --- the flattened form (makedumpfile -F, QEMU's kdump output) ---------------------------
def test_a_flattened_dump_is_reassembled_and_read(snap, filtered, tmp_path, monkeypatch):
    from filtered_dumps import write_flattened

    kdump = filtered("", "kdump").path
    flat = write_flattened(kdump, tmp_path / "vmcore.flat")
    cache = tmp_path / "cache"
    env = dict(os.environ, MEMSCOPE_CACHE=str(cache))
    r = subprocess.run([sys.executable, "-m", "memscope.cli", "-c", str(flat), "-s",
                        str(snap.vmlinux), "pagetypeinfo", "-f", "proc"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == snap.truth_text("pagetypeinfo")
    copies = list((cache / "reassembled").iterdir())
    assert len(copies) == 1 and copies[0].read_bytes() == kdump.read_bytes()
    monkeypatch.setenv("MEMSCOPE_CACHE", str(cache))
    info = _info(flat)
    assert (info["format"], info["compression"], info["reassembled"]) == (
        "flattened", "zlib", str(copies[0]))
    # Cut short: one line, exit status 2.
    cut = tmp_path / "cut.flat"
    cut.write_bytes(flat.read_bytes()[:5 << 20])
    r = subprocess.run([sys.executable, "-m", "memscope.cli", "-c", str(cut), "-s",
                        str(snap.vmlinux), "buddyinfo"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "truncated dump" in r.stderr
