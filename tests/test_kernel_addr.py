"""memscope.kernel.addr and memscope.kernel.pgtable on every lab kernel, against drgn's
virt_to_phys / phys_to_virt / pfn_to_page / follow_phys on the same dump, the guest's own
/proc/meminfo (VmallocTotal) and the kernel's own records of where things are (busy vmap
areas, loaded modules): thousands of kernel addresses (direct map, kernel image, vmalloc,
modules, vmemmap) and every page of every process's VMAs, the lab's heap process
included."""

from __future__ import annotations

import random

import drgn
from drgn.helpers.linux.mm import (follow_phys, for_each_vmap_area, pfn_to_page,
                                   phys_to_virt, virt_to_phys)
from drgn.helpers.linux.mmzone import for_each_online_pgdat
from drgn.helpers.linux.pid import find_task, for_each_task

from kernel_dumps import open_dump
from memscope.kernel import addr, pgtable


def _ram_pfns(prog):
    """(start, end) pfn range of each populated zone."""
    return [(z.zone_start_pfn.value_(), z.zone_start_pfn.value_() + z.spanned_pages.value_())
            for p in for_each_online_pgdat(prog) for z in p.node_zones if z.present_pages]


def _drgn_phys(mm, va):
    try:
        return follow_phys(mm, va).value_()
    except drgn.FaultError:
        return None


def _direct_map_addresses(prog, n=3000):
    rng = random.Random(7)
    out = []
    for lo, hi in _ram_pfns(prog):
        for _ in range(n // len(_ram_pfns(prog))):
            out.append(rng.randrange(lo, hi) * 4096 + rng.randrange(4096))
    return out


def test_direct_map_matches_drgn(real_kernel):
    prog, t = open_dump(real_kernel)
    L = addr.kernel_layout(t)
    pas = _direct_map_addresses(prog)
    for pa in pas:
        va = addr.phys_to_virt(L, pa)
        assert va == phys_to_virt(prog, pa).value_()
        assert addr.virt_to_phys(L, va) == pa == virt_to_phys(prog, va).value_()
        assert addr.region(L, va) == "direct map"
    assert len(pas) >= 2000


def test_vmemmap_matches_drgn(real_kernel):
    prog, t = open_dump(real_kernel)
    L = addr.kernel_layout(t)
    assert L.vmemmap == pfn_to_page(prog, 0).value_()
    for lo, hi in _ram_pfns(prog):
        for pfn in (lo, hi - 1):
            page = pfn_to_page(prog, pfn).value_()
            assert addr.region(L, page) == "vmemmap"


def test_vmalloc_range_matches_meminfo(real_kernel):
    """/proc/meminfo's VmallocTotal is (VMALLOC_END - VMALLOC_START) >> 10 (fs/proc/
    meminfo.c); every busy vmap area lies in the vmalloc range, or (x86_64 module_alloc)
    the modules range."""
    prog, t = open_dump(real_kernel)
    L = addr.kernel_layout(t)
    total = next(int(line.split()[1]) for line in real_kernel.truth_text("meminfo").splitlines()
                 if line.startswith("VmallocTotal:"))
    assert (L.vmalloc_end - L.vmalloc_start) >> 10 == total
    n = 0
    for va in for_each_vmap_area(prog):
        start, end = va.va_start.value_(), va.va_end.value_()
        inside = [(L.vmalloc_start <= start and end - 1 <= L.vmalloc_end),
                  (L.modules_start <= start and end <= L.modules_end)]
        assert any(inside), (hex(start), hex(end))
        n += 1
    assert n > 50


def _module_bases(prog):
    from drgn.helpers.linux.list import list_for_each_entry
    for mod in list_for_each_entry("struct module", prog["modules"].address_of_(), "list"):
        try:
            yield from (m.base.value_() for m in mod.mem if m.size)  # v6.4+
        except AttributeError:
            yield mod.core_layout.base.value_()


def test_modules_are_in_the_modules_range(real_kernel):
    prog, t = open_dump(real_kernel)
    L = addr.kernel_layout(t)
    bases = list(_module_bases(prog))
    assert bases  # qemu_fw_cfg
    for base in bases:
        assert addr.region(L, base) == "modules", hex(base)


def test_kernel_image_matches_follow_phys(real_kernel):
    """__pa_symbol() of every page of the kernel image, against drgn's page-table walk.
    The whole image stays mapped but, on arm64, the init sections: free_initmem()
    (arch/arm64/mm/init.c) unmaps [__init_begin, __init_end) with vunmap_range()."""
    prog, t = open_dump(real_kernel)
    L = addr.kernel_layout(t)
    init_mm = prog["init_mm"].address_of_()
    assert L.kernel_start == prog.symbol("_text").address
    unmapped = []
    for va in range(L.kernel_start, L.kernel_end, 4096):
        want = _drgn_phys(init_mm, va + 123)
        assert addr.region(L, va) == "kernel image"
        if want is None:
            unmapped.append(va)
            continue
        assert addr.virt_to_phys(L, va + 123) == want, hex(va)
    init = []
    if t.arch == "aarch64":
        init = list(range(t.symbol("__init_begin"), t.symbol("__init_end"), 4096))
    assert unmapped == init
    assert (L.kernel_end - L.kernel_start) // 4096 - len(unmapped) > 5000


def _kernel_walker(prog, t):
    L = addr.kernel_layout(t)
    pgd = addr.virt_to_phys(L, prog["init_mm"].pgd.value_())
    return pgtable.PageTableWalker(pgtable.kernel_paging(t), pgd,
                                   pgtable.direct_map_reader(t, L)), L


def _compare(walker, mm, addresses):
    """Translate ADDRESSES with WALKER and with drgn's follow_phys(MM): the same physical
    address, or both unmapped.  Returns how many were mapped."""
    mapped = 0
    for va in addresses:
        want = _drgn_phys(mm, va)
        assert walker.follow_phys(va) == want, hex(va)
        mapped += want is not None
    return mapped


def test_kernel_page_tables_match_follow_phys(real_kernel):
    prog, t = open_dump(real_kernel)
    walker, L = _kernel_walker(prog, t)
    init_mm = prog["init_mm"].address_of_()
    rng = random.Random(11)
    vas = [addr.phys_to_virt(L, pa) for pa in _direct_map_addresses(prog, 2000)]
    vas += range(L.kernel_start + 5, L.kernel_end, 4096 * 7)
    vmalloc = modules = 0
    for va in for_each_vmap_area(prog):
        start, end = va.va_start.value_(), va.va_end.value_()
        for page in range(start, end, 4096):
            vas.append(page + rng.randrange(4096))
            if addr.region(L, page) == "modules":
                modules += 1
            else:
                vmalloc += 1
    for lo, hi in _ram_pfns(prog):
        vas += [pfn_to_page(prog, pfn).value_() for pfn in range(lo, hi, 97)]
    # unmapped holes: just below the direct map, vmalloc and modules ranges
    vas += [L.page_offset - 4096, L.vmalloc_start - 4096, L.modules_end + 4096 * 3]
    mapped = _compare(walker, init_mm, vas)
    assert mapped > 5000 and vmalloc > 500 and modules > 0, (mapped, vmalloc, modules)


def _heap_pid(snap):
    return snap.tracked_as("heap")  # the lab's mixed workload tracks one


def test_user_page_tables_match_follow_phys(real_kernel):
    """Every page of every VMA of every process (the heap process's too) through the
    process's own page tables (mm->pgd)."""
    prog, t = open_dump(real_kernel)
    L = addr.kernel_layout(t)
    paging = pgtable.kernel_paging(t)
    read_phys = pgtable.direct_map_reader(t, L)
    from drgn.helpers.linux.mm import for_each_vma
    heap_mm = find_task(prog, _heap_pid(real_kernel)).mm.value_()
    seen, mapped, heap_mapped = set(), 0, 0
    for task in for_each_task(prog):
        mm = task.mm
        if not mm or mm.value_() in seen:
            continue
        seen.add(mm.value_())
        walker = pgtable.PageTableWalker(paging, addr.virt_to_phys(L, mm.pgd.value_()),
                                         read_phys)
        vas = [page + 0x5a8 for vma in for_each_vma(mm)
               for page in range(vma.vm_start.value_(), vma.vm_end.value_(), 4096)]
        n = _compare(walker, mm, vas)
        mapped += n
        if mm.value_() == heap_mm:
            heap_mapped = n
    assert heap_mapped > 1000 and mapped > 2000, (heap_mapped, mapped)


def test_physical_reads_give_the_same_walk(real_kernel):
    """The walker with a physical-memory reader (drgn's physical reads, as the GDB adapter
    reads QEMU's RAM) translates as it does through the direct map."""
    prog, t = open_dump(real_kernel)
    walker, L = _kernel_walker(prog, t)

    def read_phys(pa, size):
        try:
            return prog.read(pa, size, True)
        except drgn.FaultError:
            return None

    phys = pgtable.PageTableWalker(walker.paging, walker.pgd, read_phys)
    vas = list(range(L.kernel_start, L.kernel_end, 4096 * 13))
    vas += [va.va_start.value_() for va in for_each_vmap_area(prog)]
    for va in vas:
        assert phys.walk(va) == walker.walk(va), hex(va)


def test_read_phys_reads_what_the_direct_map_and_the_kernel_image_map(real_kernel):
    """Target.read_phys at virt_to_phys(VA) gives the bytes a virtual read of VA gives (the
    dump's physical and virtual views are separate paths in drgn: PT_LOAD p_paddr, and the
    page tables or p_vaddr), for the kernel image and for direct-map pages."""
    prog, t = open_dump(real_kernel)
    lay = addr.kernel_layout(t)
    image = [t.symbol(s) for s in ("linux_banner", "init_uts_ns", "_stext")]
    pgdat = prog["node_data"][0].value_() if "node_data" in prog else prog["contig_page_data"].address_
    mms = [task.mm.value_() for task in for_each_task(prog) if task.mm]
    direct = [pgdat, mms[0], mms[-1]]  # struct mm_struct: slab objects in the direct map
    for va in image + direct:
        assert t.read_phys(addr.virt_to_phys(lay, va), 512) == t.read(va, 512), hex(va)


def test_walk_leaves_maps_every_page_as_follow_phys_does(real_kernel):
    """The bulk walk (pgtable.walk_leaves, one numpy decode per table) over the kernel
    image and over every busy vmalloc area, and over every VMA of every process: each
    page that drgn's follow_phys() translates is in a present leaf at the same physical
    address, and each page it does not translate is in no present leaf (x86_64 PROT_NONE
    entries excepted: present for the kernel, unmapped for drgn; their pfn is checked
    inverted)."""
    import numpy as np
    from drgn.helpers.linux.mm import for_each_vma

    prog, t = open_dump(real_kernel)
    L = addr.kernel_layout(t)
    paging = pgtable.kernel_paging(t)
    read_phys = pgtable.direct_map_reader(t, L)

    def check(mm, pgd, lo, hi):
        lv = pgtable.walk_leaves(paging, pgd, lo, hi, read_phys)
        assert (np.diff(lv.va.astype(np.float64)) > 0).all()  # address order
        got = {}
        for i in range(len(lv)):
            leaf = lv.leaf(i)
            for off in range(0, leaf.size, 4096):
                if lo <= leaf.va + off < hi:
                    got[leaf.va + off] = (leaf, off)
        n = 0
        for va in range(lo, hi, 4096):
            want = _drgn_phys(mm, va)
            leaf, off = got.get(va, (None, 0))
            if want is None and leaf is not None and t.arch == "x86_64" \
                    and leaf.entry & 0x101 == 0x100:  # PROT_NONE (L1TF-inverted pfn)
                assert leaf.pa + off == ((~leaf.entry) & 0x000FFFFFFFFFF000
                                         & ~(leaf.size - 1)) + off, hex(va)
                continue
            assert (leaf.pa + off if leaf is not None and leaf.present else None) == want, \
                hex(va)
            n += want is not None
        return n

    init_mm = prog["init_mm"].address_of_()
    kpgd = addr.virt_to_phys(L, init_mm.pgd.value_())
    n = check(init_mm, kpgd, L.kernel_start, min(L.kernel_end, L.kernel_start + (8 << 20)))
    for va in list(for_each_vmap_area(prog))[:200]:
        if va.vm:
            n += check(init_mm, kpgd, va.va_start.value_(), va.va_end.value_())
    seen = set()
    for task in for_each_task(prog):
        mm = task.mm
        if not mm or mm.value_() in seen:
            continue
        seen.add(mm.value_())
        pgd = addr.virt_to_phys(L, mm.pgd.value_())
        for vma in for_each_vma(mm):
            n += check(mm, pgd, vma.vm_start.value_(), vma.vm_end.value_())
    assert n > 5000
