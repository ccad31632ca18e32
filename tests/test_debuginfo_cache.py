"""The debug-info cache per kernel build: the second dump of a build is read without its
DWARF and gives what the guest's kernel printed (/proc files in the snapshot's truth),
also for another dump of the same build with another KASLR offset; a cache that does not
fit the dump is detected and not used; a vmlinux of another build is refused."""

from __future__ import annotations

import json

import pytest

from memscope.cli import build_parser
from memscope.commands import execute
from memscope.errors import MemscopeError
from memscope.target.debuginfo_cache import cache_path
from memscope.target.drgn import CachedDrgnTarget, open_dump_target


def run(target, *argv):
    text, status = execute(target, build_parser().parse_args(list(argv)))
    target.save_cache()
    return text


def kaslr(snap) -> int:
    from memscope.target.dumpfile import read_dump_file

    return int(read_dump_file(snap.vmcore).vmcoreinfo_fields()["KERNELOFFSET"], 16)


@pytest.mark.parametrize("first,second", [("6.12", "6.12-numa"), ("6.12-arm64", "6.12-arm64")])
def test_a_warm_cache_reads_no_dwarf_and_gives_the_kernel_s_answers(lab_case, tmp_path, first,
                                                                    second):
    a, b = lab_case(first), lab_case(second)
    cold = open_dump_target(a.vmcore, a.vmlinux, tmp_path)
    assert isinstance(cold, CachedDrgnTarget) and cold.dwarf_loaded
    assert run(cold, "pagetypeinfo", "-f", "proc") == a.truth_text("pagetypeinfo")
    assert run(cold, "buddyinfo", "-f", "proc") == a.truth_text("buddyinfo")
    warm = open_dump_target(b.vmcore, b.vmlinux, tmp_path)
    assert not warm.dwarf_loaded
    assert run(warm, "pagetypeinfo", "-f", "proc") == b.truth_text("pagetypeinfo")
    assert run(warm, "buddyinfo", "-f", "proc") == b.truth_text("buddyinfo")
    assert not warm.dwarf_loaded  # every question was answered from the cache
    if first != second:  # the premise of the relocation: two KASLR offsets, one cache
        assert kaslr(a) != kaslr(b)


def test_a_cache_that_does_not_fit_the_dump_is_not_used(lab_case, tmp_path):
    snap = lab_case("6.12")
    run(open_dump_target(snap.vmcore, snap.vmlinux, tmp_path), "buddyinfo")
    path = next((tmp_path / "debuginfo").iterdir())
    good = json.loads(path.read_text())
    assert path == cache_path(tmp_path, good["build_id"])
    # node_data moved (VMCOREINFO's SYMBOL(node_data) says where it is), another release.
    for damage in ("symbol", "release"):
        data = json.loads(json.dumps(good))
        if damage == "symbol":
            data["entries"]["symbol"]["node_data"]["v"] += 4096
        else:
            data["release"] = "6.12.0-other"
        path.write_text(json.dumps(data))
        t = open_dump_target(snap.vmcore, snap.vmlinux, tmp_path)
        assert t.dwarf_loaded, damage  # not trusted: the DWARF was loaded
        assert run(t, "buddyinfo", "-f", "proc") == snap.truth_text("buddyinfo")
        t.cache.dirty = True
        t.save_cache()
        assert json.loads(path.read_text())["entries"]["symbol"]["node_data"] == \
            good["entries"]["symbol"]["node_data"]


def test_a_vmlinux_of_another_build_is_refused_even_with_a_warm_cache(lab_case, tmp_path):
    snap, other = lab_case("6.12"), lab_case("6.1")
    run(open_dump_target(snap.vmcore, snap.vmlinux, tmp_path), "buddyinfo")
    with pytest.raises(MemscopeError) as e:
        open_dump_target(snap.vmcore, other.vmlinux, tmp_path)
    assert "does not match this kernel" in str(e.value) and "\n" not in str(e.value)


def _link_addresses(vmlinux) -> dict[str, int]:
    """Every symbol's link-time address in the vmlinux's ELF symbol table (nm)."""
    import subprocess

    out = {}
    for line in subprocess.run(["nm", str(vmlinux)], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        f = line.split()
        if len(f) == 3:
            out.setdefault(f[2], int(f[0], 16))
    return out


@pytest.mark.parametrize("case", ["6.12", "6.12-arm64", "7.2-arm64"])
def test_the_cache_stores_each_kernel_symbol_at_its_link_address(lab_case, tmp_path, case):
    """Kernel-half addresses are stored without the KASLR offset: each equals the
    vmlinux's own symbol table, whatever this dump's offset (the arm64 ``_end``, which
    drgn 0.3.0 leaves unrelocated, was stored with the first dump's offset taken off, and a
    second dump of the build with another offset read a wrong _end or none)."""
    snap = lab_case(case)
    assert kaslr(snap) != 0, "no KASLR: nothing tested"
    t = open_dump_target(snap.vmcore, snap.vmlinux, tmp_path)
    run(t, "meminfo", "-f", "proc")
    assert t.symbol("_end") > t.symbol("_text")
    t.save_cache()
    data = json.loads(next((tmp_path / "debuginfo").iterdir()).read_text())
    link = _link_addresses(snap.vmlinux)
    stored = {n: e["v"] for n, e in data["entries"]["symbol"].items()
              if "v" in e and e["v"] >= 1 << 63 and n in link}
    assert "_end" in stored and "_text" in stored
    for name, v in stored.items():
        assert v == link[name], name


def test_a_file_that_is_not_a_vmlinux_is_refused_even_with_a_warm_cache(lab_case, tmp_path):
    """A warm cache never opens the vmlinux's DWARF: -s is still checked (found by a
    new-user review: -s /etc/passwd answered from the cache)."""
    snap = lab_case("6.12")
    run(open_dump_target(snap.vmcore, snap.vmlinux, tmp_path), "buddyinfo")
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/sh\n")
    for bad, says in ((text, "not an ELF file"), (snap.vmcore, "no DWARF debug info")):
        with pytest.raises(MemscopeError) as e:
            open_dump_target(snap.vmcore, bad, tmp_path)
        assert says in str(e.value) and "\n" not in str(e.value), str(e.value)
