"""`make demo`: boot the default kernel with a workload, dump it, and print memscope's
reports on the dump (every registered command that needs no arguments)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .errors import MemscopeError


def main() -> int:
    from . import cli, commands
    from .lab import DEFAULT_KERNEL, RunOptions, run

    out = Path("demo-out") / time.strftime("%Y%m%d-%H%M%S")
    try:
        print(f"== memscope lab run {DEFAULT_KERNEL} --workload mixed -o {out}", flush=True)
        meta = run(RunOptions(kernel=DEFAULT_KERNEL, workload="mixed", progress=True), out)
    except MemscopeError as e:
        print(f"memscope: {e}", file=sys.stderr)
        return e.exit_status
    print(f"   kernel {meta['release']}: booted in {meta['boot_seconds']} s, "
          f"dump agreed with /proc/buddyinfo and pagetypeinfo after {meta['tries']} boot(s)\n", flush=True)
    commands._load()
    status = 0
    for name in commands.COMMANDS:
        argv = ["-c", str(out / "vmcore"), "-s", meta["vmlinux"], name]
        print(f"== memscope {' '.join(argv)}", flush=True)
        rc = cli.main(argv)
        print(flush=True)
        status = status or (rc if rc not in (0, 1) else 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
