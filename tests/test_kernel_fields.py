"""memscope.kernel.fields on every lab kernel: every integer, enum, bool and pointer
member and every bit field of struct task_struct (each task), struct page (the first
pages of each zone), struct zone and, where it exists, struct slab, taken out of bulk
reads, against drgn's value of the same member of the same object; member paths against
drgn.offsetof."""

from __future__ import annotations

import drgn
import numpy as np
import pytest
from drgn.helpers.linux.mm import pfn_to_page
from drgn.helpers.linux.mmzone import for_each_online_pgdat
from drgn.helpers.linux.pid import for_each_task

from kernel_dumps import open_dump
from memscope.kernel import fields
from memscope.target.base import TargetError

_SCALAR = (drgn.TypeKind.INT, drgn.TypeKind.BOOL, drgn.TypeKind.ENUM,
           drgn.TypeKind.POINTER)


def _scalars(prog, t, type_name):
    """(Member, drgn signedness) of TYPE_NAME's scalar members, as Layout flattens them."""
    out = []
    for name, m in t.layout(type_name).members.items():
        try:
            typ = drgn.Object(prog, type_name, address=0).member_(name).type_
        except (LookupError, AttributeError):
            continue
        while typ.kind == drgn.TypeKind.TYPEDEF:
            typ = typ.type
        if typ.kind in _SCALAR:
            signed = typ.kind == drgn.TypeKind.INT and typ.is_signed
            out.append((m, signed))
    return out


def _check(prog, t, type_name, addresses):
    """Compare every scalar member of the objects at ADDRESSES, read one by one and in
    bulk, with drgn's values; returns how many bit fields were compared."""
    lay = t.layout(type_name)
    buf = b"".join(t.read(a, lay.size) for a in addresses)
    scalars = _scalars(prog, t, type_name)
    assert len(scalars) > 5
    bitfields = 0
    for m, signed in scalars:
        mask = (1 << (m.bit_size or 8 * m.size)) - 1
        exact = fields.is_signed(m) == signed
        want = [drgn.Object(prog, type_name, address=a).member_(m.name).value_()
                for a in addresses]
        want = [int(w) if exact else int(w) & mask for w in want]
        got = [fields.read_member(m, buf, i * lay.size) for i in range(len(addresses))]
        got = [g if exact else g & mask for g in got]
        assert got == want, (type_name, m)
        if m.size > 8 and not m.bit_size:  # 7.2's 16-byte freelist_counters
            with pytest.raises(TargetError):
                fields.member_values(m, buf, lay.size)
            continue
        arr = fields.member_values(m, buf, lay.size)
        if not exact:
            arr = arr.astype(np.uint64) & np.uint64(mask)
        assert [int(x) for x in arr] == want, (type_name, m)
        # plain C signed types are known signed
        if m.type_name in ("int", "long", "long int", "short", "s32", "s64", "long long"):
            assert exact, m
        bitfields += bool(m.bit_size)
    # the same through a numpy structured array of the whole-word members
    whole = [m.name for m, _ in scalars if not m.bit_size and m.size in (1, 2, 4, 8)]
    records = np.frombuffer(buf, fields.record_dtype(lay, whole))
    for m, _ in scalars:
        if m.size > 8 and not m.bit_size:
            continue
        a = fields.member_values(m, records)
        b = fields.member_values(m, buf, lay.size)
        assert np.array_equal(a, b), m
    return bitfields


def test_task_struct_members_match_drgn(real_kernel):
    prog, t = open_dump(real_kernel)
    tasks = [task.value_() for task in for_each_task(prog)]
    assert len(tasks) > 20
    assert _check(prog, t, "struct task_struct", tasks) > 3


def test_struct_page_members_match_drgn(real_kernel):
    prog, t = open_dump(real_kernel)
    pages = []
    for pgdat in for_each_online_pgdat(prog):
        for zone in pgdat.node_zones:
            if zone.present_pages:
                start = zone.zone_start_pfn.value_()
                pages += [pfn_to_page(prog, pfn).value_() for pfn in range(start, start + 512)]
    _check(prog, t, "struct page", pages)


def test_struct_zone_members_match_drgn(real_kernel):
    prog, t = open_dump(real_kernel)
    zones = [z.address_of_().value_() for p in for_each_online_pgdat(prog)
             for z in p.node_zones]
    _check(prog, t, "struct zone", zones)


def test_slab_bit_fields_match_drgn(real_kernel):
    """SLUB's counters bit fields (inuse:16, objects:15, frozen:1): in struct page on 5.10,
    in struct slab from v5.17 (commit d122019bf061 "mm: Split slab into its own type")."""
    prog, t = open_dump(real_kernel)
    type_name = "struct slab" if t.has_type("struct slab") else "struct page"
    lay = t.layout(type_name)
    if not lay.has("inuse"):
        pytest.skip(f"{type_name} has no SLUB counters bit fields")
    # slabs: each cache's per-node partial lists
    from drgn.helpers.linux.list import list_for_each_entry
    from drgn.helpers.linux.slab import for_each_slab_cache
    member = "slab_list"
    slabs = []
    for cache in for_each_slab_cache(prog):
        try:
            nodes = cache.node
        except AttributeError:
            nodes = [n.node for n in cache.per_node]  # 7.1+: per_node[] of {node, barn}
        for n in nodes[:prog["nr_node_ids"].value_()]:
            if n:
                slabs += [s.value_() for s in list_for_each_entry(
                    type_name, n.partial.address_of_(), member)]
    assert len(slabs) > 10
    assert _check(prog, t, type_name, slabs[:2000]) >= 3


@pytest.mark.parametrize("type_name,path", [
    ("struct zone", "free_area[3].free_list[1]"),
    ("struct zone", "free_area[0].nr_free"),
    ("struct task_struct", "se.group_node"),
    ("struct task_struct", "tasks.prev"),
    ("struct mm_struct", "mm_mt.ma_root"),
    ("struct pglist_data", "node_zones[1].zone_start_pfn"),
])
def test_member_paths_match_drgn_offsetof(real_kernel, type_name, path):
    prog, t = open_dump(real_kernel)
    try:
        want = drgn.offsetof(prog.type(type_name), path)
    except LookupError:
        with pytest.raises(TargetError):
            fields.offsetof(t, type_name, path)
        return
    assert fields.offsetof(t, type_name, path) == want
