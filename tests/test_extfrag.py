"""frag --format proc against the kernel's own /sys/kernel/debug/extfrag/unusable_index and
extfrag_index, byte for byte, on every real lab kernel.

The guest reads both debugfs files right before /proc/buddyinfo (memscope/lab/guest/
snapshot), and the lab keeps a snapshot only when their values are what mm/vmstat.c's
formulas give on that buddyinfo and buddyinfo equals the dump's nr_free (drgn,
memscope/lab/verify.py): the files are the kernel's own rendering of the dumped state.
The mixed and numa workloads leave a zone without free blocks of the top orders
(fixtures/workloads/fragment.sh), so that the extfrag index is not -1.000 everywhere."""

from __future__ import annotations

import subprocess
import sys

import pytest

FILES = ("unusable_index", "extfrag_index")


def memscope_frag(snap, proc_file: str) -> str:
    r = subprocess.run([sys.executable, "-m", "memscope.cli", "-c", str(snap.vmcore), "-s",
                        str(snap.vmlinux), "frag", "-f", "proc", "--proc-file", proc_file],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return r.stdout


def kernel_index(field: str) -> int:
    """A value printed by ``"%d.%03d", index / 1000, index % 1000`` (C division) back to
    the index: "-1.000" is -1000, "0.250" is 250."""
    whole, _, frac = field.partition(".")
    return int(whole) * 1000 + int(frac)


def truth_values(snap, name: str) -> list[list[int]]:
    """Every zone line's indices in the guest's extfrag/NAME."""
    rows = []
    for line in snap.truth_text(f"extfrag/{name}").splitlines():
        fields = line.split()
        assert fields[:2] == ["Node", fields[1]] and fields[2] == "zone", line
        rows.append([kernel_index(f) for f in fields[4:]])
    return rows


@pytest.mark.parametrize("name", FILES)
def test_frag_proc_is_byte_identical_to_debugfs(real_kernel, name):
    assert memscope_frag(real_kernel, name) == real_kernel.truth_text(f"extfrag/{name}")


def test_the_truth_is_fragmented_enough_to_prove_something(real_kernel):
    """The comparison above is evidence only if the files hold values other than the
    trivial ones: some zone must lack free blocks of some order (extfrag index not -1.000,
    which it is whenever a block of the order or above is free) and have free memory
    unusable for some order (unusable index above 0)."""
    extfrag = truth_values(real_kernel, "extfrag_index")
    unusable = truth_values(real_kernel, "unusable_index")
    assert extfrag and unusable
    assert any(v not in (-1000, 0) for row in extfrag for v in row), extfrag
    assert any(0 < v < 1000 for row in unusable for v in row), unusable
