"""Benchmark (issue 10): ``vmallocinfo --format proc`` against drgn's nearest equivalent on
the same dump, in the same run: drgn's contrib ``vmallocinfo.py`` walk (drgn's
``for_each_vmap_area()``: ``vmap_area_list`` to 6.8, every ``vmap_nodes[i].busy`` list
from 6.9; each area's ``vm_struct`` read through drgn Objects, each line formatted).

Two drgn baselines:

1. **same answer**: the contrib walk completed so that it prints /proc/vmallocinfo
   byte for byte, checked equal to memscope's output in the run: the caller as ``%pS``
   (``prog.symbol()``: ``name+0xoff/0xsize``, `` [module]`` from ``prog.module()``), 16
   hex digits, the kernel's widths, ``N<node>=`` counts (each ``1 << page_order`` step of
   ``vm->pages[]`` by its page's node, nodes in N_HIGH_MEMORY order), VM_UNINITIALIZED
   areas left out (6.9+), then the lazily freed areas (``vmap_nodes[i].lazy`` /
   ``purge_vmap_area_list`` / ``vmap_purge_list``) as ``unpurged vm_area``;
2. **contrib as published**: its own output (bare caller names, no node counts, no
   unpurged lines), the upstream script's work, for scale.

Two memscope subjects: the whole command through the CLI's code path (fresh target and
context: the kernel's kallsyms tables decoded again), and the work alone (the context kept
and refreshed, as a second command in the same GDB or drgn session).

    python3 -m benchmarks.bench_vmalloc [CASE] [--repeat N]
"""

from __future__ import annotations

from . import Row, interleaved, run_command, simple_main, warm_file

# include/linux/vmalloc.h (#defines, not in the debug info), as contrib/vmallocinfo.py
VM_IOREMAP, VM_ALLOC, VM_MAP, VM_USERMAP, VM_DMA_COHERENT = 0x1, 0x2, 0x4, 0x8, 0x10
VM_UNINITIALIZED, VM_SPARSE, VMAP_RAM = 0x20, 0x1000, 0x1
FLAG_WORDS = ((VM_IOREMAP, "ioremap"), (VM_SPARSE, "sparse"), (VM_ALLOC, "vmalloc"),
              (VM_MAP, "vmap"), (VM_USERMAP, "user"), (VM_DMA_COHERENT, "dma-coherent"))


def _lazy_areas(prog):
    """The lazily freed vmap_areas, in /proc/vmallocinfo's order."""
    from drgn.helpers.linux.list import list_for_each_entry
    from drgn.helpers.linux.llist import llist_for_each_entry

    try:
        nodes = prog["vmap_nodes"]
    except KeyError:
        pass
    else:
        for i in range(prog["nr_vmap_nodes"].value_()):
            yield from list_for_each_entry("struct vmap_area",
                                           nodes[i].lazy.head.address_of_(), "list")
        return
    try:
        head = prog["purge_vmap_area_list"]
    except KeyError:  # 5.10: a lock-less list through vmap_area.purge_list
        yield from llist_for_each_entry("struct vmap_area", prog["vmap_purge_list"].first,
                                        "purge_list")
    else:
        yield from list_for_each_entry("struct vmap_area", head.address_of_(), "list")


def _vmalloc_range(prog) -> tuple[int, int]:
    """[VMALLOC_START, VMALLOC_END): VMCOREINFO's (arm64, as contrib reads it), else x86_64's
    vmalloc_base and its size per paging levels (arch/x86/include/asm/pgtable_64_types.h)."""
    import re

    info = prog["VMCOREINFO"].string_()
    found = [re.search(rb"^NUMBER\(VMALLOC_%s\)=(0x[0-9a-f]+)$" % w, info, re.M)
             for w in (b"START", b"END")]
    if all(found):
        return int(found[0][1], 16), int(found[1][1], 16)
    start = prog["vmalloc_base"].value_()
    l5 = "__pgtable_l5_enabled" in prog and prog["__pgtable_l5_enabled"].value_()
    return start, start + ((12800 if l5 else 32) << 40) - 1


def _kallsyms_size(prog, sym) -> int:
    """The size ``%pS`` prints: kallsyms counts up to the next symbol, padding included,
    where the ELF size stops at the function's end.  The next symbol is looked for at the
    end, then at each 16-byte boundary past it (functions are 16-byte aligned; a symbol
    starting in between is found by the lookup that lands inside it; the answer is
    checked against memscope's in the run)."""
    end = sym.address + max(sym.size, 1)
    for a in (end, *range((end + 16) & ~15, end + 4096, 16)):
        try:
            nxt = prog.symbol(a)
        except LookupError:
            continue
        if nxt.address > sym.address:
            return nxt.address - sym.address
    return sym.size


def drgn_vmallocinfo(prog, exact: bool = True) -> str:
    """/proc/vmallocinfo with drgn's helpers and Objects (EXACT) or contrib's own output."""
    from drgn.helpers.linux.mm import for_each_vmap_area, page_to_pfn
    from drgn.helpers.linux.mmzone import for_each_online_pgdat
    from drgn.helpers.linux.nodemask import for_each_node_state

    vstart, vend = _vmalloc_range(prog)
    new_rules = "vmap_nodes" in prog
    sparse = "vm_area_map_pages" in prog
    numa = exact and "node_data" in prog
    if numa:
        spans = [(p.node_id.value_(), p.node_start_pfn.value_(),
                  p.node_start_pfn.value_() + p.node_spanned_pages.value_())
                 for p in for_each_online_pgdat(prog)]
        high = list(for_each_node_state(prog, prog["N_HIGH_MEMORY"]))
    has_order = prog.type("struct vm_struct").has_member("page_order")
    has_va_flags = prog.type("struct vmap_area").has_member("flags")

    sizes: dict[int, int] = {}  # symbol address -> its kallsyms size, once per symbol

    def caller(addr: int) -> str:
        try:
            sym = prog.symbol(addr)
        except LookupError:
            return f"{addr:#x}"
        if not exact:
            return sym.name
        if sym.address not in sizes:
            sizes[sym.address] = _kallsyms_size(prog, sym)
        s = f"{sym.name}+{addr - sym.address:#x}/{sizes[sym.address]:#x}"
        try:
            mod = prog.module(addr)
        except LookupError:
            return s
        return s if mod.name == "kernel" else f"{s} [{mod.name}]"

    def nodes(v, nr_pages: int) -> str:
        step = 1 << (v.page_order.value_() if has_order else 0)
        counts: dict[int, int] = {}
        for i in range(0, nr_pages, step):
            pfn = page_to_pfn(v.pages[i]).value_()
            nid = next(n for n, lo, hi in spans if lo <= pfn < hi)
            counts[nid] = counts.get(nid, 0) + step
        return "".join(f" N{n}={counts[n]}" for n in high if counts.get(n))

    out = []
    for va in for_each_vmap_area(prog):
        if not va.vm:
            if not has_va_flags or va.flags & VMAP_RAM:
                start, end = va.va_start.value_(), va.va_end.value_()
                out.append(f"0x{start:016x}-0x{end:016x} {end - start:7d} vm_map_ram\n")
            continue
        v = va.vm
        flags = v.flags.value_()
        if exact and new_rules and flags & VM_UNINITIALIZED:
            continue
        addr, size = v.addr.value_(), v.size.value_()
        line = [f"0x{addr:016x}-0x{addr + size:016x} {size:7d}"]
        if v.caller:
            line.append(" " + caller(v.caller.value_()))
        nr_pages = v.nr_pages.value_()
        if nr_pages:
            line.append(f" pages={nr_pages}")
        if v.phys_addr:
            line.append(f" phys=0x{v.phys_addr.value_():016x}")
        line += [f" {w}" for bit, w in FLAG_WORDS
                 if flags & bit and (bit != VM_SPARSE or sparse)]
        if vstart <= v.pages.value_() < vend:
            line.append(" vpages")
        if numa and not flags & VM_UNINITIALIZED and nr_pages:
            line.append(nodes(v, nr_pages))
        out.append("".join(line) + "\n")
    if exact and out:  # s_show(): the unpurged areas after the last busy one
        for va in _lazy_areas(prog):
            start, end = va.va_start.value_(), va.va_end.value_()
            out.append(f"0x{start:016x}-0x{end:016x} {end - start:7d} unpurged vm_area\n")
    return "".join(out)


def run(snap, repeat: int = 7, prog=None, log=print) -> list[Row]:
    from memscope.mm import vmalloc as mvmalloc
    from memscope.mm.context import KernelContext
    from memscope.target.drgn import DrgnTarget

    warm_file(snap.vmcore)
    ctx = KernelContext(DrgnTarget(prog))
    ours = run_command(prog, "vmallocinfo", "proc")
    theirs = drgn_vmallocinfo(prog)
    same = ours == theirs
    if not same:
        diff = [(a, b) for a, b in zip(ours.splitlines(), theirs.splitlines()) if a != b]
        log(f"  vmallocinfo: ANSWERS DIFFER ({len(ours.splitlines())} lines against "
            f"{len(theirs.splitlines())}); first: {diff[:1]}")

    def work():
        ctx.refresh()
        return mvmalloc.format_vmallocinfo(mvmalloc.vmallocinfo(ctx))

    best = interleaved({
        "cli": lambda: run_command(prog, "vmallocinfo", "proc"),
        "work": work,
        "drgn": lambda: drgn_vmallocinfo(prog),
        "contrib": lambda: drgn_vmallocinfo(prog, exact=False),
    }, repeat)
    lines = ours.count("\n")
    log(f"  vmallocinfo ({lines} lines): memscope {best['cli'] * 1e3:.1f} ms (work "
        f"{best['work'] * 1e3:.1f} ms), drgn same answer {best['drgn'] * 1e3:.1f} ms, "
        f"contrib as published {best['contrib'] * 1e3:.1f} ms")
    note = f"{lines} lines; " + ("same answer" if same else "ANSWERS DIFFER")
    contrib = "drgn contrib vmallocinfo as published (its own output)"
    return [
        Row("vmallocinfo", "vmallocinfo -f proc (whole command)", best["cli"],
            "drgn contrib walk, same answer", best["drgn"], "", note),
        Row("vmallocinfo", "the work alone (context kept)", best["work"],
            "drgn contrib walk, same answer", best["drgn"], "", note),
        Row("vmallocinfo", "vmallocinfo -f proc (whole command)", best["cli"], contrib,
            best["contrib"], "", "bare names, no N0=, no unpurged lines"),
    ]


def main() -> None:
    simple_main(__doc__, run, 7)


if __name__ == "__main__":
    main()
