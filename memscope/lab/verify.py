"""Check a dump against the guest's truth with memscope's own reconstruction."""

from __future__ import annotations

from pathlib import Path

from ..mm.buddy import buddyinfo, format_buddyinfo
from ..mm.zone import MM
from ..target.drgn import DrgnTarget, open_core


def dump_buddyinfo(vmcore: Path, vmlinux: Path) -> bytes:
    """/proc/buddyinfo as computed from VMCORE's free_area[].nr_free."""
    mm = MM(DrgnTarget(open_core(vmcore, vmlinux)))
    return format_buddyinfo(buddyinfo(mm)).encode()
