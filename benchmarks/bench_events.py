"""Benchmark (issue 13): trace events per second, three ways, on a lab case with tracing
(default "6.12-trace-busy": 1.15M events in the final dump, 1.1M in the window; or
"6.12-trace", 5,000; its final dump's ring buffer and the guest's trace file hold the
same events):

1. decode: every event read out of the dump's ring buffer and every field of every event
   decoded with the kernel's own event descriptions, into columns (``read_trace`` +
   ``from_ring`` + ``RingEvents.decode_all``: what the models consume); "objects" adds
   building every :class:`Event` (what a caller iterating them pays);
2. text: guests' own ``trace`` files parsed (``parse_lines``), in lines per second: those
   of the TEXT cases (default the four "*-trace" cases, 20k lines of four kernels' formats;
   6.12-trace-busy keeps none: 150 MB of text does not cross the lab's console) REPEATED
   until there are at least --text-lines (default 1M) lines, the token memo emptied before
   each run; "text+fields" then builds every Event and splits its fields (what a caller
   iterating them pays: the parse leaves them to first use), and "text baseline" is the
   line-by-line parse (``_parse_slow``: a regex match, the fields and an Event per line,
   the parser before the columnar one) in the same run, for the ratio;
3. replay: the buddy and slab models applying the window between the "before" and
   "after" snapshots (the models' work only: the states are read and the window's events
   decoded once, outside).

Best of REPEAT, in CPU time (time.process_time: the machine is shared, wall time measures the
others too).  Targets (issue 13, on a window of 1M events): decode >= 1M events/s, text
>= 500k lines/s, replay >= 1M events/s.

    python3 -m benchmarks.bench_events [CASE | DIR] [--text CASE,...] [--text-lines N]
                                       [--text-only] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main() -> int:
    from memscope.events import from_ring
    from memscope.events import text as text_module
    from memscope.events.text import parse_lines
    from memscope.kernel import ftrace
    from memscope.lab import cases
    from memscope.mm.context import KernelContext
    from memscope.model.buddy import BuddyModel
    from memscope.model.replay import buddy_rules, buddy_state, window_events
    from memscope.model.slab import SlabModel, allocated_objects
    from memscope.target.drgn import DrgnTarget, open_core

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", nargs="?", default="6.12-trace-busy",
                    help="a lab case with tracing, or a lab run's directory")
    ap.add_argument("--text", default="5.10-trace,6.1-trace,6.12-trace,7.2-trace",
                    help="lab cases whose guest trace file is parsed (comma separated)")
    ap.add_argument("--text-lines", type=int, default=1_000_000,
                    help="repeat the cases' trace text to at least this many lines")
    ap.add_argument("--text-only", action="store_true", help="only the text benchmark")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    one = [x for c in args.text.split(",")
           for x in cases.snapshot(c).truth_text("trace/label").splitlines()]
    lines = one * max(1, -(-args.text_lines // len(one)))

    def parse() -> None:
        text_module._TOKENS.clear()  # no help from an earlier run
        parse_lines(lines)

    def parse_all() -> None:
        text_module._TOKENS.clear()
        for _ in parse_lines(lines).events:
            pass

    def parse_baseline() -> None:
        text_module._TOKENS.clear()
        text_module._parse_slow(lines)

    text = _best(parse, args.repeat)
    text_all = _best(parse_all, args.repeat)
    text_base = _best(parse_baseline, min(args.repeat, 3))
    text_report = (
        f"text    {len(lines) / text:12,.0f} lines/s   ({text * 1000:.1f} ms; {len(lines)} "
        f"lines: {len(one)} of {args.text} x{len(lines) // len(one)})\n"
        f"text+fields {len(lines) / text_all:8,.0f} lines/s   ({text_all * 1000:.1f} ms; "
        "and every Event built with its fields)\n"
        f"text baseline {len(lines) / text_base:6,.0f} lines/s   ({text_base * 1000:.1f} ms; "
        f"line by line: parse {text_base / text:.1f}x faster, "
        f"with fields {text_base / text_all:.1f}x)")
    if args.text_only:
        print(text_report)
        return 0

    def snapshot(name: str = ""):
        """A lab case by name, or a lab run's directory."""
        d = Path(args.case)
        if not d.is_dir():
            return cases.snapshot(args.case, name)
        meta = json.loads((d / "meta.json").read_text())
        sub = d / name if name else d
        return cases.Snapshot(sub, sub / "vmcore", Path(meta["vmlinux"]), meta)

    final = snapshot()
    t = DrgnTarget(open_core(final.vmcore, final.vmlinux))
    tb = ftrace.read_trace(t)
    n = len(tb.events)
    decode = _best(lambda: from_ring(ftrace.read_trace(t)).decode_all(), args.repeat)
    objects = _best(lambda: list(from_ring(ftrace.read_trace(t))), min(args.repeat, 2))

    a_snap, b_snap = snapshot("before"), snapshot("after")
    a = KernelContext(DrgnTarget(open_core(a_snap.vmcore, a_snap.vmlinux)))
    b = KernelContext(DrgnTarget(open_core(b_snap.vmcore, b_snap.vmlinux)))
    events, _ = window_events(a, b)
    events.decode_all()
    state, rules = buddy_state(a), buddy_rules(a)
    live, pool = allocated_objects(a)

    def models() -> None:
        m = BuddyModel(rules, state.zones, state.free, state.pcp, state.pageblock)
        m.apply_all(events)
        s = SlabModel(live, pool, 2 * t.page_size + 1)
        s.apply_all(events)

    rep = _best(models, args.repeat)
    print(f"case {args.case}: {n} events in the final dump, {len(events)} events in the "
          f"before..after window")
    print(f"decode  {n / decode:12,.0f} events/s  ({decode * 1000:.1f} ms; into columns)")
    print(f"objects {n / objects:12,.0f} events/s  ({objects * 1000:.1f} ms; decode and an "
          "Event for each)")
    print(text_report)
    print(f"replay  {len(events) / rep:12,.0f} events/s  ({rep * 1000:.1f} ms; buddy + slab "
          "models, states read outside)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
