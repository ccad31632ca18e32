"""Mempools (memscope.mm.mempool; ``mempools``, ``mempool``) on every lab kernel.

Answer keys: drgn's reading of the same dump: the block layer's global bio_set
``fs_bio_set`` (its ``bio_pool`` and ``bvec_pool``) must be found, and every pool found
must be a ``mempool_t`` whose fields and element array drgn reads the same."""

from __future__ import annotations

import argparse
import json

import drgn
import pytest

from kernel_dumps import open_dump
from memscope import commands
from memscope.errors import MemscopeError
from memscope.mm import mempool
from memscope.mm.context import KernelContext


def _scan(snap):
    _prog, t = open_dump(snap)
    return mempool.mempools(KernelContext(t))


def test_fs_bio_sets_pools_are_found(real_kernel):
    prog, _t = open_dump(real_kernel)
    scan = _scan(real_kernel)
    by_addr = {p.address: p for p in scan.pools}
    bs = prog["fs_bio_set"]
    for member in ("bio_pool", "bvec_pool"):
        pool = bs.member_(member)
        p = by_addr[pool.address_of_().value_()]
        assert p.found == "global" and p.owner.startswith("fs_bio_set+")
        assert (p.min_nr, p.curr_nr) == (pool.min_nr.value_(), pool.curr_nr.value_())
        cache = drgn.cast("struct kmem_cache *", pool.pool_data)
        assert (p.backing, p.cache, p.element_size) == (
            "slab", cache.name.string_().decode(), cache.object_size.value_())
    assert scan.count("slab") > 0  # mempool_create()d pools live in kmalloc objects


def test_every_pool_found_is_a_mempool_as_drgn_reads_it(real_kernel):
    prog, _t = open_dump(real_kernel)
    scan = _scan(real_kernel)
    callbacks = {prog[n].address_of_().value_() for n in
                 ("mempool_alloc_slab", "mempool_kmalloc", "mempool_alloc_pages")
                 if n in prog}
    for p in scan.pools:
        m = drgn.Object(prog, "mempool_t *", p.address)
        assert m.alloc.value_() in callbacks
        assert (p.min_nr, p.curr_nr) == (m.min_nr.value_(), m.curr_nr.value_())
        assert list(p.elements) == [m.elements[i].value_() for i in range(m.curr_nr)]
        assert all(p.elements)
    assert len(scan.pools) >= 8


def test_bad_input_is_one_line(real_kernel):
    _prog, t = open_dump(real_kernel)
    for arg, msg in (("nosuchsymbol", "no symbol"), ("0x1000", "is not a mempool_t"),
                     ("fs_bio_set", "is not a mempool_t"), ("", "give a mempool_t"),
                     ("0x10000000000000000", "64-bit"),
                     ("fs_bio_set.nosuch", "has no member nosuch")):
        with pytest.raises(MemscopeError, match=msg):
            commands.execute(t, argparse.Namespace(command="mempool", format="table",
                                                   pool=arg))


@pytest.mark.parametrize("how", ["address", "member path"])
def test_one_pool_lists_its_elements(real_kernel, how):
    prog, t = open_dump(real_kernel)
    addr = prog["fs_bio_set"].bio_pool.address_of_().value_()
    text, status = commands.execute(t, argparse.Namespace(
        command="mempool", format="json",
        pool=hex(addr) if how == "address" else "fs_bio_set.bio_pool"))
    got = json.loads(text)
    assert got["address"] == addr
    pool = prog["fs_bio_set"].bio_pool
    assert got["elements"] == [pool.elements[i].value_() for i in range(pool.curr_nr)]
    assert status == 0


def test_drgn_api_mempool_reads_one_pool_as_drgn_does(real_kernel):
    """memscope.drgn_api.mempool on fs_bio_set's two pools and on a pool found in a slab
    object: the counts, backing cache and elements drgn reads in the same mempool_t; an
    address that is no mempool_t is an error."""
    from memscope import drgn_api
    from memscope.target.base import TargetError

    prog, _t = open_dump(real_kernel)
    slab_pool = next(p.address for p in _scan(real_kernel).pools if p.found == "slab")
    addrs = [prog["fs_bio_set"].member_(m).address_of_().value_()
             for m in ("bio_pool", "bvec_pool")] + [slab_pool]
    for addr in addrs:
        p = drgn_api.mempool(prog, addr)
        m = drgn.Object(prog, "mempool_t *", addr)
        assert (p.address, p.min_nr, p.curr_nr) == (addr, m.min_nr.value_(), m.curr_nr.value_())
        assert list(p.elements) == [m.elements[i].value_() for i in range(m.curr_nr)]
        if p.backing == "slab":
            cache = drgn.cast("struct kmem_cache *", m.pool_data)
            assert (p.cache, p.element_size) == (cache.name.string_().decode(),
                                                 cache.object_size.value_())
    assert drgn_api.mempool(prog, addrs[0]).owner.startswith("fs_bio_set+")
    assert drgn_api.mempool(prog, slab_pool).owner == ""
    with pytest.raises(TargetError, match="is not a mempool_t"):
        drgn_api.mempool(prog, prog["fs_bio_set"].address_of_().value_() + 1)


@pytest.mark.parametrize("case", ["5.10", "6.1", "6.12", "7.2"])
def test_the_nvme_disks_pools_are_found(lab_case, case):
    """mixed.sh mounts an ext2 file system on the lab's NVMe disk (block.sh): the disk's
    split bio_set (``gendisk.bio_split``, in ``request_queue`` before 6.?; embedded in a
    kmalloc'd structure) and the NVMe driver's mempools (``struct nvme_dev``'s
    ``mempool_t *`` members, mempool_create_node()d) are found by the slab scan, with the
    fields drgn reads.  The disk is found with drgn's block helpers, its driver data from
    the queue (``queuedata`` is the ``nvme_ns``)."""
    from drgn.helpers.linux.block import disk_name, for_each_disk

    snap = lab_case(case)
    prog, _t = open_dump(snap)
    disk = next(d for d in for_each_disk(prog) if disk_name(d) == b"nvme0n1")
    holder = disk if disk.type_.type.has_member("bio_split") else disk.queue
    want = {holder.bio_split.bio_pool.address_of_().value_()}
    ns = drgn.cast("struct nvme_ns *", disk.queue.queuedata)
    dev = drgn.container_of(ns.ctrl, "struct nvme_dev", "ctrl")
    for m in dev.type_.type.members:
        if m.name and "mempool" in m.name and dev.member_(m.name).value_():
            want.add(dev.member_(m.name).value_())
    assert len(want) >= 2
    by_addr = {p.address: p for p in _scan(snap).pools}
    for addr in want:
        p = by_addr[addr]
        m = drgn.Object(prog, "mempool_t *", addr)
        assert (p.min_nr, p.curr_nr) == (m.min_nr.value_(), m.curr_nr.value_())
        assert p.found == "slab", (hex(addr), p.found, p.owner)
