"""The slab half of ``check`` on real lab dumps: every slab of every cache walked (counted
against the guest's own /proc/slabinfo), and on private copies of the vmcores that the test
corrupts where drgn's own helpers locate a slab (a wild freelist pointer, a freelist cycle,
an ``inuse`` that disagrees with the freelist, on 7.2 a CPU sheaf entry outside its cache):
the cache and slab named, exit status 1, no hang.

With SLUB debugging (the lab's ``slub_debug=FZPU`` cases on 6.12 and 7.2): the caches
really are debug caches (their flags read with drgn), every object of them is checked and
nothing is found on the clean dumps; an overwritten red zone byte of an allocated object
and an overwritten poison byte of a free object (both chosen with drgn) are named as the
kernel names them, with the byte expected and the byte found."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from test_check import ElfCore, run_cli

from kernel_dumps import open_dump
from test_slub import _has_member as _has, _has_type

DEBUG_CASES = ["6.12-slub-debug", "7.2-slub-debug"]
CORRUPT_KERNELS = ["5.10", "6.12", "7.2"]


def _check(vmcore, vmlinux):
    # run_cli's timeout guards against a hang.
    return run_cli("-c", str(vmcore), "-s", str(vmlinux), "check", "-f", "json")


def _slabinfo(snap) -> dict[str, list[int]]:
    """The truth's /proc/slabinfo: name -> [active_objs, num_objs, objsize, objperslab,
    pagesperslab, num_slabs]."""
    out = {}
    for line in snap.truth_text("slabinfo").splitlines()[2:]:
        f = line.split()
        out[f[0]] = [int(x) for x in f[1:6]] + [int(f[14])]
    return out


def _debug_flags(prog) -> dict[str, int]:
    """SLAB_RED_ZONE and SLAB_POISON as the kernel's enum _slab_flag_bits gives them
    (drgn's own lookup)."""
    return {name: 1 << prog.constant(f"_SLAB_{name}").value_() for name in ("RED_ZONE",
                                                                               "POISON")}


def _caches(prog):
    from drgn.helpers.linux.slab import for_each_slab_cache

    return list(for_each_slab_cache(prog))


def test_check_walks_every_slab_the_kernel_counts_and_finds_nothing(real_kernel):
    """On every clean dump: the slabs and objects walked are the guest's /proc/slabinfo
    totals (num_slabs, num_objs summed), no problem, exit 0."""
    r = _check(real_kernel.vmcore, real_kernel.vmlinux)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    truth = _slabinfo(real_kernel)
    assert report["problems"] == []
    assert report["slabs"]["caches"] == len(truth)
    assert report["slabs"]["slabs"] == sum(v[5] for v in truth.values())
    assert report["slabs"]["objects"] == sum(v[1] for v in truth.values())
    assert report["slabs"]["debug_caches"] == 0  # no slub_debug on these boots


# --- corrupted copies of real dumps --------------------------------------------------------
def _partial_slab(prog, min_free=2, cache_filter=None):
    """(cache, struct slab/page address, first free object) of a node-partial slab with at
    least MIN_FREE free objects on its freelist, found with drgn."""
    from drgn.helpers.linux.list import list_for_each_entry

    slab_type = "struct slab" if _has_type(prog, "struct slab") else "struct page"
    for s in _caches(prog):
        if cache_filter and not cache_filter(s):
            continue
        per_node = s.per_node if _has(s, "per_node") else None
        n = per_node[0].node if per_node is not None else s.node[0]
        if not n:
            continue
        for sl in list_for_each_entry(slab_type, n.partial.address_of_(), "slab_list"):
            if sl.objects.value_() - sl.inuse.value_() >= min_free and sl.freelist:
                return s, sl.value_(), sl.freelist.value_()
    raise AssertionError("no partial slab with free objects")


def _encode(s, ptr: int, at: int) -> int:
    """mm/slub.c freelist_ptr_encode() (CONFIG_SLAB_FREELIST_HARDENED, swab since v5.7)."""
    return ptr ^ s.random.value_() ^ int.from_bytes(at.to_bytes(8, "little"), "big")


@pytest.fixture(scope="module", params=CORRUPT_KERNELS)
def copy(request, lab_case, tmp_path_factory):
    """(ElfCore of a private copy of the dump, snapshot, drgn Program of the original)."""
    snap = lab_case(request.param)
    path = tmp_path_factory.mktemp("vmcore") / "vmcore"
    shutil.copyfile(snap.vmcore, path)
    prog, _ = open_dump(snap)
    return ElfCore(path), snap, prog


def _phys(prog, addr: int) -> int:
    """The physical address of kernel address ADDR (direct map or vmemmap), by drgn's
    page-table walk of init_mm."""
    from drgn.helpers.linux.mm import follow_phys

    return int(follow_phys(prog["init_mm"].address_of_(), addr))


def _named(r, kind: str, cache: str, *needles: str) -> dict:
    assert r.returncode == 1, r.stdout + r.stderr
    problems = json.loads(r.stdout)["problems"]
    found = [p for p in problems if p["kind"] == kind and p["where"] == cache
             and all(n in p["message"] for n in needles)]
    assert found, problems
    return found[0]


@pytest.mark.parametrize("corruption", ["wild", "cycle", "inuse"])
def test_check_names_a_corrupted_freelist(copy, corruption):
    core, snap, prog = copy
    s, slab, first = _partial_slab(prog)
    name = s.name.string_().decode()
    at = first + s.offset.value_()
    if corruption == "wild":
        where, word = at, _encode(s, 0xFFFF888000001234, at)
    elif corruption == "cycle":
        where, word = at, _encode(s, first, at)
    else:  # inuse one lower than the freelist says
        from drgn import Object

        sl = Object(prog, "struct slab" if _has_type(prog, "struct slab") else "struct page",
                    address=slab)
        where = sl.counters.address_  # inuse is its low 16 bits on every lab kernel
        word = sl.counters.value_() - 1
    with core.patched(_phys(prog, where), word.to_bytes(8, "little")):
        r = _check(core.path, snap.vmlinux)
        api = _drgn_api_check(core.path, snap.vmlinux)
    kind = {"wild": "bad_pointer", "cycle": "cycle", "inuse": "inuse_mismatch"}[corruption]
    _named(r, kind, name, f"slab {slab:#x}")
    # memscope.drgn_api.check on a drgn Program of the same copy reports the same
    assert not api.ok and [p.to_json() for p in api.problems] == json.loads(
        r.stdout)["problems"]


def _drgn_api_check(vmcore, vmlinux):
    import memscope.drgn_api as ms
    from memscope.target.drgn import open_core

    return ms.check(open_core(vmcore, vmlinux))


def test_check_names_a_sheaf_entry_outside_its_cache(lab_case, tmp_path):
    """7.2: a CPU's main sheaf holds a pointer that is no object of the sheaf's cache."""
    from drgn.helpers.linux.percpu import per_cpu_ptr

    snap = lab_case("7.2")
    prog, _ = open_dump(snap)
    for s in _caches(prog):
        if not s.cpu_sheaves:
            continue
        sheaf = next((per_cpu_ptr(s.cpu_sheaves, cpu).main for cpu in range(2)
                      if per_cpu_ptr(s.cpu_sheaves, cpu).main
                      and per_cpu_ptr(s.cpu_sheaves, cpu).main.size), None)
        if sheaf is not None:
            break
    else:
        pytest.fail("no CPU sheaf with objects on the 7.2 dump")
    path = tmp_path / "vmcore"
    shutil.copyfile(snap.vmcore, path)
    core = ElfCore(path)
    with core.patched(_phys(prog, sheaf.objects[0].address_),
                      (0xFFFF888000001230).to_bytes(8, "little")):
        r = _check(path, snap.vmlinux)
    _named(r, "bad_sheaf", s.name.string_().decode(), f"sheaf {sheaf.value_():#x}")


# --- SLUB debugging --------------------------------------------------------------------------
@pytest.fixture(scope="module", params=DEBUG_CASES)
def debug_case(request, lab_case):
    return lab_case(request.param)


def test_debug_dump_is_clean_and_every_debug_object_is_checked(debug_case):
    """slub_debug=FZPU: the caches carry SLAB_RED_ZONE and SLAB_POISON (drgn reads their
    flags); check finds nothing and checked the bytes of every object of every debug cache
    (the truth's num_objs of those caches)."""
    prog, _ = open_dump(debug_case)
    flags = _debug_flags(prog)
    truth = _slabinfo(debug_case)
    debug = {s.name.string_().decode() for s in _caches(prog)
             if s.flags.value_() & (flags["RED_ZONE"] | flags["POISON"])}
    # every cache but the few created before slub_debug is parsed is a debug cache
    assert {"dentry", "kmalloc-64", "kmalloc-1k"} <= debug
    assert len(debug) > len(truth) // 2
    r = _check(debug_case.vmcore, debug_case.vmlinux)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["problems"] == []
    api = _drgn_api_check(debug_case.vmcore, debug_case.vmlinux)
    assert api.ok and dataclasses.asdict(api.slabs) == {**report["slabs"], "problems": []}
    assert report["slabs"]["debug_objects"] == sum(truth[n][1] for n in debug if n in truth)
    assert report["slabs"]["debug_caches"] == sum(1 for n in debug if truth.get(n, [0, 0])[1])


def _debug_copy(snap, tmp_path):
    path = tmp_path / "vmcore"
    shutil.copyfile(snap.vmcore, path)
    return ElfCore(path)


def test_check_names_an_overwritten_red_zone_of_an_allocated_object(debug_case, tmp_path):
    """The last byte of the left red zone of an allocated kmalloc-64 object (drgn's
    slab_cache_for_each_allocated_object) written 0x41: "Left Redzone overwritten", 0xcc
    (SLUB_RED_ACTIVE) expected, 0x41 found, at offset -1 of the object."""
    from drgn.helpers.linux.slab import find_slab_cache, slab_cache_for_each_allocated_object
    from drgn.helpers.linux.mm import virt_to_page

    prog, _ = open_dump(debug_case)
    s = find_slab_cache(prog, "kmalloc-64")
    assert s.red_left_pad.value_() > 0
    obj = next(iter(slab_cache_for_each_allocated_object(s, "void"))).value_()
    assert prog.read(obj - 1, 1) == b"\xcc"
    slab = virt_to_page(prog, obj).value_()
    core = _debug_copy(debug_case, tmp_path)
    with core.patched(_phys(prog, obj - 1), b"\x41"):
        r = _check(core.path, debug_case.vmlinux)
    p = _named(r, "left_redzone", "kmalloc-64", "Left Redzone overwritten",
               f"object {obj:#x}", "allocated", "offset -1:", "0xcc expected, 0x41 found")
    # the slab named is the object's (a kmalloc-64 slab is one page: its struct page)
    assert f"slab {slab:#x}" in p["message"]


def test_check_names_an_overwritten_poison_byte_of_a_free_object(debug_case, tmp_path):
    """Byte 5 of the first free object of a partial dentry slab (its freelist head, read
    with drgn) written 0x00: "Poison overwritten", 0x6b (POISON_FREE) expected."""
    prog, _ = open_dump(debug_case)
    s, slab, first = _partial_slab(prog, 1, lambda s: s.name.string_() == b"dentry")
    assert prog.read(first + 5, 1) == b"\x6b"
    core = _debug_copy(debug_case, tmp_path)
    with core.patched(_phys(prog, first + 5), b"\x00"):
        r = _check(core.path, debug_case.vmlinux)
    _named(r, "poison", "dentry", "Poison overwritten", f"slab {slab:#x}",
           f"object {first:#x}", "free", "offset 5:", "0x6b expected, 0x00 found")


def test_check_names_an_overwritten_right_red_zone_of_a_free_object(debug_case, tmp_path):
    """The first byte after a free dentry (its right red zone, object_size to inuse, read
    with drgn) written 0x00: "Right Redzone overwritten", 0xbb (SLUB_RED_INACTIVE)
    expected."""
    prog, _ = open_dump(debug_case)
    s, slab, first = _partial_slab(prog, 1, lambda s: s.name.string_() == b"dentry")
    size = s.object_size.value_()
    assert s.inuse.value_() > size and prog.read(first + size, 1) == b"\xbb"
    core = _debug_copy(debug_case, tmp_path)
    with core.patched(_phys(prog, first + size), b"\x00"):
        r = _check(core.path, debug_case.vmlinux)
    _named(r, "right_redzone", "dentry", "Right Redzone overwritten", f"slab {slab:#x}",
           f"object {first:#x}", "free", f"offset {size}:", "0xbb expected, 0x00 found")
