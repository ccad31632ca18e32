"""SLUB on every real lab kernel: /proc/slabinfo byte for byte against the guest's own file,
the true counts of ``slabinfo --walk`` against drgn's helpers, ``slab CACHE``, ``whatis``."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from memscope.lab import cases
from memscope.mm import slub
from memscope.mm.context import KernelContext

from kernel_dumps import open_dump
from test_buddy import memscope  # the real command line on a lab dump

# Every case whose truth has a slabinfo: the real kernels, the named snapshots of one run,
# and whatever slab-specific cases the lab defines (a cache past MAX_PARTIAL_TO_SCAN
# partial slabs, where 6.10+ kernels approximate).
SLAB_CASES = [(c, "") for c in cases.REAL_KERNEL_CASES] + [
    ("6.12-snapshots", "before"), ("6.12-snapshots", "after"), ("6.12-snapshots", "")] + [
    (c, "") for c in cases.CASES if "slab" in c]


@pytest.fixture(scope="module", params=SLAB_CASES, ids=lambda p: "-".join(filter(None, p)))
def slab_case(request, lab_case):
    return lab_case(*request.param)


def test_slabinfo_proc_is_byte_identical_to_the_guest(slab_case):
    """Header, caches in slab_caches order, each kernel's arithmetic: the whole file."""
    out = memscope(slab_case, "slabinfo", "-f", "proc").stdout
    assert out == slab_case.truth_text("slabinfo")


def test_slabinfo_json_is_the_records_and_table_lists_every_cache(slab_case):
    data = json.loads(memscope(slab_case, "slabinfo", "-f", "json").stdout)
    truth = slab_case.truth_text("slabinfo").splitlines()[2:]
    assert [d["name"] for d in data] == [line.split()[0] for line in truth]
    assert set(data[0]) == {f.name for f in slub.dataclasses.fields(slub.SlabInfo)}
    for d, line in zip(data, truth):
        f = line.split()
        assert [d["active_objs"], d["num_objs"], d["objsize"], d["objperslab"],
                d["pagesperslab"], d["num_slabs"]] == [int(x) for x in (f[1:6] + [f[14]])]
    table = memscope(slab_case, "slabinfo").stdout
    assert all(d["name"] in table for d in data)


def _partial_lists_by_drgn(prog, cache_name: str):
    """(nr_partial, [objects - inuse of each slab on the partial list]) per node, read by
    drgn's own helpers (independent of memscope.mm)."""
    from drgn.helpers.linux.list import list_for_each_entry
    from drgn.helpers.linux.slab import find_slab_cache

    s = find_slab_cache(prog, cache_name)
    slab_type = "struct slab" if _has_type(prog, "struct slab") else "struct page"
    out = []
    per_node = s.per_node if _has_member(s, "per_node") else None
    for nid in range(prog["nr_node_ids"].value_()):
        n = per_node[nid].node if per_node is not None else s.node[nid]
        if not n:
            continue
        out.append((n.nr_partial.value_(), n.total_objects.counter.value_(), [
            sl.objects.value_() - sl.inuse.value_()
            for sl in list_for_each_entry(slab_type, n.partial.address_of_(), "slab_list")]))
    return out


def _has_type(prog, name):
    try:
        prog.type(name)
        return True
    except LookupError:
        return False


def _has_member(obj, name):
    try:
        obj.member_(name)
        return True
    except LookupError:
        return False


def test_slabinfo_approximates_long_partial_lists_as_the_kernel_does(lab_case):
    """A cache past MAX_PARTIAL_TO_SCAN partial slabs on a 6.10+ kernel: /proc/slabinfo
    scales the 10000 end slabs, and the truth's line agrees with that arithmetic (computed
    here from drgn's reading of the list), not with the exact count."""
    long_cases = [c for c in cases.CASES if "slab" in c]
    if not long_cases:
        pytest.skip("no lab case drives a cache past 10000 partial slabs yet "
                    "(cases.CASES has no '*-slab' case)")
    found = 0
    for name in long_cases:
        snap = lab_case(name)
        prog, t = open_dump(snap)
        truth = {line.split()[0]: int(line.split()[1])
                 for line in snap.truth_text("slabinfo").splitlines()[2:]}
        ctx = KernelContext(t)
        sl = slub.slub_layout(ctx)
        for c in slub.kmem_caches(ctx):
            if not any(n.nr_partial > slub.MAX_PARTIAL_TO_SCAN for n in c.nodes):
                continue
            found += 1
            exact = approx = 0
            num = 0
            for nr_partial, total, free in _partial_lists_by_drgn(prog, c.name):
                assert len(free) == nr_partial
                exact += sum(free)
                num += total
                if nr_partial > slub.MAX_PARTIAL_TO_SCAN and sl.partial_free_approx:
                    scanned = free[:5000] + free[-5000:]
                    approx += min(sum(scanned) * nr_partial // len(scanned), total)
                else:
                    approx += sum(free)
            assert truth[c.name] == num - approx
            assert sum(n.partial_free for n in c.nodes) == approx
    assert found, "the slab cases have no cache past 10000 partial slabs"


# --- slabinfo --walk: the true counts ----------------------------------------------------
@pytest.fixture(scope="module")
def walk(slab_case):
    """(snapshot, context, {cache name: CacheUsage}, {name: slabinfo line}) of one case."""
    prog, t = open_dump(slab_case)
    ctx = KernelContext(t)
    usage = {u.name: u for u in slub.slab_usage(ctx)}
    truth = {}
    for line in slab_case.truth_text("slabinfo").splitlines()[2:]:
        f = line.split()
        truth[f[0]] = {"active_objs": int(f[1]), "num_objs": int(f[2]), "num_slabs": int(f[14])}
    return slab_case, ctx, usage, truth


def test_walk_finds_every_slab_the_kernel_counts_and_no_problem(walk):
    """Slabs found in the memmap equal the kernel's nr_slabs and their objects its
    total_objects, cache by cache (the truth's slabinfo); a frozen dump has no problem."""
    snap, ctx, usage, truth = walk
    assert list(usage) == list(truth)
    for name, u in usage.items():
        assert (u.slabs, u.objects) == (truth[name]["num_slabs"], truth[name]["num_objs"]), name
        assert u.problems == [], name
    assert slub.slab_walker(ctx).problems == []


def test_walk_allocated_is_slabinfo_active_less_what_waits_outside_node_partial_lists(walk):
    """active_objs counts as active every free object that is not on a node partial list
    (mm/slub.c get_slabinfo()): what the walk finds free elsewhere (CPU freelists, CPU
    slabs' and CPU partial slabs' own freelists, sheaves, barns, rcu_free) is exactly the
    difference, where the kernel counts the partial lists exactly (<= 10000 slabs)."""
    snap, ctx, usage, truth = walk
    by_name = {c.name: c for c in slub.kmem_caches(ctx)}
    for name, u in usage.items():
        assert u.allocated <= truth[name]["active_objs"], name
        if any(n.nr_partial > slub.MAX_PARTIAL_TO_SCAN for n in by_name[name].nodes):
            continue
        w = slub.cache_walk(ctx, by_name[name])
        off_node = int(w.slabs.nfree[w.slabs.where != slub.W_NODE_PARTIAL].sum())
        assert truth[name]["active_objs"] - u.allocated == (
            off_node + u.free_cpu + u.free_sheaves + u.rcu_free + u.free_barn), name


def _drgn_exceptions(prog, cache):
    """What drgn 0.3.0's slab_cache_for_each_allocated_object() counts as allocated that
    is not (real-kernels.md), computed with drgn: the objects of rcu_free sheaves, and
    the KFENCE pool's object pages whose slab names this cache (drgn yields one object per
    such page whatever the object's state).  Returns (rcu_free addresses, kfence count)."""
    from drgn import cast
    from drgn.helpers.linux.cpumask import for_each_online_cpu
    from drgn.helpers.linux.mm import virt_to_page
    from drgn.helpers.linux.percpu import per_cpu_ptr

    rcu = set()
    if _has_member(cache, "cpu_sheaves") and cache.cpu_sheaves:
        for cpu in for_each_online_cpu(prog):
            sheaf = per_cpu_ptr(cache.cpu_sheaves, cpu).rcu_free
            if sheaf:
                rcu |= {o.value_() for o in sheaf.objects[:sheaf.size]}
    kfence = 0
    try:
        pool = prog["__kfence_pool"].value_()
    except KeyError:
        pool = 0
    if pool:
        n = prog["kfence_metadata"]
        i = 0
        while True:
            meta = n[i]
            if meta.addr.value_() & ~4095 != pool + 2 * (i + 1) * 4096:
                break
            page = virt_to_page(prog, meta.addr.value_() & ~4095)
            slab = cast("struct slab *", page)
            if slab.slab_cache == cache and slab.objects.value_() >= 1:
                kfence += 1
            i += 1
    return rcu, kfence


def _picks(usage):
    """A handful of caches per kernel (drgn's iterator scans every page per cache): the
    three with fewest slabs, dentry, the 64-byte kmalloc cache, and on sheaf kernels the
    cache with the most objects in sheaves or rcu_free."""
    with_slabs = sorted((u for u in usage.values() if u.slabs), key=lambda u: u.slabs)
    picks = with_slabs[:3] + [usage["dentry"], usage["kmalloc-64"]]
    sheafy = max(usage.values(), key=lambda u: u.free_sheaves + u.rcu_free + u.free_barn)
    if sheafy.free_sheaves + sheafy.rcu_free + sheafy.free_barn:
        picks.append(sheafy)
    return picks


def test_walk_allocated_objects_are_drgns_but_its_named_exceptions(walk):
    """The allocated objects `slab CACHE --objects` lists are, address for address, those
    drgn's slab_cache_for_each_allocated_object() yields, less exactly drgn 0.3.0's two
    written exceptions (rcu_free sheaves, KFENCE pages) computed with drgn; their count is
    --walk's allocated."""
    from drgn.helpers.linux.slab import find_slab_cache, slab_cache_for_each_allocated_object

    snap, ctx, usage, truth = walk
    prog, _ = open_dump(snap)
    for u in _picks(usage):
        cache = find_slab_cache(prog, u.name)
        theirs = {o.value_() for o in slab_cache_for_each_allocated_object(cache, "void")}
        rcu, kfence = _drgn_exceptions(prog, cache)
        w = slub.cache_walk(ctx, slub.find_kmem_cache(ctx, u.name))
        addr, _, _ = slub.object_addresses(w)
        ours = set(addr[slub.allocated_mask(w, addr)].tolist())
        assert ours == theirs - rcu, u.name
        assert len(theirs) == u.allocated + len(rcu) + kfence, u.name
        assert u.kfence == 0 or kfence, u.name


def test_slab_command_lists_the_allocated_objects_walk_counts(walk):
    snap, ctx, usage, truth = walk
    for u in _picks(usage)[:4]:
        data = json.loads(memscope(snap, "slab", u.name, "--objects", "--free", "-f",
                                   "json").stdout)
        assert len(data["objects"]) == u.allocated == sum(s["allocated"] for s in data["slabs"])
        assert len(data["slabs"]) == u.slabs
        assert len(data["objects"]) + len(data["free"]) == u.objects
        assert data["problems"] == []


def test_whatis_names_the_cache_index_and_state_of_every_object(walk):
    """whatis on every object of a few caches (allocated and free, at an inner offset)
    names the cache, the slab, the index and the state the slab walk gives; drgn's
    slab_object_info() agrees on a sample (its rcu_free objects excepted, named)."""
    from drgn.helpers.linux.slab import find_slab_cache, slab_object_info

    snap, ctx, usage, truth = walk
    prog, _ = open_dump(snap)
    for u in _picks(usage)[:4]:
        c = slub.find_kmem_cache(ctx, u.name)
        w = slub.cache_walk(ctx, c)
        addr, pos, index = slub.object_addresses(w)
        alloc = slub.allocated_mask(w, addr)
        rcu, _ = _drgn_exceptions(prog, find_slab_cache(prog, u.name))
        step = max(1, len(addr) // 200)
        for k, (a, p, i) in enumerate(zip(addr.tolist(), pos.tolist(), index.tolist())):
            r = slub.whatis(ctx, a + 7 % c.size)
            assert (r.kind, r.cache, r.slab, r.index, r.object) == (
                "slab", u.name, int(w.slabs.slab[p]), i, a)
            assert r.state == ("allocated" if alloc[k] else "free")
            if k % step == 0:
                info = slab_object_info(prog, a + 7 % c.size)
                assert info.slab_cache.name.string_().decode() == u.name
                assert info.address == a
                assert info.allocated == (r.state == "allocated" or a in rcu)


def test_whatis_on_other_pages_says_their_class(walk):
    """Outside slabs: a free buddy block's page says buddy with its block (the block from
    drgn's reading of the free list), and struct pages say memmap."""
    from drgn.helpers.linux.mm import page_to_pfn, page_to_virt
    from drgn.helpers.linux.list import list_for_each_entry

    snap, ctx, usage, truth = walk
    prog, _ = open_dump(snap)
    lru = "buddy_list" if prog.type("struct page").has_member("buddy_list") else "lru"
    page, order = next(
        (next(iter(list_for_each_entry("struct page", fl.address_of_(), lru))), o)
        for z in prog["node_data"][0].node_zones if z.present_pages
        for o in range(len(z.free_area) - 1, -1, -1) for fl in z.free_area[o].free_list
        if fl.next != fl.address_of_())
    last = page_to_virt(page).value_() + (4096 << order) - 1
    r = slub.whatis(ctx, last)
    assert (r.kind, r.block_pfn, r.order) == ("buddy", page_to_pfn(page).value_(), order)
    assert slub.whatis(ctx, page.value_() + 8).kind == "memmap"
    dentry = slub.cache_walk(ctx, slub.find_kmem_cache(ctx, "dentry")).slabs.slab[0]
    r = slub.whatis(ctx, int(dentry) + 8)
    from drgn import Object

    slab = Object(prog, "struct slab" if _has_type(prog, "struct slab") else "struct page",
                  address=int(dentry))
    assert (r.kind, r.slab, r.cache) == ("memmap", int(dentry),
                                          slab.slab_cache.name.string_().decode())


def test_bad_input_is_one_line(lab_case):
    snap = lab_case("6.12")
    r = memscope(snap, "slab", "no-such-cache", check=False)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == "memscope: slab: no slab cache named 'no-such-cache'\n"
    r = memscope(snap, "whatis", "0xzz", check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


# --- corrupted copies of real dumps --------------------------------------------------------
CORRUPT_KERNELS = ["5.10", "6.12", "7.2"]


def _partial_slab_with_free(ctx, min_free=2):
    """(cache, walk, slab position) of a node-partial slab with at least MIN_FREE free
    objects on its own freelist."""
    for c in slub.kmem_caches(ctx):
        w = slub.cache_walk(ctx, c)
        k = np.flatnonzero((w.slabs.where == slub.W_NODE_PARTIAL) & (w.slabs.nfree >= min_free))
        if len(k):
            return c, w, int(k[0])
    raise AssertionError("no partial slab with free objects")


def _encode(c, ptr, at):
    """freelist_ptr(): the stored form of PTR at address AT (hardened, with swab())."""
    return ptr ^ c.random ^ int.from_bytes(at.to_bytes(8, "little"), "big")


@pytest.mark.parametrize("kernel", CORRUPT_KERNELS)
@pytest.mark.parametrize("corruption", ["wild", "cycle", "inuse"])
def test_corrupted_freelist_is_a_finding_naming_cache_and_slab(lab_case, kernel, corruption):
    from kernel_dumps import PatchedTarget

    prog, t = open_dump(lab_case(kernel))
    c, w, k = _partial_slab_with_free(KernelContext(t))
    slab_addr, first = int(w.slabs.slab[k]), int(w.slabs.freelist[k])
    pt = PatchedTarget(t)
    if corruption == "wild":
        pt.patch(first + c.offset, _encode(c, 0xFFFF888000001234, first + c.offset))
    elif corruption == "cycle":
        pt.patch(first + c.offset, _encode(c, first, first + c.offset))
    else:  # inuse one lower than the freelist says
        sl = slub.slub_layout(KernelContext(t))
        word = slab_addr + sl.counters.offset
        pt.patch(word, t.read_u64(word) - 1)
    ctx = KernelContext(pt)
    got = slub.cache_walk(ctx, slub.find_kmem_cache(ctx, c.name))
    kinds = {"wild": "bad_pointer", "cycle": "cycle", "inuse": "inuse_mismatch"}
    found = [p for p in got.problems if p.kind == kinds[corruption]]
    assert found, got.problems
    assert found[0].where == c.name and f"{slab_addr:#x}" in found[0].message


def test_sheaf_entry_outside_its_cache_is_a_finding(lab_case):
    """7.2: an object pointer in a CPU sheaf that is no object of the sheaf's cache."""
    from kernel_dumps import PatchedTarget

    prog, t = open_dump(lab_case("7.2"))
    ctx = KernelContext(t)
    sl = slub.slub_layout(ctx)
    for c in slub.kmem_caches(ctx):
        if not c.cpu_sheaves:
            continue
        for cpu in t.possible_cpus:
            pcs = (c.cpu_sheaves + t.per_cpu_offset(cpu)) & ((1 << 64) - 1)
            sheaf = t.read_u64(pcs + sl.sheaves_members["main"])
            if sheaf and t.read_u32(sheaf + sl.sheaf_size_off):
                break
        else:
            continue
        break
    else:
        pytest.fail("no CPU sheaf with objects on the 7.2 dump")
    pt = PatchedTarget(t)
    pt.patch(sheaf + sl.sheaf_objects_off, 0xFFFF888000001230)
    ctx2 = KernelContext(pt)
    got = slub.cache_walk(ctx2, slub.find_kmem_cache(ctx2, c.name))
    bad = [p for p in got.problems if p.kind == "bad_sheaf"]
    assert bad and bad[0].where == c.name and f"{sheaf:#x}" in bad[0].message


def test_drgn_api_returns_what_the_cli_prints(walk):
    """memscope.drgn_api's slab functions on a drgn Program give the CLI's records."""
    import memscope.drgn_api as ms

    snap, ctx, usage, truth = walk
    prog, _ = open_dump(snap)
    assert ms.format_slabinfo(ms.slabinfo(prog)) == snap.truth_text("slabinfo")
    assert [dataclasses.asdict(u) for u in ms.slab_usage(prog)] == json.loads(
        memscope(snap, "slabinfo", "--walk", "-f", "json").stdout)
    w = ms.slab(prog, "dentry")
    assert len(w.slabs.pfn) == usage["dentry"].slabs
    obj = int(w.slabs.base[0]) + w.cache.red_left_pad + w.cache.size + 3
    assert dataclasses.asdict(ms.whatis(prog, obj)) == json.loads(
        memscope(snap, "whatis", hex(obj), "-f", "json").stdout)


def test_whatis_names_large_kmalloc_pages_where_the_kernel_marks_them(lab_case):
    """7.x marks the pages of a large kmalloc with PGTY_large_kmalloc: whatis says
    kmalloc_large on each page whose page_type drgn reads as that type (and drgn finds no
    slab object there)."""
    from drgn.helpers.linux.mm import pfn_to_page, pfn_to_virt
    from drgn.helpers.linux.slab import slab_object_info

    from memscope.mm import page as mpage

    snap = lab_case("7.2")
    prog, t = open_dump(snap)
    pgty = prog["PGTY_large_kmalloc"].value_()
    ctx = KernelContext(t)
    pm = mpage.memmap(ctx)
    pfns = np.flatnonzero((pm.cls == mpage.C["kmalloc_large"]) & ~pm.tail)
    assert len(pfns), "the 7.2 dump has no large kmalloc: nothing tested"
    for pfn in pfns.tolist():
        assert prog.read_u32(pfn_to_page(prog, pfn).page_type.address_) >> 24 == pgty
        addr = pfn_to_virt(prog, pfn).value_() + 100
        assert slub.whatis(ctx, addr).kind == "kmalloc_large"
        assert slab_object_info(prog, addr) is None


@pytest.mark.parametrize("kernel,approximates", [("5.10", False), ("6.1", False),
                                                 ("6.12", True), ("7.2", True)])
def test_count_partial_free_follows_each_kernels_formula(lab_case, kernel, approximates):
    """Which arithmetic a kernel's /proc/slabinfo uses is read from its debug info
    (count_partial_free_approx() exists from 6.10), and the approximation is the kernel's:
    a list of 12001 partial slabs whose middle slabs have more free objects than its
    5000 first and 5000 last gives mult_frac(x, nr_partial, 10000) capped at
    total_objects on 6.10+, the exact sum before."""
    _, t = open_dump(lab_case(kernel))
    sl = slub.slub_layout(KernelContext(t))
    assert sl.partial_free_approx is approximates
    free = [1] * 5000 + [7] * 2001 + [3] * 5000
    exact = sum(free)
    x = 5000 * 1 + 5000 * 3
    scaled = x // 10000 * 12001 + x % 10000 * 12001 // 10000  # include/linux/math.h
    assert slub.count_partial_free(sl, free, len(free), 10 ** 9) == (
        scaled if approximates else exact)
    assert scaled != exact
    if approximates:
        assert slub.count_partial_free(sl, free, len(free), 1000) == 1000  # min(x, objs)
    short = [2] * slub.MAX_PARTIAL_TO_SCAN
    assert slub.count_partial_free(sl, short, len(short), 10 ** 9) == sum(short)
