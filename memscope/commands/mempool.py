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
from . import CommandError, Result, command


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
                 "BELOW MIN" if p.below_min else "", p.backing, p.element_size, p.cache]
                for p in scan.pools]
        out = tabulate(rows, headers=["mempool_t", "owner", "min_nr", "curr_nr", "",
                                      "backing", "element", "cache"])
        return (out + f"\n{scan.count('global')} found in the kernel's data, "
                f"{scan.count('slab')} in slab objects; rejected hits: {scan.rejected}\n")

    return Result(data, table, exit_status=1 if any(p.below_min for p in scan.pools) else 0)


def _one_args(p) -> None:
    p.add_argument("pool", help="the mempool_t's address (0x...) or a global's name "
                                "(fs_bio_set.bio_pool style member paths too)")


@command("mempool", "one mempool and the elements it holds", arguments=_one_args)
def mempool(ctx, args) -> Result:
    t = ctx.t
    text = args.pool
    if text.lower().startswith("0x"):
        try:
            addr = int(text, 16)
        except ValueError:
            raise CommandError(f"mempool: {text!r} is not an address") from None
    else:
        name, _, path = text.partition(".")
        if not t.has_symbol(name):
            raise CommandError(f"mempool: no symbol {name!r} in the kernel")
        addr = t.symbol(name)
        if path:
            from ..kernel.fields import offsetof

            vtype = t.variable_type(name) if hasattr(t, "variable_type") else None
            if vtype is None:
                raise CommandError(f"mempool: cannot tell the type of {name!r} for "
                                   f"member {path!r}; give the address")
            addr += offsetof(t, vtype, path)
    p = _mp._Checker(ctx).check(addr, "given", "")
    if p is None:
        raise CommandError(f"mempool: {text} ({addr:#x}) is not a mempool_t this kernel "
                           "could be using (its callbacks, counts or element array do not "
                           "check)")
    from ..kernel import kallsyms

    p = dataclasses.replace(p, owner=kallsyms.format_symbol(ctx, addr))

    def table() -> str:
        head = (f"mempool_t {p.address:#x} ({p.owner}): {p.curr_nr} of {p.min_nr} elements, "
                f"{p.backing} {p.element_size} bytes" + (f" from {p.cache}" if p.cache else ""))
        return head + "\n" + "".join(f"  [{i}] {e:#x}\n" for i, e in enumerate(p.elements))

    return Result(_json(p, elements=True), table)
