"""The GDB backend: gdb attached to a frozen lab guest's gdbstub prints exactly what the drgn
backend prints on that guest's vmcore, for every registered command and format.

One frozen guest per architecture (``lab run --keep``: the vmcore and the paused guest are
the same state) and one gdb run per guest, which executes every command through the real
``memscope`` gdb command and ends with ``disconnect`` (``detach`` would resume the guest).
Commands are taken from memscope.commands.COMMANDS, so new commands are covered as they
are registered.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from memscope import cli, commands, lab
from memscope.errors import LabError
from memscope.lab import kernels

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "gdb_scripts" / "memscope.py"

# kernel -> (gdb binary, guest memory in MB)
GUESTS = {"6.12": ("gdb", 512), "6.12-arm64": ("gdb-multiarch", 1024)}
ARCH = {"6.12": "x86_64", "6.12-arm64": "aarch64"}
KASLR_METHODS = {"6.12": ["pc", "scan"], "6.12-arm64": ["vbar", "pc"]}

LAYOUT_TYPES = ["struct zone", "struct pglist_data", "struct page", "struct free_area",
                "struct per_cpu_pages", "struct list_head", "struct mem_section",
                "struct uts_namespace", "struct new_utsname", "struct folio", "struct slab",
                "struct kmem_cache", "struct mm_struct", "struct vm_area_struct"]
SYMBOLS = ["node_data", "node_states", "linux_banner", "init_uts_ns", "vmcoreinfo_data",
           "__per_cpu_offset", "runqueues", "this_cpu_off", "vm_zone_stat", "mem_section",
           "_text", "jiffies", "start_kernel"]
ENUMS = ["enum migratetype", "enum zone_type", "enum pageflags", "enum node_states"]
SIZES = ["struct page", "struct zone", "nodemask_t", "unsigned long", "struct free_area"]

# Runs inside gdb: every (command, format) through the gdb command, output captured, plus
# what the adapter says about layouts, symbols and the KASLR offset.  Writes JSON.
DRIVER = r'''
import json, sys, gdb
plan = json.load(open(sys.argv_plan))
out = {"runs": [], "kaslr": {}}
def run(line):
    try:
        text = gdb.execute(line, to_string=True)
        err = None
    except gdb.error as e:
        text, err = None, str(e)
    status = int(gdb.convenience_variable("memscope_status"))
    return text, err, status
gdb.execute("memscope buddyinfo")  # the first command says (on stderr) which offset it found
import os
from memscope.target import gdb as tgdb
out["memsave_used"] = any(v is not None for v in tgdb._memsave.values())
for argv in plan["runs"]:
    text, err, status = run("memscope " + " ".join(argv))
    out["runs"].append({"argv": argv, "out": text, "error": err, "status": status})
# Again with gdbstub memory packets only (no QEMU monitor memsave for bulk reads).
os.environ["MEMSCOPE_GDB_MEMSAVE"] = "0"
tgdb._memsave.clear()
out["runs_packets"] = []
for argv in plan["runs"]:
    text, err, status = run("memscope " + " ".join(argv))
    out["runs_packets"].append({"argv": argv, "out": text, "error": err, "status": status})
del os.environ["MEMSCOPE_GDB_MEMSAVE"]
tgdb._memsave.clear()
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
out["vmcoreinfo"] = t.vmcoreinfo().decode()
out["release"] = t.release
out["arch"] = t.arch
out["drgn_imported"] = any(m == "drgn" or m.startswith("drgn.") for m in sys.modules)
json.dump(out, open(plan["output"], "w"))
'''


def _plan() -> list[list[str]]:
    """Every registered command in every format it has."""
    commands._load()
    return [[name, "--format", fmt] for name, cmd in sorted(commands.COMMANDS.items())
            for fmt in cmd.formats]


@pytest.fixture(scope="module", params=list(GUESTS), ids=[f"kernel-{k}" for k in GUESTS])
def frozen_guest(request, tmp_path_factory):
    """A frozen guest (lab run --keep, mixed workload) and its vmcore of the same state."""
    name = request.param
    gdb_bin, mem = GUESTS[name]
    if shutil.which(gdb_bin) is None:
        pytest.skip(f"{gdb_bin} is not installed (apt-get install {gdb_bin})")
    d = tmp_path_factory.mktemp(f"gdb-{name}") / "run"

    def stop():
        with contextlib.suppress(LabError):
            lab.stop(d)

    request.addfinalizer(stop)
    meta = lab.run(lab.RunOptions(kernel=name, workload="mixed", mem=mem, mode="keep",
                                  progress=False), d)
    return name, d, meta


@pytest.fixture(scope="module")
def gdb_run(frozen_guest, tmp_path_factory):
    """One gdb batch run against the frozen guest: every command, then `disconnect`."""
    name, d, meta = frozen_guest
    gdb_bin = GUESTS[name][0]
    work = tmp_path_factory.mktemp(f"gdbrun-{name}")
    plan = {"runs": _plan(), "kaslr_methods": KASLR_METHODS[name], "layouts": LAYOUT_TYPES,
            "symbols": SYMBOLS, "enums": ENUMS, "sizes": SIZES,
            "output": str(work / "result.json")}
    (work / "plan.json").write_text(json.dumps(plan))
    driver = work / "driver.py"
    driver.write_text(f"import sys\nsys.argv_plan = {str(work / 'plan.json')!r}\n" + DRIVER)
    cmd = [gdb_bin, "-nx", "-batch", "-iex", "set index-cache enabled on",
           "-ex", f"file {meta['vmlinux']}",
           "-ex", f"target remote 127.0.0.1:{meta['gdb_port']}",
           "-ex", f"source {SCRIPT}",
           "-ex", "help memscope",
           "-ex", "memscope nosuchcommand",
           "-ex", f"source {driver}",
           "-ex", "disconnect"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert (work / "result.json").exists(), f"gdb failed:\n{p.stdout}\n{p.stderr}"
    return name, meta, json.loads((work / "result.json").read_text()), p


_CLI: dict[tuple, tuple[str, int, str]] = {}


def _cli(meta, argv) -> tuple[str, int, str]:
    """What `memscope -c VMCORE -s VMLINUX ARGV` prints (stdout, status, stderr)."""
    argv = ["-c", meta["snapshots"][0]["vmcore"], "-s", meta["vmlinux"], *argv]
    if tuple(argv) not in _CLI:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(argv)
        _CLI[tuple(argv)] = out.getvalue(), status, err.getvalue()
    return _CLI[tuple(argv)]


@pytest.mark.parametrize("reads", ["memsave", "packets"])
def test_every_command_and_format_prints_via_gdb_exactly_what_drgn_prints_on_the_vmcore(
        gdb_run, reads):
    """Bulk reads through QEMU's monitor (memsave, the default when QEMU is local) and
    through gdbstub memory packets only: both print what drgn prints."""
    name, meta, res, _ = gdb_run
    runs = res["runs"] if reads == "memsave" else res["runs_packets"]
    if reads == "memsave":
        assert res["memsave_used"], "QEMU's monitor memsave was not used on a local guest"
    assert runs, "no commands registered"
    for run in runs:
        want, status, err = _cli(meta, run["argv"])
        got = run["out"] if run["error"] is None else run["error"] + "\n"
        if status == 2:  # the CLI failed: gdb must fail with the same one line
            assert run["error"] == err.strip(), run["argv"]
        else:
            assert run["error"] is None, (run["argv"], run["error"])
            assert got == want, f"{name}: memscope {' '.join(run['argv'])} differs"
        assert run["status"] == status, run["argv"]


def test_kaslr_offset_found_by_each_method_equals_the_dumps_kerneloffset(gdb_run):
    name, meta, res, p = gdb_run
    vi = dict(line.split("=", 1) for line in res["vmcoreinfo"].splitlines() if "=" in line)
    want = f"kernel offset {int(vi['KERNELOFFSET'], 16):#x}\n"
    assert int(vi["KERNELOFFSET"], 16) != 0, "the guest booted without KASLR: nothing tested"
    for method, (text, err, _status) in res["kaslr"].items():
        assert err is None and text == want, (method, text, err)
    # The first memscope command said once, on stderr, which offset it found.
    assert p.stderr.count("memscope: kernel offset ") == 1


def test_gdb_adapter_layouts_symbols_enums_equal_the_drgn_adapters(gdb_run):
    from memscope.target.drgn import DrgnTarget, open_core

    name, meta, res, _ = gdb_run
    t = DrgnTarget(open_core(meta["snapshots"][0]["vmcore"], meta["vmlinux"]))
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
    assert res["release"] == t.release
    assert res["arch"] == t.arch == ARCH[name]
    assert res["vmcoreinfo"].encode() == t.vmcoreinfo()


def test_nothing_imported_inside_gdb_imports_drgn(gdb_run):
    assert gdb_run[2]["drgn_imported"] is False


def test_help_memscope_lists_every_command_and_a_bad_command_is_one_line(gdb_run):
    _, _, _, p = gdb_run
    commands._load()
    for name in ["kaslr", *commands.COMMANDS]:
        assert f"\n  {name} " in p.stdout, name
    bad = [line for line in p.stderr.splitlines() if "nosuchcommand" in line]
    assert bad == ["memscope: argument COMMAND: invalid choice: 'nosuchcommand' (choose from "
                   + ", ".join(repr(n) for n in ["kaslr", *commands.COMMANDS]) + ")"]
    assert "Traceback" not in p.stderr and "Python Exception" not in p.stderr


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
