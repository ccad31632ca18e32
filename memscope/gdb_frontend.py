"""memscope inside gdb: the ``memscope`` gdb command.

In gdb attached to a QEMU guest's gdbstub, with the guest's vmlinux loaded::

    (gdb) file vmlinux
    (gdb) target remote 127.0.0.1:1234
    (gdb) source gdb_scripts/memscope.py          # from the source tree, or:
    (gdb) source /path/to/site-packages/memscope/gdb_frontend.py
    (gdb) memscope buddyinfo -f proc

``python3 -m memscope.gdb_frontend`` (with the python memscope is installed in) prints the
``source`` line for an installed copy.  The command takes every command registered in
:mod:`memscope.commands` with the command line's own flags (the same argparse subparsers),
plus ``memscope kaslr`` (show, re-detect or set the kernel offset).  Failures are one line
(``memscope: ...``), never a traceback; ``$memscope_status`` holds the exit status the
command line would have returned (1 when ``check`` finds a problem).

This file is also the script gdb sources for an installed package: run as ``__main__`` it
puts the package's parent directory on ``sys.path`` (after gdb's own entries, so that the
system's numpy stays first) and registers the command.  Nothing here imports drgn.
"""

from __future__ import annotations

import argparse
import os
import sys

try:
    import gdb
except ImportError:  # `python3 -m memscope.gdb_frontend` outside gdb
    gdb = None

SUMMARY = "Reconstruct the guest kernel's memory-management state (memscope)."


class _ParseError(Exception):
    pass


class _Exit(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting."""

    def error(self, message):
        raise _ParseError(message)

    def exit(self, status=0, message=None):
        if message:
            raise _ParseError(message.strip())
        raise _Exit(status)

    def print_help(self, file=None):
        gdb.write(self.format_help())

    def print_usage(self, file=None):
        gdb.write(self.format_usage())


_parser: list[argparse.ArgumentParser] = []


def parser() -> argparse.ArgumentParser:
    """build_parser(), built once per gdb session (argparse and its gettext look-ups cost
    ~2 ms per command; the commands do not change while gdb runs)."""
    if not _parser:
        _parser.append(build_parser())
    return _parser[0]


def build_parser() -> argparse.ArgumentParser:
    from memscope import commands

    p = _Parser(prog="memscope", description=SUMMARY)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    k = sub.add_parser(
        "kaslr", help="show the kernel (KASLR) offset; re-detect it, or set it by hand",
        description="The kernel offset memscope adds to vmlinux addresses (found automatically "
        "the first time memscope runs on a connection).")
    k.add_argument("offset", nargs="?", metavar="OFFSET",
                   help="set the offset (hex, e.g. KERNELOFFSET from the guest's VMCOREINFO)")
    k.add_argument("--detect", action="store_true", help="find the offset again")
    k.add_argument("--method", choices=("auto", "zero", "vbar", "pc", "scan"), default="auto",
                   help="how to find it (default: the cheapest that works)")
    commands.add_subparsers(p)
    return p


def _doc() -> str:
    from memscope import commands

    commands._load()
    names = {"kaslr": "show the kernel (KASLR) offset; re-detect it, or set it by hand"}
    names.update({c.name: c.help for c in commands.COMMANDS.values()})
    width = max(map(len, names))
    lines = [SUMMARY, "",
             "Usage: memscope COMMAND [--format table|json|proc] [OPTIONS]",
             "",
             "The same commands and flags as the memscope command line, read from the guest",
             "gdb is attached to (QEMU's gdbstub) with the symbols of the vmlinux gdb loaded.",
             "The KASLR offset is found automatically. 'memscope COMMAND --help' describes a",
             "command; $memscope_status holds its exit status (1: check found a problem).",
             "", "Commands:"]
    lines += [f"  {n:<{width}}  {h}" for n, h in names.items()]
    return "\n".join(lines)


def _kaslr(args) -> None:
    from memscope.errors import MemscopeError
    from memscope.target import gdb as tgdb

    if args.offset is not None:
        try:
            off = int(args.offset, 16)
        except ValueError:
            raise MemscopeError(f"kaslr: {args.offset!r} is not a hex number") from None
        tgdb.set_kernel_offset(off)
    else:
        methods = tgdb.METHODS if args.method == "auto" else (args.method,)
        tgdb.kernel_offset(force=args.detect or args.method != "auto", quiet=True,
                           methods=methods)
    off = tgdb.kernel_offset(quiet=True)
    gdb.write(f"kernel offset {off:#x}\n")


def run(argv: list[str]) -> int:
    """Run one memscope command line inside gdb; returns the exit status.  Raises
    MemscopeError (and friends) for failures; the gdb command turns them into one line."""
    from memscope.commands import execute
    from memscope.errors import MemscopeError
    from memscope.target.gdb import session_target

    try:
        args = parser().parse_args(argv)
    except _Exit:
        return 0
    except _ParseError as e:
        raise MemscopeError(str(e)) from None
    if args.command is None:
        raise MemscopeError("a COMMAND is needed (see 'help memscope')")
    if args.command == "kaslr":
        _kaslr(args)
        return 0
    target = session_target()
    try:
        text, status = execute(target, args)
    finally:
        target.view.restore()  # the thread (vCPU) the user had selected
    gdb.write(text)
    gdb.flush()
    return status


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if msg.startswith("memscope:") else f"memscope: {msg}"


TABULATE_MIN = (0, 9)  # pyproject.toml: tabulate>=0.9


def _version(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def _tabulate_dirs(package: str = "tabulate") -> list[str]:
    """Directories that may hold the PACKAGE memscope was installed with: the site dir
    of this package (an installed copy), and the site dir of the python on PATH (or
    $MEMSCOPE_PYTHON) when that python has memscope (a source tree installed with pip -e)."""
    import shutil
    import subprocess

    dirs = []
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dirs.append(here)
    py = os.environ.get("MEMSCOPE_PYTHON") or shutil.which("python3")
    if py and os.path.realpath(py) != os.path.realpath(sys.executable or ""):
        try:
            p = subprocess.run(
                [py, "-c", f"import memscope, {package}, os; "
                 f"print(os.path.dirname(os.path.dirname({package}.__file__)))"],
                capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
            if p.returncode == 0 and p.stdout.strip():
                dirs.append(p.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return dirs


def _prefer_pillow() -> None:
    """Make gdb's python draw pictures with the Pillow memscope's own python has (same
    version, same zlib and FreeType: the same PNG bytes as the command line), when that
    python has one and it loads here; else gdb's python keeps its own (Debian's
    python3-pil), whose pictures look the same but may differ in bytes."""
    import importlib.util

    if "PIL" in sys.modules:
        return
    for d in _tabulate_dirs("PIL"):
        init = os.path.join(d, "PIL", "__init__.py")
        if not os.path.isfile(init):
            continue
        spec = importlib.util.spec_from_file_location(
            "PIL", init, submodule_search_locations=[os.path.dirname(init)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["PIL"] = mod
        try:
            spec.loader.exec_module(mod)
            from PIL import Image  # noqa: F401 - the C core must load too
        except Exception:  # noqa: BLE001 - not loadable here: gdb's own Pillow
            for name in [m for m in sys.modules if m == "PIL" or m.startswith("PIL.")]:
                del sys.modules[name]
            continue
        return


def _prefer_tabulate() -> str | None:
    """Make gdb's python use a tabulate >= 0.9, as the command line does (0.8 aligns
    columns differently, so tables would differ).  Debian 12's python3-tabulate is 0.8.9:
    then load (only) the tabulate package that memscope's own python has.  Returns a
    warning when no good tabulate is found."""
    import importlib.util

    try:
        import tabulate
        have = getattr(tabulate, "__version__", "0")
        if _version(have) >= TABULATE_MIN:
            return None
    except ImportError:
        have = None
    import glob

    for d in _tabulate_dirs():
        init = os.path.join(d, "tabulate", "__init__.py")
        # Its version from the dist-info beside it (tabulate 0.10 asks importlib.metadata,
        # which would find the system's older distribution instead).
        versions = [os.path.basename(p)[len("tabulate-"):-len(".dist-info")]
                    for p in glob.glob(os.path.join(d, "tabulate-*.dist-info"))]
        if not os.path.isfile(init) or not versions or _version(versions[0]) < TABULATE_MIN:
            continue
        spec = importlib.util.spec_from_file_location(
            "tabulate", init, submodule_search_locations=[os.path.dirname(init)])
        mod = importlib.util.module_from_spec(spec)
        saved = sys.modules.get("tabulate")
        sys.modules["tabulate"] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception:  # noqa: BLE001 - not loadable here: keep looking
            if saved is not None:
                sys.modules["tabulate"] = saved
            else:
                sys.modules.pop("tabulate", None)
            continue
        mod.__version__ = versions[0]
        return None
    what = f"tabulate {have}" if have else "no tabulate"
    return (f"memscope: warning: gdb's python has {what}; memscope needs tabulate >= 0.9 "
            "(tables may differ from the command line's): "
            f"pip install --target /usr/local/lib/python{sys.version_info[0]}.{sys.version_info[1]}"
            "/dist-packages 'tabulate>=0.9'")


def _complete(text: str, word: str) -> list[str]:
    """Completion from the argparse parser itself: commands, their options, format names."""
    sub = parser()._subparsers._group_actions[0].choices
    words = gdb.string_to_argv(text)
    partial = "" if not words or text.endswith(" ") else words[-1]
    done = words if not partial else words[:-1]
    # gdb may break words at '-': complete PARTIAL, return what replaces WORD.
    cut = len(partial) - len(word)

    def out(cands):
        return [c[cut:] for c in cands if c.startswith(partial)]

    if not done:
        return out(list(sub))
    p = sub.get(done[0])
    if p is None:
        return []
    opts = p._option_string_actions
    prev = opts.get(done[-1]) if len(done) > 1 else None
    if prev is not None and prev.choices:
        return out([str(c) for c in prev.choices])
    if partial.startswith("-"):
        return out(sorted(o for o in opts if o.startswith("--")))
    return []


def register():
    """Define the gdb command ``memscope`` (again, if it exists: re-sourcing is fine)."""
    if "tabulate" not in sys.modules or _version(
            getattr(sys.modules["tabulate"], "__version__", "0")) < TABULATE_MIN:
        warning = _prefer_tabulate()
        if warning:
            gdb.write(warning + "\n", gdb.STDERR)
    _prefer_pillow()

    class MemscopeCommand(gdb.Command):
        def __init__(self):
            super().__init__("memscope", gdb.COMMAND_DATA)

        def invoke(self, arg, from_tty):
            from memscope.errors import MemscopeError

            self.dont_repeat()
            status = 2
            try:
                status = run(gdb.string_to_argv(arg))
            except MemscopeError as e:
                raise gdb.GdbError(_one_line(e)) from None
            except KeyboardInterrupt:
                raise gdb.GdbError("memscope: interrupted") from None
            except gdb.GdbError:
                raise
            except Exception as e:  # never a traceback in gdb
                if os.environ.get("MEMSCOPE_DEBUG"):
                    raise
                raise gdb.GdbError(_one_line(f"internal error: {type(e).__name__}: {e} "
                                             "(MEMSCOPE_DEBUG=1 shows the traceback)")) from None
            finally:
                gdb.set_convenience_variable("memscope_status", status)

        def complete(self, text, word):
            try:
                return _complete(text, word or "")
            except Exception:  # noqa: BLE001 - completion must never raise
                return []

    MemscopeCommand.__doc__ = _doc()
    # gdb forgets what it knew of an objfile when a new one is loaded: so do we.
    # and guest memory is kept between commands only while the guest stays stopped.
    from memscope.target import gdb as tgdb

    tgdb.install_hooks()
    return MemscopeCommand()


def _main() -> None:
    here = os.path.abspath(__file__)
    if gdb is None:
        # `python3 -m memscope.gdb_frontend`: tell the user what to type in gdb.
        print(f"source {here}")
        return
    parent = os.path.dirname(os.path.dirname(here))
    if parent not in sys.path:
        sys.path.append(parent)
    import memscope.gdb_frontend as m

    m.register()


if __name__ == "__main__":
    _main()
