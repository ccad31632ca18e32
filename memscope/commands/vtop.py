"""``vtop [--pid PID] ADDR``: a virtual address translated step by step, like crash's
``vtop``, and what the physical page is.

JSON output::

    {"address": int, "pid": int | null, "pgd": int,      # pgd: physical address
     "steps": [{"level": "PGD" | "P4D" | "PUD" | "PMD" | "PTE", "table": int,
                "index": int, "entry_pa": int, "entry": int | null}],
     "physical": int | null, "page_size": int | null,   # null: not mapped
     "page": {"pfn": int, "class": str, "flags": [str]} | null}

What is translated, and how: memscope/mm/vtop.py.  An address the tables do not map is
an answer (exit 0), not an error.
"""

from __future__ import annotations

from tabulate import tabulate

from ..mm import vtop as _vtop
from ..target.base import TargetError
from . import CommandError, Result, command, parse_number


def _args(p) -> None:
    p.add_argument("address", help="the virtual address (hex with 0x, or decimal)")
    p.add_argument("--pid", help="translate in this process's address space")


@command("vtop", "translate a virtual address through the page tables, level by level",
         arguments=_args)
def vtop(ctx, args) -> Result:
    t = ctx.t
    va = parse_number("vtop", "address", args.address)
    task = None
    if getattr(args, "pid", None) is not None:
        from .process import process

        task = process(ctx, "vtop", args.pid)
    try:
        r = _vtop.vtop(ctx, va, task)
    except TargetError as e:
        raise CommandError(f"vtop: {e}") from None
    data = {"address": r.address, "pid": r.pid, "pgd": r.pgd,
            "steps": [s.__dict__ for s in r.steps], "physical": r.physical,
            "page_size": r.page_size, "page": r.page}

    def table() -> str:
        rows = [[s.level, f"{s.table:#x}", s.index, f"{s.entry_pa:#x}",
                 "unreadable" if s.entry is None else f"{s.entry:#018x}"] for s in r.steps]
        out = f"VIRTUAL {va:#x}" + (f" (pid {r.pid})" if r.pid is not None else " (kernel)")
        out += f"  pgd at physical {r.pgd:#x}\n"
        out += tabulate(rows, headers=["level", "table", "index", "entry at", "entry"]) + "\n"
        if r.physical is None:
            hint = " (a user address: give --pid)" if not r.steps and r.pid is None else ""
            return out + f"not mapped{hint}\n"
        kind = "page" if r.page_size == t.page_size else "block"
        out += f"PHYSICAL {r.physical:#x} ({r.page_size // 1024} KiB {kind})\n"
        page = r.page
        flags = f" (flags: {' '.join(page['flags'])})" if page["flags"] else ""
        return out + f"PAGE pfn {page['pfn']:#x}: {page['class']}{flags}\n"

    return Result(data, table)
