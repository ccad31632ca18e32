"""Check a dump against the guest's truth: is this snapshot one to keep?"""

from __future__ import annotations

from pathlib import Path

from ..mm.buddy import buddyinfo, format_buddyinfo
from ..mm.zone import MM
from ..target.drgn import DrgnTarget, open_core


def dump_disagreement(vmcore: Path, vmlinux: Path, truth: dict[str, bytes]) -> str | None:
    """Why the dump VMCORE does not agree with the guest's TRUTH, or None when it does.

    - buddyinfo: memscope's reconstruction of free_area[].nr_free must equal the truth
      byte for byte (the lab's promise);
    - pagetypeinfo: the number of blocks on each free_area[order].free_list[migratetype],
      counted here with drgn's own list helpers (independently of memscope.mm), must equal
      the truth's "Free pages count per migrate type" rows (a block can move between
      lists while every order's total stays the same)."""
    prog = open_core(vmcore, vmlinux)
    if format_buddyinfo(buddyinfo(MM(DrgnTarget(prog)))).encode() != truth["buddyinfo"]:
        return "dump and /proc/buddyinfo differ"
    rows = _free_rows(truth.get("pagetypeinfo", b""))
    if not rows:
        return None
    from drgn.helpers.linux.list import list_for_each
    from drgn.helpers.linux.mmzone import for_each_online_pgdat

    for pgdat in for_each_online_pgdat(prog):
        node = int(pgdat.node_id)
        for zone in pgdat.node_zones:
            name = zone.name.string_().decode()
            want = rows.get((node, name))
            if want is None:
                continue
            for mt, per_order in enumerate(want):
                for order, count in enumerate(per_order):
                    if count is None:  # the kernel stopped counting (">100000")
                        continue
                    head = zone.free_area[order].free_list[mt].address_of_()
                    n = 0
                    for _ in list_for_each(head):
                        n += 1
                        if n > count:
                            break
                    if n != count:
                        return (f"node {node} zone {name} order {order} migratetype {mt}: "
                                f"{n} blocks on the dump's list, {count} in /proc/pagetypeinfo")
    return None


def _free_rows(text: bytes) -> dict[tuple[int, str], list[list[int | None]]]:
    """pagetypeinfo's free rows: (node, zone) -> per migratetype (in enum order), per order,
    the count (None where the kernel printed a capped ">100000")."""
    out: dict[tuple[int, str], list[list[int | None]]] = {}
    for line in text.decode(errors="replace").splitlines():
        # "Node    0, zone      DMA, type    Unmovable      0      1 ..."
        if not line.startswith("Node") or ", type" not in line:
            continue
        head, _, rest = line.partition(", type")
        node, _, zone = head.partition(", zone")
        fields = rest.split()
        ncounts = sum(1 for f in fields if f.lstrip(">").isdigit())
        counts = [None if f.startswith(">") else int(f) for f in fields[len(fields) - ncounts:]]
        out.setdefault((int(node.split()[1]), zone.strip()), []).append(counts)
    return out


def truth_disagreement(truth: dict[str, bytes]) -> str | None:
    """Why the truth files disagree with each other, or None.

    The guest reads pagetypeinfo just before buddyinfo; if a block moved in between, the
    free counts per order in pagetypeinfo (summed over migratetypes) differ from buddyinfo's
    line for the same zone.  Such a snapshot is refrozen like one whose dump moved."""
    rows = _free_rows(truth.get("pagetypeinfo", b""))
    for line in truth.get("buddyinfo", b"").decode(errors="replace").splitlines():
        head, _, rest = line.partition(", zone")
        parts = rest.split()
        if not parts:
            continue
        key = (int(head.split()[1]), parts[0])
        want = [int(x) for x in parts[1:]]
        per_mt = rows.get(key)
        if per_mt is None or any(c is None for counts in per_mt for c in counts):
            continue  # no rows, or capped counts: nothing to compare
        got = [sum(col) for col in zip(*per_mt)]
        if got != want:
            return (f"node {key[0]} zone {key[1]}: pagetypeinfo sums {got} but buddyinfo "
                    f"says {want}")
    return None
