"""Benchmark (issue 9): every allocated object of every slab cache, memscope against drgn's
``slab_cache_for_each_allocated_object`` (drgn.helpers.linux.slab, which scans every page
of the memmap once per cache), on the same dump and in the same run (target: at least 300x
faster).  Two subjects:

1. the work itself: a fresh context, every slab walked (memscope.mm.slub: the memmap
   decoded once, freelists, per-CPU lists, sheaves, barns) and each cache's allocated
   object addresses computed (``object_addresses`` + ``allocated_mask``);
2. the whole command ``slabinfo --walk`` through the CLI's code path (fresh target and
   context, rendered as a table).

drgn is timed on every cache (``--sample 0``, the issue's measure: 1,229 s for 169k
objects on the 4 GiB guest) or on SAMPLE caches spread over ``slab_caches``, scaled to
all caches (each of its calls scans the whole memmap, so its time per cache hardly
depends on the cache); the table says which.

    python3 -m benchmarks.bench_slub [CASE] [--repeat N] [--sample N]
"""

from __future__ import annotations

import argparse

from . import DEFAULT_CASE, Row, best_of, open_case, render, run_command, timed


def _every_allocated_object(prog) -> int:
    from memscope.mm import slub
    from memscope.mm.context import KernelContext
    from memscope.target.drgn import DrgnTarget

    ctx = KernelContext(DrgnTarget(prog))
    n = 0
    for c in slub.kmem_caches(ctx):
        w = slub.cache_walk(ctx, c)
        addr, _, _ = slub.object_addresses(w)
        n += int(slub.allocated_mask(w, addr).sum())
    return n


def run(snap, repeat: int = 3, prog=None, sample: int = 0, log=print) -> list[Row]:
    from drgn.helpers.linux.slab import for_each_slab_cache, \
        slab_cache_for_each_allocated_object

    work = best_of(lambda: _every_allocated_object(prog), repeat)
    objects = _every_allocated_object(prog)
    whole = best_of(lambda: run_command(prog, "slabinfo", "table", walk=True), repeat)
    caches = list(for_each_slab_cache(prog))
    picked = caches if not sample else caches[::max(1, len(caches) // sample)][:sample]

    def drgn_all() -> int:
        return sum(1 for c in picked for _ in slab_cache_for_each_allocated_object(c, "void"))

    t, theirs = timed(drgn_all)
    scale = len(caches) / len(picked)
    note = (f"drgn on all {len(caches)} caches: {theirs} objects" if scale == 1 else
            f"drgn timed on {len(picked)} of {len(caches)} caches, scaled x{scale:.1f}")
    log(f"memscope: {objects} allocated objects in {len(caches)} caches; {note}")
    return [Row("slub", "every allocated object (work)", work, "drgn iterator, all caches",
                t * scale, "<= 0.00333", note),
            Row("slub", "slabinfo --walk (whole command)", whole, "drgn iterator, all caches",
                t * scale, "<= 0.00333", note)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", nargs="?", default=DEFAULT_CASE)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sample", type=int, default=0,
                    help="caches drgn is timed on, scaled to all (0: every cache)")
    args = ap.parse_args()
    snap, prog = open_case(args.case)
    print(render(run(snap, args.repeat, prog, args.sample)))


if __name__ == "__main__":
    main()
