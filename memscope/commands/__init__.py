"""The analysis commands, shared by every front end (CLI, GDB, drgn).

A command is a name, its arguments (argparse, so that the CLI and GDB parse the same flags)
and a function from (KernelContext, parsed arguments) to a :class:`Result`.  Front ends only
choose a target, call :func:`execute` (which runs the command, renders it and turns every
failure into one :class:`~memscope.errors.MemscopeError` line) and print what it returns.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any, Callable

from ..errors import MemscopeError
from ..mm.context import KernelContext
from ..target.base import Target, TargetError

FORMATS = ("table", "json", "proc")


@dataclasses.dataclass
class Result:
    """What a command returns: records (the JSON form) and the views of them.

    ``data`` is plain JSON-able data (dicts, lists, numbers, strings) with stable keys.
    ``table`` renders the human view; ``proc`` the kernel's /proc file (None when the
    kernel has no such file); ``exit_status`` is 1 when the command found a problem."""

    data: Any
    table: Callable[[], str]
    proc: Callable[[], str] | None = None
    exit_status: int = 0

    def render(self, fmt: str) -> str:
        if fmt == "json":
            return json.dumps(self.data, indent=2, sort_keys=False) + "\n"
        if fmt == "proc":
            if self.proc is None:
                raise CommandError("this command has no /proc format; use --format table or json")
            return self.proc()
        return self.table()


class CommandError(Exception):
    """Bad arguments for a command (exit status 2)."""


def parse_number(cmd: str, what: str, text: str, *, bits: int = 64) -> int:
    """A number given on a command line, as every command reads one: decimal, or hex with
    ``0x``; surrounding spaces ignored; negative or wider than BITS bits refused.

    :raises CommandError: "CMD: WHAT 'TEXT' is not a number ..." (one line)."""
    t = text.strip()
    try:
        v = int(t, 16) if t.lower().startswith("0x") else int(t, 10)
    except ValueError:
        raise CommandError(f"{cmd}: {what} {text!r} is not a number (decimal, or hex with "
                           "0x)") from None
    if not 0 <= v < 1 << bits:
        raise CommandError(f"{cmd}: {what} {text} is not a {bits}-bit unsigned number")
    return v


def parse_pid(cmd: str, text: str) -> int:
    """A process id (:func:`parse_number`, at most 2^22, PID_MAX_LIMIT)."""
    pid = parse_number(cmd, "pid", text)
    if pid > 1 << 22:
        raise CommandError(f"{cmd}: pid {text} is above the kernel's limit (4194304)")
    return pid


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[KernelContext, argparse.Namespace], Result]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    formats: tuple[str, ...] = ("table", "json")
    #: The command turns the dump's missing pages it read into findings of its own
    #: (``Target.missing_pages_read()``); for the others an answer past one is refused.
    reports_missing: bool = False
    #: Runs the command without a target when its arguments say so (``events parse
    #: FILE``, ``replay --from DIR``): returns the Result, or None when a target is needed.
    offline: Callable[[argparse.Namespace], Result | None] | None = None


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, *, formats: tuple[str, ...] = ("table", "json"),
            arguments: Callable[[argparse.ArgumentParser], None] | None = None,
            reports_missing: bool = False,
            offline: Callable[[argparse.Namespace], Result | None] | None = None):
    """Register the decorated function as the command NAME (REPORTS_MISSING: see
    :attr:`Command.reports_missing`; OFFLINE: see :attr:`Command.offline`)."""

    def register(fn: Callable[[KernelContext, argparse.Namespace], Result]):
        COMMANDS[name] = Command(name, help, fn, arguments, formats, reports_missing, offline)
        return fn

    return register


def execute(target: Target | KernelContext, args: argparse.Namespace) -> tuple[str, int]:
    """
    Run one command as every front end (CLI, GDB, drgn) runs it: take the context of
    *target* (a new one for a :class:`Target`; a :class:`KernelContext` given is refreshed,
    keeping its probes but reading memory afresh), run ``args.command`` with *args*, and
    render the result in ``args.format``.

    :param target: the target to read, or a context kept by the caller
    :param args: the parsed arguments of the command (its subparser's namespace)
    :return: the rendered text and the exit status (1 when the command found a problem)
    :raises MemscopeError: with the one-line message to print (exit status 2): bad
        arguments for the command, or a type, symbol or read the command needs is missing
        (then the message starts with the command's name)
    """
    if isinstance(target, KernelContext):
        ctx = target
        ctx.refresh()
    else:
        ctx = KernelContext(target)
    ctx.t.forget_missing_pages()
    try:
        result = COMMANDS[args.command].run(ctx, args)
        text = result.render(args.format)
    except CommandError as e:
        raise MemscopeError(str(e)) from None
    except TargetError as e:
        # A read that fell into a hole of the dump makes any later failure suspect (a task
        # list cut short: "no process with pid N"): name the hole, not the consequence.
        missing = getattr(e, "missing", None) or ctx.t.missing_pages_read()
        raise MemscopeError(f"{args.command}: {_missing_message(ctx) if missing else e}") \
            from None
    if ctx.t.missing_pages_read() and not COMMANDS[args.command].reports_missing:
        # A read fell into a hole of the dump and whoever made it carried on: the answer
        # lacks what that page held.  Never print it as if it were whole.
        raise MemscopeError(f"{args.command}: {_missing_message(ctx)}")
    return text, result.exit_status


def _missing_message(ctx: KernelContext) -> str:
    """One line naming the first page of the dump's holes that this command read, and how
    many more."""
    pages = ctx.t.missing_pages_read()
    more = f" (and {len(pages) - 1} more missing pages)" if len(pages) > 1 else ""
    return f"cannot answer: {pages[0]}{more}"


def execute_offline(args: argparse.Namespace) -> tuple[str, int] | None:
    """Run ``args.command`` without a target if its arguments ask for none
    (:attr:`Command.offline`): the rendered text and exit status, or None when the
    command needs a target.

    :raises MemscopeError: bad arguments or input (one line, exit status 2)."""
    cmd = COMMANDS.get(args.command)
    if cmd is None or cmd.offline is None:
        return None
    try:
        result = cmd.offline(args)
        if result is None:
            return None
        return result.render(args.format), result.exit_status
    except CommandError as e:
        raise MemscopeError(str(e)) from None
    except TargetError as e:
        raise MemscopeError(f"{args.command}: {e}") from None


#: What a front end prints (on stderr, after the answer) when a live kernel moved under
#: a read: memscope.mm.live says how that is seen.
MOVED_NOTE = ("memscope: note: the running kernel changed while it was read (its free "
              "lists or page counters moved): the answer is approximate")


def execute_live(target: Target | KernelContext,
                 args: argparse.Namespace) -> tuple[str, int, bool]:
    """
    :func:`execute` on a kernel that runs while it is read (``-k``, drgn on the live
    kernel), between two readings of the allocator's counters
    (:func:`memscope.mm.live.counters`).

    A command may watch only the part of itself its answer's exactness depends on
    (:func:`memscope.mm.live.watched`: ``check`` watches its buddy half, not its
    seconds-long slab walk); then the counters around that part decide.
    A command that found problems (exit status 1: ``check``, ``freelists``) while the
    counters stayed put runs once more: problems that do not come back were a race the
    counters missed (a page taken from a list and put back, leaving its head as it was).

    :return: the rendered text, the exit status, and whether a race was seen (the counters
        moved during the read or could not be read, or the problems did not repeat: the
        answer is then approximate; otherwise no race was seen and the answer is what the
        kernel held)
    :raises MemscopeError: as :func:`execute`
    """
    text, status, moved = _execute_watched(target, args)
    if status == 1 and not moved:
        again, _, moved_again = _execute_watched(target, args)
        moved = moved_again or again != text
    return text, status, moved


def _execute_watched(target: Target | KernelContext,
                     args: argparse.Namespace) -> tuple[str, int, bool]:
    """:func:`execute` between two readings of :func:`memscope.mm.live.counters`."""
    from ..mm import live

    ctx = target if isinstance(target, KernelContext) else KernelContext(target)
    ctx.refresh()
    ctx.live_watch = watch = live.Watch()
    try:
        with live.reading(ctx) as whole:
            text, status = execute(ctx, args)
    finally:
        del ctx.live_watch
    # A command that watched the part its answer depends on (check) says itself.
    return text, status, watch.moved if watch.used else whole.moved


def add_subparsers(parser: argparse.ArgumentParser) -> None:
    """Add one subparser per registered command (the same for the CLI and GDB)."""
    _load()
    sub = parser._subparsers._group_actions[0] if parser._subparsers else parser.add_subparsers(
        dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        p.add_argument("--format", "-f", choices=cmd.formats, default="table",
                       help="output format (default: table)")
        if cmd.add_arguments:
            cmd.add_arguments(p)


_loaded: list[bool] = []


def _load() -> None:
    """Import every module of this package (once): importing one registers its commands."""
    if _loaded:
        return
    import importlib
    import pkgutil

    for m in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{m.name}")
    _loaded.append(True)
