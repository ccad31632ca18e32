"""memscope.kernel.percpu, cpumask, nodemask and bitops on every lab kernel, against
drgn's per_cpu_ptr, for_each_cpu, for_each_node_state and for_each_set_bit on the same
dump."""

from __future__ import annotations

import drgn
from drgn.helpers.linux.bitops import for_each_set_bit as drgn_for_each_set_bit
from drgn.helpers.linux.cpumask import (cpu_online_mask, cpu_possible_mask,
                                        cpu_present_mask, for_each_cpu,
                                        for_each_possible_cpu)
from drgn.helpers.linux.mmzone import for_each_online_pgdat
from drgn.helpers.linux.nodemask import for_each_node_state
from drgn.helpers.linux.percpu import per_cpu, per_cpu_ptr

from kernel_dumps import open_dump
from memscope.kernel import bitops, cpumask, nodemask, percpu


def test_cpu_masks_match_drgn(real_kernel):
    prog, t = open_dump(real_kernel)
    for mine, theirs in ((cpumask.cpu_possible_mask, cpu_possible_mask),
                         (cpumask.cpu_online_mask, cpu_online_mask),
                         (cpumask.cpu_present_mask, cpu_present_mask)):
        mask = theirs(prog)
        assert mine(t) == mask.value_()
        assert list(cpumask.for_each_cpu(t, mask.value_())) == list(for_each_cpu(mask))
        assert cpumask.cpumask_weight(t, mask.value_()) == len(list(for_each_cpu(mask)))
    assert cpumask.nr_cpu_ids(t) == prog["nr_cpu_ids"].value_()
    # the lab boots every guest with 2 vCPUs (meta "cpus"), both online
    assert list(cpumask.for_each_online_cpu(t)) == list(range(real_kernel.meta["cpus"]))


def test_node_states_match_drgn(real_kernel):
    prog, t = open_dump(real_kernel)
    states = t.enum("enum node_states")
    for name, value in states.items():
        if name == "NR_NODE_STATES":
            continue
        assert list(nodemask.for_each_node_state(t, name)) == \
            list(for_each_node_state(prog, value)), name
    online = list(nodemask.for_each_online_node(t))
    assert online == [p.node_id.value_() for p in for_each_online_pgdat(prog)]
    assert len(online) == real_kernel.meta["numa_nodes"]


def test_per_cpu_ptr_matches_drgn(real_kernel):
    """Every zone's per-CPU page lists and per-CPU stats, and a per-CPU variable."""
    prog, t = open_dump(real_kernel)
    ptrs = []
    for pgdat in for_each_online_pgdat(prog):
        for zone in pgdat.node_zones:
            for member in ("per_cpu_pageset", "per_cpu_zonestats", "pageset"):
                try:
                    ptrs.append(getattr(zone, member))
                except AttributeError:
                    pass
    assert ptrs
    cpus = list(for_each_possible_cpu(prog))
    for ptr in ptrs:
        got = dict(percpu.per_cpu_ptrs(t, ptr.value_()))
        assert list(got) == cpus
        for cpu in cpus:
            want = per_cpu_ptr(ptr, cpu).value_()
            assert percpu.per_cpu_ptr(t, ptr.value_(), cpu) == want == got[cpu]
    for cpu in cpus:
        assert percpu.per_cpu(t, "runqueues", cpu) == \
            per_cpu(prog["runqueues"], cpu).address_of_().value_()
        # and the copy is CPU's own: struct rq.cpu says so
        assert per_cpu(prog["runqueues"], cpu).cpu.value_() == cpu


def test_for_each_set_bit_matches_drgn(real_kernel):
    """Bitmaps of the dump: the possible-CPU mask and the pageblock flags of the first
    present memory sections (mem_section usage), against drgn's for_each_set_bit."""
    prog, t = open_dump(real_kernel)
    bitmaps = [(cpu_possible_mask(prog).bits, prog["nr_cpu_ids"].value_())]
    root = prog["mem_section"][0]
    for i in range(64):  # RAM may start above 0 (arm64 virt: at 1 GiB, section 8)
        usage = root[i].usage
        if usage and len(bitmaps) < 5:
            # 4 words: what 64 pageblocks of 4 bits (8 in 7.2) of a section surely hold
            n = 4 * 8 * drgn.sizeof(usage.pageblock_flags.type_.type)
            bitmaps.append((usage.pageblock_flags, n))
    assert len(bitmaps) > 1
    for bm, n in bitmaps:
        addr = bm.address_ if bm.address_ is not None else bm.value_()
        raw = t.read(addr, (n + 63) // 64 * 8)
        want = list(drgn_for_each_set_bit(bm, n))
        assert list(bitops.for_each_set_bit(raw, n)) == want
        assert list(bitops.for_each_set_bit(bitops.read_bitmap(t, addr, n), n)) == want
        assert bitops.bitmap_weight(raw, n) == len(want)
        clear = list(bitops.for_each_clear_bit(raw, n))
        assert sorted(clear + want) == list(range(n))
        assert all(bitops.test_bit(b, raw) for b in want)
        assert bitops.find_first_bit(raw, n) == (want[0] if want else n)


def test_percpu_counter_sum_matches_drgn(real_kernel):
    """percpu_counter_sum() on the kernel's percpu_counters (vm_committed_as, nr_files)
    equals drgn's; the per-CPU parts are not all zero on these guests, so the sum is not
    just ``count``."""
    from drgn.helpers.linux.percpu import percpu_counter_sum as drgn_sum

    prog, t = open_dump(real_kernel)
    parts = 0
    for name in ("vm_committed_as", "nr_files"):
        fbc = prog[name]
        assert percpu.percpu_counter_sum(t, fbc.address_) == drgn_sum(fbc.address_of_())
        parts += drgn_sum(fbc.address_of_()) != fbc.count.value_()
    assert parts, "every per-CPU part was zero: the test would not see them summed"
