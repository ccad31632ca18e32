"""The maps (`pages --png`, `pageblocks --png`) read back pixel by pixel through the geometry
they store in their PNG text chunks, against the guest's own /proc files and drgn:

- page map: the pixels of the buddy colour are the free pages /proc/buddyinfo counts, those
  of the hugetlb colour the pages of HugePages_Total; the heap process's pages (found with
  drgn's follow_pfn) are drawn in the anon colour;
- pageblock map: the squares of each migratetype's colour are the blocks of
  /proc/pagetypeinfo's "Number of blocks type"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import drgn
import numpy as np
import pytest
from drgn.helpers.linux.mm import follow_pfn
from drgn.helpers.linux.pid import find_task
from PIL import Image

from memscope.report import png

from test_pages import _heap_task, buddyinfo
from test_pageblocks import truth_blockcounts

ROOT = Path(__file__).resolve().parents[1]
CASES = ["6.12", "5.10", "6.12-numa", "6.12-arm64"]


def draw(snap, cmd: str, out: Path) -> tuple[np.ndarray, dict[str, int]]:
    p = subprocess.run([sys.executable, "-m", "memscope.cli", "-c", str(snap.vmcore), "-s",
                        str(snap.vmlinux), cmd, "--png", str(out)], capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    im = Image.open(out)
    geo = {k.split(":", 1)[1]: int(v) for k, v in im.text.items()
           if k.startswith("memscope:")}
    return np.asarray(im.convert("RGB")), geo


def colour_count(rgb: np.ndarray, colour) -> int:
    return int(np.count_nonzero((rgb == np.array(colour, np.uint8)).all(axis=2)))


@pytest.mark.parametrize("case", CASES)
def test_page_map_pixels_are_the_guests_free_and_hugetlb_pages(lab_case, tmp_path, case):
    snap = lab_case(case)
    rgb, g = draw(snap, "pages", tmp_path / "pages.png")
    per_pixel = g["px_x"] * g["px_y"]
    mi = {line.split(":")[0]: int(line.split()[1])
          for line in snap.truth_text("meminfo").splitlines()}
    rows = -(-(max(z.end_pfn for z in _zones(snap)) - g["origin_pfn"]) // g["pages_per_row"])
    m = rgb[g["map_y"]:g["map_y"] + rows * g["px_y"],
            g["map_x"]:g["map_x"] + g["pages_per_row"] * g["px_x"]]
    free = sum(n << o for zone in buddyinfo(snap) for o, n in enumerate(zone))
    assert colour_count(m, png.CLASS_COLOURS["buddy"]) == free * per_pixel
    huge = mi["HugePages_Total"] * mi["Hugepagesize"] // 4
    assert huge > 0
    assert colour_count(m, png.CLASS_COLOURS["hugetlb"]) == huge * per_pixel


def _zones(snap):
    from memscope.mm.page import zones
    from test_pages import mm_for
    return zones(mm_for(snap))


def test_the_heap_process_is_drawn_in_the_anon_colour(lab_case, tmp_path):
    snap = lab_case("6.12")
    rgb, g = draw(snap, "pages", tmp_path / "pages.png")
    prog = drgn.Program()
    prog.set_core_dump(str(snap.vmcore))
    prog.load_debug_info([str(snap.vmlinux)])
    pid, maps = _heap_task(snap)
    task_mm = find_task(prog, pid).mm
    checked = 0
    for line in maps.splitlines():
        if "[heap]" not in line:
            continue
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        for addr in range(lo, hi, 64 << 10):
            try:
                pfn = follow_pfn(task_mm, addr).value_()
            except drgn.FaultError:
                continue
            q = pfn - g["origin_pfn"]
            x = g["map_x"] + (q % g["pages_per_row"]) * g["px_x"]
            y = g["map_y"] + (q // g["pages_per_row"]) * g["px_y"]
            assert tuple(rgb[y, x]) == png.CLASS_COLOURS["anon"], (hex(addr), pfn)
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("case", CASES)
def test_pageblock_map_squares_are_pagetypeinfos_block_counts(lab_case, tmp_path, case):
    snap = lab_case(case)
    rgb, g = draw(snap, "pageblocks", tmp_path / "blocks.png")
    truth = truth_blockcounts(snap)
    header = next(line for line in snap.truth_text("pagetypeinfo").splitlines()
                  if line.startswith("Number of blocks type"))
    names = header.split()[4:]
    want = {n: sum(counts[i] for counts in truth.values()) for i, n in enumerate(names)}
    po = g["pageblock_order"]
    nblocks = (max(z.end_pfn for z in _zones(snap)) + (1 << po) - 1 >> po) \
        - (g["origin_pfn"] >> po)
    got = dict.fromkeys(names, 0)
    colours = {png.MIGRATETYPE_COLOURS[n]: n for n in names}
    for b in range(nblocks):
        x = g["map_x"] + (b % g["blocks_per_row"]) * g["px_x"] + 2
        y = g["map_y"] + (b // g["blocks_per_row"]) * g["px_y"] + 2
        name = colours.get(tuple(int(v) for v in rgb[y, x]))
        if name:
            got[name] += 1
    assert got == want


def test_an_existing_png_is_never_overwritten(lab_case, tmp_path):
    snap = lab_case("6.12")
    out = tmp_path / "mine.png"
    out.write_bytes(b"the user's own file")
    p = subprocess.run([sys.executable, "-m", "memscope.cli", "-c", str(snap.vmcore), "-s",
                        str(snap.vmlinux), "pages", "--png", str(out)], capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == (f"memscope: {out} exists: memscope does not overwrite files; "
                        "name a new file\n")
    assert out.read_bytes() == b"the user's own file"
