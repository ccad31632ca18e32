"""``kmalloc`` on real lab dumps.  The slots are drgn's reading of the kernel's
``kmalloc_caches[type][index]`` with the kernel's cache names (mm/slab_common.c
kmalloc_info[]: ``kmalloc-N``, ``kmalloc-rcl-N``, ``dma-kmalloc-N``, ``kmalloc-cg-N``) as
the truth for each kind; sizes are kmalloc_index()'s (96, 192, else ``1 << index``).  On the
``slub_debug=FZPU`` cases: objects and slab memory equal the guest's /proc/slabinfo,
allocated objects drgn's slab_cache_for_each_allocated_object(), and the requested bytes equal what drgn reads itself with mm/slub.c get_orig_size()'s
formula on every allocated object drgn's slab_cache_for_each_allocated_object() yields."""

from __future__ import annotations

import json

import pytest

from kernel_dumps import open_dump
from test_buddy import memscope
from test_slub_check import DEBUG_CASES, _slabinfo

KERNELS = ["5.10", "6.1", "6.12", "7.2"]
PREFIX = {"reclaim": "kmalloc-rcl-", "dma": "dma-kmalloc-", "cgroup": "kmalloc-cg-",
          "normal": "kmalloc-"}


def _kmalloc_size(index: int) -> int:
    """include/linux/slab.h kmalloc_index() inverted: the size of slot INDEX."""
    return {1: 96, 2: 192}.get(index, 1 << index)


@pytest.mark.parametrize("kernel", KERNELS)
def test_kmalloc_slots_are_the_kernels_table(lab_case, kernel):
    snap = lab_case(kernel)
    prog, _ = open_dump(snap)
    rows = json.loads(memscope(snap, "kmalloc", "-f", "json").stdout)
    table = prog["kmalloc_caches"]
    enum = {e.name: e.value for e in prog.type("enum kmalloc_cache_type").enumerators}
    normal = enum["KMALLOC_NORMAL"]
    got = {(r["type"], r["index"]): r for r in rows}
    want = {}
    for ty in range(len(table)):
        for idx in range(len(table[ty])):
            if table[ty][idx]:
                want[(ty, idx)] = table[ty][idx]
    assert set(got) == set(want)
    kinds = set()
    for key, s in want.items():
        r = got[key]
        name = s.name.string_().decode()
        assert (r["cache"], r["address"], r["object_size"]) == (
            name, s.value_(), s.object_size.value_())
        assert r["object_size"] == _kmalloc_size(key[1]), name
        # caches merged into this one (slab_common.c find_mergeable()); a refcount of -1
        # exempts a cache from merging (6.1's new_kmalloc_cache() on the normal caches)
        refcount = s.refcount.value_()
        assert r["refcount"] == refcount
        assert r["aliases"] == (refcount - 1 if refcount > 0 else 0), name
        if r["same_as"]:
            # new_kmalloc_cache(): a slot of another type pointing at the normal cache
            assert r["same_as"] == f"normal[{key[1]}]"
            assert table[normal][key[1]] == s
        else:
            kind = r["kind"]
            kinds.add(kind)
            rest = name[len(PREFIX[kind]):] if name.startswith(PREFIX[kind]) else None
            assert rest is not None and (rest == str(_kmalloc_size(key[1]))
                                         or rest == f"{_kmalloc_size(key[1]) >> 10}k"), name
            # the enumerator of the slot's type names the same kind
            assert f"KMALLOC_{kind.upper()}" in {n for n, v in enum.items() if v == key[0]}
    assert {"normal", "reclaim"} <= kinds
    assert all(r["requested_bytes"] is None for r in rows)  # no slub_debug on these boots
    table_text = memscope(snap, "kmalloc").stdout
    assert all(r["cache"] in table_text for r in rows)
    assert "not stored" in table_text


@pytest.fixture(scope="module", params=DEBUG_CASES)
def debug_case(request, lab_case):
    return lab_case(request.param)


def _orig_sizes_by_drgn(prog, s) -> list[int]:
    """get_orig_size() of every allocated object drgn finds: the unsigned long (v6.12,
    v7.2) at get_info_end(s) + 2 * sizeof(struct track)."""
    from drgn.helpers.linux.slab import slab_cache_for_each_allocated_object

    inuse, offset = s.inuse.value_(), s.offset.value_()
    info_end = inuse + 8 if offset >= inuse else inuse
    at = info_end + 2 * prog.type("struct track").size
    return [int.from_bytes(prog.read(o.value_() + at, 8), "little")
            for o in slab_cache_for_each_allocated_object(s, "void")]


def test_kmalloc_counts_and_requested_bytes_under_slub_debug(debug_case):
    prog, _ = open_dump(debug_case)
    truth = _slabinfo(debug_case)
    rows = json.loads(memscope(debug_case, "kmalloc", "-f", "json").stdout)
    flags = {n: 1 << prog.constant(f"_SLAB_{n}").value_() for n in ("STORE_USER", "KMALLOC")}
    checked = 0
    for r in rows:
        if r["same_as"]:
            continue
        _, num, _, _, pages, slabs = truth[r["cache"]]
        assert r["objects"] == num and r["slab_bytes"] == slabs * pages * 4096, r["cache"]
        s = prog.object("kmalloc_caches")[r["type"]][r["index"]]
        stores = s.flags.value_() & flags["STORE_USER"] and s.flags.value_() & flags["KMALLOC"]
        assert bool(stores) == (r["requested_bytes"] is not None), r["cache"]
        if r["kind"] != "normal" or not r["objects"]:
            continue  # drgn's iterator scans every page per cache: the normal ones
        sizes = _orig_sizes_by_drgn(prog, s)
        # the allocated objects are drgn's (KFENCE is off: kfence.sample_interval=0)
        assert len(sizes) == r["allocated"], r["cache"]
        assert r["allocated_bytes"] == len(sizes) * r["object_size"]
        assert all(0 < x <= r["object_size"] for x in sizes), r["cache"]
        assert r["requested_bytes"] == sum(sizes), r["cache"]
        assert r["waste_bytes"] == r["allocated_bytes"] - sum(sizes)
        checked += 1
    assert checked >= 10  # kmalloc-8 .. kmalloc-8k hold objects on every boot
    out = memscope(debug_case, "kmalloc").stdout
    assert "KiB rounding waste" in out


def test_bad_kind_is_a_one_line_error(lab_case):
    snap = lab_case("6.12")
    r = memscope(snap, "kmalloc", "--kind", "huge", check=False)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == ("memscope: kmalloc: no kind 'huge' on this kernel (it has normal, "
                        "reclaim, dma, cgroup, no_obj_ext)\n")
    data = json.loads(memscope(snap, "kmalloc", "--kind", "cgroup", "-f", "json").stdout)
    assert data and {r["kind"] for r in data} == {"cgroup"}
