"""Check a dump against the guest's truth: is this snapshot one to keep?

Acceptance is independent of what it is used to test: nothing here imports memscope.mm or
memscope.target.  The dump is read with drgn's own objects and helpers
(``drgn.helpers.linux``), and what the truth's files say of each other is recomputed here
from the kernel's formulas (mm/vmstat.c; /proc/slabinfo's from mm/slub.c get_slabinfo(),
re-implemented here on purpose, independently of memscope's slab code).  A bug in
memscope's reconstruction can thus neither make the lab refuse a good snapshot nor
refreeze a state away until memscope happens to agree with it.

Each check has a name; :func:`judge` returns the names of the checks that ran and passed
(recorded in meta.json as a snapshot's ``accepted_by``), or the first failure's reason (the
snapshot is then refrozen, and the reason recorded)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

# The checks, in the order they run.  A check that cannot run (its truth files are absent,
# e.g. a kernel without debugfs) is neither passed nor failed: it is missing from
# accepted_by, and the lab cases' fixture refuses such a case (memscope/lab/cases.py).
TRUTH_PAGETYPEINFO = "truth-pagetypeinfo-sums-equal-buddyinfo"
TRUTH_EXTFRAG = "truth-extfrag-equals-kernel-formulas-on-buddyinfo"
DUMP_NR_FREE = "dump-nr_free-equals-buddyinfo"
DUMP_FREE_LISTS = "dump-free-list-lengths-equal-pagetypeinfo"
DUMP_COUNTERS = "dump-vmstat-counters-within-percpu-drift"
DUMP_SLABINFO = "dump-slabinfo-equals-get_slabinfo"
DUMP_MEMINFO = "dump-meminfo-counters-equal-global-counters"
CHECKS = (TRUTH_PAGETYPEINFO, TRUTH_EXTFRAG, DUMP_NR_FREE, DUMP_FREE_LISTS, DUMP_COUNTERS,
          DUMP_SLABINFO, DUMP_MEMINFO)

EXTFRAG_FILES = ("extfrag/unusable_index", "extfrag/extfrag_index")


class _CannotRun(Exception):
    """The check has nothing to compare (a truth file is missing or empty)."""


@dataclasses.dataclass
class Verdict:
    reason: str | None  # why the snapshot is refused; None: accepted
    accepted_by: list[str]  # the checks that ran and passed


def judge_truth(truth: dict[str, bytes]) -> Verdict:
    """The checks of the truth files against each other (no dump needed)."""
    return _run([(TRUTH_PAGETYPEINFO, lambda: _truth_pagetypeinfo(truth)),
                 (TRUTH_EXTFRAG, lambda: _truth_extfrag(truth))])


def judge(vmcore: Path, vmlinux: Path, truth: dict[str, bytes]) -> Verdict:
    """Every check: the truth's files against each other, then the dump VMCORE (read with
    drgn and VMLINUX's debug info) against the truth."""
    v = judge_truth(truth)
    if v.reason is not None:
        return v
    prog = _open(vmcore, vmlinux)
    d = _run(_dump_checks(prog, truth))
    return Verdict(d.reason, v.accepted_by + d.accepted_by)


def dump_disagreement(vmcore: Path, vmlinux: Path, truth: dict[str, bytes]) -> str | None:
    """Why the dump VMCORE does not agree with the guest's TRUTH, or None when it does
    (the dump checks of :func:`judge`)."""
    return _run(_dump_checks(_open(vmcore, vmlinux), truth)).reason


def _dump_checks(prog, truth: dict[str, bytes]):
    return [(DUMP_NR_FREE, lambda: _dump_nr_free(prog, truth)),
            (DUMP_FREE_LISTS, lambda: _dump_free_lists(prog, truth)),
            (DUMP_COUNTERS, lambda: _dump_counters(prog, truth)),
            (DUMP_SLABINFO, lambda: _dump_slabinfo(prog, truth)),
            (DUMP_MEMINFO, lambda: _dump_meminfo(prog, truth))]


def truth_disagreement(truth: dict[str, bytes]) -> str | None:
    """Why the truth files disagree with each other, or None (:func:`judge_truth`)."""
    return judge_truth(truth).reason


def _run(checks) -> Verdict:
    passed = []
    for name, check in checks:
        try:
            why = check()
        except _CannotRun:
            continue
        if why is not None:
            return Verdict(why, passed)
        passed.append(name)
    return Verdict(None, passed)


def _open(vmcore: Path, vmlinux: Path):
    import drgn

    prog = drgn.Program()
    prog.set_core_dump(str(vmcore))
    try:
        prog.load_debug_info([str(vmlinux)])
    except drgn.MissingDebugInfoError:
        pass  # only the modules' debug info is missing; the kernel's is there
    return prog


# --- the truth's files ------------------------------------------------------------------

def _text(truth: dict[str, bytes], name: str) -> str:
    data = truth.get(name)
    if not data:
        raise _CannotRun(name)
    return data.decode(errors="replace")


def parse_zone_lines(text: str) -> dict[tuple[int, str], list[str]]:
    """Lines "Node N, zone NAME  v0 v1 ..." (buddyinfo, extfrag/*): (node, zone) -> fields.
    Every non-empty line must be one."""
    out: dict[tuple[int, str], list[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        m = re.match(r"Node (\d+), zone\s+(\S+)((?:\s+\S+)+)\s*$", line)
        if m is None:
            raise ValueError(f"not a zone line: {line!r}")
        out[(int(m[1]), m[2])] = m[3].split()
    return out


def parse_buddyinfo(text: str) -> dict[tuple[int, str], list[int]]:
    """/proc/buddyinfo: (node, zone) -> free_area[order].nr_free for every order."""
    return {k: [int(x) for x in v] for k, v in parse_zone_lines(text).items()}


def parse_index(field: str) -> int:
    """A value the kernel printed with ``"%d.%03d", index / 1000, index % 1000`` (C's
    truncating division: -1000 prints "-1.000", -500 would print "0.-500"), back to index."""
    whole, _, frac = field.partition(".")
    return int(whole) * 1000 + int(frac)


def _free_rows(text: str) -> dict[tuple[int, str], list[list[int | None]]]:
    """pagetypeinfo's free rows: (node, zone) -> per migratetype (in enum order), per order,
    the count (None where the kernel printed a capped ">100000")."""
    out: dict[tuple[int, str], list[list[int | None]]] = {}
    for line in text.splitlines():
        # "Node    0, zone      DMA, type    Unmovable      0      1 ..."
        if not line.startswith("Node") or ", type" not in line:
            continue
        head, _, rest = line.partition(", type")
        node, _, zone = head.partition(", zone")
        fields = rest.split()
        ncounts = sum(1 for f in fields if f.lstrip(">").isdigit())
        counts = [None if f.startswith(">") else int(f) for f in fields[len(fields) - ncounts:]]
        out.setdefault((int(node.split()[1]), zone.strip()), []).append(counts)
    return out


def _truth_pagetypeinfo(truth: dict[str, bytes]) -> str | None:
    """The guest reads pagetypeinfo before buddyinfo; if a block moved in between, the
    free counts per order in pagetypeinfo (summed over migratetypes) differ from
    buddyinfo's line for the same zone."""
    rows = _free_rows(_text(truth, "pagetypeinfo"))
    buddy = parse_buddyinfo(_text(truth, "buddyinfo"))
    if not rows:
        raise _CannotRun("pagetypeinfo")
    for key, want in buddy.items():
        per_mt = rows.get(key)
        if per_mt is None:
            return f"node {key[0]} zone {key[1]}: in buddyinfo, not in pagetypeinfo"
        if any(c is None for counts in per_mt for c in counts):
            continue  # capped counts: nothing to compare
        got = [sum(col) for col in zip(*per_mt)]
        if got != want:
            return (f"node {key[0]} zone {key[1]}: pagetypeinfo sums {got} but buddyinfo "
                    f"says {want}")
    return None


def fill_contig_page_info(nr_free: list[int], suitable_order: int) -> tuple[int, int, int]:
    """mm/vmstat.c fill_contig_page_info(): (free_pages, free_blocks_total,
    free_blocks_suitable) of a zone whose free_area[order].nr_free are NR_FREE."""
    free_pages = total = suitable = 0
    for order, blocks in enumerate(nr_free):
        total += blocks
        free_pages += blocks << order
        if order >= suitable_order:
            suitable += blocks << (order - suitable_order)
    return free_pages, total, suitable


def unusable_free_index(order: int, nr_free: list[int]) -> int:
    """mm/vmstat.c unusable_free_index() (all four lab kernels alike)."""
    free_pages, _, suitable = fill_contig_page_info(nr_free, order)
    if free_pages == 0:
        return 1000
    return (free_pages - (suitable << order)) * 1000 // free_pages


def fragmentation_index(order: int, nr_free: list[int]) -> int:
    """mm/vmstat.c __fragmentation_index() (all four lab kernels alike; ORDER is below the
    number of orders, so its WARN_ON_ONCE branch never applies)."""
    free_pages, total, suitable = fill_contig_page_info(nr_free, order)
    if not total:
        return 0
    if suitable:
        return -1000
    return 1000 - (1000 + free_pages * 1000 // (1 << order)) // total


def _truth_extfrag(truth: dict[str, bytes]) -> str | None:
    """/sys/kernel/debug/extfrag/{unusable_index,extfrag_index} derive from the same
    nr_free as buddyinfo (read right after them): their values must be what the kernel's
    formulas give on the truth's buddyinfo, zone for zone.  (Compared as numbers: the
    printed width of extfrag_index changed between 5.10 and 6.1.)"""
    buddy = parse_buddyinfo(_text(truth, "buddyinfo"))
    for name, formula in zip(EXTFRAG_FILES, (unusable_free_index, fragmentation_index)):
        try:
            got = parse_zone_lines(_text(truth, name))
        except ValueError as e:
            return f"{name}: {e}"
        if list(got) != list(buddy):
            return f"{name} has zones {list(got)}, buddyinfo {list(buddy)}"
        for key, nr_free in buddy.items():
            want = [formula(o, nr_free) for o in range(len(nr_free))]
            have = [parse_index(f) for f in got[key]]
            if have != want:
                return (f"node {key[0]} zone {key[1]}: {name} says {have}, the kernel's "
                        f"formula on buddyinfo {want}")
    return None


# --- the dump, read with drgn ------------------------------------------------------------

def _dump_nr_free(prog, truth: dict[str, bytes]) -> str | None:
    """Every populated zone's free_area[order].nr_free (drgn's objects) equals the truth's
    /proc/buddyinfo numbers, and buddyinfo lists exactly the populated zones."""
    from drgn.helpers.linux.mmzone import for_each_online_pgdat

    want = parse_buddyinfo(_text(truth, "buddyinfo"))
    got: dict[tuple[int, str], list[int]] = {}
    for pgdat in for_each_online_pgdat(prog):
        for zone in pgdat.node_zones:
            if not zone.present_pages.value_():  # populated_zone()
                continue
            key = (pgdat.node_id.value_(), zone.name.string_().decode())
            got[key] = [fa.nr_free.value_() for fa in zone.free_area]
    if got != want:
        diff = [k for k in {**got, **want} if got.get(k) != want.get(k)]
        k = diff[0]
        return (f"dump and /proc/buddyinfo differ: node {k[0]} zone {k[1]}: "
                f"{got.get(k)} in the dump, {want.get(k)} in buddyinfo")
    return None


def _dump_free_lists(prog, truth: dict[str, bytes]) -> str | None:
    """The number of blocks on each free_area[order].free_list[migratetype], counted with
    drgn's list helpers, equals the truth's "Free pages count per migrate type" rows (a
    block can move between lists while every order's total stays the same)."""
    from drgn.helpers.linux.list import list_for_each
    from drgn.helpers.linux.mmzone import for_each_online_pgdat

    rows = _free_rows(_text(truth, "pagetypeinfo"))
    if not rows:
        raise _CannotRun("pagetypeinfo")
    seen = 0
    for pgdat in for_each_online_pgdat(prog):
        node = int(pgdat.node_id)
        for zone in pgdat.node_zones:
            name = zone.name.string_().decode()
            want = rows.get((node, name))
            if want is None:
                continue
            seen += 1
            for mt, per_order in enumerate(want):
                for order, count in enumerate(per_order):
                    if count is None:  # the kernel stopped counting (">100000")
                        continue
                    head = zone.free_area[order].free_list[mt].address_of_()
                    n = 0
                    for _ in list_for_each(head):
                        n += 1
                        if n > count:
                            break
                    if n != count:
                        return (f"node {node} zone {name} order {order} migratetype {mt}: "
                                f"{n} blocks on the dump's list, {count} in /proc/pagetypeinfo")
    if seen != len(rows):
        return f"pagetypeinfo has {len(rows)} zones, the dump {seen} of them"
    return None


# /proc/vmstat names of global counters that must not have moved since the guest read
# /proc/vmstat (its first truth file), and how far each may: "thresholds" is what the
# per-CPU counter deltas can hide (the sum of every zone's and CPU's "vm stats threshold");
# the free page counter may also move by 0.5% of memory (the truth's meminfo is compared
# with the dump's free pages with 1% in the tests).
_COUNTERS = (("nr_free_pages", "NR_FREE_PAGES", 200), ("nr_file_pages", "NR_FILE_PAGES", 0),
             ("nr_anon_pages", "NR_ANON_MAPPED", 0), ("nr_shmem", "NR_SHMEM", 0))


def _dump_counters(prog, truth: dict[str, bytes]) -> str | None:
    """Whether a global vmstat counter in the dump (vm_zone_stat[] / vm_node_stat[]) moved
    away from the value the guest's /proc/vmstat printed by more than the per-CPU deltas
    can explain: then memory moved while the truth was being read (seen on arm64: 16 MiB
    allocated between the guest's reads of meminfo and buddyinfo)."""
    vmstat = dict(re.findall(r"^(\w+) (\d+)$", _text(truth, "vmstat"), re.M))
    thresholds = sum(int(x) for x in re.findall(r"vm stats threshold:\s+(\d+)",
                                                _text(truth, "zoneinfo")))
    m = re.search(r"^MemTotal:\s+(\d+) kB", _text(truth, "meminfo"), re.M)
    if not vmstat or not thresholds or not m:
        raise _CannotRun("vmstat, zoneinfo or meminfo")
    page_size = prog["PAGE_SIZE"].value_()
    total_pages = int(m.group(1)) * 1024 // page_size
    compared = 0
    for name, enumerator, fraction in _COUNTERS:
        if name not in vmstat:
            continue
        try:
            dumped = _global_counter(prog, enumerator)
        except LookupError:
            continue
        bound = max(thresholds, total_pages // fraction if fraction else 0)
        compared += 1
        if abs(int(vmstat[name]) - dumped) > bound:
            return (f"{name} moved from {vmstat[name]} (/proc/vmstat) to {dumped} (dump), "
                    f"more than {bound} pages")
    if not compared:
        raise _CannotRun("no counter to compare")
    return None


# --- /proc/slabinfo, recomputed from the dump ---------------------------------------------
# mm/slab_common.c print_slabinfo_header(), cache_show(); mm/slub.c get_slabinfo().  This
# re-implements the kernel's arithmetic on purpose, independently of memscope's own slab
# code, which it is used to test.

# mm/slub.c MAX_PARTIAL_TO_SCAN (count_partial_free_approx()).
MAX_PARTIAL_TO_SCAN = 10000
SLABINFO_HEADER = (
    "slabinfo - version: 2.1\n"
    "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab>"
    " : tunables <limit> <batchcount> <sharedfactor>"
    " : slabdata <active_slabs> <num_slabs> <sharedavail>\n")
# Bounds on the walks of a dump that might be corrupt: no lab cache has a million partial
# slabs on a node, nor ten thousand caches.
_MAX_PARTIAL_WALK = 1 << 20
_MAX_CACHES = 10000


def mult_frac(x: int, n: int, d: int) -> int:
    """include/linux/math.h mult_frac(): x * n / d computed as (x / d) * n + (x % d) * n / d
    (unsigned long; the lab's numbers never overflow 64 bits)."""
    q, r = divmod(x, d)
    return q * n + r * n // d


def _slab_layout(prog):
    """(the type holding a slab's slab_list/objects/inuse, whether get_slabinfo() uses
    count_partial_free_approx(), how to get a cache's kmem_cache_node for a node)."""
    # Since kernel commit d122019bf061 ("mm: Split slab into its own type", v5.17) a slab's
    # fields are in struct slab; before, in struct page.
    try:
        slab_type = prog.type("struct slab")
    except LookupError:
        slab_type = prog.type("struct page")
    # Since kernel commit 1c5610f451be ("slub: introduce count_partial_free_approx()",
    # v6.10) get_slabinfo() counts at most MAX_PARTIAL_TO_SCAN partial slabs of a node and
    # scales.  (A static function: its DWARF entry is there whether or not it was inlined.)
    try:
        prog.function("count_partial_free_approx")
        approx = True
    except LookupError:
        approx = False
    # Since kernel commit 5ba6bc27b1f9 ("slab: decouple pointer to barn from
    # kmem_cache_node", v7.1) get_node() is s->per_node[node].node; before, s->node[node].
    if prog.type("struct kmem_cache").has_member("per_node"):
        def get_node(s, node):
            return s.per_node[node].node
    else:
        def get_node(s, node):
            return s.node[node]
    return slab_type, approx, get_node


def _partial_free(prog, n, slab_type, approx: bool) -> int:
    """count_partial(n, count_free) (approx False) or count_partial_free_approx(n): the
    free objects (objects - inuse) of the slabs on node N's partial list."""
    from drgn.helpers.linux.list import list_for_each_entry, list_for_each_entry_reverse

    head = n.partial.address_of_()
    nr_partial = n.nr_partial.value_()
    if not approx or nr_partial <= MAX_PARTIAL_TO_SCAN:
        x = walked = 0
        for slab in list_for_each_entry(slab_type, head, "slab_list"):
            x += slab.objects.value_() - slab.inuse.value_()
            walked += 1
            if walked > _MAX_PARTIAL_WALK:
                raise ValueError(f"a partial list longer than {_MAX_PARTIAL_WALK} slabs")
        return x
    x = scanned = 0
    for slab in list_for_each_entry(slab_type, head, "slab_list"):
        x += slab.objects.value_() - slab.inuse.value_()
        scanned += 1
        if scanned == MAX_PARTIAL_TO_SCAN // 2:
            break
    for slab in list_for_each_entry_reverse(slab_type, head, "slab_list"):
        x += slab.objects.value_() - slab.inuse.value_()
        scanned += 1
        if scanned == MAX_PARTIAL_TO_SCAN:
            break
    x = mult_frac(x, nr_partial, scanned)
    return min(x, n.total_objects.counter.value_())  # node_nr_objs(n)


def dump_slabinfo(prog) -> str:
    """/proc/slabinfo as the dumped kernel would print it: every cache on slab_caches, in
    list order, with get_slabinfo()'s numbers."""
    from drgn.helpers.linux.slab import (
        for_each_slab_cache, slab_cache_objects_per_slab, slab_cache_order)

    slab_type, approx, get_node = _slab_layout(prog)
    nr_node_ids = prog["nr_node_ids"].value_()
    out = [SLABINFO_HEADER]
    for i, s in enumerate(for_each_slab_cache(prog)):
        if i >= _MAX_CACHES:
            raise ValueError(f"slab_caches has more than {_MAX_CACHES} caches")
        nr_slabs = nr_objs = nr_free = 0
        for node in range(nr_node_ids):  # for_each_kmem_cache_node()
            n = get_node(s, node)
            if not n:
                continue
            nr_slabs += n.nr_slabs.counter.value_()
            nr_objs += n.total_objects.counter.value_()
            nr_free += _partial_free(prog, n, slab_type, approx)
        order = slab_cache_order(s)
        # cache_show(): "%-17s %6lu %6lu %6u %4u %4d" ... (SLUB has no tunables, no
        # shared objects: those print 0).
        out.append(f"{s.name.string_().decode(errors='replace'):<17} {nr_objs - nr_free:6} "
                   f"{nr_objs:6} {s.size.value_():6} {slab_cache_objects_per_slab(s):4} "
                   f"{1 << order:4} : tunables {0:4} {0:4} {0:4} : slabdata {nr_slabs:6} "
                   f"{nr_slabs:6} {0:6}\n")
    return "".join(out)


def slabinfo_differences(want: str, got: str) -> list[str]:
    """The lines where two slabinfo texts differ: "truth | dump" pairs, by cache name
    (header lines by position), then lines only one of them has."""
    def by_name(text):
        lines = text.splitlines()
        head = {f"header {i}": l for i, l in enumerate(lines[:2])}
        return {**head, **{l.split()[0]: l for l in lines[2:] if l.split()}}
    w, g = by_name(want), by_name(got)
    diffs = [f"{w.get(k, '(absent)')!r} | {g.get(k, '(absent)')!r}"
             for k in {**w, **g} if w.get(k) != g.get(k)]
    if not diffs and want != got:  # same lines, other order (or whitespace)
        diffs.append("the caches are listed in another order")
    return diffs


def slub_debug_on(prog) -> bool:
    """Whether the kernel was booted with SLUB debugging on every cache (``slub_debug=``:
    mm/slub.c's ``slub_debug`` flags).  Its /proc/slabinfo then counts the reader's own
    objects: a debug cache has no per-CPU slab, so the seq_file and its buffer, allocated
    for the read and freed after it, are on a node's partial list while get_slabinfo() runs
    and gone at the freeze (seen on 6.12: seq_file 1 active in the truth, 0 in the dump,
    at every refreeze).  No freeze can agree with such a truth, so the slabinfo check does
    not run there (:data:`NOT_CHECKED_WITH_SLUB_DEBUG`)."""
    try:
        return bool(prog["slub_debug"].value_())
    except KeyError:
        return False


# The checks that cannot run on a kernel booted with slub_debug= (see slub_debug_on()).
NOT_CHECKED_WITH_SLUB_DEBUG = (DUMP_SLABINFO,)


def _dump_slabinfo(prog, truth: dict[str, bytes]) -> str | None:
    """Every line of the truth's /proc/slabinfo, header included, equals what the dump's
    caches give with get_slabinfo()'s arithmetic (a slab taken from a node's partial list
    for a CPU, or an object freed to one, moves a line)."""
    import drgn

    want = _text(truth, "slabinfo")
    if not prog.type("struct kmem_cache_node").has_member("nr_slabs"):
        raise _CannotRun("slabinfo")  # no CONFIG_SLUB_DEBUG: the kernel prints zeros
    if slub_debug_on(prog):
        raise _CannotRun("slub_debug")
    try:
        got = dump_slabinfo(prog)
    except (ValueError, drgn.FaultError) as e:
        return f"the dump's slab caches cannot be walked for /proc/slabinfo: {e}"
    if want == got:
        return None
    diffs = slabinfo_differences(want, got)
    return (f"/proc/slabinfo and the dump differ in {len(diffs)} line(s), first "
            f"(truth | dump): {diffs[0]}")


# --- /proc/meminfo's counter lines --------------------------------------------------------
# fs/proc/meminfo.c meminfo_proc_show() prints these lines from the global vmstat counters
# (vm_zone_stat[] / vm_node_stat[], without the per-CPU deltas: global_zone_page_state(),
# global_node_page_state_pages()), so the guest's read and the dump agree exactly unless the
# kernel moved in between.  (lines whose values add up, the counters that sum, the unit):
# Buffers + Cached + SwapCached is NR_FILE_PAGES whatever nr_blockdev_pages() and the swap
# cache hold; the *_B slab counters are kept in pages globally (mm/vmstat.c
# __mod_node_page_state()); NR_KERNEL_STACK_KB is in kB.  A line, or a counter, that a
# kernel does not have is skipped.
_MEMINFO_COUNTERS = (
    (("MemFree",), ("NR_FREE_PAGES",), "pages"),
    (("Buffers", "Cached", "SwapCached"), ("NR_FILE_PAGES",), "pages"),
    (("Active(anon)",), ("NR_ACTIVE_ANON",), "pages"),
    (("Inactive(anon)",), ("NR_INACTIVE_ANON",), "pages"),
    (("Active(file)",), ("NR_ACTIVE_FILE",), "pages"),
    (("Inactive(file)",), ("NR_INACTIVE_FILE",), "pages"),
    (("Unevictable",), ("NR_UNEVICTABLE",), "pages"),
    (("Mlocked",), ("NR_MLOCK",), "pages"),
    (("Dirty",), ("NR_FILE_DIRTY",), "pages"),
    (("Writeback",), ("NR_WRITEBACK",), "pages"),
    (("AnonPages",), ("NR_ANON_MAPPED",), "pages"),
    (("Mapped",), ("NR_FILE_MAPPED",), "pages"),
    (("Shmem",), ("NR_SHMEM",), "pages"),
    (("KReclaimable",), ("NR_SLAB_RECLAIMABLE_B", "NR_KERNEL_MISC_RECLAIMABLE"), "pages"),
    (("SReclaimable",), ("NR_SLAB_RECLAIMABLE_B",), "pages"),
    (("SUnreclaim",), ("NR_SLAB_UNRECLAIMABLE_B",), "pages"),
    (("KernelStack",), ("NR_KERNEL_STACK_KB",), "kB"),
    (("PageTables",), ("NR_PAGETABLE",), "pages"),
    (("SecPageTables",), ("NR_SECONDARY_PAGETABLE",), "pages"),
)


def _global_counter(prog, enumerator: str) -> int:
    """vm_zone_stat[] or vm_node_stat[] (by the enumerator's enum) at ENUMERATOR, as
    global_zone_page_state()/global_node_page_state() read it (include/linux/vmstat.h): on
    an SMP kernel a negative value reads as 0.  (The global counter goes negative while
    CPUs still hold positive deltas: a 1 GiB userland guest's /proc/meminfo said
    Active(anon) 0 kB with NR_ACTIVE_ANON at -4 pages, and every refreeze disagreed.)

    :raises LookupError: the kernel has no such counter"""
    const = prog.constant(enumerator)
    array = "vm_zone_stat" if "zone_stat_item" in const.type_.type_name() else "vm_node_stat"
    value = prog[array][const.value_()].counter.value_()
    return max(value, 0) if _smp(prog) else value


def _smp(prog) -> bool:
    """CONFIG_SMP, told by the per-CPU offsets only an SMP kernel has."""
    try:
        prog["__per_cpu_offset"]
    except KeyError:
        return False
    return True


def _dump_meminfo(prog, truth: dict[str, bytes]) -> str | None:
    """Every line of the truth's /proc/meminfo that is a global vmstat counter (and
    Committed_AS, vm_memory_committed(): the per-CPU sum the kernel prints) equals the
    dump's counter exactly: meminfo is read last but two before the freeze, and a line that
    moved means the kernel allocated or folded per-CPU deltas in between."""
    from drgn.helpers.linux.mm import vm_memory_committed

    kb = dict((k, int(v)) for k, v in re.findall(r"^([^:\n]+):\s+(\d+) kB$",
                                                 _text(truth, "meminfo"), re.M))
    page_kb = prog["PAGE_SIZE"].value_() // 1024
    compared = 0
    for lines, counters, unit in _MEMINFO_COUNTERS:
        if not all(line in kb for line in lines):
            continue
        try:
            dumped = sum(_global_counter(prog, c) for c in counters)
        except LookupError:
            continue
        dumped *= page_kb if unit == "pages" else 1
        printed = sum(kb[line] for line in lines)
        compared += 1
        if printed != dumped:
            return (f"/proc/meminfo {' + '.join(lines)} moved from {printed} kB (guest) to "
                    f"{dumped} kB (dump: {' + '.join(counters)})")
    if "Committed_AS" in kb:
        dumped = vm_memory_committed(prog) * page_kb
        compared += 1
        if kb["Committed_AS"] != dumped:
            return (f"/proc/meminfo Committed_AS moved from {kb['Committed_AS']} kB (guest) "
                    f"to {dumped} kB (dump)")
    if not compared:
        raise _CannotRun("meminfo")
    return None
