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
