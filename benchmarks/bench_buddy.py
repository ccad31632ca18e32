"""Benchmark (issue 3): buddyinfo, pagetypeinfo, freelists and check, memscope's drgn
backend against the closest drgn ways of getting the same answer on the same dump:

- drgn's helpers with drgn Objects (for_each_online_pgdat, zone.free_area[o].nr_free,
  list_for_each_entry over free_area[o].free_list[mt], per_cpu_ptr(zone.per_cpu_pageset,
  cpu).lists[i], section usage->pageblock_flags), written here as a drgn user would;
- drgn's crash-compatible ``kmem -f`` (``kmem -F`` for freelists: it also lists every
  free page), run through ``DEFAULT_COMMAND_NAMESPACE.run(prog, "crash kmem -f")``.

memscope runs each command through the CLI's code path (a fresh DrgnTarget and context,
``COMMANDS[name].run(...)``, rendered in the format named in the table).  Each side opens
its Program once, outside the timing; the cold time (open + first run on a new Program)
is reported too.  The answers are compared (column "same answer"); ``kmem -f`` prints
crash's table, not the same records, and is the crash user's way to the same facts.

    python3 -m benchmarks.bench_buddy [CASE] [--repeat N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json

from . import DEFAULT_CASE, Row, best_of, open_case, open_prog, render, run_command, \
    timed, warm_file

# memscope command -> (format timed, crash command)
COMMANDS = {
    "buddyinfo": ("proc", "kmem -f"),
    "pagetypeinfo": ("proc", "kmem -f"),
    "freelists": ("json", "kmem -F"),
    "check": ("json", "kmem -f"),
}
PAGETYPEINFO_CAP = 100000  # mm/vmstat.c pagetypeinfo_showfree_print()


# --- the drgn way ----------------------------------------------------------------------
def _zones(prog):
    from drgn.helpers.linux.mmzone import for_each_online_pgdat

    for pgdat in for_each_online_pgdat(prog):
        nid = pgdat.node_id.value_()
        for zone in pgdat.node_zones:
            if zone.present_pages.value_():
                yield nid, zone


def drgn_buddyinfo(prog) -> str:
    out = []
    for nid, zone in _zones(prog):
        nr = [fa.nr_free.value_() for fa in zone.free_area]
        out.append(f"Node {nid}, zone {zone.name.string_().decode():>8} "
                   + "".join(f"{n:6d} " for n in nr) + "\n")
    return "".join(out)


def drgn_pagetypeinfo(prog) -> list[dict]:
    """Free list entries per (zone, migratetype, order), capped as the kernel caps them,
    and pageblocks per migratetype from the sections' pageblock_flags."""
    from drgn.helpers.linux.list import list_for_each
    from drgn.helpers.linux.mmzone import online_section, pfn_to_section

    nmt = prog["MIGRATE_TYPES"].value_()
    names = [prog["migratetype_names"][i].string_().decode() for i in range(nmt)]
    page_shift = prog["PAGE_SHIFT"].value_()
    nr_orders = prog.type("struct zone").member("free_area").type.length
    pb_order = min(page_shift - 3, nr_orders - 1)  # HUGETLB_PAGE_ORDER (x86_64: 9)
    pps = 1 << (prog["SECTION_SIZE_BITS"].value_() - page_shift)
    nbits = prog["NR_PAGEBLOCK_BITS"].value_()
    mask = (1 << (prog["PB_migrate_end"].value_() + 1)) - 1
    zones = []
    for nid, zone in _zones(prog):
        free = {}
        for mt in range(nmt):
            counts = []
            for fa in zone.free_area:
                n = 0
                for _ in list_for_each(fa.free_list[mt].address_of_()):
                    n += 1
                    if n >= PAGETYPEINFO_CAP:
                        break
                counts.append(n)
            free[names[mt]] = counts
        blocks = [0] * nmt
        start = zone.zone_start_pfn.value_()
        for pfn in range(start, start + zone.spanned_pages.value_(), 1 << pb_order):
            sec = pfn_to_section(prog, pfn)
            if not online_section(sec):
                continue
            bit = ((pfn & (pps - 1)) >> pb_order) * nbits
            word = sec.usage.pageblock_flags[bit // 64].value_()
            blocks[(word >> (bit % 64)) & mask] += 1
        zones.append({"node": nid, "zone": zone.name.string_().decode(), "free": free,
                      "blocks": dict(zip(names, blocks))})
    return zones


def drgn_freelists(prog) -> list[dict]:
    from drgn.helpers.linux.cpumask import for_each_possible_cpu
    from drgn.helpers.linux.list import list_for_each_entry
    from drgn.helpers.linux.mm import page_to_pfn
    from drgn.helpers.linux.percpu import per_cpu_ptr
    from drgn.helpers.linux.vmstat import zone_page_state

    nmt = prog["MIGRATE_TYPES"].value_()
    names = [prog["migratetype_names"][i].string_().decode() for i in range(nmt)]
    cpus = list(for_each_possible_cpu(prog))
    out = []
    for nid, zone in _zones(prog):
        blocks = []
        for o, fa in enumerate(zone.free_area):
            for mt in range(nmt):
                for page in list_for_each_entry("struct page", fa.free_list[mt].address_of_(),
                                                "lru"):
                    blocks.append({"order": o, "migratetype": names[mt],
                                   "pfn": page_to_pfn(page).value_()})
        pcp, counts = [], {}
        for cpu in cpus:
            p = per_cpu_ptr(zone.per_cpu_pageset, cpu)
            counts[str(cpu)] = p.count.value_()
            for i, lst in enumerate(p.lists):
                pcp.append({"cpu": cpu, "index": i, "pfns": [
                    page_to_pfn(pg).value_()
                    for pg in list_for_each_entry("struct page", lst.address_of_(), "lru")]})
        out.append({"node": nid, "zone": zone.name.string_().decode(),
                    "nr_free": [fa.nr_free.value_() for fa in zone.free_area],
                    "blocks": blocks, "pcp": pcp, "pcp_count": counts,
                    "free_pages_counter": zone_page_state(zone, prog["NR_FREE_PAGES"])})
    return out


def drgn_check(prog) -> dict:
    """Walk every free list with drgn's validating list walk (next->prev checks), bounded
    by nr_free; every block PageBuddy with its order; walked counts against nr_free and
    the zone's NR_FREE_PAGES; every per-CPU list walked and its pages against pcp->count
    (what memscope's check does)."""
    from drgn.helpers import ValidationError
    from drgn.helpers.linux.cpumask import for_each_possible_cpu
    from drgn.helpers.linux.list import validate_list_for_each_entry
    from drgn.helpers.linux.percpu import per_cpu_ptr
    from drgn.helpers.linux.vmstat import zone_page_state

    nmt = prog["MIGRATE_TYPES"].value_()
    isolate = prog["MIGRATE_ISOLATE"].value_()
    pgty_buddy = prog["PGTY_buddy"].value_()  # 6.10+ page_type encoding
    cpus = list(for_each_possible_cpu(prog))
    pcptypes = prog["MIGRATE_PCPTYPES"].value_()
    pmd_order = prog["PAGE_SHIFT"].value_() - 3  # HPAGE_PMD_ORDER
    problems, zones = [], []
    for nid, zone in _zones(prog):
        nr_free = [fa.nr_free.value_() for fa in zone.free_area]
        walked = [[0] * nmt for _ in nr_free]
        for o, fa in enumerate(zone.free_area):
            for mt in range(nmt):
                n = 0
                try:
                    for page in validate_list_for_each_entry(
                            "struct page", fa.free_list[mt].address_of_(), "lru"):
                        n += 1
                        if n > nr_free[o]:
                            problems.append(f"order {o} mt {mt}: longer than nr_free")
                            break
                        if page.page_type.value_() >> 24 != pgty_buddy:
                            problems.append(f"{page.value_():#x}: not PageBuddy")
                        elif page.private.value_() != o:
                            problems.append(f"{page.value_():#x}: order {page.private}")
                except ValidationError as e:
                    problems.append(str(e))
                walked[o][mt] = n
        if [sum(w) for w in walked] != nr_free:
            problems.append(f"node {nid}: walked counts differ from nr_free")
        free_pages = sum(walked[o][mt] << o for o in range(len(walked)) for mt in range(nmt)
                         if mt != isolate)
        counter = zone_page_state(zone, prog["NR_FREE_PAGES"])
        if free_pages != counter:
            problems.append(f"node {nid}: {free_pages} free pages, NR_FREE_PAGES {counter}")
        pcp_pages = 0
        for cpu in cpus:  # every per-CPU list walked, its pages against pcp->count
            p = per_cpu_ptr(zone.per_cpu_pageset, cpu)
            count, pages = p.count.value_(), 0
            for i, lst in enumerate(p.lists):
                # pindex_to_order(): 3 lists per order to PAGE_ALLOC_COSTLY_ORDER, then THP
                order = i // pcptypes if i < 4 * pcptypes else pmd_order
                try:
                    for _ in validate_list_for_each_entry("struct page", lst.address_of_(),
                                                          "lru"):
                        pages += 1 << order
                        if pages > count:
                            problems.append(f"cpu {cpu}: pcp list {i} longer than count")
                            break
                except ValidationError as e:
                    problems.append(str(e))
            if pages != count:
                problems.append(f"cpu {cpu}: {pages} pages on the lists, pcp->count {count}")
            pcp_pages += pages
        zones.append({"node": nid, "zone": zone.name.string_().decode(), "nr_free": nr_free,
                      "walked": [sum(w) for w in walked], "free_pages": free_pages,
                      "pcp_pages": pcp_pages})
    return {"ok": not problems, "zones": zones, "problems": problems}


DRGN = {"buddyinfo": drgn_buddyinfo, "pagetypeinfo": drgn_pagetypeinfo,
        "freelists": drgn_freelists, "check": drgn_check}


def crash(prog, command: str) -> str:
    """drgn's crash-compatible command COMMAND ("kmem -f"), its output as text."""
    import drgn.commands._crash  # noqa: F401  (registers the "crash" command)
    from drgn.commands import DEFAULT_COMMAND_NAMESPACE

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        DEFAULT_COMMAND_NAMESPACE.run(prog, f"crash {command}", globals={})
    return buf.getvalue()


def has_crash_kmem() -> bool:
    try:
        import drgn.commands._crash  # noqa: F401
        from drgn.commands._crash.common import CRASH_COMMAND_NAMESPACE
        CRASH_COMMAND_NAMESPACE._commands["kmem"]
        return True
    except (ImportError, KeyError, AttributeError):
        return False


# --- same answer? -------------------------------------------------------------------------
def same_answer(name: str, memscope_out: str, drgn_out) -> bool:
    if name == "buddyinfo":
        return memscope_out == drgn_out
    return _compare(name, memscope_out, drgn_out)


def _compare(name: str, memscope_out: str, drgn_out) -> bool:
    data = json.loads(memscope_out)
    if name == "freelists":
        for m, d in zip(data, drgn_out, strict=True):
            mb = sorted((b["order"], b["migratetype"], b["pfn"]) for b in m["blocks"])
            db = sorted((b["order"], b["migratetype"], b["pfn"]) for b in d["blocks"])
            mp = {(p["cpu"], p["index"]): p["pfns"] for p in m["pcp"]}
            dp = {(p["cpu"], p["index"]): p["pfns"] for p in d["pcp"] if p["pfns"]}
            mp = {k: v for k, v in mp.items() if v}
            if (mb, mp, m["nr_free"], m["pcp_count"]) != (db, dp, d["nr_free"], d["pcp_count"]):
                return False
        return True
    if name == "check":
        return data["ok"] == drgn_out["ok"] and all(
            (m["nr_free"], m["walked"], m["free_pages"], m["pcp_pages"])
            == (d["nr_free"], d["walked"], d["free_pages"], d["pcp_pages"])
            for m, d in zip(data["zones"], drgn_out["zones"], strict=True))
    raise ValueError(name)


def _memscope_pagetypeinfo(prog) -> list[dict]:
    from memscope.mm import buddy
    from memscope.mm.context import KernelContext
    from memscope.target.drgn import DrgnTarget

    info = buddy.pagetypeinfo(KernelContext(DrgnTarget(prog)))
    return [{"node": z.node, "zone": z.zone, "free": z.free, "blocks": z.blocks}
            for z in info.zones]


# --- the benchmark ---------------------------------------------------------------------
def run(snap, repeat: int = 5, prog=None, cold: bool = True, log=print) -> list[Row]:
    warm_file(snap.vmcore)
    prog = prog or open_prog(snap)
    kmem = has_crash_kmem()
    rows = []
    for name, (fmt, crash_cmd) in COMMANDS.items():
        out = run_command(prog, name, fmt)
        ref = DRGN[name](prog)
        if name == "pagetypeinfo":
            same = _memscope_pagetypeinfo(prog) == ref
        else:
            same = same_answer(name, out, ref)
        t_ms = best_of(lambda: run_command(prog, name, fmt), repeat)
        t_dr = best_of(lambda: DRGN[name](prog), repeat)
        cold_ms = cold_dr = cold_kmem = None
        if cold:
            cold_ms = timed(lambda: run_command(open_prog(snap), name, fmt))[0]
            cold_dr = timed(lambda: DRGN[name](open_prog(snap)))[0]
        note = ("same answer" if same else "ANSWERS DIFFER") + f"; memscope --format {fmt}"
        rows.append(Row("buddy", f"memscope {name}", t_ms, f"drgn helpers ({name})", t_dr,
                        note=note, subject_cold_s=cold_ms, baseline_cold_s=cold_dr))
        if kmem:
            crash(prog, crash_cmd)
            t_km = best_of(lambda: crash(prog, crash_cmd), repeat)
            if cold:
                cold_kmem = timed(lambda: crash(open_prog(snap), crash_cmd))[0]
            rows.append(Row("buddy", f"memscope {name}", t_ms, f"drgn crash '{crash_cmd}'",
                            t_km, note="crash's own table, not the same records",
                            subject_cold_s=cold_ms, baseline_cold_s=cold_kmem))
        log(f"  {name}: memscope {t_ms * 1e3:.1f} ms, drgn helpers {t_dr * 1e3:.1f} ms"
            + (f", kmem {rows[-1].baseline_s * 1e3:.1f} ms" if kmem else "")
            + ("" if same else "  (answers differ!)"))
    if not kmem:
        log("  drgn has no crash 'kmem' command here: kmem baselines skipped")
    return rows


def cold_table(rows: list[Row]) -> str:
    from tabulate import tabulate

    return tabulate([[r.subject, f"{r.subject_cold_s:.2f}", r.baseline,
                      f"{r.baseline_cold_s:.2f}"] for r in rows
                     if r.subject_cold_s is not None and r.baseline_cold_s is not None],
                    headers=["subject", "cold s", "baseline", "cold s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", nargs="?", default=DEFAULT_CASE)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-cold", action="store_true")
    args = ap.parse_args()
    snap, prog = open_case(args.case)
    rows = run(snap, args.repeat, prog, cold=not args.no_cold)
    print(render(rows))
    if not args.no_cold:
        print("\ncold (a new Program: open + first run)\n" + cold_table(rows))


if __name__ == "__main__":
    main()
