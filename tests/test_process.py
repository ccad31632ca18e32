"""Processes (memscope.mm.task, memscope.mm.vma; ``ps``, ``maps``) on every lab kernel.

Answer keys: the /proc/PID/maps and /proc/PID/status the guest printed for each process
its workload tracked (heap.sh's awk, a glibc heap and large mmaps); drgn's task helpers
(``for_each_task``, ``task_state_to_char``, ``task_cpu``) for every task."""

from __future__ import annotations

import argparse
import re

import pytest
from drgn.helpers.linux.pid import find_task, for_each_task
from drgn.helpers.linux.sched import task_cpu, task_state_to_char

from kernel_dumps import PatchedTarget, open_dump
from memscope import commands
from memscope.errors import MemscopeError
from memscope.kernel.fields import offsetof
from memscope.mm import task as mtask, vma as mvma
from memscope.mm.context import KernelContext


def _tracked(snap) -> list[int]:
    return sorted(snap.tracked())


def _labelled(snap, label: str) -> int:
    return snap.tracked_as(label)


def test_maps_proc_is_the_guests_file_byte_for_byte(real_kernel):
    _prog, t = open_dump(real_kernel)
    ctx = KernelContext(t)
    pids = _tracked(real_kernel)
    assert pids, "the workload tracks a process"
    for pid in pids:
        args = argparse.Namespace(command="maps", format="proc", pid=str(pid))
        text, status = commands.execute(ctx, args)
        assert status == 0
        assert text == real_kernel.truth_text(f"{pid}/maps"), pid


def test_ps_lists_every_task_as_drgn_reads_it(real_kernel):
    prog, t = open_dump(real_kernel)
    got = {x.task: x for x in mtask.tasks(KernelContext(t), threads=True)}
    want = {tk.value_(): tk for tk in for_each_task(prog)}
    # drgn's for_each_task() leaves out the idle tasks (pid 0, on no list): init_task for
    # CPU 0, each other CPU's runqueues.idle
    from drgn.helpers.linux.cpumask import for_each_possible_cpu
    from drgn.helpers.linux.percpu import per_cpu

    init = prog["init_task"].address_of_().value_()
    idle = {per_cpu(prog["runqueues"], c).idle.value_() for c in for_each_possible_cpu(prog)}
    assert init in idle and len(idle) == len(list(for_each_possible_cpu(prog)))
    assert set(got) == set(want) | idle
    assert all(got[a].pid == 0 and got[a].comm.startswith("swapper/") for a in idle)
    for a, tk in want.items():
        x = got[a]
        assert (x.pid, x.tgid, x.comm, x.state, x.cpu) == (
            tk.pid.value_(), tk.tgid.value_(), tk.comm.string_().decode(),
            task_state_to_char(tk), task_cpu(tk)), x
        assert x.ppid == tk.real_parent.tgid.value_()
        assert x.mm == tk.mm.value_()
    assert len(want) > 20


def _status_files(snap) -> dict[int, str]:
    """Every "<pid>/status" of the snapshot's truth: the guest's /proc/PID/status of each
    pid its /proc listed (the lab prints one for every pid), or of the tracked ones."""
    truth = snap.vmcore.parent / "truth"
    return {int(d.name): snap.truth_text(f"{d.name}/status") for d in truth.iterdir()
            if d.is_dir() and d.name.isdigit() and (d / "status").is_file()}


#: A workqueue worker's name as /proc prints it: its id, then "+desc" or "-desc", the
#: workqueue of the last work item it ran (kernel/workqueue.c wq_worker_comm())
_KWORKER = re.compile(r"(kworker/(?:u?\d+:\d+H?|R-.*?|dying))(?:[+-].*)?$")
#: The guest's truth printer (memscope/lab/guest's snapshot script): it reads /proc while
#: it runs and keeps running (and faulting) until the freeze
_READER = "snapshot"


def test_ps_is_every_status_file_the_guest_printed(real_kernel):
    """Each pid of the guest's /proc at the freeze is a process in ``ps`` with the Name,
    State letter, Tgid and PPid of its status file and, for a process with an address
    space, VmRSS, RssAnon, RssFile and RssShmem; a kernel thread has no Vm lines and no
    mm.  Fails if the truth holds no status file at all.

    Three things change between the guest's read and the freeze, and only those are let
    differ: a kworker's "+desc"/"-desc" (the workqueue of the last item it ran; its
    kworker/ID must be the same), the state and RSS of the truth printer itself
    (running while it reads its own status, faulting in more of itself afterwards), and
    the state of a kernel thread that was running ("R") when its status was read, which
    must then be the dump's state as drgn reads it."""
    import json

    prog, t = open_dump(real_kernel)
    ctx = KernelContext(t)
    kb = t.page_size // 1024
    status = _status_files(real_kernel)
    assert status, "the snapshot's truth has no <pid>/status file"
    text, code = commands.execute(ctx, argparse.Namespace(command="ps", format="json",
                                                          threads=False))
    assert code == 0
    ps = {r["pid"]: r for r in json.loads(text)}
    missing = sorted(set(status) - set(ps))
    assert not missing, f"in the guest's /proc but not in ps: {missing}"
    for pid, st in status.items():
        line = dict(re.findall(r"^(\w+):\t(.*)$", st, re.M))
        x = ps[pid]
        if x["name"] != line["Name"]:
            got, want = _KWORKER.match(x["name"]), _KWORKER.match(line["Name"])
            assert got and want and got.group(1) == want.group(1), (pid, x["name"], line)
        assert (x["tgid"], x["ppid"]) == (int(line["Tgid"]), int(line["PPid"])), pid
        if "VmRSS" not in line:
            assert not x["mm"] and x["rss_pages"] == {}, pid  # a kernel thread
        if line["Name"] == _READER:
            continue
        if "VmRSS" not in line:
            # A kernel thread the reader's own work woke (rcu_sched / rcu_preempt, seen on
            # 5.10 and 6.1: "R" in the status read, idle at the freeze) may have gone back
            # to sleep before the freeze; then ps must say what the dump holds (drgn).
            if x["state"] != line["State"][0]:
                assert line["State"][0] == "R", (pid, line["Name"], x["state"], line["State"])
                task = find_task(prog, pid)
                assert x["state"] == task_state_to_char(task), pid
            continue
        assert x["state"] == line["State"][0], pid
        r = x["rss_pages"]
        assert {k: int(line[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile",
                                                      "RssShmem")} == {
            "VmRSS": (r["file"] + r["anon"] + r["shmem"]) * kb, "RssAnon": r["anon"] * kb,
            "RssFile": r["file"] * kb, "RssShmem": r["shmem"] * kb}, pid


@pytest.mark.parametrize("command", ["maps", "smaps_rollup"])
@pytest.mark.parametrize("pid,message", [("2", "has no address space"),
                                         ("987654", "no process with pid 987654"),
                                         ("x1", "is not a number")])
def test_a_command_on_no_process_is_one_line(real_kernel, command, pid, message):
    _prog, t = open_dump(real_kernel)
    with pytest.raises(MemscopeError, match=message) as e:
        commands.execute(t, argparse.Namespace(command=command, format="proc", pid=pid))
    assert "\n" not in str(e.value)


def test_a_cycle_in_the_vma_chain_is_a_problem_not_a_hang(real_kernel):
    prog, real = open_dump(real_kernel)
    pid = _tracked(real_kernel)[0]
    x = mtask.find_task(KernelContext(real), pid)
    good = mvma.vmas(KernelContext(real), x)
    t = PatchedTarget(real)
    if real.layout("struct mm_struct").has("mm_mt"):
        pytest.skip("maple trees: corrupted copies in tests/test_kernel_corrupt.py")
    # v5.10: the 4th VMA's vm_next points back at the 2nd
    t.patch(good[3].vma + offsetof(real, "struct vm_area_struct", "vm_next"), good[1].vma)
    problems = []
    got = mvma.vmas(KernelContext(t), mtask.find_task(KernelContext(t), pid), problems)
    assert [p.kind for p in problems] == ["cycle"]
    assert [v.start for v in got] == [v.start for v in good[:4]]


def test_maps_rss_totals_are_smaps_rollups_lines(real_kernel):
    _prog, t = open_dump(real_kernel)
    ctx = KernelContext(t)
    for pid in _tracked(real_kernel):
        roll = {k: int(v) for k, v in re.findall(r"^(\w+):\s+(\d+) kB$",
                                                 real_kernel.truth_text(f"{pid}/smaps_rollup"),
                                                 re.M)}
        text, status = commands.execute(ctx, argparse.Namespace(
            command="maps", format="json", pid=str(pid), rss=True))
        import json
        total = json.loads(text)["total"]
        assert status == 0
        assert total == {"Rss": roll["Rss"], "Anonymous": roll["Anonymous"],
                         "Swap": roll["Swap"]}
        if pid == _labelled(real_kernel, "heap"):
            assert total["Rss"] > 70000  # heap.sh's awk: ~75 MB of strings


def test_walk_range_finds_what_drgns_follow_phys_finds(real_kernel):
    """Every page of the tracked process's largest VMA: a leaf of walk_range() where drgn's
    follow_phys() translates it (to the same physical address), none where it faults;
    except PROT_NONE entries (_PAGE_PROTNONE without _PAGE_PRESENT: NUMA balancing's
    hinting entries on the NUMA guest), which map their page for the kernel's
    pte_present() and smaps, but which drgn's follow_phys() treats as unmapped: for those
    the page must be the one the entry's inverted pfn names (L1TF), read here by hand."""
    import drgn
    from drgn.helpers.linux.mm import follow_phys

    from memscope.kernel import addr as kaddr
    from memscope.kernel.pgtable import kernel_paging, walk_range

    prog, t = open_dump(real_kernel)
    ctx = KernelContext(t)
    x = mtask.find_task(ctx, _tracked(real_kernel)[0])
    big = max((v for v in mvma.vmas(ctx, x) if v.vma), key=lambda v: v.end - v.start)
    pgd = kaddr.virt_to_phys(kaddr.kernel_layout(t),
                             t.read_u64(x.mm + t.layout("struct mm_struct").offset("pgd")))
    leaves = {}
    for lf in walk_range(kernel_paging(t), pgd, big.start, big.end,
                         lambda pa, n: t.read_phys(pa, n)):
        for off in range(0, lf.size, t.page_size):  # a 2 MiB block: each of its pages
            leaves[lf.va + off] = (lf, off)
    mm = drgn.Object(prog, "struct mm_struct *", x.mm)
    step = t.page_size
    assert len(leaves) > 300
    for va in range(big.start, big.end, step):
        try:
            want = follow_phys(mm, va).value_()
        except drgn.FaultError:
            want = None
        leaf, off = leaves.get(va, (None, 0))
        got = leaf.pa + off if leaf is not None and leaf.present else None
        if want is None and leaf is not None and t.arch == "x86_64" \
                and leaf.entry & 0x101 == 0x100:  # PROT_NONE
            mask = 0x000FFFFFFFFFF000 & ~(leaf.size - 1)
            assert got == ((~leaf.entry) & mask) + off, hex(va)
            continue
        assert got == want, hex(va)


def test_heap_walk_tiles_the_brk_heap_and_finds_the_workloads_allocations(real_kernel):
    """heap.sh's awk made 300000 small strings (each its own malloc from the brk heap) and
    three strings of 20, 16 and 12 MB (each a malloc mmap: over the 128 KiB threshold)."""
    from memscope.mm import heap as mheap

    _prog, t = open_dump(real_kernel)
    ctx = KernelContext(t)
    x = mtask.find_task(ctx, _labelled(real_kernel, "heap"))
    h = mheap.heap(ctx, x)
    assert h.error is None and h.tiles
    assert int(h.address[0]) == h.first_chunk and int(h.address[-1] + h.size[-1]) == h.brk
    assert (h.address[1:] == h.address[:-1] + h.size[:-1]).all()
    assert h.count("in use") >= 300000
    for n in (20_000_000, 16_000_000, 12_000_000):
        assert sum(1 for _, _, c in h.mmapped if n < c <= n + 2 * t.page_size) == 1, n
    assert h.tcache_problems == []


def _rollups_equal_the_truth(ctx, snap, pids) -> dict[int, dict[str, int]]:
    """smaps_rollup PID --format proc is the guest's file byte for byte for each of PIDS,
    and its JSON's kB are the file's lines: {pid: the file's lines}."""
    import json

    out = {}
    for pid in pids:
        want = snap.truth_text(f"{pid}/smaps_rollup")
        text, status = commands.execute(ctx, argparse.Namespace(
            command="smaps_rollup", format="proc", pid=str(pid)))
        assert status == 0
        assert text == want, pid
        js, _ = commands.execute(ctx, argparse.Namespace(
            command="smaps_rollup", format="json", pid=str(pid)))
        assert json.loads(js)["kb"] == _rollup_lines(want)
        out[pid] = _rollup_lines(want)
    return out


def _rollup_lines(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"^(\w+):\s+(\d+) kB$", text, re.M)}


def test_smaps_rollup_proc_is_the_guests_file_byte_for_byte(real_kernel):
    """Every tracked process's smaps_rollup, header and every line of this kernel's
    version (Pss_Dirty from 6.0, KSM from 6.6), equals the file the guest printed; the
    JSON holds the same numbers.

    (The 6.12-arm64 case built before 2026-11-29 fails here: its truth's Pss, Pss_Dirty
    and Pss_Shmem are 5 kB above the dump's, every other line equal.  Exactly that
    difference is what one 64 KiB fault-around window (16 pages) of busybox's text at
    mapcount 3 instead of 4 gives: the truth-printing shell mapped more of the shared
    text after the guest printed the file and before the freeze.)"""
    import json

    _prog, t = open_dump(real_kernel)
    ctx = KernelContext(t)
    pids = _tracked(real_kernel)
    assert pids, "the workload tracks a process"
    _rollups_equal_the_truth(ctx, real_kernel, pids)


def test_smaps_rollup_names_the_line_a_swap_entry_leaves_unknown(real_kernel):
    """A present PTE of the tracked process turned into a swap-like entry (non-present,
    not empty): SwapPss would need the swap map, so --format proc refuses in one line
    naming the line, and the JSON says why; Rss loses that page and Swap gains it."""
    from memscope.kernel import addr as kaddr
    from memscope.kernel.pgtable import kernel_paging, phys_reader, walk_steps

    _prog, real = open_dump(real_kernel)
    pid = _tracked(real_kernel)[0]
    x = mtask.find_task(KernelContext(real), pid)
    stack = next(v for v in mvma.vmas(KernelContext(real), x) if v.name == "[stack]")
    lay = kaddr.kernel_layout(real)
    pgd = kaddr.virt_to_phys(lay, real.read_u64(x.mm + real.layout("struct mm_struct")
                                                .offset("pgd")))
    steps, res = walk_steps(kernel_paging(real), pgd, stack.end - real.page_size,
                            phys_reader(real))
    assert res is not None and steps[-1].level == "PTE"
    t = PatchedTarget(real)
    t.patch(kaddr.phys_to_virt(lay, steps[-1].entry_pa), 0x3e00)  # not present, not none
    ctx = KernelContext(t)
    with pytest.raises(MemscopeError, match="smaps_rollup's Swap.* line cannot be "
                                            "reproduced") as e:
        commands.execute(ctx, argparse.Namespace(command="smaps_rollup", format="proc",
                                                 pid=str(pid)))
    assert "\n" not in str(e.value)
    import json

    js, _ = commands.execute(ctx, argparse.Namespace(command="smaps_rollup", format="json",
                                                     pid=str(pid)))
    got = json.loads(js)
    want = _rollup_lines(real_kernel.truth_text(f"{pid}/smaps_rollup"))
    assert set(got["unknown"]) == {"Swap", "SwapPss"}
    assert got["kb"]["Swap"] == real.page_size // 1024
    assert got["kb"]["Rss"] == want["Rss"] - real.page_size // 1024


def test_heap_grows_by_the_chunks_the_process_allocated_between_snapshots(lab_case):
    """msproc heap (snapshots.sh) held N chunks at "before" and N + 500 at "after", as its
    note in each snapshot's truth says (it never frees); the chunk walk of each snapshot
    tiles the heap, and the chunks in use grew by exactly the difference."""
    from memscope.mm import heap as mheap

    counts = {}
    for name in ("before", "after"):
        snap = lab_case("6.12-snapshots", name)
        pid = _labelled(snap, "chunks")
        held = int(snap.truth_text(f"{pid}/note").split()[1])
        _prog, t = open_dump(snap)
        h = mheap.heap(KernelContext(t), mtask.find_task(KernelContext(t), pid))
        assert h.error is None and h.tiles, name
        assert h.count("in use") >= held, name
        counts[name] = (held, h.count("in use"))
    (n0, used0), (n1, used1) = counts["before"], counts["after"]
    assert n1 - n0 == 500
    assert used1 - used0 == n1 - n0


def _swap_case(lab_case):
    """6.12-swap (memscope/lab/workloads/swap.sh): a shell whose 6 MB string went to swap
    before it forked two tracked children and 64 others (swap counts of 67: the swap
    map's continuation pages), then a 2 MB string swapped out after the forks (its own:
    counts of 1); the shell and the two children tracked."""
    snap = lab_case("6.12-swap")
    assert sorted(snap.tracked().values()) == ["swap-child1", "swap-child2", "swap-parent"]
    return snap


def test_smaps_rollup_with_swap_is_the_guests_file_byte_for_byte(lab_case):
    """Swap entries decoded, SwapPss from each entry's swp_swapcount(): every tracked
    process's smaps_rollup equals the guest's, and the truth really has swap, shared
    (SwapPss below Swap), and in the parent more swap than in its children (the string
    swapped out after the forks, counts of 1)."""
    import json

    snap = _swap_case(lab_case)
    _prog, t = open_dump(snap)
    ctx = KernelContext(t)
    lines = _rollups_equal_the_truth(ctx, snap, _tracked(snap))
    want = {snap.tracked()[pid]: v for pid, v in lines.items()}
    assert all(w["Swap"] > 0 for w in want.values()), want
    assert all(w["SwapPss"] < w["Swap"] for w in want.values()), want
    assert want["swap-parent"]["Swap"] > want["swap-child1"]["Swap"]


def test_maps_rss_swap_totals_are_smaps_rollups_lines_with_swap(lab_case):
    """maps --rss on the swap case: the per-VMA swap column adds up to smaps_rollup's Swap
    line (and Rss, Anonymous to theirs) in the guest's truth."""
    import json

    snap = _swap_case(lab_case)
    _prog, t = open_dump(snap)
    ctx = KernelContext(t)
    for pid in _tracked(snap):
        roll = _rollup_lines(snap.truth_text(f"{pid}/smaps_rollup"))
        text, status = commands.execute(ctx, argparse.Namespace(
            command="maps", format="json", pid=str(pid), rss=True))
        assert status == 0
        got = json.loads(text)
        assert got["total"] == {"Rss": roll["Rss"], "Anonymous": roll["Anonymous"],
                                "Swap": roll["Swap"]}, pid
        assert sum(r["swap_kb"] for r in got["vmas"]) == roll["Swap"] > 0, pid


def _drgn_swp_swapcount(prog, si, offset: int) -> int:
    """swp_swapcount() (v6.12 mm/swapfile.c) with drgn's objects and helpers: the swap
    map's byte less SWAP_HAS_CACHE; with COUNT_CONTINUED, the digits at the same offset
    of the continuation pages on the lru of vmalloc_to_page(swap_map + offset)."""
    from drgn import container_of
    from drgn.helpers.linux.mm import page_to_virt, vmalloc_to_page

    count = prog.read(si.swap_map.value_() + offset, 1)[0] & ~0x40
    if not count & 0x80:
        return count
    count &= ~0x80
    n = 0x3E + 1  # SWAP_MAP_MAX + 1
    page = vmalloc_to_page(si.swap_map + offset)
    while True:
        page = container_of(page.lru.next, "struct page", "lru")
        digit = prog.read(page_to_virt(page).value_() + (offset & 4095), 1)[0]
        count += (digit & ~0x80) * n
        n *= 0x7F + 1  # SWAP_CONT_MAX + 1
        if not digit & 0x80:
            return count


def test_swap_map_in_use_is_the_guests_swap_used(lab_case):
    """The dump's swap map, read by drgn (swap_info[0]->swap_map), has as many slots in
    use as the guest's /proc/meminfo says (SwapTotal - SwapFree), and memscope's swap
    counts of the tracked processes' entries are swp_swapcount() on drgn's objects:
    counts of 1 and counts past SWAP_MAP_MAX (62, continued in a continuation page)."""
    from memscope.mm import swap as mswap

    snap = _swap_case(lab_case)
    prog, t = open_dump(snap)
    mi = {k: int(v) for k, v in re.findall(r"^(\w+):\s+(\d+) kB$", snap.truth_text("meminfo"),
                                            re.M)}
    assert prog["nr_swapfiles"].value_() == 1
    si = prog["swap_info"][0]
    smap = prog.read(si.swap_map.value_(), si.max.value_())
    assert sum(1 for b in smap[1:] if b) == (mi["SwapTotal"] - mi["SwapFree"]) // 4
    ctx = KernelContext(t)
    seen = set()
    for pid in _tracked(snap):
        w = mvma.walk_vmas(ctx, mtask.find_task(ctx, pid))
        gone = w.all.take(~w.all.present)
        se = mswap.decode(ctx, gone.entry)
        assert se.swap.all() and (se.type == 0).all()
        counts, problem = mswap.swap_counts(ctx, se)
        assert problem is None
        assert counts.tolist() == [_drgn_swp_swapcount(prog, si, o)
                                   for o in se.offset.tolist()], pid
        seen.update(counts.tolist())
    assert 1 in seen and max(seen) > 0x3E, sorted(seen)


def _drgn_heap_ptes(prog, task) -> dict[int, int]:
    """{page address: PTE} of every page of TASK's brk heap, by an x86_64 walk with drgn's
    reads (arch/x86/include/asm/pgtable_64_types.h: 9 bits a level, 5 levels when
    ``__pgtable_l5_enabled``; a PTE is 0 when the page was never mapped; _PAGE_PRESENT is
    bit 0); a missing table gives 0."""
    from drgn.helpers.linux.mm import phys_to_virt

    levels = 5 if prog["__pgtable_l5_enabled"].value_() else 4
    mm = task.mm
    start, brk = mm.start_brk.value_(), mm.brk.value_()
    pgd = mm.pgd.value_()
    mask = ((1 << 52) - 1) & ~0xFFF
    out = {}
    for va in range(start, brk, 4096):
        table, entry = pgd, 0
        for shift in (48, 39, 30, 21, 12)[5 - levels:]:
            entry = prog.read_u64(table + 8 * ((va >> shift) & 511))
            if shift == 12 or not entry & 1:
                break
            table = phys_to_virt(prog, entry & mask).value_()
        out[va] = entry if shift == 12 else 0
    return out


def test_heap_names_the_pages_it_cannot_read_swapped_out_or_not_mapped(lab_case):
    """heap on the swap case says which of the heap's pages are swapped out (a non-zero,
    non-present PTE, read by drgn) and which were never mapped (no PTE), range by range,
    and a walk that stops at a swapped-out header says so; the case has both kinds."""
    from drgn.helpers.linux.pid import find_task

    from memscope.mm import heap as mheap

    snap = _swap_case(lab_case)
    prog, t = open_dump(snap)
    ctx = KernelContext(t)
    seen = set()
    for pid in _tracked(snap):
        h = mheap.heap(ctx, mtask.find_task(ctx, pid))
        got = {p: why for lo, hi, why in h.missing for p in range(lo, hi, 4096)}
        want = {}
        for va, pte in _drgn_heap_ptes(prog, find_task(prog, pid)).items():
            if not pte & 1:
                want[va] = "swapped out" if pte else "not mapped"
        assert got == want, pid
        seen.update(want.values())
        if h.error and "cannot be read" in h.error:
            at = int(h.error.split(" at ")[1].split()[0], 16)
            assert h.error.endswith(f"its page is {want[at - at % 4096]}"), h.error
    assert seen == {"swapped out", "not mapped"}
