"""`check` on every real dump, and on copies of real vmcores whose free lists the test
corrupted (a cycle, a pointer outside memory, a wrong nr_free, a wrong order, a page that is
not PageBuddy): a clear message, exit status 1, no hang.  The corruptions run on 5.10 (the
old page_type encoding, a type set by clearing its bit below PAGE_TYPE_BASE), 6.12 (enum
pagetype in the top byte) and 7.2 (the same, 8-bit pageblock flags, typed large kmalloc);
the page_type words written are derived from each dump's own debug info and VMCOREINFO.  A truncated vmcore and a vmlinux
from another kernel are one-line errors with exit status 2."""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
import subprocess
import sys

import pytest


# The unusable-input tests run on one x86_64 kernel; the corruptions on one kernel of each
# page_type encoding and layout.  6.12's mixed case fills its memory until DMA32 has no
# top-order block (its longest free list has 3 entries): its corruptions use the snapshots
# case, the same kernel with plenty free.
CORRUPT_KERNEL = "6.12"
CORRUPT_KERNELS = ["5.10", "6.12-snapshots", "7.2"]


def run_cli(*args: str, timeout: float = 300):
    # The timeout guards against a hang (a failure), it does not measure speed.
    return subprocess.run([sys.executable, "-m", "memscope.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def check(vmcore, vmlinux, *extra: str):
    return run_cli("-c", str(vmcore), "-s", str(vmlinux), "check", *extra)


def test_check_passes_on_every_real_dump(real_kernel):
    r = check(real_kernel.vmcore, real_kernel.vmlinux, "-f", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] and report["problems"] == []
    for z in report["zones"]:
        assert z["walked"] == z["nr_free"]
        assert z["free_pages"] == z["free_pages_counter"]


# --- corrupted copies ------------------------------------------------------------------
class ElfCore:
    """Physical address -> file offset in an ELF64 vmcore (QEMU's dump-guest-memory: one
    PT_LOAD per RAM block, p_paddr = guest physical address)."""

    def __init__(self, path):
        from filtered_dumps import read_loads

        self.path = path
        self.loads = [(paddr, filesz, off) for off, _, paddr, filesz, _ in read_loads(path)[2]]

    def offset(self, phys: int) -> int:
        for paddr, size, off in self.loads:
            if paddr <= phys < paddr + size:
                return off + phys - paddr
        raise LookupError(f"physical address {phys:#x} is not in the dump")

    @contextlib.contextmanager
    def patched(self, phys: int, data: bytes):
        """Write DATA at physical address PHYS for the duration of the block."""
        off = self.offset(phys)
        with open(self.path, "r+b") as f:
            f.seek(off)
            old = f.read(len(data))
            f.seek(off)
            f.write(data)
        try:
            yield
        finally:
            with open(self.path, "r+b") as f:
                f.seek(off)
                f.write(old)


def page_type_words(prog) -> dict[str, list[int]]:
    """page_type words for a free block's first page, from the dump's own encoding:
    "buddy" (PageBuddy), "not_buddy" (words the kernel's PageBuddy() refuses: an ordinary
    unmapped page, another page type, a near miss of the buddy encoding) and "still_buddy"
    (words PageBuddy() accepts although they differ from the one the kernel writes).

    6.10+ (commit 4ffca5a96678 "mm: support only one page_type per page"): PageBuddy() is
    ``page_type >> 24 == PGTY_buddy``, from enum pagetype.  5.10/6.1: PageBuddy() is
    ``(page_type & (PAGE_TYPE_BASE | PG_buddy)) == PAGE_TYPE_BASE``; VMCOREINFO exports
    PAGE_BUDDY_MAPCOUNT_VALUE (~PG_buddy) and PAGE_OFFLINE_MAPCOUNT_VALUE (~PG_offline);
    PAGE_TYPE_BASE (0xf0000000, include/linux/page-flags.h) is a #define, in no debug
    info."""
    m32 = 0xFFFFFFFF
    try:
        enum = {e.name: e.value for e in prog.type("enum pagetype").enumerators}
    except LookupError:
        enum = None
    if enum is not None:
        buddy = enum["PGTY_buddy"] << 24
        return dict(buddy=[buddy],
                    not_buddy=[m32, enum["PGTY_table"] << 24, enum["PGTY_buddy"]],
                    still_buddy=[buddy | 0x00ABCDEF])
    info = dict(line.split("=", 1) for line in
                prog["vmcoreinfo_data"].string_().decode().splitlines() if "=" in line)
    buddy = int(info["NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)"]) & m32
    offline = int(info["NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)"]) & m32
    page_type_base = 0xF0000000
    return dict(buddy=[buddy],
                not_buddy=[m32, offline, buddy & ~page_type_base & m32],
                still_buddy=[buddy & offline])


@pytest.fixture(scope="module", params=CORRUPT_KERNELS)
def corruptible(request, lab_case, tmp_path_factory):
    """A private copy of a real vmcore, and where its free lists are (found with drgn's
    own helpers, in the test only)."""
    import drgn
    from drgn.helpers.linux.list import list_for_each
    from drgn.helpers.linux.mm import follow_phys

    snap = lab_case(request.param)
    copy = tmp_path_factory.mktemp("vmcore") / "vmcore"
    shutil.copyfile(snap.vmcore, copy)
    prog = drgn.Program()
    prog.set_core_dump(str(copy))
    prog.load_debug_info([str(snap.vmlinux)])
    init_mm = prog["init_mm"].address_of_()

    def phys(addr) -> int:
        return int(follow_phys(init_mm, int(addr)))

    # The longest free list of the zone with the most free blocks.
    best = None
    pgdat = prog["node_data"][0]
    for zi in range(len(pgdat.node_zones)):
        zone = pgdat.node_zones[zi]
        if not zone.present_pages:
            continue
        for order in range(len(zone.free_area)):
            fa = zone.free_area[order]
            for mt in range(len(fa.free_list)):
                entries = [int(e.value_()) for e in list_for_each(fa.free_list[mt].address_of_())]
                if best is None or len(entries) > len(best["entries"]):
                    best = dict(zone=zone.name.string_().decode(), order=order, mt=mt,
                                head=int(fa.free_list[mt].address_of_().value_()),
                                nr_free=int(fa.nr_free), nr_free_addr=int(fa.nr_free.address_),
                                entries=entries)
    assert len(best["entries"]) >= 4
    link = prog.type("struct page").member("buddy_list" if prog.type("struct page")
                                             .has_member("buddy_list") else "lru").offset
    best["pages"] = [e - link for e in best["entries"]]
    best["private_off"] = prog.type("struct page").member("private").offset
    best["page_type_off"] = prog.type("struct page").member("page_type").offset
    best["page_type"] = page_type_words(prog)
    # The block the page_type tests rewrite is PageBuddy in the dump as the kernel wrote it.
    page = drgn.Object(prog, "struct page *", best["pages"][3])
    assert page.page_type.value_() in best["page_type"]["buddy"]
    best["phys"] = phys
    return ElfCore(copy), snap, best


def _problems(r) -> list[dict]:
    assert r.returncode == 1, r.stdout + r.stderr
    return json.loads(r.stdout)["problems"]


def test_check_reports_a_cycle_in_a_free_list(corruptible):
    core, snap, fl = corruptible
    e = fl["entries"]
    # entry[2].next -> entry[0]: the list never returns to its head.
    with core.patched(fl["phys"](e[2]), struct.pack("<Q", e[0])):
        r = check(core.path, snap.vmlinux, "-f", "json")
        kinds = {p["kind"] for p in _problems(r)}
        assert "cycle" in kinds
        assert any(p["kind"] == "nr_free_mismatch" and f"nr_free is {fl['nr_free']}"
                   in p["message"] for p in _problems(r))
        # The table form says so in words, and pagetypeinfo does not hang on it either.
        t = check(core.path, snap.vmlinux)
        assert t.returncode == 1 and "comes back after 3 entries" in t.stdout
        assert run_cli("-c", str(core.path), "-s", str(snap.vmlinux), "pagetypeinfo",
                       "-f", "proc").returncode == 0


def test_check_reports_a_pointer_outside_memory(corruptible):
    core, snap, fl = corruptible
    bogus = 0xDEAD000000000100  # LIST_POISON1 on x86_64
    with core.patched(fl["phys"](fl["entries"][1]), struct.pack("<Q", bogus)):
        r = check(core.path, snap.vmlinux, "-f", "json")
        ps = _problems(r)
        assert any(p["kind"] == "outside_memory" and f"{bogus:#x}" in p["message"]
                   and f"[{fl['order']}]" in p["where"] for p in ps), ps


def test_check_reports_a_wrong_nr_free(corruptible):
    core, snap, fl = corruptible
    wrong = fl["nr_free"] + 5
    with core.patched(fl["phys"](fl["nr_free_addr"]), struct.pack("<Q", wrong)):
        r = check(core.path, snap.vmlinux, "-f", "json")
        ps = _problems(r)
        assert [p["kind"] for p in ps] == ["nr_free_mismatch"]
        assert f"nr_free is {wrong} but the free lists hold {fl['nr_free']}" in ps[0]["message"]


def test_check_reports_a_block_with_the_wrong_order(corruptible):
    core, snap, fl = corruptible
    page = fl["pages"][1]
    with core.patched(fl["phys"](page + fl["private_off"]), struct.pack("<Q", fl["order"] ^ 1)):
        ps = _problems(check(core.path, snap.vmlinux, "-f", "json"))
        assert [p["kind"] for p in ps] == ["wrong_order"]


@pytest.mark.parametrize("which", range(3))
def test_check_reports_a_block_that_is_not_page_buddy(corruptible, which):
    core, snap, fl = corruptible
    page = fl["pages"][3]
    word = fl["page_type"]["not_buddy"][which]
    with core.patched(fl["phys"](page + fl["page_type_off"]), struct.pack("<I", word)):
        ps = _problems(check(core.path, snap.vmlinux, "-f", "json"))
        assert [p["kind"] for p in ps] == ["not_buddy"], hex(word)
        assert "is not PageBuddy" in ps[0]["message"]


def test_check_accepts_every_page_type_word_the_kernel_calls_page_buddy(corruptible):
    core, snap, fl = corruptible
    page = fl["pages"][3]
    for word in fl["page_type"]["still_buddy"]:
        with core.patched(fl["phys"](page + fl["page_type_off"]), struct.pack("<I", word)):
            r = check(core.path, snap.vmlinux, "-f", "json")
            assert r.returncode == 0, (hex(word), r.stdout + r.stderr)


def test_the_corrupting_fixture_restores_the_copy(corruptible):
    core, snap, _ = corruptible
    assert check(core.path, snap.vmlinux).returncode == 0


# --- unusable inputs -------------------------------------------------------------------
def _one_line_error(r, *needles: str):
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("memscope: "), r.stderr
    for n in needles:
        assert n in lines[0]


def test_a_truncated_vmcore_is_a_one_line_error(lab_case, tmp_path):
    snap = lab_case(CORRUPT_KERNEL)
    cut = tmp_path / "vmcore"
    with open(snap.vmcore, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(64 << 20))  # the first 64 MiB of 512
    for cmd in ("check", "buddyinfo"):
        _one_line_error(check(cut, snap.vmlinux) if cmd == "check" else
                        run_cli("-c", str(cut), "-s", str(snap.vmlinux), cmd), "truncated")


def test_a_vmlinux_from_another_kernel_is_a_one_line_error(lab_case):
    snap = lab_case(CORRUPT_KERNEL)
    other = lab_case("6.1").vmlinux
    _one_line_error(check(snap.vmcore, other), str(other), "does not match")
