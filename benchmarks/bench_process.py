"""Benchmark (issues 10 and 11): the vmalloc and process commands against drgn on the same
dump, in the same run.

- ``maps PID --rss`` for every process against drgn walking the same page tables with
  ``follow_phys()`` per page of every VMA (issue 11's target: at least 50x faster), and
  ``smaps_rollup PID`` (the same walk plus every mapped page's struct page) against the
  same baseline;
- ``vmallocinfo`` against drgn's nearest equivalent: ``for_each_vmap_area()`` with each
  caller looked up through ``prog.symbol()`` (what drgn's contrib vmallocinfo does);
- ``ps`` against drgn's ``for_each_task()`` with ``task_state_to_char()``, ``task_cpu()``
  and the RSS counters read per task.

Each subject is the whole command through the CLI's code path (fresh target and context,
one command per process); the work alone (the mm function on each process, context kept,
the process list made beforehand as the drgn baseline's is) is reported beside it.

    python3 -m benchmarks.bench_process [CASE] [--repeat N]
"""

from __future__ import annotations

from . import Row, best_of, run_command, simple_main, warm_file


def _processes(prog):
    from drgn.helpers.linux.pid import for_each_task

    return [t for t in for_each_task(prog) if t.mm and t.pid == t.tgid]


def run(snap, repeat: int = 5, prog=None, log=print) -> list[Row]:
    import drgn
    from drgn.helpers.linux.mm import follow_phys, for_each_vmap_area
    from drgn.helpers.linux.pid import for_each_task
    from drgn.helpers.linux.sched import task_cpu, task_state_to_char

    from memscope.mm import smaps as msmaps, task as mtask, vma as mvma, vmalloc as mvmalloc
    from memscope.mm.context import KernelContext
    from memscope.target.drgn import DrgnTarget

    warm_file(snap.vmcore)
    procs = _processes(prog)
    pids = [int(t.pid) for t in procs]

    def rss_cli():
        for pid in pids:
            run_command(prog, "maps", "table", pid=str(pid), rss=True)

    ctx = KernelContext(DrgnTarget(prog))

    # the work is given the processes, as the drgn baseline is (both lists are made
    # outside the timings)
    xs = [x for x in mtask.tasks(ctx) if x.mm]

    def rss_work():
        ctx.refresh()
        for x in xs:
            mvma.vma_rss(ctx, x)

    def rollup_cli():
        for pid in pids:
            run_command(prog, "smaps_rollup", "proc", pid=str(pid))

    def rollup_work():
        ctx.refresh()
        for x in xs:
            msmaps.smaps_rollup(ctx, x)

    page = prog["PAGE_SIZE"].value_()

    def rss_drgn():
        resident = 0
        for t in procs:
            mm = t.mm
            vma_type = prog.type("struct vm_area_struct")
            vmas = []
            if hasattr(mm, "mm_mt"):
                from drgn.helpers.linux.mapletree import mt_for_each
                vmas = [drgn.Object(prog, "struct vm_area_struct *", e.value_())
                        for _, _, e in mt_for_each(mm.mm_mt.address_of_())]
            else:
                v = mm.mmap
                while v:
                    vmas.append(v)
                    v = v.vm_next
            del vma_type
            for v in vmas:
                for va in range(v.vm_start.value_(), v.vm_end.value_(), page):
                    try:
                        follow_phys(mm, va)
                        resident += 1
                    except drgn.FaultError:
                        pass
        return resident

    def vmallocinfo_cli():
        run_command(prog, "vmallocinfo", "proc")

    def vmallocinfo_work():
        ctx.refresh()
        mvmalloc.format_vmallocinfo(mvmalloc.vmallocinfo(ctx))

    def vmallocinfo_drgn():
        lines = []
        for va in for_each_vmap_area(prog):
            vm = va.vm
            if not vm:
                continue
            try:
                sym = prog.symbol(vm.caller.value_())
                caller = f"{sym.name}+{vm.caller.value_() - sym.address:#x}/{sym.size:#x}"
            except LookupError:
                caller = hex(vm.caller.value_())
            lines.append(f"{vm.addr.value_():#x} {vm.size.value_()} {caller} "
                         f"pages={vm.nr_pages.value_()}")
        return lines

    def ps_cli():
        run_command(prog, "ps", "table")

    def ps_drgn():
        out = []
        for t in for_each_task(prog):
            rss = 0
            if t.mm:
                stat = t.mm.rss_stat
                for i in range(4):
                    c = stat[i] if stat.type_.kind == drgn.TypeKind.ARRAY else stat.count[i]
                    rss += (c.count if hasattr(c, "count") else c.counter).value_()
            out.append((t.pid.value_(), t.comm.string_(), task_state_to_char(t),
                        task_cpu(t), rss))
        return out

    contenders = [rss_cli, rss_work, rollup_cli, rollup_work, vmallocinfo_cli,
                  vmallocinfo_work, ps_cli]
    best = {f.__name__: min(best_of(f, 1) for _ in range(repeat)) for f in contenders}
    log("  drgn baselines (the page walk: best of two, it is slow) ...")
    t_rss = best_of(rss_drgn, min(2, repeat))
    t_vm = min(best_of(vmallocinfo_drgn, 1) for _ in range(repeat))
    t_ps = min(best_of(ps_drgn, 1) for _ in range(repeat))
    note = f"{len(pids)} processes"
    return [
        Row("maps --rss", "memscope maps PID --rss, every process", best["rss_cli"],
            "drgn follow_phys() per page of every VMA", t_rss, "<= 0.02", note),
        Row("maps --rss", "the work alone (vma_rss, context kept)", best["rss_work"],
            "drgn follow_phys() per page of every VMA", t_rss, "<= 0.02", note),
        Row("smaps_rollup", "memscope smaps_rollup PID -f proc, every process",
            best["rollup_cli"], "drgn follow_phys() per page of every VMA", t_rss, "", note),
        Row("smaps_rollup", "the work alone (smaps_rollup, context kept)",
            best["rollup_work"], "drgn follow_phys() per page of every VMA", t_rss, "", note),
        Row("vmallocinfo", "memscope vmallocinfo -f proc", best["vmallocinfo_cli"],
            "drgn for_each_vmap_area + prog.symbol per caller", t_vm, ""),
        Row("vmallocinfo", "the work alone (context kept)", best["vmallocinfo_work"],
            "drgn for_each_vmap_area + prog.symbol per caller", t_vm, ""),
        Row("ps", "memscope ps", best["ps_cli"],
            "drgn for_each_task + state, cpu, rss counters", t_ps, ""),
    ]


def main() -> None:
    simple_main(__doc__, run, 5)


if __name__ == "__main__":
    main()
