"""``memscope fleet``: one command over many dumps, on Dask's distributed scheduler.

    memscope fleet DIR|GLOB --vmlinux-dir DIR [--scheduler ADDRESS] [--workers N]
                   [--format table|json|parquet] [-o FILE] COMMAND [ARGS...]

Dumps: every file under DIR (recursively) whose first bytes say it is a dump (an ELF
core, a kdump-compressed or a flattened dump), or the files GLOB matches (``**``
recursive).  Each dump is matched to its vmlinux by build ID: VMCOREINFO's ``BUILD-ID``
against the ``NT_GNU_BUILD_ID`` note of every ELF file under ``--vmlinux-dir``
(recursively).  Each dump is one task on a Dask cluster: a ``LocalCluster`` of worker
processes by default (``--workers``, default 2, one thread each: drgn's programs are
opened one per task), or the running scheduler at ``--scheduler ADDRESS``.  A progress
line is drawn on standard error when it is a terminal, and nothing otherwise.

One row per dump, in the order the dumps were found (sorted paths).  ``--format json``
prints a list of objects ``{"dump": path, "kernel": release or null, "build_id",
"status": "ok" or the one-line error, "result": what ``COMMAND --format json`` prints,
parsed (null on error), "headline": {...}}``; ``headline`` holds the numbers a fleet is
compared by, where the command's records have them: ``free_pages`` and
``free_blocks_by_order`` (summed over zones: buddyinfo, freelists, frag),
``largest_free_order`` (-1 when nothing is free), ``max_extfrag_index`` (thousandths,
frag's kernel fragmentation index, the highest over zones and orders); for slabinfo
``slab_objects``, ``slab_object_bytes``, ``largest_cache``, ``largest_cache_bytes`` and,
with ``--walk``, ``slab_bytes`` (see :func:`_slab_headline`).  ``--format
parquet`` writes the same rows with pandas/pyarrow to ``-o FILE`` (``result`` as a JSON
string, the headline as columns).  The table shows dump, kernel, status and headline.

Exit status: 0 when every dump answered, 1 when some row is an error, 2 for bad
arguments (one line).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys
from pathlib import Path

from .errors import MemscopeError

__all__ = ("Row", "find_dumps", "vmlinux_index", "run_one", "run_fleet", "add_parser",
           "main")

_DUMP_MAGIC = (b"KDUMP   ", b"makedumpfile")  # besides an ELF core


@dataclasses.dataclass
class Row:
    """One dump's answer.  ``status`` is "ok" or the one-line error; ``result`` is the
    command's JSON records (None on error); ``headline`` see the module docstring."""

    dump: str
    kernel: str | None
    build_id: str | None
    status: str
    result: object = None
    headline: dict = dataclasses.field(default_factory=dict)


def _is_core(path: Path) -> bool:
    """The file starts like a dump: an ELF core (e_type ET_CORE), KDUMP or flattened."""
    try:
        with open(path, "rb") as f:
            head = f.read(18)
    except OSError:
        return False
    if head.startswith(b"\x7fELF"):
        return len(head) >= 18 and int.from_bytes(head[16:18], "little") == 4  # ET_CORE
    return head.startswith(_DUMP_MAGIC)


def find_dumps(where: str) -> list[Path]:
    """The dumps at WHERE: a directory (searched recursively, files whose header says
    dump) or a glob pattern (``**`` recursive; every match that is a file).  Sorted.

    :raises MemscopeError: nothing found."""
    p = Path(where)
    if p.is_dir():
        found = [q for q in p.rglob("*") if q.is_file() and _is_core(q)]
    else:
        found = [Path(q) for q in glob.glob(where, recursive=True) if Path(q).is_file()]
    if not found:
        raise MemscopeError(f"{where}: no dumps found")
    return sorted(found)


def vmlinux_index(root: str | os.PathLike) -> dict[str, str]:
    """Build ID (hex) -> path of every ELF file with a GNU build ID under ROOT
    (recursively; ELF cores are skipped).

    :raises MemscopeError: ROOT is not a directory."""
    from .target.elf import NotElf64, build_id

    root = Path(root)
    if not root.is_dir():
        raise MemscopeError(f"{root}: --vmlinux-dir is not a directory")
    out: dict[str, str] = {}
    for q in sorted(root.rglob("*")):
        if not q.is_file():
            continue
        try:
            with open(q, "rb") as f:
                head = f.read(18)
                if not head.startswith(b"\x7fELF") or int.from_bytes(head[16:18], "little") == 4:
                    continue
                bid = build_id(f)
        except (OSError, NotElf64, ValueError):
            continue
        if bid:
            out.setdefault(bid, str(q))
    return out


def _headline(result) -> dict:
    """The fleet's comparison numbers from a command's JSON records (module docstring)."""
    out: dict = {}
    zones = result if isinstance(result, list) else []
    orders = None
    for z in zones:
        if not isinstance(z, dict):
            continue
        nr = z.get("nr_free") or [o.get("nr_free") for o in z.get("orders", [])]
        if nr and all(isinstance(n, int) for n in nr):
            orders = [a + b for a, b in zip(orders, nr)] if orders else list(nr)
        for o in z.get("orders", []):
            e = o.get("extfrag_index")
            if isinstance(e, int):
                out["max_extfrag_index"] = max(out.get("max_extfrag_index", e), e)
    if orders:
        out["free_blocks_by_order"] = orders
        out["free_pages"] = sum(n << k for k, n in enumerate(orders))
        out["largest_free_order"] = max((k for k, n in enumerate(orders) if n), default=-1)
    caches = [c for c in zones if isinstance(c, dict) and "objsize" in c and "name" in c]
    if caches:
        out.update(_slab_headline(caches))
    return out


def _slab_headline(caches: list[dict]) -> dict:
    """slabinfo's records (``--format json``; ``--walk``'s true counts when present):
    ``slab_objects`` (objects in use: /proc/slabinfo's active_objs, or the walk's
    allocated), ``slab_object_bytes`` (those times objsize, or the walk's used_bytes),
    ``largest_cache`` and ``largest_cache_bytes`` (the cache whose objects in use take the
    most bytes), and with ``--walk`` ``slab_bytes`` (the slabs' pages, in bytes)."""
    walk = all("allocated" in c for c in caches)
    used = {c["name"]: (c["used_bytes"] if walk else c["active_objs"] * c["objsize"])
            for c in caches}
    out = {"slab_objects": sum(c["allocated"] if walk else c["active_objs"] for c in caches),
           "slab_object_bytes": sum(used.values())}
    top = max(used, key=lambda n: (used[n], n))
    out["largest_cache"], out["largest_cache_bytes"] = top, used[top]
    if walk:
        out["slab_bytes"] = sum(c["bytes"] for c in caches)
    return out


def run_one(dump: str, vmlinux: str | None, argv: list[str]) -> Row:
    """Run the command ARGV (``["buddyinfo"]``, ...) on DUMP with debug info from VMLINUX,
    as ``memscope -c DUMP -s VMLINUX ARGV --format json`` would, in this process; every
    failure becomes the row's status (one line), never an exception.  This is the task
    each Dask worker runs."""
    os.environ.setdefault("DRGN_DISABLE_PLUGINS", "*")
    from .info import dump_info

    kernel = build = None
    try:
        info = dump_info(dump)
        kernel, build = info.release, info.build_id
        if vmlinux is None:
            raise MemscopeError(f"no vmlinux with build ID {build} under --vmlinux-dir"
                                if build else "the dump has no build ID (VMCOREINFO "
                                "BUILD-ID) to find its vmlinux by")
        from .cli import build_parser
        from .commands import execute
        from .target import drgn as tdrgn

        args = build_parser().parse_args(["-c", dump, "-s", vmlinux, *argv, "--format",
                                          "json"])
        target = tdrgn.open_dump_target(dump, vmlinux)
        text, _ = execute(target, args)
        if hasattr(target, "save_cache"):
            target.save_cache()
        result = json.loads(text)
        return Row(dump, kernel, build, "ok", result, _headline(result))
    except MemscopeError as e:
        return Row(dump, kernel, build, str(e))
    except SystemExit:  # argparse: the command line was checked before the run
        return Row(dump, kernel, build, f"bad arguments: {' '.join(argv)}")
    except Exception as e:  # noqa: BLE001 - a fleet run never stops for one dump
        first = str(e).splitlines()[0] if str(e) else ""
        return Row(dump, kernel, build, f"internal error: {type(e).__name__}: {first}")


def _build_id_of(dump: Path) -> str | None:
    from .info import dump_info

    try:
        return dump_info(dump).build_id
    except MemscopeError:
        return None


def run_fleet(dumps: list[Path], index: dict[str, str], argv: list[str], *,
              scheduler: str | None = None, workers: int = 2,
              progress: bool = False) -> list[Row]:
    """Run ARGV on every dump on a Dask cluster (the one at SCHEDULER, or a LocalCluster of
    WORKERS single-threaded processes, closed afterwards); rows in DUMPS order.  PROGRESS:
    draw "fleet: done/total" on standard error as tasks finish.

    :raises MemscopeError: the scheduler cannot be reached (one line)."""
    from dask.distributed import Client, LocalCluster, as_completed

    vmlinux = [index.get(_build_id_of(d) or "") for d in dumps]
    cluster = None
    try:
        if scheduler:
            client = Client(scheduler, timeout="20s")
        else:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=50)
            client = Client(cluster)
    except (OSError, TimeoutError) as e:
        if cluster is not None:
            cluster.close()
        raise MemscopeError(f"cannot reach the Dask scheduler {scheduler or ''}: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    try:
        futures = client.map(run_one, [str(d) for d in dumps], vmlinux,
                             [list(argv)] * len(dumps), pure=False)
        done = 0
        for _ in as_completed(futures):
            done += 1
            if progress:
                sys.stderr.write(f"\rfleet: {done}/{len(dumps)} dumps")
                sys.stderr.flush()
        if progress:
            sys.stderr.write("\n")
        return client.gather(futures)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _frame(rows: list[Row]):
    import pandas as pd

    return pd.DataFrame([dict(dump=r.dump, kernel=r.kernel, build_id=r.build_id,
                              status=r.status,
                              result=None if r.result is None else json.dumps(r.result),
                              **r.headline) for r in rows])


def render(rows: list[Row], fmt: str, output: str | None) -> str:
    """The rows as text (table, json); parquet is written to OUTPUT and "" returned."""
    if fmt == "json":
        return json.dumps([dataclasses.asdict(r) for r in rows], indent=2) + "\n"
    if fmt == "parquet":
        _frame(rows).to_parquet(output, index=False)
        return ""
    from tabulate import tabulate

    keys = []
    for r in rows:
        keys += [k for k in r.headline if k not in keys]
    table = [[r.dump, r.kernel or "-", r.status] + [r.headline.get(k, "") for k in keys]
             for r in rows]
    return tabulate(table, headers=["dump", "kernel", "status"] + keys) + "\n"


def add_parser(sub) -> None:
    """The ``fleet`` subparser (COMMAND and its arguments are taken verbatim)."""
    f = sub.add_parser("fleet", help="run one command over many dumps on a Dask cluster",
                       description=__doc__.split("\n\n")[2])
    f.add_argument("where", metavar="DIR|GLOB", help="a directory of dumps (searched "
                   "recursively) or a glob pattern")
    f.add_argument("--vmlinux-dir", required=True, metavar="DIR",
                   help="where the vmlinux files are (searched recursively, matched by "
                   "build ID)")
    f.add_argument("--scheduler", metavar="ADDRESS",
                   help="an existing Dask scheduler (default: a local cluster)")
    f.add_argument("--workers", type=int, default=2, metavar="N",
                   help="worker processes of the local cluster (default 2)")
    f.add_argument("--format", "-f", choices=("table", "json", "parquet"), default="table")
    f.add_argument("-o", "--output", metavar="FILE", help="the parquet file to write")
    f.set_defaults(fleet_argv=[])
    f.epilog = ("COMMAND [ARGS...] comes last: any memscope command with its own arguments "
                "(its --format is json, always)")


#: fleet's options that take a value (the word after them is not the COMMAND).
_VALUED = {"--vmlinux-dir", "--scheduler", "--workers", "--format", "-f", "-o", "--output"}


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split a command line at fleet's COMMAND: (everything before it, COMMAND and its
    arguments).  COMMAND is the first word after ``fleet`` that is a registered command
    and not the value of one of fleet's options; (ARGV, []) when there is none."""
    from . import commands

    commands._load()
    if "fleet" not in argv:
        return argv, []
    i = argv.index("fleet") + 1
    while i < len(argv):
        word = argv[i]
        if word in _VALUED:
            i += 2
            continue
        if word in commands.COMMANDS and i > argv.index("fleet") + 1:
            return argv[:i], argv[i:]
        i += 1
    return argv, []


def main(args) -> int:
    """Run ``memscope fleet`` with ARGS (its parsed namespace); the exit status."""
    from . import commands
    from .cli import build_parser

    argv = list(args.fleet_argv)
    if not argv or argv[0] not in commands.COMMANDS:
        raise MemscopeError("fleet needs a COMMAND after its options (e.g. buddyinfo): one "
                            f"of {', '.join(sorted(commands.COMMANDS))}")
    if "--format" in argv or "-f" in argv:
        raise MemscopeError("fleet: give --format before COMMAND (each dump's result is "
                            "its JSON records)")
    if args.format == "parquet" and not args.output:
        raise MemscopeError("fleet --format parquet needs -o FILE")
    if args.output and args.format != "parquet":
        raise MemscopeError("fleet: -o FILE is where --format parquet writes; table and "
                            "json go to standard output")
    if args.output and Path(args.output).exists():
        raise MemscopeError(f"{args.output}: exists; not overwritten")
    if args.workers < 1:
        raise MemscopeError("fleet: --workers must be at least 1")
    # The command's own arguments are checked once here, not once per dump.
    build_parser().parse_args(["-c", "/dev/null", *argv])
    dumps = find_dumps(args.where)
    index = vmlinux_index(args.vmlinux_dir)
    rows = run_fleet(dumps, index, argv, scheduler=args.scheduler, workers=args.workers,
                     progress=sys.stderr.isatty())
    sys.stdout.write(render(rows, args.format, args.output))
    return 0 if all(r.status == "ok" for r in rows) else 1
