"""The memscope command line.

    memscope -c VMCORE -s VMLINUX COMMAND [--format table|json|proc]   a crash dump
    memscope -k COMMAND                                              the running kernel
    memscope --qemu SOCKET -s VMLINUX COMMAND                        a QEMU guest (QMP)
    memscope lab kernels|fetch|run|stop ...                          the test lab

Every failure the user can act on is one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .errors import MemscopeError


def _lab_parser(sub) -> None:
    from .lab import kernels

    lab = sub.add_parser("lab", help="boot real Debian kernels in QEMU, freeze and dump them",
                         description="The test lab: real Debian kernels booted in QEMU, frozen, "
                         "dumped, with the guest's own /proc files as ground truth.")
    labsub = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", required=True)
    labsub.add_parser("kernels", help="list the known kernels and whether each is cached")
    f = labsub.add_parser("fetch", help="download a kernel, its DWARF and busybox into the cache")
    f.add_argument("name", metavar="NAME", help=f"one of {', '.join(kernels.KERNELS)}")
    r = labsub.add_parser(
        "run", help="boot KERNEL with a workload, dump it, capture /proc truth",
        description="Boot KERNEL in QEMU (TCG), run the workload (a shell script run by the "
        "guest's init; it may call 'snapshot NAME' and 'track PID [LABEL]'), take the final "
        "snapshot when it returns, and write DIR/vmcore, DIR/truth/ and DIR/meta.json.")
    r.add_argument("kernel", metavar="KERNEL", help=f"one of {', '.join(kernels.KERNELS)}")
    r.add_argument("--workload", default="idle",
                   help="a shell script, or the name of one in fixtures/workloads (default: idle)")
    r.add_argument("--mem", type=int, default=512, metavar="MB", help="guest memory (default 512)")
    r.add_argument("--smp", type=int, default=2, metavar="N", help="vCPUs (default 2)")
    r.add_argument("--numa", type=int, default=1, metavar="NODES",
                   help="NUMA nodes; memory is split evenly (default 1)")
    r.add_argument("--append", default="", metavar="ARGS", help="extra kernel command line")
    r.add_argument("--disk", type=int, default=64, metavar="MB",
                   help="an empty NVMe disk for the workload, /dev/nvme0n1 where the kernel "
                   "has the driver built in (default 64; 0: none)")
    r.add_argument("--dump-format", action="append", default=[], metavar="FORMAT",
                   choices=("elf", "kdump-zlib", "kdump-lzo", "kdump-snappy"),
                   help="also dump each accepted snapshot in FORMAT (QEMU's kdump-zlib, "
                   "kdump-lzo, kdump-snappy: flattened, read by memscope as makedumpfile -R "
                   "would reassemble it) from the same stopped guest, into DIR/vmcore.FORMAT; "
                   "repeatable; the ELF dump DIR/vmcore, which acceptance reads, is "
                   "written too unless --no-elf")
    r.add_argument("--no-elf", action="store_true",
                   help="no ELF dump (a big guest's is as large as its memory): DIR/vmcore is "
                   "the first --dump-format's dump reassembled, kdump-compressed")
    r.add_argument("--trace", default="", metavar="GROUPS",
                   help="enable these tracepoint groups before the workload, comma separated "
                   "(kmem: its page and slab events; cma, vmalloc: all of theirs, where the "
                   "kernel has them); every snapshot's dump then carries the events")
    r.add_argument("--trace-kb", type=int, default=4096, metavar="KB",
                   help="with --trace: the ring buffer per CPU (buffer_size_kb, default 4096)")
    r.add_argument("--timeout", type=float, default=600, metavar="SECONDS",
                   help="time limit for one boot, workload included (default 600)")
    r.add_argument("--tries", type=int, default=4, help="boots before giving up (default 4)")
    r.add_argument("--userland", action="store_true",
                   help="boot a small Debian userland (python3, numpy, tabulate, drgn, and "
                   "memscope from this source tree; the kernel's vmlinux in "
                   "/usr/lib/debug/boot) and run the workload in it: memscope -k and drgn "
                   "work inside the guest; files the workload writes under /results are "
                   "copied to DIR/results/")
    r.add_argument("--kdump-level", type=int, default=None, metavar="LEVEL",
                   help="take the dump as a production machine does: the guest (a --userland "
                   "one, with Debian's kexec-tools and makedumpfile) boots with crashkernel=, "
                   "loads a capture kernel with kexec -p, reads its truth and panics (sysrq c) "
                   "after the workload; the capture kernel runs makedumpfile -d LEVEL (0-31) "
                   "onto a disk the host reads into DIR/vmcore (kdump-compressed)")
    r.add_argument("--kdump-compress", action="append", default=[], metavar="COMP",
                   choices=("zlib", "lzo", "snappy", "zstd"),
                   help="with --kdump-level: makedumpfile's compression (-c zlib, -l lzo, "
                   "-p snappy, -z zstd; Debian's makedumpfile has no snappy); repeatable: the "
                   "first is DIR/vmcore, each other DIR/vmcore.makedumpfile-COMP, all from "
                   "the same /proc/vmcore (default zlib)")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--keep", action="store_true",
                      help="leave the frozen guest up with its gdbstub open")
    mode.add_argument("--live", action="store_true",
                      help="do not freeze: leave the guest running its workload")
    r.add_argument("--detach", action="store_true",
                   help="with --keep/--live: return at once even on a terminal (the default "
                   "when standard input is not a terminal); otherwise wait until Ctrl-C")
    r.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="output directory (must not exist or be empty)")
    s = labsub.add_parser("stop", help="end the guest left by 'lab run --keep/--live'")
    s.add_argument("dir", metavar="DIR")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors ("memscope: ...", exit status 2, no usage dump);
    subparsers inherit it."""

    def error(self, message: str):
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from . import commands

    p = _Parser(
        prog="memscope",
        description="Reconstruct the Linux kernel's memory-management state (buddy allocator, "
        "zones, ...) from a crash dump, the live kernel or a QEMU guest.")
    p.add_argument("--version", action="version", version=f"memscope {__version__}")
    src = p.add_mutually_exclusive_group()
    src.add_argument("-c", "--core", metavar="VMCORE", help="a kernel crash dump (vmcore)")
    src.add_argument("-k", "--kernel", action="store_true", help="the running kernel (/proc/kcore)")
    src.add_argument("--qemu", metavar="SOCKET", help="a QEMU guest's QMP socket")
    p.add_argument("-s", "--symbols", metavar="VMLINUX", help="vmlinux with DWARF debug info")
    p.add_argument("--pause", action="store_true",
                   help="with --qemu: stop the guest (QMP 'stop') while memscope reads it and "
                   "let it run again afterwards, whatever happens (errors, Ctrl-C); without "
                   "it a running guest changes under the read and answers are approximate")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _lab_parser(sub)
    i = sub.add_parser("info", help="what a dump is: format, compression, dump level, "
                       "release, build ID, memory, what is missing (needs only -c)",
                       description="Read a dump's own headers (no debug info needed): its "
                       "format, compression, makedumpfile dump level, kernel release and "
                       "build ID (VMCOREINFO), the memory it describes and every range it "
                       "describes but does not hold.  With -s, whether the vmlinux's build "
                       "ID matches.")
    i.add_argument("--format", "-f", choices=("table", "json"), default="table",
                   help="output format (default: table)")
    from . import fleet

    fleet.add_parser(sub)
    from .commands import replay

    replay.add_arguments(sub.add_parser(
        "replay", help="predict dump B from dump A and the events traced in between",
        description="Predict dump B from dump A and the events traced in between "
        "(buddy free blocks, pcp lists, slab objects) and say where they agree."))
    commands.add_subparsers(p)
    return p


def _open_target(args):
    from .target import drgn as tdrgn

    if args.core:
        return tdrgn.open_dump_target(args.core, args.symbols)
    elif args.kernel:
        prog = tdrgn.open_live(args.symbols)
    elif args.qemu:
        prog = tdrgn.open_qemu(args.qemu, args.symbols)
    else:
        raise MemscopeError("no target: give -c VMCORE -s VMLINUX, -k, or --qemu SOCKET -s VMLINUX")
    return tdrgn.DrgnTarget(prog)


def _wait_for_guest(meta: dict, out: Path) -> None:
    """Stay in the foreground until the guest ends (memscope lab stop) or Ctrl-C ends it."""
    import time

    from . import lab
    from .lab.qemu import alive

    print("press Ctrl-C to end the guest", flush=True)
    try:
        while alive(meta["qemu_pid"]) and Path(meta["qmp_socket"]).exists():
            time.sleep(0.5)
    except KeyboardInterrupt:
        lab.stop(out)
        print("guest ended")


def _lab(args) -> int:
    from . import lab
    from .lab import kernels

    if args.lab_command == "kernels":
        rows = []
        for name, spec in kernels.KERNELS.items():
            k = kernels.cached(name)
            rows.append([name, spec.qemu_arch, spec.suite, "yes" if k else "no",
                         k.release if k else "-"])
        from tabulate import tabulate

        print(tabulate(rows, headers=["name", "arch", "suite", "cached", "release"]))
        return 0
    if args.lab_command == "fetch":
        k = kernels.fetch(args.name)
        print(f"{k.name}: {k.release} in {k.root}")
        return 0
    if args.lab_command == "run":
        if args.kdump_compress and args.kdump_level is None:
            raise MemscopeError("--kdump-compress goes with --kdump-level (makedumpfile's "
                            "compression in the kdump path)", exit_status=2)
        mode = "keep" if args.keep else "live" if args.live else "dump"
        opts = lab.RunOptions(kernel=args.kernel, workload=args.workload, mem=args.mem,
                              smp=args.smp, numa=args.numa, append=args.append, disk=args.disk,
                              mode=mode, trace=args.trace, trace_kb=args.trace_kb,
                              dump_formats=tuple(f for f in dict.fromkeys(args.dump_format)
                                                 if f != "elf"),
                              tries=args.tries, timeout=args.timeout,
                              userland=args.userland, kdump_level=args.kdump_level,
                              kdump_compress=tuple(dict.fromkeys(args.kdump_compress))
                              or ("zlib",), elf=not args.no_elf)
        meta = lab.run(opts, Path(args.output))
        for snap in meta["snapshots"]:
            print(f"{snap['vmcore']}  (truth: {snap['truth']})")
        if mode != "dump":
            print(f"guest up: gdb 127.0.0.1:{meta['gdb_port']}, QMP {meta['qmp_socket']}; "
                  f"end it with: memscope lab stop {args.output}", flush=True)
            if sys.stdin.isatty() and not args.detach:
                _wait_for_guest(meta, Path(args.output))
        return 0
    if args.lab_command == "stop":
        lab.stop(Path(args.dir))
        return 0
    raise AssertionError(args.lab_command)


def _info(args) -> int:
    """memscope info: the dump's headers, printed (no debug info is loaded)."""
    import dataclasses
    import json

    from .info import dump_info, format_info

    if not args.core:
        raise MemscopeError("info reads a dump: give -c VMCORE")
    info = dump_info(args.core, args.symbols)
    sys.stdout.write(json.dumps(dataclasses.asdict(info), indent=2) + "\n"
                     if args.format == "json" else format_info(info))
    return 0


def _terminated(signum, frame):
    # SIGTERM cleans up like Ctrl-C: the lab stops its QEMU and removes what it staged.
    raise KeyboardInterrupt


def _run_command(args, target=None) -> int:
    """Open the target (unless TARGET is given, already open), run the command, print its
    output; the command's exit status.  On the running kernel (-k) the answer is followed
    by a note on stderr when the kernel was seen to move during the read."""
    from .commands import MOVED_NOTE, execute, execute_live

    target = target if target is not None else _open_target(args)
    moved = False
    if args.kernel:
        text, status, moved = execute_live(target, args)
    else:
        text, status = execute(target, args)
    if hasattr(target, "save_cache"):
        target.save_cache()
    if sys.stdout is None:
        raise MemscopeError("standard output is closed: nowhere to print the answer")
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        raise MemscopeError(f"cannot write the answer to standard output: "
                            f"{e.strerror or e}") from None
    if moved:
        print(MOVED_NOTE, file=sys.stderr)
    return status


def _run_paused(args) -> int:
    """--pause: stop the guest over QMP, read it in a child process, let it run again.

    The child holds drgn's QMP connection (QEMU serves one client at a time); only its
    exit is sure to release the socket, so the parent resumes the guest after the child
    has ended, and kills the child first on Ctrl-C or SIGTERM."""
    import signal

    from .target.qmp import paused

    with paused(args.qemu):
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the child: Ctrl-C is the parent's to handle
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            status = 2
            try:
                status = _run_command(args)
            except MemscopeError as e:
                print(f"memscope: {e}", file=sys.stderr)
                status = e.exit_status
            except BrokenPipeError:
                status = 0
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        try:
            _, st = os.waitpid(pid, 0)
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
    return os.waitstatus_to_exitcode(st)


def main(argv: list[str] | None = None) -> int:
    import signal

    signal.signal(signal.SIGTERM, _terminated)
    # drgn loads its plugins (memscope's own %memscope among them) while a program opens,
    # from C code that reports and drops a Ctrl-C arriving then; the command line needs none.
    os.environ.setdefault("DRGN_DISABLE_PLUGINS", "*")
    try:
        parser = build_parser()
        from .fleet import split_argv

        head, fleet_argv = split_argv(sys.argv[1:] if argv is None else list(argv))
        args = parser.parse_args(head)
        if fleet_argv:
            args.fleet_argv = fleet_argv
        if args.command is None:
            parser.print_usage(sys.stderr)
            print("memscope: a COMMAND is needed (see memscope --help)", file=sys.stderr)
            return 2
        if args.command == "lab":
            return _lab(args)
        if args.command == "info":
            return _info(args)
        if args.command == "fleet":
            from . import fleet

            return fleet.main(args)
        if args.command == "replay":
            from .commands import replay

            text, status = replay.run(args)
            sys.stdout.write(text)
            return status
        from .commands import execute_offline

        offline = execute_offline(args)
        if offline is not None:
            sys.stdout.write(offline[0])
            return offline[1]
        if args.pause and not args.qemu:
            raise MemscopeError("--pause needs --qemu SOCKET (a dump does not change; the "
                                "running kernel of -k cannot be paused)")
        if args.pause:
            return _run_paused(args)
        note = None  # printed after the output: a live answer is approximate
        if args.qemu:
            from .target.qmp import run_state

            if run_state(args.qemu) == "running":
                note = ("memscope: note: the guest ran while it was read: the answer is "
                        "approximate (--pause stops it for the read)")
        status = _run_command(args)
        if note:
            print(note, file=sys.stderr)
        return status
    except MemscopeError as e:
        print(f"memscope: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("memscope: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
