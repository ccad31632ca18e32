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


def truth_disagreement(truth: dict[str, bytes]) -> str | None:
    """Why the truth files disagree with each other, or None.

    The guest reads pagetypeinfo just before buddyinfo; if a block moved in between, the
    free counts per order in pagetypeinfo (summed over migratetypes) differ from buddyinfo's
    line for the same zone.  Such a snapshot is refrozen like one whose dump moved."""
    if "pagetypeinfo" not in truth:
        return None
    sums: dict[tuple[str, str], list[int] | None] = {}
    for line in truth["pagetypeinfo"].decode(errors="replace").splitlines():
        # "Node    0, zone      DMA, type    Unmovable      0      1 ..."
        if not line.startswith("Node") or ", type" not in line:
            continue
        head, _, rest = line.partition(", type")
        node, _, zone = head.partition(", zone")
        key = (node.split()[1], zone.strip())
        fields = rest.split()
        counts = fields[len(fields) - sum(1 for f in fields if f.lstrip(">").isdigit()):]
        if key not in sums:
            sums[key] = [0] * len(counts)
        acc = sums[key]
        if acc is None or len(acc) != len(counts) or any(c.startswith(">") for c in counts):
            sums[key] = None  # capped counts (">100000"): nothing to compare
            continue
        for i, c in enumerate(counts):
            acc[i] += int(c)
    for line in truth.get("buddyinfo", b"").decode(errors="replace").splitlines():
        head, _, rest = line.partition(", zone")
        parts = rest.split()
        if not parts:
            continue
        key = (head.split()[1], parts[0])
        want = [int(x) for x in parts[1:]]
        got = sums.get(key)
        if got is not None and got != want:
            return (f"node {key[0]} zone {key[1]}: pagetypeinfo sums {got} but buddyinfo "
                    f"says {want}")
    return None
