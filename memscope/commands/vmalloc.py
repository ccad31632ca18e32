"""vmalloc areas: ``vmallocinfo`` (/proc/vmallocinfo) and ``vmalloc --by-caller``.

JSON output (``--format json``), stable keys:

``vmallocinfo``::

    {"areas": [{"kind": "vm_struct" | "vm_map_ram" | "unpurged",
                "start": int, "end": int, "size": int,       # bytes (size: guard included)
                "vmap_area": int,                          # address of the struct vmap_area
                "caller": int, "caller_name": str,         # %pS of vm->caller
                "nr_pages": int, "phys_addr": int, "flags": int,
                "kinds": [str],                            # ioremap, vmalloc, vmap, ...
                "vpages": bool,
                "nodes": {"<node>": int} | null,           # pages per node (NUMA)
                "uninitialized": bool}],
     "problems": [problem]}

``vmalloc --by-caller``: a list, largest first::

    {"caller": str, "kind": str, "areas": int, "bytes": int, "pages": int}

where ``kind`` is the area's flag words joined by "+" ("vmalloc", "ioremap", "vmap",
"vm_map_ram", "unpurged"...), ``bytes`` the areas' sizes (guard pages included, as
/proc/vmallocinfo prints them) and ``pages`` the pages mapped (``nr_pages``).

Both exit with status 1 when a list walk found a problem.
"""

from __future__ import annotations

import dataclasses

from tabulate import tabulate

from ..mm import vmalloc as vm
from . import Result, command


def _area_json(a: vm.VmallocArea) -> dict:
    d = dataclasses.asdict(a)
    d["kinds"] = list(a.kinds)
    d["nodes"] = None if a.nodes is None else {str(n): c for n, c in a.nodes.items()}
    return d


@command("vmallocinfo", "every vmalloc/vmap/ioremap area, as /proc/vmallocinfo lists them",
         formats=("table", "json", "proc"))
def vmallocinfo(ctx, args) -> Result:
    info = vm.vmallocinfo(ctx)

    def table() -> str:
        rows = [[f"{a.start:#x}", f"{a.end:#x}", a.size, a.caller_name or a.kind,
                 a.nr_pages or "", f"{a.phys_addr:#x}" if a.phys_addr else "",
                 " ".join(a.kinds + (("vpages",) if a.vpages else ())) or a.kind,
                 " ".join(f"N{n}={c}" for n, c in (a.nodes or {}).items())]
                for a in info.areas]
        out = tabulate(rows, headers=["start", "end", "size", "caller", "pages", "phys",
                                      "kind", "nodes"]) + "\n"
        return out + "".join(f"problem: {p}\n" for p in info.problems)

    return Result({"areas": [_area_json(a) for a in info.areas],
                   "problems": [p.to_json() for p in info.problems]},
                  table, lambda: vm.format_vmallocinfo(info),
                  exit_status=1 if info.problems else 0)


def _vmalloc_args(p) -> None:
    p.add_argument("--by-caller", action="store_true",
                   help="areas, bytes and pages per caller and kind, largest first "
                        "(the default view)")
    p.add_argument("--png", metavar="FILE",
                   help="also draw the vmalloc range: areas by kind, guard pages, lazily "
                        "freed areas (a new file)")


@command("vmalloc", "vmalloc usage per caller and kind (from the vmap areas)",
         arguments=_vmalloc_args)
def vmalloc(ctx, args) -> Result:
    from .pages import _write, png_path as checked_png

    png_path = checked_png("vmalloc", getattr(args, "png", None))
    info = vm.vmallocinfo(ctx)
    if png_path:
        from ..report import png

        page = ctx.t.page_size
        areas = [(a.start, a.end, vm.picture_kind(a), vm.guard_size(a, page))
                 for a in info.areas]
        _write(png_path, png.vmalloc_map(
            areas, f"vmalloc areas of {ctx.t.release}: {len(areas)} areas, "
                   f"{png.human_bytes(sum(a.size for a in info.areas))}", page))
    rows = vm.by_caller(info)
    data = [dataclasses.asdict(r) for r in rows]

    def table() -> str:
        total = vm.CallerUsage("total", "", sum(r.areas for r in rows),
                               sum(r.bytes for r in rows), sum(r.pages for r in rows))
        out = tabulate([[r.caller, r.kind, r.areas, r.bytes, r.pages]
                        for r in [*rows, total]],
                       headers=["caller", "kind", "areas", "bytes", "pages"])
        return out + "\n" + "".join(f"problem: {p}\n" for p in info.problems)

    return Result(data, table, exit_status=1 if info.problems else 0)

