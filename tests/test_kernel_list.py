"""memscope.kernel.list on every lab kernel, against drgn's own list helpers on the same
dump: the task list, the slab cache list, every buddy free list, the module list and
every chain of the inode hash table (an hlist)."""

from __future__ import annotations

import drgn
from drgn.helpers.linux.list import (hlist_for_each_entry, list_for_each,
                                     list_for_each_entry)
from drgn.helpers.linux.mmzone import for_each_online_pgdat

from kernel_dumps import open_dump
from memscope.kernel import list as klist


def _walk_entries(t, type_name, head, member, bound, where):
    problems = []
    got = list(klist.list_for_each_entry(t, type_name, head, member, bound=bound,
                                         problems=problems, where=where))
    return got, problems


def test_task_list_matches_drgn(real_kernel):
    prog, t = open_dump(real_kernel)
    obj = prog["init_task"].tasks.address_of_()
    head = obj.value_()
    want = [p.value_() for p in list_for_each_entry("struct task_struct", obj, "tasks")]
    # nr_threads counts every thread; the task list holds the thread-group leaders.
    bound = prog["nr_threads"].value_()
    got, problems = _walk_entries(t, "struct task_struct", head, "tasks", bound, "tasks")
    assert problems == []
    assert got == want
    assert len(got) > 20


def test_task_list_bound_is_exact(real_kernel):
    prog, t = open_dump(real_kernel)
    head = prog["init_task"].tasks.address_of_().value_()
    n = sum(1 for _ in list_for_each(prog["init_task"].tasks.address_of_()))
    got, problems = _walk_entries(t, "struct task_struct", head, "tasks", n, "tasks")
    assert len(got) == n and problems == []
    got, problems = _walk_entries(t, "struct task_struct", head, "tasks", n - 1, "tasks")
    assert len(got) == n - 1
    assert [p.kind for p in problems] == ["too_long"]


def test_slab_caches_list_matches_drgn(real_kernel):
    prog, t = open_dump(real_kernel)
    obj = prog["slab_caches"].address_of_()
    head = obj.value_()
    want = [s.value_() for s in list_for_each_entry("struct kmem_cache", obj, "list")]
    got, problems = _walk_entries(t, "struct kmem_cache", head, "list", 1 << 16, "slab_caches")
    assert problems == [] and got == want and len(got) > 50


def test_module_list_matches_drgn(real_kernel):
    prog, t = open_dump(real_kernel)
    obj = prog["modules"].address_of_()
    head = obj.value_()
    want = [m.value_() for m in list_for_each_entry("struct module", obj, "list")]
    got, problems = _walk_entries(t, "struct module", head, "list", 1 << 12, "modules")
    assert problems == [] and got == want
    assert len(got) >= 1  # the lab loads qemu_fw_cfg


def test_every_free_list_matches_drgn(real_kernel):
    prog, t = open_dump(real_kernel)
    entries = lists = nr_free = 0
    for pgdat in for_each_online_pgdat(prog):
        for zone in pgdat.node_zones:
            if not zone.present_pages:
                continue  # an empty zone's free lists are never initialised
            for order, area in enumerate(zone.free_area):
                bound = (zone.spanned_pages.value_() >> order) + 1
                nr_free += area.nr_free.value_()
                for mt, fl in enumerate(area.free_list):
                    head = fl.address_of_()
                    want = [e.value_() for e in list_for_each(head)]
                    problems = []
                    got = list(klist.list_for_each(t, head.value_(), bound=bound,
                                                   problems=problems))
                    assert problems == [], (order, mt)
                    assert got == want, (order, mt)
                    entries += len(got)
                    lists += 1
    # every free block is on one list: the lists hold sum(nr_free) blocks (the lab keeps
    # only dumps whose nr_free agree with the guest's /proc/buddyinfo)
    assert entries == nr_free > 0 and lists > 50


def test_inode_hash_chains_match_drgn(real_kernel):
    """Every chain of the inode hash table (fs/inode.c: inode_hashtable, 1 << i_hash_shift
    hlist heads linked through inode.i_hash)."""
    prog, t = open_dump(real_kernel)
    table = prog["inode_hashtable"]
    size = 1 << prog["i_hash_shift"].value_()
    bound = 1 << 20  # no chain is longer than the inodes of a 512 MiB-1 GiB guest
    raw = t.read(table.value_(), 8 * size)
    chains = inodes = 0
    for i in range(size):
        if not int.from_bytes(raw[8 * i:8 * i + 8], "little"):
            continue
        head = table[i].address_of_()
        want = [x.value_() for x in hlist_for_each_entry("struct inode", head, "i_hash")]
        problems = []
        got = list(klist.hlist_for_each_entry(t, "struct inode", head.value_(), "i_hash",
                                               bound=bound, problems=problems))
        assert problems == [] and got == want, i
        chains += 1
        inodes += len(got)
    assert chains >= 1 and inodes >= chains  # (tmpfs and proc inodes are not hashed)


def test_superblock_inodes_and_dentry_aliases_match_drgn(real_kernel):
    """super_blocks (struct super_block.s_list), each one's inodes (s_inodes, linked
    through inode.i_sb_list) and each inode's dentries (the hlist inode.i_dentry, linked
    through dentry.d_u.d_alias)."""
    prog, t = open_dump(real_kernel)
    sbs = prog["super_blocks"].address_of_()
    want_sbs = list(list_for_each_entry("struct super_block", sbs, "s_list"))
    got_sbs, problems = _walk_entries(t, "struct super_block", sbs.value_(), "s_list",
                                      1 << 12, "super_blocks")
    assert problems == [] and got_sbs == [s.value_() for s in want_sbs]
    # d_alias: in the named union d_u to 6.x (whose type Target.layout() cannot name: it
    # has none), in an unnamed one in 7.x.
    member = "d_alias" if t.layout("struct dentry").has("d_alias") else "d_u.d_alias"
    alias = drgn.offsetof(prog.type("struct dentry"), member)
    inodes = aliases = 0
    for sb in want_sbs:
        head = sb.s_inodes.address_of_()
        want = list(list_for_each_entry("struct inode", head, "i_sb_list"))
        got, problems = _walk_entries(t, "struct inode", head.value_(), "i_sb_list",
                                      1 << 20, "s_inodes")
        assert problems == [] and got == [i.value_() for i in want]
        for inode in want:
            h = inode.i_dentry.address_of_()
            w = [d.value_() for d in hlist_for_each_entry("struct dentry", h, member)]
            problems = []
            g = [n - alias for n in klist.hlist_for_each(t, h.value_(), bound=1 << 20,
                                                         problems=problems)]
            assert problems == [] and g == w, hex(inode.value_())
            aliases += len(g)
        inodes += len(got)
    assert inodes > 1000 and aliases > 1000


def test_empty_lists(real_kernel):
    prog, t = open_dump(real_kernel)
    # an empty list: a free list the workload leaves empty, found through drgn
    for pgdat in for_each_online_pgdat(prog):
        for zone in pgdat.node_zones:
            if not zone.present_pages:
                continue
            for area in zone.free_area:
                for fl in area.free_list:
                    empty = fl.next.value_() == fl.address_of_().value_()
                    assert klist.list_empty(t, fl.address_of_().value_()) == empty


def test_pid_hlists_match_drgn(real_kernel):
    """Each struct pid's tasks[type] hlists (kernel/pid.c), linked through
    task_struct.pid_links[type]: init_struct_pid's session and process group hold every
    kernel thread, each task's own pid its task (an indexed member path)."""
    prog, t = open_dump(real_kernel)
    from drgn.helpers.linux.pid import for_each_task
    pids = {prog["init_struct_pid"].address_of_().value_(): prog["init_struct_pid"].address_of_()}
    for task in for_each_task(prog):
        pids.setdefault(task.thread_pid.value_(), task.thread_pid)
    nodes = 0
    for pid in pids.values():
        for typ in range(len(pid.tasks)):
            head = pid.tasks[typ].address_of_()
            want = [x.value_() for x in hlist_for_each_entry("struct task_struct", head,
                                                             f"pid_links[{typ}]")]
            problems = []
            got = list(klist.hlist_for_each_entry(t, "struct task_struct", head.value_(),
                                                   f"pid_links[{typ}]", bound=1 << 22,
                                                   problems=problems))
            assert problems == [] and got == want
            nodes += len(got)
    assert nodes > 50
