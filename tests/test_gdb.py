"""The GDB backend: gdb attached to a frozen lab guest's gdbstub prints exactly what the drgn
backend prints on that guest's vmcore, for every registered command, format and flag, on
every lab kernel (5.10, 6.1, 6.12, 7.2, 6.12 arm64 with gdb-multiarch, the 2-node NUMA
6.12 guest), through each of the adapter's three ways of reading guest memory on its own.

One frozen guest per kernel (``lab run --keep``: the vmcore and the paused guest are the
same state; tests/guests.py, shared with tests/test_qmp.py) and one gdb run per guest,
which executes the plan through the real ``memscope`` gdb command once per read path
(MEMSCOPE_GDB_READS=procmem, memsave, packets; the adapter's counters say which path
served the reads) and ends with ``disconnect`` (``detach`` would resume the guest).
Commands are taken from memscope.commands.COMMANDS, so new commands are covered as they
are registered.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import guests
from memscope import commands
from memscope.lab import kernels

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "gdb_scripts" / "memscope.py"

KASLR_METHODS = {"x86_64": ["pc", "scan"], "aarch64": ["vbar", "pc"]}
#: The read paths tested one by one (MEMSCOPE_GDB_READS); "auto" is run too, briefly, to
#: see which it picks on a local QEMU.
PATHS = ["procmem", "memsave", "packets"]

LAYOUT_TYPES = ["struct zone", "struct pglist_data", "struct page", "struct free_area",
                "struct per_cpu_pages", "struct list_head", "struct mem_section",
                "struct uts_namespace", "struct new_utsname", "struct folio", "struct slab",
                "struct kmem_cache", "struct mm_struct", "struct vm_area_struct"]
SYMBOLS = ["node_data", "node_states", "linux_banner", "init_uts_ns", "vmcoreinfo_data",
           "__per_cpu_offset", "runqueues", "this_cpu_off", "vm_zone_stat", "mem_section",
           "_text", "jiffies", "start_kernel"]
ENUMS = ["enum migratetype", "enum zone_type", "enum pageflags", "enum node_states"]
SIZES = ["struct page", "struct zone", "nodemask_t", "unsigned long", "struct free_area"]
# Target.variable() and Target.constant() (what meminfo probes): present or not, both agree.
VARIABLES = ["direct_pages_count", "hstates", "zswap_stored_pages", "_totalram_pages",
             "vm_committed_as", "nr_vmalloc_pages", "pcpu_nr_units", "no_such_variable"]
CONSTANTS = ["SWP_USED", "SWP_WRITEOK", "PG_LEVEL_2M", "NR_FREE_PAGES", "NO_SUCH_ENUMERATOR"]

# Runs inside gdb (PLAN is the path of plan.json): the plan through the gdb command once
# per read path, cold each time (the kept target dropped), with the adapter's read counters;
# then the one-line errors, the KASLR methods and what the adapter says about layouts,
# symbols and enums.  Writes JSON.
DRIVER = r"""
import json, os, sys, gdb
plan = json.load(open(PLAN))
out = {"phases": {}, "kaslr": {}, "errors": {}}
""" + guests.GDB_RUN + r"""
gdb.execute("memscope buddyinfo")  # the first command says (on stderr) which offset it found
from memscope.target import gdb as tgdb
for phase in plan["phases"]:
    os.environ["MEMSCOPE_GDB_READS"] = phase["path"]
    tgdb.invalidate_memory()
    tgdb.reset_read_counts()
    runs = []
    for argv in phase["runs"]:
        text, err, status = run("memscope " + " ".join(argv))
        runs.append({"out": text, "error": err, "status": status})
    out["phases"][phase["path"]] = {
        "runs": runs, "counts": tgdb.read_counts(),
        "monitor_used": any(k[1] == phase["path"] and v is not None
                            for k, v in tgdb._memsave.items())}
for argv in plan["errors"]:
    out["errors"][" ".join(argv)] = run("memscope " + " ".join(argv))
os.environ["MEMSCOPE_GDB_READS"] = "bogus"
out["errors"]["MEMSCOPE_GDB_READS=bogus"] = run("memscope buddyinfo")
del os.environ["MEMSCOPE_GDB_READS"]
tgdb.invalidate_memory()
for m in plan["kaslr_methods"]:
    out["kaslr"][m] = run("memscope kaslr --method " + m)
out["kaslr"]["auto"] = run("memscope kaslr --detect")
from memscope.target.gdb import GdbTarget
t = GdbTarget()
out["layouts"] = {}
for name in plan["layouts"]:
    try:
        lay = t.layout(name)
        out["layouts"][name] = [lay.size, {k: list(v.__dict__.values()) for k, v in lay.members.items()}]
    except Exception as e:
        out["layouts"][name] = repr(e)
out["symbols"] = {s: (t.symbol(s) if t.has_symbol(s) else None) for s in plan["symbols"]}
out["enums"] = {e: t.enum(e) for e in plan["enums"]}
out["sizes"] = {s: t.sizeof(s) for s in plan["sizes"]}
def _var(name):
    try:
        v = t.variable(name)
    except Exception:
        return None
    return [v.address, v.size, v.type_name, v.array_length]
def _const(name):
    try:
        return t.constant(name)
    except Exception:
        return None
out["variables"] = {n: _var(n) for n in plan["variables"]}
out["constants"] = {n: _const(n) for n in plan["constants"]}
out["vmcoreinfo"] = t.vmcoreinfo().decode()
from memscope.mm.context import KernelContext
from memscope.kernel import addr as kaddr, kallsyms
ctx = KernelContext(t)
out["symbolize"] = {str(a): kallsyms.format_symbol(ctx, a)
                    for a in [t.symbol(s) + 5 for s in plan["symbols"] if t.has_symbol(s)]
                    + plan["addresses"]}
lay = kaddr.kernel_layout(t)
out["phys"] = {str(a): t.read_phys(kaddr.virt_to_phys(lay, a), 256).hex()
               for a in [t.symbol("linux_banner"), t.symbol("init_uts_ns")]}
out["release"] = t.release
out["arch"] = t.arch
out["drgn_imported"] = any(m == "drgn" or m.startswith("drgn.") for m in sys.modules)
json.dump(out, open(plan["output"], "w"))
"""

#: Bad input inside gdb: the command line's own one-line error (CommandError), and a bad
#: MEMSCOPE_GDB_READS.
ERRORS = [["pages", "--pfn", "5-1"], ["pages", "--pfn", "zz"]]
BAD_READS = "MEMSCOPE_GDB_READS=bogus"


def _module_addresses(g) -> list[int]:
    """Some addresses inside the guest's modules' text (read with drgn on its vmcore)."""
    from drgn.helpers.linux.kallsyms import for_each_module, module_kallsyms
    from memscope.target.drgn import open_core

    prog = open_core(g.vmcore, g.vmlinux)
    return [s.address + s.size // 2 for m in for_each_module(prog)
            for s in module_kallsyms(m) if s.size][:20]


@pytest.fixture(scope="module")
def gdb_run(frozen_guest, tmp_path_factory):
    """One gdb batch run against the frozen guest: the plan once per read path, then
    `disconnect` (the guest stays paused for the QMP tests)."""
    g = frozen_guest
    if not guests.have(g.gdb):
        pytest.skip(f"{g.gdb} is not installed (apt-get install {g.gdb})")
    work = tmp_path_factory.mktemp(f"gdbrun-{g.name}")
    runs = guests.plan(g)
    phases = [{"path": "auto", "runs": [["buddyinfo", "-f", "json"], ["pages", "-f", "json"]]}]
    for path in PATHS:
        (work / f"png-{path}").mkdir()
        phases.append({"path": path, "runs": [guests.concrete(a, work / f"png-{path}")
                                              for a in runs]})
    plan = {"phases": phases, "errors": ERRORS, "kaslr_methods": KASLR_METHODS[g.arch],
            "layouts": LAYOUT_TYPES, "symbols": SYMBOLS, "enums": ENUMS, "sizes": SIZES,
            "variables": VARIABLES, "constants": CONSTANTS,
            "addresses": _module_addresses(g), "output": str(work / "result.json")}
    (work / "plan.json").write_text(json.dumps(plan))
    t0 = time.monotonic()
    p = guests.gdb_batch(g.gdb, g.vmlinux, g.gdb_port, DRIVER, work)
    seconds = time.monotonic() - t0
    assert (work / "result.json").exists(), f"gdb failed:\n{p.stdout}\n{p.stderr}"
    res = json.loads((work / "result.json").read_text())
    for phase in phases[1:]:
        for r, argv in zip(res["phases"][phase["path"]]["runs"], runs):
            r["argv"] = argv
    print(f"\n{g.name}: gdb run {seconds:.1f} s; reads " + json.dumps(
        {k: v["counts"] for k, v in res["phases"].items()}))
    return g, res, p, work


@pytest.mark.parametrize("path", PATHS)
def test_every_command_and_flag_prints_via_gdb_exactly_what_drgn_prints_on_the_vmcore(
        gdb_run, path, tmp_path_factory):
    """Each read path on its own: every command, format and flag (PNGs included) prints
    via gdb exactly what the command line prints on the vmcore of the same paused guest,
    and both succeed."""
    g, res, _, work = gdb_run
    want, want_png = guests.cli_on_vmcore(g, tmp_path_factory.mktemp(f"cli-{g.name}"))
    got = [{**r, "err": ""} for r in res["phases"][path]["runs"]]
    guests.assert_same(got, want, work / f"png-{path}", want_png, f"{g.name} gdb {path}")


@pytest.mark.parametrize("path", PATHS)
def test_each_read_path_alone_served_the_guest_memory_the_commands_read(gdb_run, path):
    """The adapter's counters: with MEMSCOPE_GDB_READS=PATH the bulk reads (64 KiB and
    more in one read) were served by PATH and by no other; procmem serves every read of
    kernel memory (packets and memsave none at all), memsave leaves only small reads to
    gdbstub packets, and packets never asks QEMU's monitor for memory."""
    _, res, _, _ = gdb_run
    c = res["phases"][path]["counts"]
    assert c[path]["bulk_reads"] > 0, c
    for other in PATHS:
        if other != path:
            assert c[other]["bulk_reads"] == 0, (other, c)
    if path == "procmem":
        assert c["memsave"]["reads"] == c["packets"]["reads"] == 0, c
    elif path == "memsave":
        assert c["procmem"]["reads"] == 0, c
    else:
        assert c["procmem"]["reads"] == c["memsave"]["reads"] == 0, c
        assert res["phases"][path]["monitor_used"] is False


def test_auto_reads_a_local_qemus_memory_directly(gdb_run):
    """The default (QEMU on this machine): /proc/PID/mem serves every read."""
    _, res, _, _ = gdb_run
    c = res["phases"]["auto"]["counts"]
    assert c["procmem"]["bulk_reads"] > 0, c
    assert c["memsave"]["reads"] == c["packets"]["reads"] == 0, c


def test_bad_input_inside_gdb_is_the_command_lines_own_one_line_error(gdb_run,
                                                                    tmp_path_factory):
    g, res, _, _ = gdb_run
    want = guests.run_cli(["-c", g.vmcore, "-s", g.vmlinux], ERRORS,
                          tmp_path_factory.mktemp("cli-errors"), tmp_path_factory.mktemp("png"))
    for w in want:
        text, err, status = res["errors"][" ".join(w["argv"])]
        assert w["status"] == status == 2 and w["out"] == "" and text is None
        assert [err] == w["err"].splitlines() and err.startswith("memscope: --pfn "), w
    text, err, status = res["errors"][BAD_READS]
    assert (text, status) == (None, 2)
    assert err == ("memscope: MEMSCOPE_GDB_READS='bogus': expected one of auto, procmem, "
                   "memsave, packets")


def test_kaslr_offset_found_by_each_method_equals_the_dumps_kerneloffset(gdb_run):
    g, res, p, _ = gdb_run
    vi = dict(line.split("=", 1) for line in res["vmcoreinfo"].splitlines() if "=" in line)
    want = f"kernel offset {int(vi['KERNELOFFSET'], 16):#x}\n"
    assert int(vi["KERNELOFFSET"], 16) != 0, "the guest booted without KASLR: nothing tested"
    for method, (text, err, _status) in res["kaslr"].items():
        assert err is None and text == want, (method, text, err)
    # The first memscope command said once, on stderr, which offset it found.
    assert p.stderr.count("memscope: kernel offset ") == 1


# Runs inside gdb: vCPU 0 is put where a vCPU stopped in user mode under x86_64 PTI is
# (its CR3 on the user half of the kernel's PGD pair, PTI_USER_PGTABLE_BIT = PAGE_SHIFT:
# arch/x86/include/asm/pgtable.h), its CR3 given back at the end.  Records whether gdb still
# reads the kernel through vCPU 0 (the precondition), what memscope prints, and which
# thread the user has selected after each command.
KPTI_DRIVER = r"""
import json, gdb
plan = json.load(open(PLAN))
out = {"runs": [], "threads_after": []}
"""  + guests.GDB_RUN + r"""
off = int(gdb.execute("memscope kaslr", to_string=True).split()[-1], 16)
banner = (int(gdb.parse_and_eval("(unsigned long)&linux_banner")) + off) & (2**64 - 1)
def kernel_readable():
    try:
        gdb.selected_inferior().read_memory(banner, 16)
        return True
    except gdb.MemoryError:
        return False
gdb.execute("thread 1", to_string=True)
cr3 = int(gdb.parse_and_eval("(unsigned long)$cr3")) & (2**64 - 1)
# gdb cannot assign to $cr3 (a flags type): a P packet with QEMU's number for it
rnum = next(int(ln.split()[6]) for ln in gdb.execute("maint print remote-registers",
            to_string=True).splitlines() if ln.split()[:1] == ["cr3"])
def set_cr3(v):
    assert gdb.execute(f"maint packet P{rnum:x}={v.to_bytes(8, 'little').hex()}",
                       to_string=True).strip().endswith('"OK"')
    gdb.execute("maint flush register-cache")
out["kernel_cr3_reads_kernel"] = kernel_readable()
from memscope.target import gdb as tgdb
try:
    set_cr3(cr3 | 1 << 12)
    out["user_cr3_reads_kernel"] = kernel_readable()
    tgdb.forget()  # the offset, the read paths: found anew through the user-mode vCPU
    for argv in plan["runs"]:
        out["runs"].append(run("memscope " + " ".join(argv)))
        out["threads_after"].append(gdb.selected_thread().num)
finally:
    gdb.execute("thread 1", to_string=True)
    set_cr3(cr3)
out["cr3_back"] = int(gdb.parse_and_eval("(unsigned long)$cr3")) & (2**64 - 1) == cr3
json.dump(out, open(plan["output"], "w"))
"""


def test_a_vcpu_stopped_in_user_mode_under_kpti_reads_through_another(frozen_guest,
                                                                      tmp_path_factory):
    """gdb reads virtual memory through the selected vCPU's MMU, and under KPTI a vCPU
    stopped in user mode has the kernel unmapped (CI froze the arm64 guest so: every command
    failed to find the KASLR offset).  With vCPU 0 made exactly that (x86_64: its CR3 on
    the user PGD; QEMU's gdbstub cannot write arm64's TTBR1_EL1), the offset is found and
    each command prints what the command line prints on the vmcore, through the other
    vCPU, and the user's thread stays selected."""
    g = frozen_guest
    if g.arch != "x86_64":
        pytest.skip("QEMU's gdbstub cannot write arm64's TTBR1_EL1 (read-only system "
                    "registers)")
    if not guests.have(g.gdb):
        pytest.skip(f"{g.gdb} is not installed")
    work = tmp_path_factory.mktemp(f"gdbkpti-{g.name}")
    runs = [["kaslr", "--detect"]] + [[name, "--format", "proc"]
                                      for name in ("buddyinfo", "slabinfo", "meminfo")]
    (work / "plan.json").write_text(json.dumps({"runs": runs,
                                                "output": str(work / "result.json")}))
    p = guests.gdb_batch(g.gdb, g.vmlinux, g.gdb_port, KPTI_DRIVER, work)
    assert (work / "result.json").exists(), f"gdb failed:\n{p.stdout}\n{p.stderr}"
    res = json.loads((work / "result.json").read_text())
    assert res["kernel_cr3_reads_kernel"] is True and res["cr3_back"] is True
    if res["user_cr3_reads_kernel"]:
        # measured: 7.2 on QEMU's -cpu max runs without page table isolation (the PGD's
        # user half maps the kernel too), so no vCPU of it can have the kernel unmapped
        pytest.skip(f"{g.name} runs without PTI (its user PGD maps the kernel): a vCPU "
                    "in user mode reads the kernel")
    on_vmcore, _ = guests.cli_on_vmcore(g, tmp_path_factory.mktemp(f"cli-{g.name}"))
    want = [next(w for w in on_vmcore if w["argv"] == argv) for argv in runs[1:]]
    text, err, status = res["runs"][0]
    from memscope.target.drgn import DrgnTarget, open_core
    info = DrgnTarget(open_core(g.vmcore, g.vmlinux)).vmcoreinfo().decode()
    vi = dict(line.split("=", 1) for line in info.splitlines() if "=" in line)
    assert (text, err, status) == (f"kernel offset {int(vi['KERNELOFFSET'], 16):#x}\n",
                                   None, 0)
    for (text, err, status), w in zip(res["runs"][1:], want):
        assert (err, status, text) == (None, w["status"], w["out"]), w["argv"]
        assert status == 0 and text
    assert res["threads_after"] == [1] * len(runs)


def test_gdb_adapter_layouts_symbols_enums_equal_the_drgn_adapters(gdb_run):
    from memscope.target.drgn import DrgnTarget, open_core

    g, res, _, _ = gdb_run
    t = DrgnTarget(open_core(g.vmcore, g.vmlinux))
    for type_name, got in res["layouts"].items():
        try:
            lay = t.layout(type_name)
        except Exception as e:  # noqa: BLE001 - a type this kernel lacks: both must lack it
            assert isinstance(got, str), (type_name, e)
            continue
        want = [lay.size, {k: list(v.__dict__.values()) for k, v in lay.members.items()}]
        assert got == json.loads(json.dumps(want)), type_name
    for sym, addr in res["symbols"].items():
        assert addr == (t.symbol(sym) if t.has_symbol(sym) else None), sym
    for e, values in res["enums"].items():
        assert values == t.enum(e), e
    for s, n in res["sizes"].items():
        assert n == t.sizeof(s), s
    for name, got in res["variables"].items():
        try:
            v = t.variable(name)
            want = [v.address, v.size, v.type_name, v.array_length]
        except Exception:  # noqa: BLE001 - a variable this kernel lacks: both must lack it
            want = None
        assert got == want, name
    assert res["variables"]["vm_committed_as"] is not None
    for name, got in res["constants"].items():
        try:
            want = t.constant(name)
        except Exception:  # noqa: BLE001
            want = None
        assert got == want, name
    assert res["constants"]["NR_FREE_PAGES"] is not None
    assert res["constants"]["NO_SUCH_ENUMERATOR"] is None
    assert res["release"] == t.release
    assert res["arch"] == t.arch == g.arch
    assert res["vmcoreinfo"].encode() == t.vmcoreinfo()


def test_gdb_symbolizes_and_reads_physical_memory_as_drgn_does_on_the_vmcore(gdb_run):
    """Target.read_phys and kernel.kallsyms (%pS) through the gdb adapter equal the drgn
    adapter's on the same state; the module addresses exercise module symbol tables."""
    from memscope.kernel import addr as kaddr, kallsyms
    from memscope.mm.context import KernelContext
    from memscope.target.drgn import DrgnTarget, open_core

    g, res, _, _ = gdb_run
    t = DrgnTarget(open_core(g.vmcore, g.vmlinux))
    ctx = KernelContext(t)
    assert res["symbolize"] and any("[" in v for v in res["symbolize"].values())
    for a, got in res["symbolize"].items():
        assert got == kallsyms.format_symbol(ctx, int(a)), a
    lay = kaddr.kernel_layout(t)
    for a, got in res["phys"].items():
        assert got == t.read_phys(kaddr.virt_to_phys(lay, int(a)), 256).hex() \
            == t.read(int(a), 256).hex(), a


def test_nothing_imported_inside_gdb_imports_drgn(gdb_run):
    assert gdb_run[1]["drgn_imported"] is False


def test_gdb_says_nothing_on_stderr_but_the_kaslr_note(gdb_run):
    """No traceback, no warning: the provoked errors went to the driver, not to stderr."""
    _, _, p, _ = gdb_run
    lines = [ln for ln in p.stderr.splitlines() if not ln.startswith("memscope: kernel offset ")]
    assert lines == []


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_plumbing_help_memscope_lists_every_command_and_a_bad_command_is_one_line():
    commands._load()
    h = _gdb_alone(f"source {SCRIPT}", "help memscope", "memscope nosuchcommand")
    for name in ["kaslr", *commands.COMMANDS]:
        assert f"\n  {name} " in h.stdout, name
    bad = [line for line in h.stderr.splitlines() if "nosuchcommand" in line]
    assert bad == ["memscope: argument COMMAND: invalid choice: 'nosuchcommand' (choose from "
                   + ", ".join(repr(n) for n in ["kaslr", *commands.COMMANDS]) + ")"]
    assert "Traceback" not in h.stderr and "Python Exception" not in h.stderr


def _gdb_alone(*ex: str) -> subprocess.CompletedProcess:
    cmd = ["gdb", "-nx", "-batch", "-iex", "set index-cache enabled on"]
    for e in ex:
        cmd += ["-ex", e]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_without_vmlinux_or_without_a_guest_memscope_says_what_to_do_in_one_line():
    p = _gdb_alone(f"source {SCRIPT}", "memscope buddyinfo")
    assert p.stderr.strip() == ("memscope: no kernel symbols in gdb: load the guest's vmlinux "
                                "first with 'file VMLINUX'")
    k = kernels.cached("6.12")
    if k is None:
        pytest.skip("kernel 6.12 is not cached")
    p = _gdb_alone(f"file {k.vmlinux}", f"source {SCRIPT}", "memscope buddyinfo -f proc")
    assert p.stderr.strip() == ("memscope: gdb is not attached to a guest: connect to QEMU's "
                                "gdbstub first with 'target remote HOST:PORT'")


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_installed_package_prints_a_source_line_that_loads_memscope_into_gdb():
    p = subprocess.run([sys.executable, "-m", "memscope.gdb_frontend"], capture_output=True,
                       text=True, check=True)
    line = p.stdout.strip()
    assert line.startswith("source ") and line.endswith("gdb_frontend.py")
    g = _gdb_alone(line, "help memscope")
    assert g.stderr == "" and "buddyinfo" in g.stdout


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_memscope_completes_commands_options_and_formats_from_the_cli_parser():
    commands._load()
    p = _gdb_alone(f"source {SCRIPT}", "complete memscope buddy",
                   "complete memscope buddyinfo -f ", "complete memscope buddyinfo --fo")
    assert p.stdout.splitlines() == [
        "memscope buddyinfo", *[f"memscope buddyinfo -f {f}" for f in sorted(
            commands.COMMANDS["buddyinfo"].formats)], "memscope buddyinfo --format"]
