"""Processes: ``ps`` and ``maps PID``.

JSON output (``--format json``), stable keys:

``ps``: a list, one object per process (``--threads``: per thread), in the kernel's
task-list order after the idle tasks (pid 0: init_task, then each other CPU's);
``comm`` is ``task->comm``, ``name`` what /proc/PID/status prints as ``Name:`` (a
kworker's workqueue, a kernel thread's full name: memscope/mm/task.py)::

    {"pid": int, "tgid": int, "ppid": int, "comm": str, "name": str, "state": str, "cpu": int,
     "kthread": bool, "task": int, "mm": int,
     "rss_pages": {"file": int, "anon": int, "swap": int, "shmem": int}}  # {} without mm

``maps PID``: a list, one object per VMA (/proc/PID/maps' lines)::

    {"start": int, "end": int, "perms": str, "pgoff": int, "dev": [int, int], "ino": int,
     "name": str, "file": bool, "vma": int}

``maps PID --rss``: {"vmas": [{"start", "end", "perms", "name", "rss_kb", "anon_kb",
"swap_kb"}], "total": {"Rss": kB, "Anonymous": kB, "Swap": kB}, "problems": [...]}, the
totals as /proc/PID/smaps_rollup's lines of the same names.

``smaps_rollup PID``: {"start": int, "end": int, "kb": {LINE: kB, ...} (the lines this
kernel prints, in its order), "unknown": {LINE: why}, "problems": [...]}; ``--format
proc`` is the file byte for byte, or a one-line error (exit 2) naming a line the dump
does not determine (memscope/mm/smaps.py says which can be).

``maps`` and ``smaps_rollup`` exit with status 1 when the VMA walk found a problem (a cycle, an unreadable
VMA).
"""

from __future__ import annotations

import dataclasses

from tabulate import tabulate

from ..mm import task as _task, vma as _vma
from ..target.base import TargetError
from . import CommandError, Result, command, parse_pid


def _ps_args(p) -> None:
    p.add_argument("--threads", action="store_true", help="every thread, not only processes")


@command("ps", "every process (or thread): pid, parent, state, CPU, RSS from the mm counters",
         arguments=_ps_args)
def ps(ctx, args) -> Result:
    tasks = _task.tasks(ctx, threads=getattr(args, "threads", False), names=True)
    kb = ctx.t.page_size // 1024
    data = [{"pid": x.pid, "tgid": x.tgid, "ppid": x.ppid, "comm": x.comm, "name": x.name,
             "state": x.state,
             "cpu": x.cpu, "kthread": x.kthread, "task": x.task, "mm": x.mm,
             "rss_pages": x.rss}
            for x in tasks]

    def table() -> str:
        rows = [[x.pid, x.ppid, x.cpu, x.state, f"{x.task:#x}",
                 x.rss_pages * kb if x.mm else "", x.rss.get("anon", 0) * kb if x.mm else "",
                 x.rss.get("file", 0) * kb if x.mm else "",
                 x.rss.get("shmem", 0) * kb if x.mm else "",
                 x.rss.get("swap", 0) * kb if x.mm else "",
                 f"[{x.name}]" if x.kthread else x.name] for x in tasks]
        return tabulate(rows, headers=["pid", "ppid", "cpu", "st", "task", "rss kB",
                                       "anon kB", "file kB", "shmem kB", "swap kB",
                                       "name"]) + "\n"

    return Result(data, table)


def process(ctx, cmd: str, pid_text: str) -> _task.Task:
    """The process (thread-group leader) PID_TEXT names, with an address space.

    :raises CommandError: not a pid, no such process, or a kernel thread (one line)."""
    pid = parse_pid(cmd, pid_text)
    try:
        task = _task.find_task(ctx, pid)
    except _task.NoSuchTask as e:  # other read failures are the command's (a dump hole)
        raise CommandError(f"{cmd}: {e}") from None
    if not task.mm:
        raise CommandError(f"{cmd}: pid {pid} ({task.comm}) has no address space "
                           "(a kernel thread)")
    return task


def _maps_args(p) -> None:
    p.add_argument("pid", help="the process id (its thread-group leader's)")
    p.add_argument("--rss", action="store_true",
                   help="walk the page tables: resident, anonymous and swapped-out kB per "
                        "VMA, with totals (smaps_rollup's Rss, Anonymous, Swap)")


@command("maps", "a process's VMAs, as /proc/PID/maps prints them",
         formats=("table", "json", "proc"), arguments=_maps_args)
def maps(ctx, args) -> Result:
    task = process(ctx, "maps", args.pid)
    problems: list = []
    if getattr(args, "rss", False):
        if args.format == "proc":
            raise CommandError("maps --rss has no /proc format (smaps_rollup's totals are "
                               "in the table and the JSON)")
        return _maps_rss(ctx, task, problems)
    vmas = _vma.vmas(ctx, task, problems)
    data = [{**{k: v for k, v in dataclasses.asdict(m).items()}, "perms": m.perms,
             "dev": list(m.dev)} for m in vmas]

    def table() -> str:
        rows = [[f"{m.start:#x}", f"{m.end:#x}", (m.end - m.start) // 1024, m.perms,
                 f"{m.pgoff:#x}" if m.file else "", f"{m.dev[0]:02x}:{m.dev[1]:02x}"
                 if m.file else "", m.ino or "", m.name] for m in vmas]
        out = tabulate(rows, headers=["start", "end", "kB", "perms", "offset", "dev",
                                      "inode", "name"]) + "\n"
        return out + "".join(f"problem: {p}\n" for p in problems)

    return Result(data, table, lambda: _vma.format_maps(vmas),
                  exit_status=1 if problems else 0)


def _maps_rss(ctx, task, problems) -> Result:
    rows = _vma.vma_rss(ctx, task, problems)
    kb = ctx.t.page_size // 1024
    total = {k: sum(getattr(r, k) for r in rows) * kb for k in ("resident", "anon", "swap")}
    data = {"vmas": [{"start": r.vma.start, "end": r.vma.end, "perms": r.vma.perms,
                      "name": r.vma.name, "rss_kb": r.resident * kb, "anon_kb": r.anon * kb,
                      "swap_kb": r.swap * kb} for r in rows],
            "total": {"Rss": total["resident"], "Anonymous": total["anon"],
                      "Swap": total["swap"]},
            "problems": [p.to_json() for p in problems]}

    def table() -> str:
        body = [[f"{r.vma.start:#x}", f"{r.vma.end:#x}", r.vma.perms, r.resident * kb,
                 r.anon * kb, r.swap * kb, r.vma.name] for r in rows]
        body.append(["total", "", "", total["resident"], total["anon"], total["swap"], ""])
        out = tabulate(body, headers=["start", "end", "perms", "rss kB", "anon kB",
                                      "swap kB", "name"]) + "\n"
        return out + "".join(f"problem: {p}\n" for p in problems)

    return Result(data, table, exit_status=1 if problems else 0)


def _smaps_args(p) -> None:
    p.add_argument("pid", help="the process id (its thread-group leader's)")


@command("smaps_rollup", "a process's /proc/PID/smaps_rollup, from its page tables and "
                         "struct pages", formats=("table", "json", "proc"),
         arguments=_smaps_args)
def smaps_rollup(ctx, args) -> Result:
    from ..mm import smaps as _smaps

    task = process(ctx, "smaps_rollup", args.pid)
    problems: list = []
    r = _smaps.smaps_rollup(ctx, task, problems)
    data = {"start": r.start, "end": r.end, "kb": {k: v >> 10 for k, v in r.values.items()},
            "unknown": r.unknown, "problems": [p.to_json() for p in problems]}

    def table() -> str:
        rows = [[k, v >> 10, "not reproducible: " + r.unknown[k] if k in r.unknown else ""]
                for k, v in r.values.items()]
        out = f"pid {task.tgid} ({task.comm}): {r.start:#x}-{r.end:#x}\n"
        out += tabulate(rows, headers=["line", "kB", ""]) + "\n"
        return out + "".join(f"problem: {p}\n" for p in problems)

    def proc() -> str:
        try:
            return _smaps.format_smaps_rollup(r)
        except _smaps.NotReproducible as e:
            raise CommandError(f"smaps_rollup: {e}") from None

    return Result(data, table, proc, exit_status=1 if problems else 0)


def _heap_args(p) -> None:
    p.add_argument("pid", help="the process id")


@command("heap", "a process's malloc heap: the brk heap walked chunk by chunk, and malloc's "
                 "mmaps", arguments=_heap_args)
def heap(ctx, args) -> Result:
    from ..mm import heap as _heap

    task = process(ctx, "heap", args.pid)
    pid = task.tgid
    h = _heap.heap(ctx, task)
    counts = {s: h.count(s) for s in _heap.STATES}
    data = {"pid": pid, "start_brk": h.start_brk, "brk": h.brk, "first_chunk": h.first_chunk,
            "resident": h.resident, "missing": [list(m) for m in h.missing],
            "chunks": counts, "tiles": h.tiles, "error": h.error,
            "by_size": {str(k): v for k, v in h.by_size.items()},
            "top": int(h.size[-1]) if h.tiles else None,
            "mmapped": [{"start": a, "end": b, "chunk_size": c} for a, b, c in h.mmapped],
            "tcache_problems": h.tcache_problems}

    def table() -> str:
        out = [f"pid {pid} ({task.comm}): brk heap {h.start_brk:#x}-{h.brk:#x} "
               f"({(h.brk - h.start_brk) // 1024} KiB, {h.resident // 1024} KiB resident), "
               f"malloc's chunks from {h.first_chunk:#x}"]
        for lo, hi, why in h.missing:
            out.append(f"{why}: {lo:#x}-{hi:#x}")
        if h.error:
            out.append(f"walk stopped: {h.error}")
        out.append(f"{len(h.address)} chunks: " + ", ".join(f"{n} {s}" for s, n in counts.items())
                   + ("; they tile the heap exactly, the top chunk ends at brk" if h.tiles
                      else "; they do NOT tile the heap"))
        rows = sorted(h.by_size.items(), key=lambda kv: -kv[0] * sum(kv[1].values()))[:20]
        out.append(tabulate([[size, *(d.get(s, 0) for s in _heap.STATES),
                              size * sum(d.values())] for size, d in rows],
                            headers=["chunk size", *_heap.STATES, "bytes"]))
        if h.mmapped:
            out.append("")
            out.append(tabulate([[f"{a:#x}", f"{b:#x}", c] for a, b, c in h.mmapped],
                                headers=["mmap start", "end", "chunk size"]))
        out += [f"problem: {p}" for p in h.tcache_problems]
        return "\n".join(out) + "\n"

    return Result(data, table, exit_status=0 if h.tiles and not h.tcache_problems else 1)
