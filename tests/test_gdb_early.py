"""A kernel early in boot, or one built without VMCOREINFO: what VMCOREINFO would say is
taken from the debug info or the architecture, and checked.

On the lab dumps (where VMCOREINFO exists, so it is the answer key):

- the derived SECTION_SIZE_BITS equals the kernel's own VMCOREINFO value, the check
  against mem_section[] accepts it, and rejects the values one above and one below (so
  the check can fail);
- PAGE_SIZE and node_data[]'s length (Target.array_length) equal VMCOREINFO's (or the
  kernel's config where VMCOREINFO lacks LENGTH(node_data): arm64);
- with VMCOREINFO hidden, every command prints byte for byte what it prints with it.

On a real guest stopped under gdb (QEMU ``-S``, hardware breakpoints; 5.10, 6.12, 7.2 and
6.12 arm64, one boot each, 13-25 s each here with the machine otherwise busy), at start_kernel,
mm_core_init (mm_init) and kernel_init, against the kernel's own state read with gdb
expressions (see each test for what is compared with what).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest

import guests
from kernel_dumps import PatchedTarget, open_dump
from memscope.errors import MemscopeError
from memscope.mm import page
from memscope.mm.context import KernelContext
from memscope.target.base import TargetError


def _sections_args(t, ctx, bits):
    """(roots address, nr sections, sections per root, mem_section layout) for BITS, as
    page._read_sections computes them."""
    vi = t.vmcoreinfo_fields
    ms = t.layout("struct mem_section")
    roots = int(vi["SYMBOL(mem_section)"], 16) if "SYMBOL(mem_section)" in vi \
        else t.read_u64(t.symbol("mem_section"))
    pps = 1 << (bits - (t.page_size.bit_length() - 1))
    nr = (page.max_pfn(ctx) + pps - 1) // pps
    return roots, nr, t.page_size // ms.size, ms


def test_section_size_bits_from_debuginfo_equals_vmcoreinfo_and_the_memory_check_fails_off_by_one(
        real_kernel):
    _prog, t = open_dump(real_kernel)
    ctx = KernelContext(t)
    want = int(t.vmcoreinfo_fields["NUMBER(SECTION_SIZE_BITS)"])
    got = page.section_size_bits_from_debuginfo(t)
    assert got == want
    page._check_sections(t, *_sections_args(t, ctx, got), got)
    for wrong in (got - 1, got + 1):
        with pytest.raises(TargetError, match="disagrees with mem_section"):
            page._check_sections(t, *_sections_args(t, ctx, wrong), wrong)


# --- the debug info and the architecture instead of VMCOREINFO ----------------------------
def _config(snap) -> dict[str, str]:
    """The kernel's build configuration (the lab keeps Debian's config beside vmlinux,
    where the package has one: 7.2's has none); {} without it."""
    out = {}
    path = Path(snap.vmlinux).parent / "config"
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        k, sep, v = line.partition("=")
        if sep and k.startswith("CONFIG_"):
            out[k] = v
    return out


def test_page_size_and_array_lengths_from_the_debug_info_equal_vmcoreinfo(real_kernel):
    """PAGE_SIZE (x86_64's constant; arm64's empty_zero_page) equals VMCOREINFO's PAGESIZE,
    and node_data[]'s length in the debug info equals VMCOREINFO's LENGTH(node_data) where
    the kernel exports it (x86_64's arch_crash_save_vmcoreinfo; arm64 does not) and
    1 << CONFIG_NODES_SHIFT (MAX_NUMNODES) in the kernel's own config where the lab has
    it: the value the page->flags decode takes its node width from."""
    _prog, t = open_dump(real_kernel)
    vi = t.vmcoreinfo_fields
    assert t.page_size_from_debuginfo() == int(vi["PAGESIZE"])
    n = t.array_length("node_data")
    compared = 0
    if "LENGTH(node_data)" in vi:
        assert n == int(vi["LENGTH(node_data)"])
        compared += 1
    config = _config(real_kernel)
    if config:
        assert n == 1 << int(config["CONFIG_NODES_SHIFT"])
        compared += 1
    assert compared, "neither VMCOREINFO nor the kernel's config says MAX_NUMNODES"
    assert t.vmcoreinfo_length("node_data") == n
    for name in ("init_mm", "jiffies", "no_such_variable_here"):
        with pytest.raises(TargetError):  # not an array, or absent
            t.array_length(name)


class _NoVmcoreinfo(PatchedTarget):
    """A lab dump read as if its kernel had no VMCOREINFO (a guest stopped before the kernel
    wrote it, or a kernel built without CONFIG_VMCORE_INFO)."""

    def vmcoreinfo(self) -> bytes:
        return b""


@pytest.mark.parametrize("name", ["pagetypeinfo", "pages", "pageblocks", "buddyinfo",
                                  "freelists", "check", "frag"])
def test_without_vmcoreinfo_every_command_prints_what_it_prints_with_it(real_kernel, name,
                                                                         request):
    """Every format of NAME, on every lab dump, byte for byte the same with VMCOREINFO
    hidden (each value taken from the debug info or the architecture instead, and checked
    against the memory it describes) as with it."""
    from memscope import commands

    if name == "check" and real_kernel.arch == "aarch64":
        # check's slab half turns slab pages into their objects' addresses, which needs
        # arm64's address-space layout (VA_BITS, VMALLOC/VMEMMAP/MODULES bounds), taken
        # from VMCOREINFO only (memscope/kernel/addr.py): without it check says so in one
        # line.  Deriving them from the debug info and memory is not done yet.
        request.applymarker(pytest.mark.xfail(raises=MemscopeError, strict=True,
                                              reason="arm64's layout needs VMCOREINFO"))
    _prog, t = open_dump(real_kernel)
    hidden = _NoVmcoreinfo(t)
    assert hidden.vmcoreinfo_fields == {} and t.vmcoreinfo_fields
    commands._load()
    cmd = commands.COMMANDS[name]
    for fmt in cmd.formats:
        p = argparse.ArgumentParser()
        commands.add_subparsers(p)
        args = p.parse_args([name, "--format", fmt])
        want = commands.execute(KernelContext(t), args)
        got = commands.execute(KernelContext(hidden), args)
        assert got == want, f"{name} --format {fmt}"


# --- a guest stopped early in boot under gdb ----------------------------------------------
def kernels_arch(name: str) -> str:
    """uname -m of lab kernel NAME."""
    from memscope.lab import kernels

    return kernels.spec(name).qemu_arch


#: Kernels booted (one at a time, ~20 s each, arm64 ~40 s): the oldest layout, the default,
#: the newest, and arm64.
EARLY_KERNELS = ["5.10", "6.12", "7.2", "6.12-arm64"]
#: The commands run at every breakpoint.
EARLY_COMMANDS = ["buddyinfo", "pagetypeinfo", "pages", "pageblocks", "check", "frag",
                  "freelists"]
#: Constants the truth below takes from the architecture, not from memscope, the same on
#: x86_64 and arm64 with 4 KiB pages: SECTION_SIZE_BITS (arch/*/include/asm/sparsemem.h)
#: and pageblock_order (HPAGE_PMD_ORDER: 2 MiB blocks of 4 KiB pages).
SECTION_SIZE_BITS = 27
PAGEBLOCK_ORDER = 9
KASLR_METHODS = {"x86_64": ["pc", "scan"], "aarch64": ["vbar", "pc"]}
#: Globals whose array length the gdb adapter is asked for (arrays, and not arrays).
ARRAYS = ["node_data", "node_states", "__per_cpu_offset", "empty_zero_page", "jiffies",
          "no_such_variable"]

# Runs inside gdb: hardware breakpoints at start_kernel, mm_core_init (called mm_init
# before v6.4: "init,mm: move mm_init() to mm/mm_init.c and rename it to mm_core_init()";
# whichever the debug info has) and kernel_init; at each, every command in table and JSON,
# and the kernel's own state read with gdb expressions (the truth).  Writes JSON.
EARLY_DRIVER = r'''
import json, gdb
plan = json.load(open(PLAN))
MASK = (1 << 64) - 1
''' + guests.GDB_RUN + r'''
def v(expr):
    return gdb.parse_and_eval(expr)
def i(expr):
    return int(v(expr)) & MASK
INF = gdb.selected_inferior()
def u64(addr):
    return int.from_bytes(bytes(INF.read_memory(addr, 8)), "little")
def list_len(head_addr):
    n, p = 0, u64(head_addr)
    while p != head_addr and n < 1 << 20:
        n, p = n + 1, u64(p)
    return n
def field(value, name):
    """VALUE's member NAME, looked for in anonymous structs and unions too."""
    for f in value.type.strip_typedefs().fields():
        if f.name == name:
            return value[f]
        if not f.name and f.type.strip_typedefs().code in (gdb.TYPE_CODE_STRUCT,
                                                          gdb.TYPE_CODE_UNION):
            try:
                return field(value[f], name)
            except KeyError:
                pass
    raise KeyError(name)

def pageblock_types(start, end, first_deferred):
    """get_pfnblock_migratetype() of every pageblock start the kernel counts in
    /proc/pagetypeinfo, by the kernel's formula (mm/page_alloc.c get_pfnblock_flags_mask,
    pfn_to_bitidx; include/linux/mmzone.h __pfn_to_section) over gdb's reads: the architecture's
    SECTION_SIZE_BITS and pageblock_order, NR_PAGEBLOCK_BITS and the isolate bit from the
    debug info's enum pageblock_bits."""
    pb = {f.name: f.enumval for f in gdb.lookup_type("enum pageblock_bits").fields()}
    nbits = pb.get("NR_PAGEBLOCK_BITS")
    if nbits is None:  # 7.2: roundup_pow_of_two(__NR_PAGEBLOCK_BITS)
        nbits = 1 << (pb["__NR_PAGEBLOCK_BITS"] - 1).bit_length()
    pps_shift = plan["section_size_bits"] - 12
    po = plan["pageblock_order"]
    per_root = 4096 // gdb.lookup_type("struct mem_section").sizeof
    flags_off = next(f.bitpos for f in gdb.lookup_type("struct mem_section_usage").fields()
                     if f.name == "pageblock_flags") // 8
    iso = pb.get("PB_migrate_isolate")
    isolate = int(gdb.parse_and_eval("MIGRATE_ISOLATE"))
    bitmaps = {}
    out = []
    for pfn in range(start, end, 1 << po):
        if pfn >= first_deferred:
            continue  # not initialised: page_zone() is not this zone
        nr = pfn >> pps_shift
        if nr not in bitmaps:
            usage = int(gdb.parse_and_eval(f"mem_section[{nr // per_root}][{nr % per_root}].usage"))
            bitmaps[nr] = int.from_bytes(bytes(INF.read_memory(
                usage + flags_off, ((nbits << (pps_shift - po)) + 7) // 8)), "little")
        bitidx = ((pfn & ((1 << pps_shift) - 1)) >> po) * nbits
        bits = bitmaps[nr] >> bitidx & ((1 << nbits) - 1)
        mt = bits & 7
        if iso is not None and bits >> iso & 1:
            mt = isolate
        out.append(mt)
    return out

def truth():
    T = {"node_data0": i("node_data[0]"), "vmcoreinfo_data": i("vmcoreinfo_data")}
    if not T["node_data0"]:
        return T
    pgdat = v("node_data[0]").dereference()
    T["first_deferred_pfn"] = int(pgdat["first_deferred_pfn"])
    T["node_end"] = int(pgdat["node_start_pfn"]) + int(pgdat["node_spanned_pages"])
    ncpu = i("nr_cpu_ids")
    nfree = int(v("NR_FREE_PAGES"))
    offsets = [i(f"__per_cpu_offset[{cpu}]") for cpu in range(ncpu)]
    T["zones"] = []
    nodes = pgdat["node_zones"]
    for zi in range(nodes.type.range()[1] + 1):
        z = nodes[zi]
        if not int(z["present_pages"]):
            continue
        start, spanned = int(z["zone_start_pfn"]), int(z["spanned_pages"])
        fa = z["free_area"]
        norders = fa.type.range()[1] + 1
        nmt = fa[0]["free_list"].type.range()[1] + 1
        zone = {"name": z["name"].string(), "start": start, "spanned": spanned,
                "present": int(z["present_pages"]),
                "managed": int(z["managed_pages"]["counter"]),
                "nr_free": [int(fa[o]["nr_free"]) for o in range(norders)],
                "lists": [[list_len(int(fa[o]["free_list"][mt].address))
                           for mt in range(nmt)] for o in range(norders)]}
        counter = int(z["vm_stat"][nfree]["counter"])
        pcp_count, unset = 0, 0
        split = any(f.name == "per_cpu_pageset" for f in z.type.fields())  # v5.14, 28f836b6777b
        for off in offsets:
            if split:
                st = gdb.Value((int(z["per_cpu_zonestats"]) + off) & MASK).cast(
                    z["per_cpu_zonestats"].type).dereference()
                pcp = gdb.Value((int(z["per_cpu_pageset"]) + off) & MASK).cast(
                    z["per_cpu_pageset"].type).dereference()
            else:  # 5.10: struct per_cpu_pageset { pcp, ..., vm_stat_diff[] }
                st = gdb.Value((int(z["pageset"]) + off) & MASK).cast(
                    z["pageset"].type).dereference()
                pcp = st["pcp"]
            counter += int(st["vm_stat_diff"][nfree])
            pcp_count += int(field(pcp, "count"))
            lists = pcp["lists"]
            unset += not any(int(lists[k]["next"]) for k in range(lists.type.range()[1] + 1))
        zone.update(NR_FREE_PAGES=counter, pcp_count=pcp_count, pcp_unset_cpus=unset)
        zone["pageblocks"] = pageblock_types(start, start + spanned, T["first_deferred_pfn"])
        T["zones"].append(zone)
    return T

names = plan["breakpoints"]
if not gdb.lookup_global_symbol(names[1]):
    names[1] = plan["mm_init_old"]
out = {"stops": {}, "names": names}
for n in names:
    gdb.execute(f"hbreak {n}", to_string=True)
import time
for n in names:
    t0 = time.monotonic()
    gdb.execute("continue", to_string=True)
    stop = {"pc_symbol": gdb.selected_frame().name(), "runs": {}, "seconds": {}}
    stop["seconds"]["run to it"] = time.monotonic() - t0
    t0 = time.monotonic()
    gdb.execute(f"delete", to_string=True)
    for name in plan["commands"]:
        for fmt in ("table", "json"):
            stop["runs"][f"{name} {fmt}"] = run(f"memscope {name} -f {fmt}")
    if n == names[0]:
        for m in plan["kaslr_methods"]:
            stop["kaslr " + m] = run("memscope kaslr --method " + m)
    from memscope.target import gdb as tgdb
    from memscope.target.gdb import GdbTarget
    t = GdbTarget()
    stop["read_counts"] = tgdb.read_counts()
    tgdb.reset_read_counts()
    stop["array_lengths"] = {}
    for a in plan["arrays"]:
        try:
            stop["array_lengths"][a] = t.array_length(a)
        except Exception as e:
            stop["array_lengths"][a] = f"{type(e).__name__}: {e}"
    stop["page_size"] = t.page_size
    stop["vmcoreinfo"] = t.vmcoreinfo().decode()
    stop["seconds"]["memscope"] = time.monotonic() - t0
    t0 = time.monotonic()
    stop["truth"] = truth()
    stop["seconds"]["truth"] = time.monotonic() - t0
    out["stops"][n] = stop
    for later in names[names.index(n) + 1:]:
        gdb.execute(f"hbreak {later}", to_string=True)
json.dump(out, open(plan["output"], "w"))
'''


@pytest.fixture(scope="module", params=EARLY_KERNELS, ids=[f"kernel-{k}" for k in EARLY_KERNELS])
def early(request, tmp_path_factory):
    """One boot of lab kernel PARAM under gdb, stopped at start_kernel, mm_core_init (or
    mm_init) and kernel_init in turn, memscope's commands run at each (guests.py boots
    it; ``nokaslr``: a hardware breakpoint needs the kernel's address before it runs)."""
    name = request.param
    gdb_binary = guests.GDB_BINARY.get(name, "gdb")
    if not guests.have(gdb_binary):
        pytest.skip(f"{gdb_binary} is not installed (apt-get install {gdb_binary})")
    work = tmp_path_factory.mktemp(f"early-{name}")
    plan = {"breakpoints": ["start_kernel", "mm_core_init", "kernel_init"],
            "mm_init_old": "mm_init", "commands": EARLY_COMMANDS,
            "kaslr_methods": KASLR_METHODS[kernels_arch(name)],
            "section_size_bits": SECTION_SIZE_BITS, "pageblock_order": PAGEBLOCK_ORDER,
            "arrays": ARRAYS,
            "output": str(work / "result.json")}
    (work / "plan.json").write_text(json.dumps(plan))
    t0 = time.monotonic()
    with guests.stopped_at_reset(name, work / "guest") as g:
        p = guests.gdb_batch(g.gdb, g.vmlinux, g.gdb_port, EARLY_DRIVER, work, end="kill",
                             timeout=600)
    assert (work / "result.json").exists(), f"gdb failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    res = json.loads((work / "result.json").read_text())
    print(f"\n{name}: boot to kernel_init under gdb, commands included: "
          f"{time.monotonic() - t0:.1f} s; " + "; ".join(
              f"{n}: " + ", ".join(f"{k} {v:.1f} s" for k, v in st["seconds"].items())
              for n, st in res["stops"].items()))
    return name, res, p


def _json(stop, name):
    text, err, status = stop["runs"][f"{name} json"]
    assert err is None and status == 0, (name, err)
    return json.loads(text)


def test_at_start_kernel_every_command_says_the_mm_structures_are_not_set_up_yet(early):
    """At start_kernel node_data[0] is NULL (gdb says so): every command stops with one
    line saying the memory-management structures are not set up yet, never a read of
    address 0 or a traceback."""
    name, res, p = early
    stop = res["stops"]["start_kernel"]
    assert stop["pc_symbol"] == "start_kernel"
    assert stop["truth"]["node_data0"] == 0
    for cmd in EARLY_COMMANDS:
        for fmt in ("table", "json"):
            text, err, status = stop["runs"][f"{cmd} {fmt}"]
            assert text is None and status == 2, (cmd, fmt, text)
            assert err == (f"memscope: {cmd}: the memory-management structures are not set "
                           "up yet (node_data[0] is NULL: the kernel is early in boot)"), err
    assert "Traceback" not in p.stdout + p.stderr


def test_kaslr_detection_works_at_start_kernel(early):
    """The KASLR search reads linux_banner through the kernel's mapping, which exists from
    the first instruction of start_kernel: each method (x86_64: program counter, scan;
    arm64: VBAR_EL1, program counter) finds the offset there (0: the guest booted with
    nokaslr for its breakpoints)."""
    name, res, _p = early
    stop = res["stops"]["start_kernel"]
    for m in KASLR_METHODS[kernels_arch(name)]:
        assert stop[f"kaslr {m}"] == ["kernel offset 0x0\n", None, 0], m


def test_at_mm_core_init_per_cpu_lists_not_initialised_are_no_problem(early):
    """At mm_core_init (mm_init on 5.10) the buddy allocator holds nothing yet: every
    nr_free is 0 (gdb), and check finds no problem (exit 0), although on 6.12, 7.2 and
    6.12 arm64 every CPU's per-CPU lists are still all zeros there (gdb reads them)."""
    name, res, _p = early
    stop = res["stops"][res["names"][1]]
    truth = stop["truth"]
    assert truth["node_data0"] != 0
    got = _json(stop, "check")
    assert got["ok"] is True and got["problems"] == [], got["problems"]
    assert [z["nr_free"] for z in got["zones"]] == [z["nr_free"] for z in truth["zones"]]
    assert all(not any(z["nr_free"]) for z in truth["zones"])
    unset = [z["pcp_unset_cpus"] for z in truth["zones"]]
    print(f"\n{name}: CPUs with all-zero pcp lists per zone at {res['names'][1]}: {unset}")
    # Measured: both CPUs' lists are all zeros in every zone on 6.12, 7.2 and 6.12 arm64
    # (the case check once reported as broken lists), none on 5.10.
    assert name == "5.10" or all(n == 2 for n in unset), unset


def test_at_kernel_init_without_vmcoreinfo_the_numbers_are_the_kernels_own(early, lab_case):
    """At kernel_init the kernel has not written VMCOREINFO (vmcoreinfo_data is NULL, gdb
    says) and part of the memmap is not initialised yet (pgdat->first_deferred_pfn).  The
    truth is read by gdb expressions, not by memscope, for every populated zone:

    - buddyinfo: free_area[order].nr_free;
    - pagetypeinfo's free blocks: the length of every free_area[order].free_list[mt]
      (gdb walks the lists); its pageblocks per migratetype: get_pfnblock_migratetype()
      by the kernel's formula over mem_section[]->usage->pageblock_flags, for the
      pageblock starts the kernel counts (initialised pages only);
    - pages: the classes add up to spanned_pages; buddy pages are sum(nr_free << order)
      and equal NR_FREE_PAGES (zone vm_stat plus every CPU's vm_stat_diff); pcp pages are
      the sum of every CPU's pcp->count; the holes are the pfns at and above
      first_deferred_pfn (struct pages not initialised); every other page is managed or
      reserved: buddy + pcp + allocated == managed_pages.
    - The gdb adapter's PAGE_SIZE equals the drgn adapter's on the same kernel's lab
      dump."""
    name, res, _p = early
    stop = res["stops"]["kernel_init"]
    truth = stop["truth"]
    assert truth["vmcoreinfo_data"] == 0 and stop["vmcoreinfo"] == ""
    zones = truth["zones"]
    names = [z["name"] for z in zones]

    assert [r["nr_free"] for r in _json(stop, "buddyinfo")] == [z["nr_free"] for z in zones]

    pti = _json(stop, "pagetypeinfo")
    assert [z["zone"] for z in pti["zones"]] == names
    for got, z in zip(pti["zones"], zones):
        for mt, name_ in enumerate(pti["migratetypes"]):
            assert got["free"][name_] == [row[mt] for row in z["lists"]], (z["name"], name_)
        want = {n: z["pageblocks"].count(mt) for mt, n in enumerate(pti["migratetypes"])}
        assert got["blocks"] == want, z["name"]
    pb = _json(stop, "pageblocks")
    assert [r["counts"] for r in pb] == [g["blocks"] for g in pti["zones"]]

    pages = [r for r in _json(stop, "pages") if "counts" in r]
    assert [r["zone"] for r in pages] == names
    deferred_total = 0
    for r, z in zip(pages, zones):
        c = r["counts"]
        end = z["start"] + z["spanned"]
        deferred = max(0, end - max(z["start"], truth["first_deferred_pfn"]))
        deferred_total += deferred
        assert sum(c.values()) == z["spanned"], z["name"]
        assert c["buddy"] == sum(n << o for o, n in enumerate(z["nr_free"])) \
            == z["NR_FREE_PAGES"], z["name"]
        assert c["pcp"] == z["pcp_count"], z["name"]
        assert c["hole"] == deferred, z["name"]
        assert z["spanned"] - c["hole"] - c["reserved"] == z["managed"], (z["name"], c, z)
    assert deferred_total > 0, "no deferred struct pages at kernel_init: nothing tested"

    _prog, t = open_dump(lab_case(name))
    assert stop["page_size"] == t.page_size == 4096


def test_gdb_and_drgn_adapters_give_the_same_array_lengths(early, lab_case):
    """Target.array_length through gdb (on the guest, before VMCOREINFO exists) equals the
    drgn adapter's on the same kernel's lab dump, for every global drgn answers; what drgn
    says is not an array of known length, gdb says so too.  (gdb finds
    ``node_data``'s declaration in include/linux/numa.h, of unknown length: its length
    comes from the ELF symbol's size.)"""
    name, res, _p = early
    _prog, t = open_dump(lab_case(name))
    got = res["stops"]["kernel_init"]["array_lengths"]
    answered = 0
    for a in ARRAYS:
        try:
            want = t.array_length(a)
        except TargetError as e:
            if "not an array" in str(e):
                assert "not an array" in str(got[a]), (a, got[a])
            continue
        assert got[a] == want, a
        answered += 1
    assert answered >= 3


def test_the_faster_read_path_is_probed_again_once_the_kernel_has_run_on(early):
    """At start_kernel the direct map is not in init_top_pgt yet, so QEMU's memory cannot
    be read directly (/proc/PID/mem); a failed probe is not kept: by mm_core_init the
    memmap is read that way (procmem), not through QEMU's monitor or gdb packets."""
    _name, res, _p = early
    for n in res["names"][1:]:
        c = res["stops"][n]["read_counts"]
        assert c["procmem"]["bulk_reads"] > 0 and c["memsave"]["reads"] == 0, (n, c)
