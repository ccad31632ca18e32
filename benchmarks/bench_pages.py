"""Benchmark: `pages` (bulk struct page decode + classification) against

1. the naive drgn helper loop: for_each_page() with PageSlab/PageReserved/PageLRU per page,
2. a raw read of the same struct page bytes (the floor: what the bulk decode must read),

on the same dump, measured in one run (ratios, not absolute times).  Targets: at least
50x faster than the naive loop, at most 3x the raw read.

    python3 benchmarks/bench_pages.py [CASE]        (default 6.12-4g: a 4 GiB guest)

The naive loop is timed on a sample of pages (--sample, default 100000 pages spread over
the memmap) and scaled to the whole memmap, so that the benchmark ends in minutes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("case", nargs="?", default="6.12-4g")
    ap.add_argument("--sample", type=int, default=100000,
                    help="pages timed in the naive loop (0: all)")
    args = ap.parse_args()

    import drgn
    from drgn.helpers.linux.mm import PageLRU, PageReserved, PageSlab, pfn_to_page

    from memscope.lab import cases
    from memscope.mm import page as mpage
    from memscope.mm.zone import MM
    from memscope.target.drgn import DrgnTarget, open_core

    snap = cases.snapshot(args.case)
    prog = open_core(snap.vmcore, snap.vmlinux)

    # Warm the page cache of the vmcore file so that every contender reads from memory.
    with open(snap.vmcore, "rb") as f:
        while f.read(1 << 24):
            pass

    # 1. memscope pages (fresh MM: nothing cached), decode + classification + counts.
    t = DrgnTarget(prog)
    t0 = time.perf_counter()
    mm = MM(t)
    rows = mpage.zone_counts(mm)
    t_pages = time.perf_counter() - t0
    pm = mpage.memmap(mm)
    n_valid = int(pm.valid.sum())

    # 2. raw read of the same bytes (same sections, same chunking).
    s = mpage.sections(mm)
    sz = mpage.page_layout(mm).size
    t0 = time.perf_counter()
    total = 0
    for nr in np.flatnonzero(s.present()):
        lo = int(nr) * s.pages_per_section
        hi = min(lo + s.pages_per_section, pm.nr_pages)
        if hi > lo:
            total += len(prog.read(pm.vmemmap + lo * sz, (hi - lo) * sz))
    t_raw = time.perf_counter() - t0
    # the same, kept in one buffer as any decode must (fresh memory: page faults included)
    t0 = time.perf_counter()
    buf = bytearray(pm.nr_pages * sz)
    for nr in np.flatnonzero(s.present()):
        lo = int(nr) * s.pages_per_section
        hi = min(lo + s.pages_per_section, pm.nr_pages)
        if hi > lo:
            buf[lo * sz:hi * sz] = prog.read(pm.vmemmap + lo * sz, (hi - lo) * sz)
    t_raw_buf = time.perf_counter() - t0
    del buf

    # 3. the naive loop over drgn objects.
    valid_pfns = np.flatnonzero(pm.valid)
    if args.sample and args.sample < len(valid_pfns):
        sample = valid_pfns[np.linspace(0, len(valid_pfns) - 1, args.sample).astype(np.int64)]
    else:
        sample = valid_pfns
    counts = {"slab": 0, "reserved": 0, "lru": 0}
    t0 = time.perf_counter()
    for pfn in sample.tolist():
        p = pfn_to_page(prog, pfn)
        if PageSlab(p):
            counts["slab"] += 1
        elif PageReserved(p):
            counts["reserved"] += 1
        elif PageLRU(p):
            counts["lru"] += 1
    t_naive_sample = time.perf_counter() - t0
    t_naive = t_naive_sample * n_valid / len(sample)

    print(f"case {args.case}: {snap.meta['release']}, {n_valid} struct pages "
          f"({total >> 20} MiB of memmap)")
    print(f"  memscope pages (decode + classify) : {t_pages:8.3f} s")
    print(f"  raw read of the struct page bytes  : {t_raw:8.3f} s (chunks discarded)")
    print(f"  raw read into one buffer           : {t_raw_buf:8.3f} s")
    print(f"  naive drgn loop ({len(sample)} pages timed) : {t_naive_sample:8.3f} s "
          f"-> {t_naive:8.1f} s for all pages")
    print(f"  naive / pages = {t_naive / t_pages:8.1f}x   (target >= 50x)")
    print(f"  pages / raw   = {t_pages / t_raw:8.2f}x   (target <= 3x)")
    print(f"  pages / raw into one buffer = {t_pages / t_raw_buf:8.2f}x")
    print(f"  classes: " + ", ".join(f"{c} {sum(r.counts[c] for r in rows)}"
                                     for c in mpage.CLASSES if sum(r.counts[c] for r in rows)))


if __name__ == "__main__":
    main()
