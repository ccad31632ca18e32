"""``vtop [--pid PID] ADDR``: a virtual address translated step by step, like crash's
``vtop``, and what the physical page is.

JSON output::

    {"address": int, "pid": int | null, "pgd": int,      # pgd: physical address
     "steps": [{"level": "PGD" | "P4D" | "PUD" | "PMD" | "PTE", "table": int,
                "index": int, "entry_pa": int, "entry": int | null}],
     "physical": int | null, "page_size": int | null,   # null: not mapped
     "page": {"pfn": int, "class": str, "flags": [str]} | null}

Without ``--pid`` the kernel's own tables (``init_mm.pgd``) translate ADDR; with it the
process's (``mm->pgd``).  On arm64 the upper half always goes through the kernel's tables
(TTBR1, ``swapper_pg_dir``) and the lower half through the process's (TTBR0); without a
process the lower half maps nothing (``steps`` empty).  An address the tables do not map is an answer (exit 0), not an
error.
"""

from __future__ import annotations

from tabulate import tabulate

from ..kernel.addr import kernel_layout, virt_to_phys
from ..kernel.pgtable import kernel_paging, phys_reader, walk_steps
from ..mm import page as _page
from . import CommandError, Result, command, parse_number


def _args(p) -> None:
    p.add_argument("address", help="the virtual address (hex with 0x, or decimal)")
    p.add_argument("--pid", help="translate in this process's address space")


@command("vtop", "translate a virtual address through the page tables, level by level",
         arguments=_args)
def vtop(ctx, args) -> Result:
    t = ctx.t
    va = parse_number("vtop", "address", args.address)
    paging = kernel_paging(t)
    # x86_64: bits 63..va_bits-1 copy the top VA bit; arm64: bits 63..va_bits select the
    # table (TTBR0 all zeros, TTBR1 all ones)
    first = paging.va_bits - 1 if paging.arch == "x86_64" else paging.va_bits
    if va >> first not in (0, (1 << (64 - first)) - 1):
        raise CommandError(f"vtop: {va:#x} is not a canonical address (this kernel "
                           f"translates {paging.va_bits}-bit virtual addresses)")
    lay = kernel_layout(t)
    pid = None
    mm_pgd = t.layout("struct mm_struct").offset("pgd")
    kernel_pgd = t.read_u64(t.symbol("init_mm") + mm_pgd)
    if getattr(args, "pid", None) is not None:
        from .process import process

        task = process(ctx, "vtop", args.pid)
        pid = task.tgid
        pgd_va = t.read_u64(task.mm + mm_pgd)
    else:
        pgd_va = kernel_pgd
    if t.arch == "aarch64" and va >> 63:
        pgd_va = kernel_pgd  # TTBR1: the kernel's half, whatever the process
    if t.arch == "aarch64" and not va >> 63 and pgd_va == kernel_pgd:
        # TTBR0 of the kernel's own init_mm maps nothing: no user half without a process
        steps, res, pgd = [], None, virt_to_phys(lay, pgd_va)
    else:
        pgd = virt_to_phys(lay, pgd_va)
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
    data = {"address": va, "pid": pid, "pgd": pgd,
            "steps": [s.__dict__ for s in steps], "physical": phys, "page_size": size,
            "page": page}

    def table() -> str:
        rows = [[s.level, f"{s.table:#x}", s.index, f"{s.entry_pa:#x}",
                 "unreadable" if s.entry is None else f"{s.entry:#018x}"] for s in steps]
        out = f"VIRTUAL {va:#x}" + (f" (pid {pid})" if pid is not None else " (kernel)")
        out += f"  pgd at physical {pgd:#x}\n"
        out += tabulate(rows, headers=["level", "table", "index", "entry at", "entry"]) + "\n"
        if phys is None:
            hint = " (a user address: give --pid)" if not steps and pid is None else ""
            return out + f"not mapped{hint}\n"
        out += f"PHYSICAL {phys:#x} ({size // 1024} KiB {'page' if size == t.page_size else 'block'})\n"
        flags = f" (flags: {' '.join(page['flags'])})" if page["flags"] else ""
        return out + f"PAGE pfn {page['pfn']:#x}: {page['class']}{flags}\n"

    return Result(data, table)
