"""A kernel early in boot, or one built without VMCOREINFO: what VMCOREINFO would say is
taken from the debug info, and checked against the memory it describes.

On every lab dump (where VMCOREINFO exists) the derived SECTION_SIZE_BITS equals the
kernel's own VMCOREINFO value, the check against mem_section[] accepts it, and rejects
the values one above and one below (so the check can fail)."""

from __future__ import annotations

import pytest

from kernel_dumps import open_dump
from memscope.mm import page
from memscope.mm.context import KernelContext
from memscope.target.base import TargetError


def _sections_args(t, ctx, bits):
    """(roots address, nr sections, sections per root, mem_section layout) for BITS, as
    page._read_sections computes them."""
    vi = t.vmcoreinfo_fields
    ms = t.layout("struct mem_section")
    roots = int(vi["SYMBOL(mem_section)"], 16) if "SYMBOL(mem_section)" in vi \
        else t.read_u64(t.symbol("mem_section"))
    pps = 1 << (bits - (t.page_size.bit_length() - 1))
    nr = (page.max_pfn(ctx) + pps - 1) // pps
    return roots, nr, t.page_size // ms.size, ms


def test_section_size_bits_from_debuginfo_equals_vmcoreinfo_and_the_memory_check_fails_off_by_one(
        real_kernel):
    _prog, t = open_dump(real_kernel)
    ctx = KernelContext(t)
    want = int(t.vmcoreinfo_fields["NUMBER(SECTION_SIZE_BITS)"])
    got = page.section_size_bits_from_debuginfo(t)
    assert got == want
    page._check_sections(t, *_sections_args(t, ctx, got), got)
    for wrong in (got - 1, got + 1):
        with pytest.raises(TargetError, match="disagrees with mem_section"):
            page._check_sections(t, *_sections_args(t, ctx, wrong), wrong)
