"""vmalloc areas as /proc/vmallocinfo shows them (mm/vmalloc.c ``vmalloc_info_show()``,
``s_show()`` before v6.9).

Where the areas are:

- up to v6.8: every busy ``struct vmap_area`` on the global, address-sorted
  ``vmap_area_list``; lazily freed ("unpurged") areas on ``vmap_purge_list``, a lock-less
  list through ``vmap_area.purge_list`` (to v5.10), then ``purge_vmap_area_list``
  through ``vmap_area.list`` (v5.11, commit 96e2db456135);
- since v6.9 (commit d093602919ad, "mm: vmalloc: Move vmap_area_list into vmap_node"):
  ``vmap_nodes[nr_vmap_nodes]``, each with a ``busy`` and a ``lazy`` {root, head, lock};
  the file prints every node's busy list, then every node's lazy list.

Each version's rules, in :func:`vmallocinfo` and :func:`format_vmallocinfo`:

- an area without a ``vm_struct`` is a ``vm_map_ram`` line; since v6.2 (commit
  869176a09606, ``vmap_area.flags``) only when ``flags & VMAP_RAM`` (the others are
  vmap blocks' pieces being torn down);
- a ``vm_struct`` still being set up (VM_UNINITIALIZED): before the per-node lists its line
  is printed without the node counts; with them the line is left out (commit
  5c5f0468d172, "mm/vmalloc: fix data race in show_numa_info()", in the Debian 6.12 and
  7.2 kernels: the layout that has ``vmap_nodes`` is taken to have the rule);
- the flag words in the kernel's order; `` sparse`` exists since v6.9 (VM_SPARSE, commit
  e6f798225a31, together with ``vm_area_map_pages()``);
- with CONFIG_NUMA (``node_data`` exists), `` N<node>=<pages>`` for each node in
  N_HIGH_MEMORY that holds some of the area's pages, counted per ``1 << page_order``
  (``vm_struct.page_order`` since v5.13, commit 121e6f3258fe; 0 without it).

Addresses print as ``%pK`` does for a reader allowed to see them (kptr_restrict=1 and
CAP_SYSLOG: 16 hex digits); the lab's guests set kptr_restrict=1 so that their
/proc/vmallocinfo is comparable.  The caller is ``%pS`` (:mod:`memscope.kernel.kallsyms`).
"""

from __future__ import annotations

import dataclasses
from ..kernel import kallsyms, list as klist
from ..kernel.addr import kernel_layout
from ..kernel.fields import offsetof, read_member
from ..kernel.nodemask import for_each_node_state
from ..kernel.problem import Problem
from ..target.base import FaultError, TargetError
from .context import KernelContext

__all__ = ("CallerUsage", "VmallocArea", "VmallocInfo", "VmapArea", "by_caller",
           "format_vmallocinfo", "guard_size", "picture_kind", "vmallocinfo", "vmap_areas")

# include/linux/vmalloc.h: the flag bits /proc/vmallocinfo names (#defines: not in the
# debug info; unchanged since v5.10 but VM_SPARSE, v6.9) and VM_UNINITIALIZED.
VM_IOREMAP = 0x1
VM_ALLOC = 0x2
VM_MAP = 0x4
VM_USERMAP = 0x8
VM_DMA_COHERENT = 0x10
VM_UNINITIALIZED = 0x20
VM_NO_GUARD = 0x40
VM_SPARSE = 0x1000
#: mm/vmalloc.c: vmap_area.flags for a vm_map_ram() area (v6.2+).
VMAP_RAM = 0x1

#: The kernel's order of the flag words after ``phys=``.
_FLAG_WORDS = ((VM_IOREMAP, "ioremap"), (VM_SPARSE, "sparse"), (VM_ALLOC, "vmalloc"),
               (VM_MAP, "vmap"), (VM_USERMAP, "user"), (VM_DMA_COHERENT, "dma-coherent"))


@dataclasses.dataclass(frozen=True)
class VmallocArea:
    """One line of /proc/vmallocinfo.

    ``kind`` is ``"vm_struct"`` (an area with its ``struct vm_struct``), ``"vm_map_ram"``
    or ``"unpurged"`` (lazily freed, ``unpurged vm_area``).  ``start``/``end``/``size``
    are bytes: ``vm->addr``, ``vm->addr + vm->size`` and ``vm->size`` for a vm_struct (the
    size includes the guard page), ``va_start``/``va_end`` otherwise.  For vm_struct areas:
    ``caller`` the return address of the allocating call and ``caller_name`` its ``%pS``;
    ``nr_pages`` pages mapped; ``phys_addr`` (ioremap) or 0; ``flags`` the VM_* bits and
    ``kinds`` the flag words printed; ``vpages`` whether the page array is itself
    vmalloc'ed; ``nodes`` pages per NUMA node as printed (``{node: pages}``), None when the
    kernel prints none; ``uninitialized`` VM_UNINITIALIZED was set."""

    kind: str
    start: int
    end: int
    size: int
    vmap_area: int
    caller: int = 0
    caller_name: str = ""
    nr_pages: int = 0
    phys_addr: int = 0
    flags: int = 0
    kinds: tuple[str, ...] = ()
    vpages: bool = False
    nodes: dict[int, int] | None = None
    uninitialized: bool = False


@dataclasses.dataclass(frozen=True)
class VmallocInfo:
    """Every area in /proc/vmallocinfo's order, and the problems the list walks found."""

    areas: list[VmallocArea]
    problems: list[Problem]


def _has_vmap_nodes(ctx: KernelContext) -> bool:
    return ctx.probe("vmalloc.vmap_nodes", lambda: ctx.t.has_symbol("vmap_nodes"))


def _bound(ctx: KernelContext) -> int:
    """The most areas a list can hold: each takes a page and a guard page of the vmalloc
    range (a walk past it is corruption)."""
    lay = kernel_layout(ctx.t)
    return max((lay.vmalloc_end - lay.vmalloc_start) // (2 * ctx.t.page_size), 1)


def _lists(ctx: KernelContext, problems: list[Problem]) -> tuple[list[int], list[int]]:
    """(busy areas, unpurged areas): vmap_area addresses in the file's order."""
    t = ctx.t
    bound = _bound(ctx)

    def walk(head: int, where: str) -> list[int]:
        return list(klist.list_for_each_entry(t, "struct vmap_area", head, "list",
                                              bound=bound, problems=problems, where=where))

    if _has_vmap_nodes(ctx):
        vn = t.layout("struct vmap_node")
        nodes = t.read_u64(t.symbol("vmap_nodes"))
        n = t.read_u32(t.symbol("nr_vmap_nodes"))
        busy, lazy = [], []
        for i in range(n):
            at = nodes + i * vn.size
            busy += walk(at + offsetof(t, "struct vmap_node", "busy.head"), f"vmap_nodes[{i}].busy")
        for i in range(n):
            at = nodes + i * vn.size
            lazy += walk(at + offsetof(t, "struct vmap_node", "lazy.head"), f"vmap_nodes[{i}].lazy")
        return busy, lazy
    busy = walk(t.symbol("vmap_area_list"), "vmap_area_list")
    if t.has_symbol("purge_vmap_area_list"):
        lazy = walk(t.symbol("purge_vmap_area_list"), "purge_vmap_area_list")
    else:  # v5.10: struct llist_head vmap_purge_list, through vmap_area.purge_list
        first = t.read_u64(t.symbol("vmap_purge_list"))
        lazy = list(klist.llist_for_each_entry(t, "struct vmap_area", first, "purge_list",
                                               bound=bound, problems=problems,
                                               where="vmap_purge_list"))
    # s_show() prints the unpurged areas after the last busy area: none without one
    return busy, lazy if busy else []


class _Reader:
    """Reads vmap_area / vm_struct records and formats what s_show() prints."""

    def __init__(self, ctx: KernelContext):
        t = self.t = ctx.t
        self.ctx = ctx
        self.va = t.layout("struct vmap_area")
        self.vm = t.layout("struct vm_struct")
        self.has_va_flags = self.va.has("flags")
        self.new_rules = _has_vmap_nodes(ctx)
        self.sparse = t.has_symbol("vm_area_map_pages")
        lay = kernel_layout(t)
        self.vmalloc = (lay.vmalloc_start, lay.vmalloc_end)
        self.numa = t.has_symbol("node_data")
        self.page_size = t.page_size

    def area(self, va: int, unpurged: bool = False) -> VmallocArea | None:
        t = self.t
        buf = t.read(va, self.va.size)
        start = read_member(self.va["va_start"], buf)
        end = read_member(self.va["va_end"], buf)
        if unpurged:
            return VmallocArea("unpurged", start, end, end - start, va)
        vm = read_member(self.va["vm"], buf)
        if not vm:
            if self.has_va_flags and not read_member(self.va["flags"], buf) & VMAP_RAM:
                return None
            return VmallocArea("vm_map_ram", start, end, end - start, va)
        v = t.read(vm, self.vm.size)
        flags = read_member(self.vm["flags"], v)
        uninit = bool(flags & VM_UNINITIALIZED)
        if uninit and self.new_rules:
            return None
        addr = read_member(self.vm["addr"], v)
        size = read_member(self.vm["size"], v)
        caller = read_member(self.vm["caller"], v)
        nr_pages = read_member(self.vm["nr_pages"], v)
        pages = read_member(self.vm["pages"], v)
        kinds = tuple(word for bit, word in _FLAG_WORDS
                      if flags & bit and (bit != VM_SPARSE or self.sparse))
        nodes = None
        if self.numa and not uninit:
            order = read_member(self.vm["page_order"], v) if self.vm.has("page_order") else 0
            nodes = self._nodes(pages, nr_pages, order)
        return VmallocArea(
            "vm_struct", addr, addr + size, size, va, caller,
            kallsyms.format_symbol(self.ctx, caller) if caller else "", nr_pages,
            read_member(self.vm["phys_addr"], v), flags, kinds,
            self.vmalloc[0] <= pages < self.vmalloc[1], nodes, uninit)

    def _nodes(self, pages: int, nr_pages: int, order: int) -> dict[int, int]:
        """show_numa_info(): pages per node, each ``1 << order`` step counted by the node
        of its first page (``page_to_nid()``)."""
        if not nr_pages:
            return {}
        step = 1 << order
        ptrs = self.t.read(pages, 8 * nr_pages)
        counts: dict[int, int] = {}
        for i in range(0, nr_pages, step):
            page = int.from_bytes(ptrs[8 * i:8 * i + 8], "little")
            nid = _page_nid(self.ctx, page)
            counts[nid] = counts.get(nid, 0) + step
        order_nodes = [n for n in _high_memory_nodes(self.ctx) if counts.get(n)]
        return {n: counts[n] for n in order_nodes}


def _high_memory_nodes(ctx: KernelContext) -> list[int]:
    return ctx.snapshot("vmalloc.high_memory_nodes",
                        lambda: list(for_each_node_state(ctx.t, "N_HIGH_MEMORY")))


def _page_nid(ctx: KernelContext, page: int) -> int:
    """page_to_nid() of the struct page at PAGE: the node whose span holds its pfn (the
    node field of page->flags agrees wherever nodes do not interleave)."""
    spans = ctx.snapshot("vmalloc.node_spans", lambda: _node_spans(ctx))
    vmemmap, size = ctx.probe("vmalloc.vmemmap", lambda: _vmemmap(ctx))
    pfn = (page - vmemmap) // size
    for nid, lo, hi in spans:
        if lo <= pfn < hi:
            return nid
    raise WildPage(f"struct page {page:#x} (pfn {pfn:#x}) is in no node's span")


class WildPage(ValueError):
    """An area's ``pages[]`` holds a pointer that is no struct page of any node: the area
    is corrupt, or (on a live kernel) was freed and reused while it was read."""


def _vmemmap(ctx: KernelContext) -> tuple[int, int]:
    from . import page as _page
    return _page.vmemmap_base(ctx), ctx.t.sizeof("struct page")


def _node_spans(ctx: KernelContext) -> list[tuple[int, int, int]]:
    spans = []
    for z in ctx.all_zones(populated_only=False):
        spans.append((z.node, z.zone_start_pfn, z.end_pfn))
    return spans


def vmallocinfo(ctx: KernelContext) -> VmallocInfo:
    """Every line of /proc/vmallocinfo, in the kernel's order (see the module for each
    version's lists and rules).

    :return: the areas (busy areas in list order, then the unpurged ones) and the
        problems the bounded list walks found (a cycle, an unreadable entry, an area
        whose ``pages[]`` points outside every node: that area is left out).
    :raises TargetError: the kernel has none of the lists, or a layout is missing."""
    problems: list[Problem] = []
    busy, lazy = _lists(ctx, problems)
    r = _Reader(ctx)
    areas = []
    for va, unpurged in [*((a, False) for a in busy), *((a, True) for a in lazy)]:
        try:
            a = r.area(va, unpurged)
        except FaultError as e:
            problems.append(Problem("unreadable", "vmap_area", f"area {va:#x}: {e}"))
            continue
        except WildPage as e:
            problems.append(Problem("wild_pointer", "vmap_area", f"area {va:#x}: {e}"))
            continue
        if a is not None:
            areas.append(a)
    return VmallocInfo(areas, problems)


def _line(a: VmallocArea) -> str:
    head = f"0x{a.start:016x}-0x{a.end:016x} {a.size:7d}"
    if a.kind == "vm_map_ram":
        return f"{head} vm_map_ram\n"
    if a.kind == "unpurged":
        return f"{head} unpurged vm_area\n"
    parts = [head]
    if a.caller:
        parts.append(f" {a.caller_name}")
    if a.nr_pages:
        parts.append(f" pages={a.nr_pages}")
    if a.phys_addr:
        parts.append(f" phys=0x{a.phys_addr:016x}")
    parts += [f" {w}" for w in a.kinds]
    if a.vpages:
        parts.append(" vpages")
    if a.nodes:
        parts += [f" N{n}={c}" for n, c in a.nodes.items()]
    return "".join(parts) + "\n"


def format_vmallocinfo(info: VmallocInfo) -> str:
    """/proc/vmallocinfo's text."""
    return "".join(_line(a) for a in info.areas)


def guard_size(a: VmallocArea, page_size: int) -> int:
    """Bytes of A's guard page: ``vm->size`` includes one page past the mapping
    (``get_vm_area_size()``) unless VM_NO_GUARD; areas without a vm_struct have none."""
    if a.kind == "vm_struct" and a.size > page_size and not a.flags & VM_NO_GUARD:
        return page_size
    return 0


def picture_kind(a: VmallocArea) -> str:
    """The one kind an area is drawn as: its first flag word, or its line kind
    (``vm_map_ram``, ``unpurged``)."""
    if a.kind != "vm_struct":
        return a.kind
    return a.kinds[0] if a.kinds else "other"


@dataclasses.dataclass(frozen=True)
class CallerUsage:
    """vmalloc use of one caller and kind: ``caller`` the allocating function (``%pS``
    without the offset; ``[module]`` kept), ``kind`` the area's flag words joined by "+"
    (or ``vm_map_ram`` / ``unpurged``), ``areas`` how many, ``bytes`` their sizes (guard
    pages included, as /proc/vmallocinfo prints), ``pages`` pages mapped."""

    caller: str
    kind: str
    areas: int
    bytes: int
    pages: int


def by_caller(info: VmallocInfo) -> list[CallerUsage]:
    """The areas grouped by (caller, kind), largest (bytes, then areas) first."""
    groups: dict[tuple[str, str], list[VmallocArea]] = {}
    for a in info.areas:
        if a.kind == "vm_struct":
            name, _, rest = a.caller_name.partition("+")
            module = rest.partition(" ")[2]
            caller = f"{name} {module}".strip() if a.caller else "?"
            kind = "+".join(a.kinds) or "none"
        else:
            caller, kind = "-", a.kind
        groups.setdefault((caller, kind), []).append(a)
    rows = [CallerUsage(c, k, len(v), sum(a.size for a in v), sum(a.nr_pages for a in v))
            for (c, k), v in groups.items()]
    return sorted(rows, key=lambda r: (-r.bytes, -r.areas, r.caller, r.kind))


#: mm/vmalloc.c: vmap_area.flags of a vmap block's area (v6.2+, with VMAP_RAM).
VMAP_BLOCK = 0x2


@dataclasses.dataclass(frozen=True)
class VmapArea:
    """One ``struct vmap_area`` as the allocator holds it, whether /proc/vmallocinfo
    prints it or not (vmap blocks, areas being set up or torn down).

    ``start``/``end``: ``va_start``/``va_end`` (bytes; the guard page included).
    ``lazy``: on a lazy (purge) list, freed but not yet purged.  ``address``: the
    ``struct vmap_area``.  ``va_flags``: ``vmap_area.flags`` (v6.2+; 0 before: VMAP_RAM,
    VMAP_BLOCK and, v6.9+, the vmap node id in the upper bits).  ``vm``: its
    ``vm_struct`` or 0 (busy areas only: a lazy area's ``vm`` union member is not one).
    ``vm_flags``, ``caller``, ``caller_name``: the vm_struct's VM_* flags and caller
    (``%pS``), 0/"" without one."""

    start: int
    end: int
    lazy: bool
    address: int
    va_flags: int = 0
    vm: int = 0
    vm_flags: int = 0
    caller: int = 0
    caller_name: str = ""

    @property
    def kind(self) -> str:
        """``lazy``, ``vm_struct``, ``vm_map_ram`` (VMAP_RAM), ``vmap_block``
        (VMAP_BLOCK) or ``no_vm`` (busy, none of these: being set up or torn down)."""
        if self.lazy:
            return "lazy"
        if self.vm:
            return "vm_struct"
        if self.va_flags & VMAP_RAM:
            return "vm_map_ram"
        return "vmap_block" if self.va_flags & VMAP_BLOCK else "no_vm"


def vmap_areas(ctx: KernelContext) -> tuple[list[VmapArea], list[Problem]]:
    """Every busy and every lazily freed ``struct vmap_area`` (the lists of
    :func:`vmallocinfo`, none left out), with each busy area's vm_struct caller.

    :return: the areas (busy in list order, then the lazy ones) and the problems the
        bounded walks found (an unreadable area is left out and named).
    :raises TargetError: the kernel has none of the lists, or a layout is missing."""
    problems: list[Problem] = []
    busy, lazy = _lists(ctx, problems)
    t = ctx.t
    va_l, vm_l = t.layout("struct vmap_area"), t.layout("struct vm_struct")
    has_flags = va_l.has("flags")
    out = []
    for va, is_lazy in [*((a, False) for a in busy), *((a, True) for a in lazy)]:
        try:
            buf = t.read(va, va_l.size)
            start, end = read_member(va_l["va_start"], buf), read_member(va_l["va_end"], buf)
            flags = read_member(va_l["flags"], buf) if has_flags else 0
            vm = 0 if is_lazy else read_member(va_l["vm"], buf)
            vm_flags = caller = 0
            if vm:
                v = t.read(vm, vm_l.size)
                vm_flags, caller = read_member(vm_l["flags"], v), read_member(vm_l["caller"], v)
        except FaultError as e:
            problems.append(Problem("unreadable", "vmap_area", f"area {va:#x}: {e}"))
            continue
        out.append(VmapArea(start, end, is_lazy, va, flags, vm, vm_flags, caller,
                            kallsyms.format_symbol(ctx, caller) if caller else ""))
    return out, problems
