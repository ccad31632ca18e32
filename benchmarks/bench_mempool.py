"""Benchmark (issue 10): ``mempools`` against ``slabinfo --walk`` on the same dump, in the
same run (target: mempools within 2x of slabinfo --walk).

``mempools`` finds every pool by scanning the kernel's data and every slab (the SLUB
walk's slabs, from the decoded memmap) for mempool's callbacks, so it does the walk
``slabinfo --walk`` does and reads every slab's memory on top.  Both run as whole
commands through the CLI's code path (fresh target and context, rendered as tables);
the scan alone (``mempools()`` on a fresh context) is reported beside the whole command.

    python3 -m benchmarks.bench_mempool [CASE] [--repeat N]
"""

from __future__ import annotations

from . import Row, interleaved, run_command, simple_main, warm_file


def run(snap, repeat: int = 5, prog=None, log=print) -> list[Row]:
    from memscope.mm import mempool as mmempool, slub
    from memscope.mm.context import KernelContext
    from memscope.target.drgn import DrgnTarget

    warm_file(snap.vmcore)

    def scan():
        return mmempool.mempools(KernelContext(DrgnTarget(prog)))

    def walk():
        return slub.slab_usage(KernelContext(DrgnTarget(prog)))

    found = scan()
    best = interleaved({
        "mempools": lambda: run_command(prog, "mempools", "table"),
        "slabinfo": lambda: run_command(prog, "slabinfo", "table", walk=True),
        "scan": scan, "walk": walk}, repeat)
    w = slub.slab_walker(KernelContext(DrgnTarget(prog)))
    nbytes = int((w.npages * prog["PAGE_SIZE"].value_()).sum())
    note = (f"{len(found.pools)} pools ({found.count('global')} global, "
            f"{found.count('slab')} in slabs); {len(w.base)} slabs, {nbytes >> 20} MiB scanned")
    log(f"  mempools {best['mempools'] * 1e3:.1f} ms (scan {best['scan'] * 1e3:.1f} ms), "
        f"slabinfo --walk {best['slabinfo'] * 1e3:.1f} ms (walk {best['walk'] * 1e3:.1f} ms); "
        + note)
    return [Row("mempools", "mempools (whole command)", best["mempools"],
                "slabinfo --walk (whole command)", best["slabinfo"], "<= 2", note),
            Row("mempools", "mempools() alone (fresh context)", best["scan"],
                "slab_usage() alone (fresh context)", best["walk"], "<= 2", "")]


def main() -> None:
    simple_main(__doc__, run, 5)


if __name__ == "__main__":
    main()
