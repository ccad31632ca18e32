"""Check a dump against the guest's truth: is this snapshot one to keep?"""

from __future__ import annotations

import re
from pathlib import Path

from ..mm.buddy import buddyinfo, format_buddyinfo
from ..mm.zone import MM
from ..target.drgn import DrgnTarget, open_core


def dump_disagreement(vmcore: Path, vmlinux: Path, truth: dict[str, bytes]) -> str | None:
    """Why the dump VMCORE does not agree with the guest's TRUTH, or None when it does.

    - buddyinfo: memscope's reconstruction of free_area[].nr_free must equal the truth
      byte for byte (the lab's promise);
    - vmstat: the global free, file, anon and shmem page counters must not have moved
      since the guest read /proc/vmstat by more than the per-CPU deltas explain;
    - pagetypeinfo: the number of blocks on each free_area[order].free_list[migratetype],
      counted here with drgn's own list helpers (independently of memscope.mm), must equal
      the truth's "Free pages count per migrate type" rows (a block can move between
      lists while every order's total stays the same)."""
    prog = open_core(vmcore, vmlinux)
    target = DrgnTarget(prog)
    if format_buddyinfo(buddyinfo(MM(target))).encode() != truth["buddyinfo"]:
        return "dump and /proc/buddyinfo differ"
    why = _counters_moved(prog, target.page_size, truth)
    if why:
        return why
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


# /proc/vmstat names of global counters that must not have moved since the guest read
# /proc/vmstat (its first truth file), and how far each may: "thresholds" is what the
# per-CPU counter deltas can hide (the sum of every zone's and CPU's "vm stats threshold");
# the free page counter may also move by 0.5% of memory (the truth's meminfo is compared
# with the dump's free pages with 1% in the tests).
_COUNTERS = (("nr_free_pages", "NR_FREE_PAGES", 200), ("nr_file_pages", "NR_FILE_PAGES", 0),
             ("nr_anon_pages", "NR_ANON_MAPPED", 0), ("nr_shmem", "NR_SHMEM", 0))


def _counters_moved(prog, page_size: int, truth: dict[str, bytes]) -> str | None:
    """Whether a global vmstat counter in the dump (vm_zone_stat[] / vm_node_stat[]) moved
    away from the value the guest's /proc/vmstat printed by more than the per-CPU deltas
    can explain: then memory moved while the truth was being read (seen on arm64: 16 MiB
    allocated between the guest's reads of meminfo and buddyinfo)."""
    vmstat = dict(re.findall(r"^(\w+) (\d+)$", truth.get("vmstat", b"").decode(), re.M))
    zoneinfo = truth.get("zoneinfo", b"").decode()
    thresholds = sum(int(x) for x in re.findall(r"vm stats threshold:\s+(\d+)", zoneinfo))
    meminfo = truth.get("meminfo", b"").decode()
    m = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M)
    if not vmstat or not thresholds or not m:
        return None
    total_pages = int(m.group(1)) * 1024 // page_size
    for name, enumerator, fraction in _COUNTERS:
        if name not in vmstat:
            continue
        try:
            const = prog.constant(enumerator)
        except LookupError:
            continue
        array = "vm_zone_stat" if "zone_stat_item" in const.type_.type_name() else "vm_node_stat"
        dumped = prog[array][const.value_()].counter.value_()
        bound = max(thresholds, total_pages // fraction if fraction else 0)
        if abs(int(vmstat[name]) - dumped) > bound:
            return (f"{name} moved from {vmstat[name]} (/proc/vmstat) to {dumped} (dump), "
                    f"more than {bound} pages")
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
