"""vmalloc areas (memscope.mm.vmalloc, ``vmallocinfo``, ``vmalloc --by-caller``) on every
lab kernel.

Answer keys: drgn's ``for_each_vmap_area()`` (the busy areas), the guest's /proc/meminfo
(VmallocUsed is the kernel's own count of vmalloc'ed pages: ``vmalloc_nr_pages()``, or
NR_VMALLOC on 7.2) and the guest's /proc/vmallocinfo (whose caller column is checked
in tests/test_kernel_kallsyms.py)."""

from __future__ import annotations

import re

from drgn.helpers.linux.mm import for_each_vmap_area

from kernel_dumps import PatchedTarget, open_dump
from memscope.kernel.fields import offsetof
from memscope.mm import vmalloc
from memscope.mm.context import KernelContext


def _info(snap):
    _prog, t = open_dump(snap)
    return vmalloc.vmallocinfo(KernelContext(t))


def test_the_busy_areas_are_drgns(real_kernel):
    prog, t = open_dump(real_kernel)
    info = _info(real_kernel)
    assert info.problems == []
    # printed: each busy area with a vm_struct, or (v6.2+) marked VMAP_RAM (0x1); with
    # the per-node lists (v6.9+) a vm_struct still VM_UNINITIALIZED (0x20) is left out
    nodes = "vmap_nodes" in prog
    want = [va.value_() for va in for_each_vmap_area(prog)
            if (va.vm and not (nodes and va.vm.flags.value_() & 0x20))
            or (not va.vm and (not hasattr(va, "flags") or va.flags.value_() & 1))]
    got = [a.vmap_area for a in info.areas if a.kind != "unpurged"]
    assert sorted(got) == sorted(want)
    assert len(got) > 50


def _vmalloc_pages_counter(prog) -> int:
    """The kernel's count of vmalloc'ed pages, exact: ``nr_vmalloc_pages`` (an atomic, to
    6.x) or, where it became the node stat NR_VMALLOC (7.x), the global counter plus every
    CPU's pending ``vm_node_stat_diff`` (read with drgn)."""
    from drgn.helpers.linux.cpumask import for_each_possible_cpu
    from drgn.helpers.linux.mmzone import for_each_online_pgdat
    from drgn.helpers.linux.percpu import per_cpu_ptr
    from drgn.helpers.linux.vmstat import global_node_page_state

    if "nr_vmalloc_pages" in prog:
        return prog["nr_vmalloc_pages"].counter.value_()
    item = prog["NR_VMALLOC"]
    n = global_node_page_state(prog, item)
    for pgdat in for_each_online_pgdat(prog):
        for cpu in for_each_possible_cpu(prog):
            n += per_cpu_ptr(pgdat.per_cpu_nodestats, cpu).vm_node_stat_diff[item].value_()
    return n


def test_vmalloc_pages_add_up_to_the_kernels_count(real_kernel):
    """The pages of the vmalloc areas are the kernel's own count of vmalloc'ed pages,
    exactly; /proc/meminfo's VmallocUsed is that count too, where it has no per-CPU parts
    (nr_vmalloc_pages, to 6.x); 7.x's NR_VMALLOC leaves them out of /proc."""
    prog, _t = open_dump(real_kernel)
    info = _info(real_kernel)
    rows = vmalloc.by_caller(info)
    pages = sum(r.pages for r in rows if "vmalloc" in r.kind.split("+"))
    assert pages == _vmalloc_pages_counter(prog)
    if "nr_vmalloc_pages" in prog:
        used_kb = int(re.search(r"^VmallocUsed:\s+(\d+) kB$",
                                real_kernel.truth_text("meminfo"), re.M).group(1))
        assert pages * 4 == used_kb
    assert sum(r.areas for r in rows) == len(info.areas)
    assert rows == sorted(rows, key=lambda r: (-r.bytes, -r.areas, r.caller, r.kind))


def test_a_cycle_in_the_busy_list_is_a_problem_not_a_hang(real_kernel):
    prog, real = open_dump(real_kernel)
    info = _info(real_kernel)
    busy = [a.vmap_area for a in info.areas if a.kind == "vm_struct"]
    t = PatchedTarget(real)
    off = offsetof(real, "struct vmap_area", "list")
    # the 10th area's next points back at the 5th: the walk must see a cycle
    t.patch(busy[10] + off, busy[5] + off)
    got = vmalloc.vmallocinfo(KernelContext(t))
    assert [p.kind for p in got.problems][:1] == ["cycle"]
    assert len(got.areas) < len(info.areas)


def test_vmalloc_png_draws_each_area_page_in_its_kinds_colour(real_kernel, tmp_path):
    """Every page of every area is one pixel (or px x px) of its kind's colour, guard pages
    dark: the picture's pixel counts per colour are the pages per kind, plus the legend's
    swatch (14 x 9 pixels inside its frame)."""
    import argparse

    import numpy as np
    from PIL import Image

    from memscope import commands
    from memscope.report import png

    _prog, t = open_dump(real_kernel)
    ctx = KernelContext(t)
    out = tmp_path / "v.png"
    commands.execute(ctx, argparse.Namespace(command="vmalloc", format="table", png=str(out),
                                             by_caller=False))
    im = Image.open(out)
    px = int(im.text["memscope:px_x"])
    rgb = np.asarray(im.convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(rgb, axis=0, return_counts=True)
    got = {tuple(c): int(n) for c, n in zip(colours.tolist(), counts.tolist())}
    info = vmalloc.vmallocinfo(ctx)
    page = t.page_size
    want: dict[str, int] = {}
    for a in info.areas:
        kind = a.kind if a.kind != "vm_struct" else (a.kinds[0] if a.kinds else "other")
        guard = page if a.kind == "vm_struct" and a.size > page and not a.flags & 0x40 else 0
        want[kind] = want.get(kind, 0) + (a.size - guard) // page
        want["guard"] = want.get("guard", 0) + guard // page
    for kind, pages in want.items():
        assert got.get(png.VMALLOC_COLOURS[kind], 0) == pages * px * px + 14 * 9, kind


def test_vmallocinfo_proc_is_the_guests_file_byte_for_byte(real_kernel):
    """The lab's guests set kernel.kptr_restrict=1, so their /proc/vmallocinfo shows the
    areas' real addresses (with the default 0, ``%pK`` prints hashed values nothing can
    reproduce from a dump)."""
    import argparse

    from memscope import commands

    _prog, t = open_dump(real_kernel)
    text, status = commands.execute(t, argparse.Namespace(command="vmallocinfo",
                                                          format="proc"))
    assert status == 0
    assert text == real_kernel.truth_text("vmallocinfo")
