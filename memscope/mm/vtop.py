"""A virtual address translated through the page tables, level by level, as crash's
``vtop`` shows it, and what the physical page is.

Which tables: without a process the kernel's (``init_mm.pgd``), with one its own
(``mm->pgd``).  On arm64 the upper half always goes through the kernel's tables (TTBR1,
``swapper_pg_dir``) and the lower half through the process's (TTBR0); without a process
the lower half maps nothing (no steps).  The walk itself is
:func:`memscope.kernel.pgtable.walk_steps` (x86_64 4/5 levels, arm64 4K granule with
39/48/52-bit VA); the page's class and flags come from :func:`memscope.mm.page.page_records`.
"""

from __future__ import annotations

import dataclasses

from ..kernel.addr import kernel_layout, virt_to_phys
from ..kernel.pgtable import Step, kernel_paging, phys_reader, walk_steps
from ..target.base import TargetError
from . import page as _page
from .context import KernelContext
from .task import Task

__all__ = ("Translation", "vtop")


@dataclasses.dataclass(frozen=True)
class Translation:
    """VA's translation: ``address`` the virtual address; ``pid`` the process whose tables
    were used (None: the kernel's); ``pgd`` the physical address of the top table;
    ``steps`` the entries read, top level first (:class:`memscope.kernel.pgtable.Step`:
    level name PGD/P4D/PUD/PMD/PTE, table and entry physical addresses, index, raw entry
    or None when unreadable); ``physical`` the physical address VA maps to and
    ``page_size`` the bytes of the page or block that maps it (both None: not mapped);
    ``page`` ``{"pfn": int, "class": str, "flags": [str]}`` for that page (class "no
    struct page" outside the memmap, e.g. MMIO), None when not mapped."""

    address: int
    pid: int | None
    pgd: int
    steps: list[Step]
    physical: int | None
    page_size: int | None
    page: dict | None


def vtop(ctx: KernelContext, va: int, task: Task | None = None) -> Translation:
    """Translate VA (see the module) in TASK's address space, or the kernel's.

    :param va: a 64-bit virtual address.
    :param task: a process with an address space (``task.mm``), or None.
    :return: the :class:`Translation`; an address the tables do not map is one too
        (``physical`` None), not an error.
    :raises TargetError: VA is not canonical for this kernel's paging (one line), TASK
        has no address space, or the architecture is not walked."""
    t = ctx.t
    paging = kernel_paging(t)
    # x86_64: bits 63..va_bits-1 copy the top VA bit; arm64: bits 63..va_bits select the
    # table (TTBR0 all zeros, TTBR1 all ones)
    first = paging.va_bits - 1 if paging.arch == "x86_64" else paging.va_bits
    if va >> first not in (0, (1 << (64 - first)) - 1):
        raise TargetError(f"{va:#x} is not a canonical address (this kernel translates "
                          f"{paging.va_bits}-bit virtual addresses)")
    if task is not None and not task.mm:
        raise TargetError(f"pid {task.pid} ({task.comm}) has no address space "
                          "(a kernel thread)")
    lay = kernel_layout(t)
    mm_pgd = t.layout("struct mm_struct").offset("pgd")
    kernel_pgd = t.read_u64(t.symbol("init_mm") + mm_pgd)
    pgd_va = t.read_u64(task.mm + mm_pgd) if task is not None else kernel_pgd
    if t.arch == "aarch64" and va >> 63:
        pgd_va = kernel_pgd  # TTBR1: the kernel's half, whatever the process
    pgd = virt_to_phys(lay, pgd_va)
    if t.arch == "aarch64" and not va >> 63 and pgd_va == kernel_pgd:
        # TTBR0 of the kernel's own init_mm maps nothing: no user half without a process
        steps, res = [], None
    else:
        steps, res = walk_steps(paging, pgd, va, phys_reader(t))
    phys = size = page = None
    if res is not None:
        block, size = res
        phys = block + (va & (size - 1))
        pfn = phys // t.page_size
        try:
            rec = _page.page_records(ctx, pfn, pfn + 1)[0]
            page = {"pfn": pfn, "class": rec.cls, "flags": rec.flags}
        except Exception:  # noqa: BLE001 - a pfn outside the memmap (MMIO): no struct page
            page = {"pfn": pfn, "class": "no struct page", "flags": []}
    return Translation(va, task.tgid if task is not None else None, pgd, steps, phys, size,
                       page)
