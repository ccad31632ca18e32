"""SLUB on every real lab kernel: /proc/slabinfo byte for byte against the guest's own file,
the true counts of ``slabinfo --walk`` against drgn's helpers, ``slab CACHE``, ``whatis``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from memscope.lab import cases
from memscope.mm import slub
from memscope.mm.context import KernelContext

from kernel_dumps import open_dump

# Every case whose truth has a slabinfo: the real kernels, the named snapshots of one run,
# and whatever slab-specific cases the lab defines (a cache past MAX_PARTIAL_TO_SCAN
# partial slabs, where 6.10+ kernels approximate).
SLAB_CASES = [(c, "") for c in cases.REAL_KERNEL_CASES] + [
    ("6.12-snapshots", "before"), ("6.12-snapshots", "after"), ("6.12-snapshots", "")] + [
    (c, "") for c in cases.CASES if "slab" in c]


def memscope(snap: cases.Snapshot, *args: str, check: bool = True):
    r = subprocess.run([sys.executable, "-m", "memscope.cli", "-c", str(snap.vmcore), "-s",
                        str(snap.vmlinux), *args], capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr
        assert r.stderr == ""
    return r


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
