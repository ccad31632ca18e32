"""SLUB: ``slabinfo`` (and, to come in this module, ``slab`` and ``whatis``).

JSON records:

``slabinfo``: a list, one object per cache on ``slab_caches`` in list order (the order of
/proc/slabinfo), the :class:`memscope.mm.slub.SlabInfo` record::

    {"name": str, "active_objs": int, "num_objs": int, "objsize": int,
     "objperslab": int, "pagesperslab": int, "active_slabs": int, "num_slabs": int,
     "limit": 0, "batchcount": 0, "sharedfactor": 0, "sharedavail": 0}
"""

from __future__ import annotations

import dataclasses

from tabulate import tabulate

from ..mm import slub
from . import Result, command


def _slabinfo_args(p) -> None:
    pass


@command("slabinfo", "the slab caches as /proc/slabinfo counts them",
         formats=("table", "json", "proc"), arguments=_slabinfo_args)
def slabinfo(ctx, args) -> Result:
    rows = slub.slabinfo(ctx)

    def table() -> str:
        return tabulate([[r.name, r.active_objs, r.num_objs, r.objsize, r.objperslab,
                          r.pagesperslab, r.num_slabs] for r in rows],
                        headers=["cache", "active objs", "objs", "objsize", "objs/slab",
                                 "pages/slab", "slabs"]) + "\n"

    return Result([dataclasses.asdict(r) for r in rows], table,
                  lambda: slub.format_slabinfo(rows))
