"""Benchmark (issue 10): ``meminfo --format proc`` against drgn computing the same lines on
the same dump, in the same run.

Baselines:

1. **drgn's helpers**: the kernel's formulas written with drgn's helpers and Objects
   (``global_node_page_state``, ``vm_memory_committed``, ``low_wmark_pages``, the
   block-device inodes walked with ``list_for_each_entry`` for Buffers, the hstates...):
   :func:`benchmarks.drgn_meminfo.drgn_meminfo`, the answer key tests/test_meminfo.py
   checks memscope against.  It computes every line but the constants, VmallocTotal,
   the THP and zswap lines; each of its lines is checked equal to memscope's in the run.
2. drgn's crash-compatible ``kmem -i`` (crash's own summary, a dozen numbers, not the
   file), the issue's "nearest equivalent" of a crash user.

Two memscope subjects: the whole command through the CLI's code path (fresh target and
context) and the work alone (``meminfo()`` + formatting, the context kept and refreshed).
Each contender takes milliseconds: the best of 3 x REPEAT interleaved rounds is kept.

    python3 -m benchmarks.bench_meminfo [CASE] [--repeat N]
"""

from __future__ import annotations

from . import Row, interleaved, run_command, simple_main, warm_file
from .drgn_meminfo import drgn_meminfo


def proc_values(text: str) -> dict[str, int]:
    """/proc/meminfo's text as line name -> the number printed."""
    return {name: int(rest.split()[0]) for name, _, rest in
            (line.partition(":") for line in text.splitlines())}


def run(snap, repeat: int = 7, prog=None, log=print) -> list[Row]:
    from memscope.mm import meminfo as mmeminfo
    from memscope.mm.context import KernelContext
    from memscope.target.drgn import DrgnTarget

    from .bench_buddy import crash, has_crash_kmem

    warm_file(snap.vmcore)
    ctx = KernelContext(DrgnTarget(prog))
    ours = proc_values(run_command(prog, "meminfo", "proc"))
    theirs = drgn_meminfo(prog)
    differ = {n: (ours.get(n), v) for n, v in theirs.items() if ours.get(n) != v}
    note = (f"{len(theirs)} of {len(ours)} lines computed by drgn: "
            + ("same answer" if not differ else f"ANSWERS DIFFER {differ}"))

    def work():
        ctx.refresh()
        return mmeminfo.format_meminfo(mmeminfo.meminfo(ctx))

    contenders = {"cli": lambda: run_command(prog, "meminfo", "proc"), "work": work,
                  "drgn": lambda: drgn_meminfo(prog)}
    kmem = has_crash_kmem()
    if kmem:
        contenders["kmem"] = lambda: crash(prog, "kmem -i")
    best = interleaved(contenders, 3 * repeat)  # milliseconds each: more rounds, same cost
    log(f"  meminfo: memscope {best['cli'] * 1e3:.1f} ms (work {best['work'] * 1e3:.1f} ms), "
        f"drgn helpers {best['drgn'] * 1e3:.1f} ms"
        + (f", kmem -i {best['kmem'] * 1e3:.1f} ms" if kmem else "") + f"; {note}")
    rows = [Row("meminfo", "meminfo -f proc (whole command)", best["cli"], "drgn helpers, "
                "the same lines", best["drgn"], "", note),
            Row("meminfo", "the work alone (context kept)", best["work"], "drgn helpers, "
                "the same lines", best["drgn"], "", note)]
    if kmem:
        rows.append(Row("meminfo", "meminfo -f proc (whole command)", best["cli"],
                        "drgn crash 'kmem -i'", best["kmem"], "",
                        "crash's own summary, not the file"))
    return rows


def main() -> None:
    simple_main(__doc__, run, 7)


if __name__ == "__main__":
    main()
