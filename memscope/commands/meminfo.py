"""meminfo: /proc/meminfo, every line, from the kernel's own counters (memscope.mm.meminfo).

JSON (``--format json``): ``{"page_size": int, "lines": [{"name", "value", "unit",
"width", "source"}], "problems": [problem]}``; see memscope.mm.meminfo for what each line
reads.  ``--format proc`` prints the file byte for byte as the kernel would; the table
adds where each number comes from.  Exit status 1 when the walk of the block-device
inodes (Buffers) found corruption (the problems are listed; the line counts what was
walked).
"""

from __future__ import annotations

import dataclasses

from tabulate import tabulate

from ..mm import meminfo as mmeminfo
from . import Result, command


@command("meminfo", "/proc/meminfo: every line, with the kernel's arithmetic",
         formats=("table", "json", "proc"))
def meminfo(ctx, args) -> Result:
    info = mmeminfo.meminfo(ctx)

    def table() -> str:
        out = tabulate([[line.name, line.value, line.unit, line.source] for line in info.lines],
                       headers=["line", "value", "unit", "from"],
                       colalign=("left", "right", "left", "left"))
        for p in info.problems:
            out += f"\nproblem: {p}"
        return out + "\n"

    return Result(dataclasses.asdict(info), table, lambda: mmeminfo.format_meminfo(info),
                  1 if info.problems else 0)
