"""``vtop``: the translation of kernel and user addresses equals drgn's ``follow_phys()``
on the same dump (kernel image, direct map, vmalloc, a process's heap), on every lab
kernel; the steps' entries are the words at the tables' addresses; an unmapped address is
an answer, a bad one a one-line error."""

from __future__ import annotations

import argparse
import json

import drgn
import pytest
from drgn.helpers.linux.mm import follow_phys, for_each_vmap_area

from kernel_dumps import open_dump
from memscope import commands
from memscope.errors import MemscopeError
from memscope.mm.context import KernelContext


def _vtop(t, address, pid=None):
    text, status = commands.execute(KernelContext(t), argparse.Namespace(
        command="vtop", format="json", address=address, pid=pid))
    assert status == 0
    return json.loads(text)


def _tracked(snap) -> int:
    return snap.tracked_as("heap")


def test_kernel_and_user_addresses_translate_as_drgns_follow_phys(real_kernel):
    prog, t = open_dump(real_kernel)
    init_mm = prog["init_mm"].address_of_()
    vmalloc = next(va.va_start.value_() for va in for_each_vmap_area(prog)
                   if va.vm and va.vm.nr_pages.value_() > 0)
    kernel = [prog["linux_banner"].address_of_().value_() + 5,
              prog["init_task"].mm.value_() or prog["init_task"].tasks.next.value_(),
              vmalloc + 0x123]
    for va in kernel:
        got = _vtop(t, hex(va))
        assert got["physical"] == follow_phys(init_mm, va).value_(), hex(va)
        assert [s["level"] for s in got["steps"]][-1] in ("PTE", "PMD", "PUD")
        for s in got["steps"]:
            assert s["entry"] == int.from_bytes(t.read_phys(s["entry_pa"], 8), "little")
    pid = _tracked(real_kernel)
    task = next(tk for tk in drgn.helpers.linux.pid.for_each_task(prog) if tk.pid == pid)
    heap = task.mm.start_brk.value_()
    got = _vtop(t, hex(heap + 0x40), str(pid))
    assert got["physical"] == follow_phys(task.mm, heap + 0x40).value_()
    assert got["page"]["class"] == "anon"


def test_an_unmapped_address_is_an_answer(real_kernel):
    _prog, t = open_dump(real_kernel)
    got = _vtop(t, "0x1000")
    assert got["physical"] is None and got["page"] is None
    # x86_64: the walk stops at an empty entry; arm64: no kernel table for the user half
    assert bool(got["steps"]) == (t.arch == "x86_64")


@pytest.mark.parametrize("address,pid,message", [("zz", None, "not a number"),
                                                 ("0x0149580c4122c200", None, "not a canonical"),
                                                 ("0x10000000000000000", None, "64-bit"),
                                                 ("0x1000", "999999", "no process"),
                                                 ("0x1000", "2", "no address space")])
def test_bad_input_is_one_line(real_kernel, address, pid, message):
    _prog, t = open_dump(real_kernel)
    with pytest.raises(MemscopeError, match=message):
        commands.execute(t, argparse.Namespace(command="vtop", format="table",
                                               address=address, pid=pid))


def test_drgn_api_vtop_is_drgns_follow_phys(real_kernel):
    """memscope.drgn_api.vtop on the Program: for kernel addresses (image, direct map,
    vmalloc), eight pages across the tracked process's heap and four of its stack, and addresses
    nothing maps, ``physical`` is drgn's ``follow_phys()`` (None where it faults), the
    step entries are the words at their physical addresses, and the offset in the page
    or block is the address's."""
    from memscope import drgn_api

    prog, t = open_dump(real_kernel)
    init_mm = prog["init_mm"].address_of_()
    vmalloc = next(va.va_start.value_() for va in for_each_vmap_area(prog)
                   if va.vm and va.vm.nr_pages.value_() > 0)
    pid = _tracked(real_kernel)
    task = next(tk for tk in drgn.helpers.linux.pid.for_each_task(prog) if tk.pid == pid)
    mm = task.mm
    cases = [(init_mm, None, va) for va in (prog["linux_banner"].address_of_().value_(),
                                             prog["init_task"].address_of_().value_() + 8,
                                             vmalloc + 0x10, vmalloc - 0x1000)]
    for lo, hi in ((mm.start_brk.value_(), mm.brk.value_()),
                   (mm.start_stack.value_() & ~0xfff, mm.start_stack.value_() + 0x4000)):
        step = max((hi - lo) // 8, t.page_size) & ~(t.page_size - 1)
        cases += [(mm, pid, va + 0x18) for va in range(lo & ~0xfff, hi, step)]
    cases += [(mm, pid, 0x1000), (mm, pid, mm.start_brk.value_() - 0x100000)]
    mapped = 0
    for owner, p, va in cases:
        got = drgn_api.vtop(prog, va, p)
        try:
            want = follow_phys(owner, va).value_()
        except drgn.FaultError:
            want = None
        assert got.physical == want, (hex(va), p)
        assert got.address == va and got.pid == p
        for s in got.steps:
            assert s.entry == int.from_bytes(t.read_phys(s.entry_pa, 8), "little")
        if want is not None:
            mapped += 1
            assert got.page_size in (t.page_size, 2 << 20, 1 << 30)
            assert got.physical & (got.page_size - 1) == va & (got.page_size - 1)
            assert got.page["pfn"] == want // t.page_size
        else:
            assert got.page is None
    assert mapped >= 6


def test_drgn_api_vtop_refuses_bad_input(real_kernel):
    from memscope import drgn_api
    from memscope.target.base import TargetError

    prog, _t = open_dump(real_kernel)
    for addr, pid, msg in ((0x0149580C4122C200, None, "not a canonical"),
                           (0x1000, 999999, "no process"), (0x1000, 2, "no address space")):
        with pytest.raises(TargetError, match=msg):
            drgn_api.vtop(prog, addr, pid)
