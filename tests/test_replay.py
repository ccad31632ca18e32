"""Replay (memscope.model, ``memscope replay``) on the quiet window of the lab's trace
cases: dump A ("before"), the events of B's ring buffer written after A, dump B ("after").

Answer key: dump B read by drgn's own objects and helpers, never by memscope.mm: every
free list (``free_area[order].free_list[mt]``), every per-CPU list, every vmalloc area's
pages (``for_each_vmap_area``), every slab object's state (``slab_object_info``).  The
prediction must equal B; the kernel makes a few divergences unavoidable, and each is
checked one by one against B: a page the model leaves on a pcp list must be mapped in B by
a vmalloc area that the window allocated (``alloc_pages_bulk()`` takes vmalloc's pages
off the pcp lists without an ``mm_page_alloc`` event)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import pytest

from kernel_dumps import open_dump
from memscope.mm.context import KernelContext
from memscope.model.buddy import BuddyModel
from memscope.model.replay import buddy_rules, buddy_state, window_events
from memscope.model.slab import SlabModel, allocated_objects

CASES = ["5.10-trace", "6.1-trace", "6.12-trace", "7.2-trace"]


@pytest.fixture(scope="module", params=CASES)
def window(request, lab_case):
    a_snap = lab_case(request.param, "before")
    b_snap = lab_case(request.param, "after")
    prog_a, ta = open_dump(a_snap)
    prog_b, tb = open_dump(b_snap)
    a, b = KernelContext(ta), KernelContext(tb)
    events, parts = window_events(a, b)
    return a, b, prog_b, events, parts, prog_a


def _drgn_zones(prog):
    """Every populated zone, by drgn."""
    from drgn.helpers.linux.mmzone import for_each_online_pgdat

    for pgdat in for_each_online_pgdat(prog):
        for zone in pgdat.node_zones:
            if zone.present_pages:
                yield zone


def _drgn_free_blocks(prog) -> dict[int, int]:
    """pfn -> order of every block on every buddy free list, by drgn."""
    from drgn.helpers.linux.list import list_for_each_entry
    from drgn.helpers.linux.mm import page_to_pfn

    link = "buddy_list" if prog.type("struct page").has_member("buddy_list") else "lru"
    out = {}
    for zone in _drgn_zones(prog):
        for order, area in enumerate(zone.free_area):
            for fl in area.free_list:
                for page in list_for_each_entry("struct page", fl.address_of_(), link):
                    out[page_to_pfn(page).value_()] = order
    return out


def _drgn_pcp_blocks(prog) -> dict[int, int]:
    """pfn -> cpu of every block on every per-CPU list, by drgn."""
    from drgn.helpers.linux.cpumask import for_each_possible_cpu
    from drgn.helpers.linux.list import list_for_each_entry
    from drgn.helpers.linux.mm import page_to_pfn
    from drgn.helpers.linux.percpu import per_cpu_ptr

    new = prog.type("struct zone").has_member("per_cpu_pageset")
    link = "pcp_list" if prog.type("struct page").has_member("pcp_list") else "lru"
    out = {}
    for zone in _drgn_zones(prog):
        for cpu in for_each_possible_cpu(prog):
            pcp = per_cpu_ptr(zone.per_cpu_pageset, cpu) if new else \
                per_cpu_ptr(zone.pageset, cpu).pcp
            for lst in pcp.lists:
                for page in list_for_each_entry("struct page", lst.address_of_(), link):
                    out[page_to_pfn(page).value_()] = cpu
    return out


def _drgn_new_vmalloc_pfns(prog_a, prog_b) -> dict[int, int]:
    """pfn -> area start of the pages of B's vmalloc areas that A does not have, by drgn
    (5.10 and 6.1 have no vmalloc tracepoints: the dumps say which areas are new)."""
    from drgn.helpers.linux.mm import for_each_vmap_area, page_to_pfn

    old = {(va.value_(), va.va_start.value_()) for va in for_each_vmap_area(prog_a)}
    out = {}
    for va in for_each_vmap_area(prog_b):
        vm = va.vm
        if not vm or (va.value_(), va.va_start.value_()) in old:
            continue
        for i in range(vm.nr_pages.value_()):
            out[page_to_pfn(vm.pages[i]).value_()] = vm.addr.value_()
    return out


def test_the_window_lost_nothing(window):
    _, _, _, events, parts, _ = window
    assert parts and all(p.lost == 0 for p in parts)
    assert len(events) == sum(p.written for p in parts) > 100


def test_the_buddy_free_blocks_are_predicted_exactly(window):
    a, _, prog_b, events, _, _ = window
    s = buddy_state(a)
    m = BuddyModel(buddy_rules(a), s.zones, s.free, s.pcp, s.pageblock)
    m.apply_all(events)
    assert m.divergences == []
    assert m.applied > 50
    assert {p: o for p, (o, _) in m.free.items()} == _drgn_free_blocks(prog_b)


def test_the_pcp_lists_are_predicted_but_for_vmallocs_bulk_pages(window, request):
    if request.node.callspec.params["window"] == "7.2-trace":
        # Seen on the 7.2 case: four order-0 frees (mm_page_free) of pfns 0x2200-0x2203
        # to CPU 1's pcp list, and B holds one order-2 block at 0x2200 on that list, with
        # no event between: not explained yet (no pcp merging in 7.2's
        # free_frozen_page_commit()).  strict: it must fail until explained.
        request.applymarker(pytest.mark.xfail(strict=True, reason="7.2: order-0 pcp "
                                              "frees found as one order-2 pcp block"))
    a, _, prog_b, events, _, prog_a = window
    s = buddy_state(a)
    m = BuddyModel(buddy_rules(a), s.zones, s.free, s.pcp, s.pageblock)
    m.apply_all(events)
    real = _drgn_pcp_blocks(prog_b)
    pred = {p: cpu for p, (cpu, _) in m.pcp.items()}
    assert {p: c for p, c in real.items() if p not in pred} == {}, \
        "pages on B's pcp lists that the model did not put there"
    bulk = _drgn_new_vmalloc_pfns(prog_a, prog_b)
    for pfn in sorted(set(pred) - set(real)):
        # one by one: taken off the pcp list by alloc_pages_bulk() for a vmalloc area the
        # window allocated (a fork's kernel stack), which B maps
        assert pfn in bulk, f"pfn {pfn:#x} predicted on a pcp list, not in B's and not " \
                            "mapped by a vmalloc area of the window"
    assert len(set(pred) & set(real)) > 100


def _drgn_rcu_free_objects(prog) -> set[int]:
    """Every object in a CPU's rcu_free sheaf (v6.18+ sheaves: ``kfree_rcu()`` puts
    objects there until a grace period), by drgn's objects; empty before sheaves."""
    from drgn.helpers.linux.cpumask import for_each_possible_cpu
    from drgn.helpers.linux.percpu import per_cpu_ptr
    from drgn.helpers.linux.slab import for_each_slab_cache

    out: set[int] = set()
    for cache in for_each_slab_cache(prog):
        if not hasattr(cache, "cpu_sheaves") or not cache.cpu_sheaves:
            continue
        for cpu in for_each_possible_cpu(prog):
            sheaf = per_cpu_ptr(cache.cpu_sheaves, cpu).rcu_free
            if sheaf:
                out.update(sheaf.objects[i].value_() for i in range(sheaf.size.value_()))
    return out


def _drgn_sheaf_objects(prog) -> set[int]:
    """Every object in a sheaf (v6.18+: free objects cached per CPU in the main, spare and
    rcu_free sheaves, and per node in the barn's full sheaves), by drgn's objects; drgn
    0.3.0's slab_object_info() does not know sheaves and calls these objects allocated.
    Empty before sheaves."""
    from drgn.helpers.linux.cpumask import for_each_possible_cpu
    from drgn.helpers.linux.list import list_for_each_entry
    from drgn.helpers.linux.nodemask import for_each_online_node
    from drgn.helpers.linux.percpu import per_cpu_ptr
    from drgn.helpers.linux.slab import for_each_slab_cache

    out: set[int] = set()

    def take(sheaf) -> None:
        if sheaf:
            out.update(sheaf.objects[i].value_() for i in range(sheaf.size.value_()))
    for cache in for_each_slab_cache(prog):
        if not hasattr(cache, "cpu_sheaves") or not cache.cpu_sheaves:
            continue
        for cpu in for_each_possible_cpu(prog):
            pcs = per_cpu_ptr(cache.cpu_sheaves, cpu)
            for name in ("main", "spare", "rcu_free"):
                take(getattr(pcs, name))
        if hasattr(cache, "per_node"):
            for node in for_each_online_node(prog):
                barn = cache.per_node[node].barn
                if barn:
                    for sheaf in list_for_each_entry("struct slab_sheaf",
                                                     barn.sheaves_full.address_of_(),
                                                     "barn_list"):
                        take(sheaf)
    return out


def _cache_of(prog, addr: int) -> str | None:
    """The name of the slab cache of the object at ADDR, by drgn (None: not a slab
    object)."""
    from drgn import Object
    from drgn.helpers.linux.slab import slab_object_info

    info = slab_object_info(Object(prog, "void *", addr))
    return info.slab_cache.name.string_().decode() if info else None


@contextlib.contextmanager
def _slab_object_info_memoized(prog):
    """drgn's own ``slab_object_info()``, unchanged, with the parts that are the same for
    every object of a cache remembered: for each object it is asked about, drgn 0.3.0
    walks the object's cache's per-CPU freelists and sheaves, its barns' full sheaves and
    the slab's freelist again (profiled on 5.10-trace: 42640 objects, 70% of the time in
    the per-CPU walk, 20% in the slab's).  A dump does not change, so each walk's answer
    is remembered by what it walks (the cache, and the freelist's head); a walk that
    raises is not remembered.  Measured on the trace cases' B objects (every allocated
    one of the model and of B; a shared machine, the same minutes): 5.10 189 -> 77 s,
    6.1 309 -> 60 s, 6.12 220 -> 38 s, 7.2 249 -> 30 s, and every answer (cache, slab,
    address, allocated) the same as unmemoized.  A drgn whose SLUB helper has other
    internals runs unmemoized (slower, the same answers).  Not for a live kernel, where
    the walks race with the kernel."""
    from drgn import ProgramFlags
    from drgn.helpers.linux import slab as dslab

    helper = getattr(dslab, "_SlabCacheHelperSlub", None)
    names = ("_per_cpu_info", "_sheaves_full_objects", "_slub_get_freelist")
    if prog.flags & ProgramFlags.IS_LIVE or helper is None or \
            not all(callable(getattr(helper, n, None)) for n in names):
        yield
        return
    saved = {n: helper.__dict__[n] for n in names if n in helper.__dict__}
    if len(saved) != len(names):
        yield
        return
    memo: dict = {}

    def remembered(name, key_of):
        real = saved[name]

        def method(self, *args, **kwargs):
            key = (name, id(self._prog), self._slab_cache.value_(), key_of(*args),
                   tuple(sorted(kwargs.items())))
            if key not in memo:
                memo[key] = real(self, *args, **kwargs)
            return memo[key]
        return method

    helper._per_cpu_info = remembered("_per_cpu_info", lambda: ())
    helper._sheaves_full_objects = remembered("_sheaves_full_objects", lambda: ())
    # (a name for the error message, the freelist's head): the walk follows the head
    helper._slub_get_freelist = remembered("_slub_get_freelist",
                                           lambda name, head: head.value_())
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(helper, n, f)


def test_the_slab_objects_are_predicted_but_for_bulk_and_rcu_frees(window):
    """The model's allocated objects are B's, but for the maple tree's nodes (each checked
    with drgn): lib/maple_tree.c allocates them with kmem_cache_alloc_bulk() (6.1, 6.12)
    and frees them with kmem_cache_free_bulk() or kfree_rcu() (7.2: into an rcu_free
    sheaf, then the sheaf's objects go back without an event), none of which emits the
    per-object events."""
    from drgn import Object
    from drgn.helpers.linux.slab import slab_object_info

    a, b, prog_b, events, _, _ = window
    live, pool = allocated_objects(a)
    m = SlabModel(live, pool, 2 * a.t.page_size + 1)
    for e in events:
        m.apply(e.name, e.fields)
    assert m.applied > 50
    # a free event of an object the model does not have: allocated in bulk in the window
    for d in m.divergences:
        assert d.kind == "free_not_live" and _cache_of(prog_b, d.pfn) == "maple_node", d
    # every object the model says is allocated, drgn says is allocated in B (drgn 0.3.0
    # counts an object in an rcu_free sheaf as allocated: kfree_rcu() has not freed it
    # yet), or it is a maple node freed without an event
    with _slab_object_info_memoized(prog_b):
        for addr in m.live:
            if not slab_object_info(Object(prog_b, "void *", addr)).allocated:
                assert _cache_of(prog_b, addr) == "maple_node", hex(addr)
    # B's allocated objects (memscope's count: its slab walk is checked against drgn in
    # tests/test_slub.py) are the model's, but for maple nodes allocated in bulk in the
    # window, and those kfree_rcu() put in an rcu_free sheaf (found by drgn) or that went
    # back without an event
    live_b, _ = allocated_objects(b)
    for addr in sorted(set(live_b) - set(m.live)):
        assert _cache_of(prog_b, addr) == "maple_node", hex(addr)
    rcu = _drgn_rcu_free_objects(prog_b)
    for addr in sorted(set(m.live) - set(live_b)):
        assert addr in rcu or _cache_of(prog_b, addr) == "maple_node", hex(addr)
    # and the agreement is large: the window's objects are not all maple nodes
    assert len(set(live_b) & set(m.live)) > 10000


def _replay_cli(lab_case, case: str) -> tuple[int, dict]:
    """``memscope replay --from CASE/before --to CASE/after -f json``: exit status and
    the records by allocator."""
    a, b = lab_case(case, "before"), lab_case(case, "after")
    r = subprocess.run([sys.executable, "-m", "memscope.cli", "replay", "--from", str(a.dir),
                        "--to", str(b.dir), "-f", "json"], capture_output=True, text=True,
                       timeout=600)
    return r.returncode, {g["allocator"]: g for g in json.loads(r.stdout)["allocators"]}


def test_leaks_are_the_windows_unfreed_objects_and_pages_that_b_holds(window):
    """``replay --leaks``: the objects the window allocated and did not free that drgn's
    ``slab_object_info()`` finds allocated in B, each under its call site as drgn's symbol
    table names it and its cache as drgn names it; and the page blocks it allocated and did
    not free that are on none of B's free lists or per-CPU lists, read by drgn."""
    from drgn import FaultError
    from drgn.helpers.linux.slab import slab_object_info

    from memscope.model.leaks import leaks

    a, b, prog_b, events, parts, _ = window
    alloc = {"kmalloc", "kmem_cache_alloc", "kmalloc_node", "kmem_cache_alloc_node"}
    live, pages = {}, {}
    for e in events:
        ptr = e.fields.get("ptr")
        if e.name in alloc and ptr:
            live[ptr] = e.fields
        elif e.name in ("kfree", "kmem_cache_free"):
            live.pop(ptr, None)
        elif e.name == "mm_page_alloc":
            pages[e.fields["pfn"]] = e.fields["order"]
        elif e.name in ("mm_page_free", "mm_page_free_batched"):
            pages.pop(e.fields["pfn"], None)
    cached = _drgn_sheaf_objects(prog_b)
    want = {}
    for ptr, f in live.items():
        if ptr in cached:
            continue  # free, in a sheaf (freed by kfree_rcu() without an event)
        try:
            info = slab_object_info(prog_b, ptr)
        except FaultError:
            info = None
        if info is not None and info.allocated and info.slab_cache:
            want[ptr] = (f["call_site"], info.slab_cache.name.string_().decode())
    assert want, "the window left nothing allocated: nothing tested"
    lk = leaks(b, events)
    got = {ptr: (g.site, c) for g in lk.objects for ptr in g.addresses for c in g.caches
           if len(g.caches) == 1}
    assert sum(g.count for g in lk.objects) == len(want)
    assert {p for g in lk.objects for p in g.addresses} == set(want)
    for ptr, (site, cache) in got.items():
        assert want[ptr] == (site, cache), hex(ptr)
    for g in lk.objects:
        # name and offset as drgn's symbol table gives them (the /size is %pS's, the
        # distance to the next kallsyms symbol: test_kernel_kallsyms)
        sym = prog_b.symbol(g.site)
        assert g.symbol.rsplit("/", 1)[0] == f"{sym.name}+{g.site - sym.address:#x}", g.symbol
    assert [g.bytes for g in lk.objects] == sorted((g.bytes for g in lk.objects), reverse=True)
    free = {**_drgn_free_blocks(prog_b)}
    pcp = _drgn_pcp_blocks(prog_b)

    def held_by_b(pfn):
        return not any((pfn >> o << o) in free and free[pfn >> o << o] == o
                       for o in range(11)) and pfn not in pcp
    want_pages = {pfn for pfn in pages if held_by_b(pfn)}
    assert {p for g in lk.pages for p in g.addresses} == want_pages
    assert sum(g.bytes for g in lk.pages) == sum(4096 << pages[p] for p in want_pages)


def test_replay_command_agrees(lab_case):
    returncode, recs = _replay_cli(lab_case, "6.12-trace")
    # no CMA area on x86_64 without cma=; 6.12 has the vmalloc tracepoints
    assert set(recs) == {"buddy", "pcp", "slab", "vmalloc"}
    for g in recs.values():
        assert set(g) >= {"allocator", "matched", "missing", "extra", "divergences"}
    assert recs["buddy"]["missing"] == recs["buddy"]["extra"] == 0
    assert recs["slab"]["missing"] == recs["slab"]["extra"] == 0
    # a quiet second: no vmalloc area changed, every one is predicted (7.2-trace-cma's
    # window changes them: tests/test_replay_cma_vmalloc.py)
    assert recs["vmalloc"]["missing"] == recs["vmalloc"]["extra"] == 0
    assert recs["vmalloc"]["divergences"] == [] and recs["vmalloc"]["matched"] > 50
    # the only divergences: vmalloc's bulk pages, each named with its area
    for d in recs["pcp"]["divergences"]:
        assert d["kind"] == "extra" and "alloc_pages_bulk" in d["cause"]
    assert returncode == (1 if recs["pcp"]["divergences"] else 0)


def test_replay_command_names_the_maple_trees_frees_on_7_2(lab_case):
    returncode, recs = _replay_cli(lab_case, "7.2-trace")
    assert returncode == 1
    assert recs["buddy"]["missing"] == recs["buddy"]["extra"] == 0
    assert recs["slab"]["missing"] == 0
    for d in recs["slab"]["divergences"]:
        assert d["kind"] == "extra" and "maple_node" in d["cause"], d


def test_replay_leaks_command_prints_the_leaks_function(lab_case):
    """``replay --leaks -f json`` prints :func:`memscope.model.leaks.leaks` of the same
    window (checked against drgn above), exit status 0; the table names the call sites."""
    from memscope.model.leaks import leaks

    a, b = lab_case("6.12-trace", "before"), lab_case("6.12-trace", "after")
    base = [sys.executable, "-m", "memscope.cli", "replay", "--from", str(a.dir), "--to",
            str(b.dir), "--leaks"]
    r = subprocess.run(base + ["-f", "json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    got = json.loads(r.stdout)
    _, ta = open_dump(a)
    _, tb = open_dump(b)
    ca, cb = KernelContext(ta), KernelContext(tb)
    events, parts = window_events(ca, cb)
    want = leaks(cb, events).to_json()
    assert got == {"events": len(events), "lost": sum(p.lost for p in parts),
                   **json.loads(json.dumps(want))}
    assert got["objects"] and got["pages"]
    t = subprocess.run(base, capture_output=True, text=True, timeout=600)
    assert t.returncode == 0
    for g in got["objects"]:
        assert g["symbol"] in t.stdout


def test_replay_of_a_missing_dump_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "memscope.cli", "replay", "--from",
                        str(tmp_path / "a"), "--to", str(tmp_path / "b")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and "does not exist" in r.stderr


def test_replay_and_events_since_refuse_dumps_of_two_boots(lab_case):
    """Dumps of two boots of the same kernel (6.12's mixed case and its trace case; the
    mixed one has no events, so the ring buffers cannot tell): one line, exit status 2,
    naming what differs (the KASLR offsets, as each dump's VMCOREINFO says); and B before A
    of one boot (jiffies_64 went back)."""
    from memscope.target.dumpfile import read_dump_file

    other, b = lab_case("6.12"), lab_case("6.12-trace", "after")
    offs = [read_dump_file(s.vmcore).vmcoreinfo_fields()["KERNELOFFSET"] for s in (other, b)]
    assert offs[0] != offs[1]
    runs = [["replay", "--from", str(other.dir), "--to", str(b.dir)],
            ["replay", "--from", str(other.dir), "--to", str(b.dir), "--leaks"],
            ["-c", str(b.vmcore), "-s", str(b.vmlinux), "events", "--since",
             str(other.vmcore)]]
    for argv in runs:
        r = subprocess.run([sys.executable, "-m", "memscope.cli", *argv], capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 2 and r.stdout == "", argv
        assert len(r.stderr.splitlines()) == 1, r.stderr
        assert f"KERNELOFFSET {offs[0]} and {offs[1]}" in r.stderr, r.stderr
    a = lab_case("6.12-trace", "before")
    r = subprocess.run([sys.executable, "-m", "memscope.cli", "replay", "--from", str(b.dir),
                        "--to", str(a.dir)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "jiffies_64" in r.stderr and len(r.stderr.splitlines()) == 1


def test_replay_of_a_file_with_no_trace_event_is_one_line(lab_case, tmp_path):
    """--events FILE holding no event (garbage, a binary file): one line naming the file,
    exit status 2, never a comparison made from no event (found by a new-user review)."""
    a, b = lab_case("6.12-trace", "before"), lab_case("6.12-trace", "after")
    junk = tmp_path / "junk.txt"
    junk.write_text("this is not\na trace\n")
    r = subprocess.run([sys.executable, "-m", "memscope.cli", "replay", "--from", str(a.dir),
                        "--to", str(b.dir), "--events", str(junk)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert "no trace event in its 2 lines (2 garbled)" in r.stderr, r.stderr
