"""Mempools: ``mempools`` and ``mempool ADDR|SYMBOL``.

JSON output:

``mempools``::

    {"pools": [{"address": int, "found": "global" | "slab", "owner": str,
                "min_nr": int, "curr_nr": int, "below_min": bool,
                "backing": "slab" | "kmalloc" | "kvmalloc" | "pages",
                "element_size": int, "cache": str}],
     "found": {"global": int, "slab": int},        # pools found each way
     "rejected": {"global": int, "slab": int}}     # callback hits the checks refused

``mempool ADDR|SYMBOL``: one pool as above with ``"elements": [int]`` (the addresses of
the elements it holds).  ``mempools`` exits with status 1 when a pool is below its
``min_nr`` (its reserve is in use).
"""

from __future__ import annotations

import dataclasses

from tabulate import tabulate

from ..mm import mempool as _mp
from ..target.base import TargetError
from . import CommandError, Result, command, parse_number


def _json(p: _mp.Mempool, elements: bool = False) -> dict:
    d = dataclasses.asdict(p)
    d["below_min"] = p.below_min
    if elements:
        d["elements"] = list(p.elements)
    else:
        del d["elements"]
    return d


@command("mempools", "every mempool found in the kernel's data and in slab objects, checked")
def mempools(ctx, args) -> Result:
    scan = _mp.mempools(ctx)
    data = {"pools": [_json(p) for p in scan.pools],
            "found": {k: scan.count(k) for k in ("global", "slab")},
            "rejected": scan.rejected}

    def table() -> str:
        rows = [[f"{p.address:#x}", p.owner, p.min_nr, p.curr_nr,
                 "below min_nr" if p.below_min else "full" if p.curr_nr == p.min_nr
                 else "", p.backing, p.element_size, p.cache]
                for p in scan.pools]
        out = tabulate(rows, headers=["mempool_t", "owner", "min_nr", "curr_nr", "state",
                                      "backing", "element bytes", "cache (merged caches: "
                                                                  "the first name)"])
        return (out + f"\n{scan.count('global')} found in the kernel's data, "
                f"{scan.count('slab')} in slab objects; callback hits the checks refused: "
                f"{scan.rejected['global']} in the kernel's data, {scan.rejected['slab']} "
                "in slab objects\n")

    return Result(data, table, exit_status=1 if any(p.below_min for p in scan.pools) else 0)


def _one_args(p) -> None:
    p.add_argument("pool", help="the mempool_t's address (0x...), or a global's name with "
                                "a member path: fs_bio_set.bio_pool")


@command("mempool", "one mempool and the elements it holds", arguments=_one_args)
def mempool(ctx, args) -> Result:
    t = ctx.t
    text = args.pool.strip()
    if not text:
        raise CommandError("mempool: give a mempool_t's address or a global's name")
    if text[0].isdigit():
        addr = parse_number("mempool", "address", text)
    else:
        name, _, path = text.partition(".")
        if not t.has_symbol(name):
            raise CommandError(f"mempool: no symbol {name!r} in the kernel")
        addr = t.symbol(name)
        if path:
            from ..kernel.fields import offsetof

            try:
                vtype = t.variable(name).type_name
                addr += offsetof(t, vtype, path)
            except TargetError as e:
                raise CommandError(f"mempool: {text}: {e}") from None
    try:
        p = _mp.mempool(ctx, addr)
    except TargetError as e:
        where = "" if text[0].isdigit() else f"{text}: "
        raise CommandError(f"mempool: {where}{e}") from None

    def table() -> str:
        head = (f"mempool_t {p.address:#x}{f' ({p.owner})' if p.owner else ''}: "
                f"{p.curr_nr} of {p.min_nr} elements, "
                f"{p.backing} {p.element_size} bytes" + (f" from {p.cache}" if p.cache else ""))
        return head + "\n" + "".join(f"  [{i}] {e:#x}\n" for i, e in enumerate(p.elements))

    return Result(_json(p, elements=True), table)
