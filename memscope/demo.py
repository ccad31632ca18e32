"""`make demo`: boot the default kernel with a workload, dump it, and print memscope's
reports on the dump (every registered command that needs no arguments).

The run is the lab's case of the default kernel with the ``mixed`` workload
(memscope.lab.cases), cached under ``$MEMSCOPE_CACHE/lab-cases``: the first demo (or
``make test``) boots and dumps the guest, later ones reuse that dump and its truth until
the guest scripts or workloads change (``make clean-cases`` drops it)."""

from __future__ import annotations

import sys

from .errors import MemscopeError


def main() -> int:
    from . import cli, commands
    from .lab import DEFAULT_KERNEL, cases, kernels, runner

    opts = runner.RunOptions(**cases.CASES[DEFAULT_KERNEL], progress=True)
    out = kernels.cache_dir() / "lab-cases" / cases.case_key(opts)
    try:
        if (out / "meta.json").exists():
            print(f"== the lab's {DEFAULT_KERNEL} case (kernel {DEFAULT_KERNEL}, workload "
                  f"{opts.workload}), cached in {out}", flush=True)
        else:
            print(f"== memscope lab run {DEFAULT_KERNEL} --workload {opts.workload} -o {out}",
                  flush=True)
        cases.build(opts)
        snap = cases.snapshot(DEFAULT_KERNEL)
    except MemscopeError as e:
        print(f"memscope: {e}", file=sys.stderr)
        return e.exit_status
    meta = snap.meta
    print(f"   kernel {meta['release']}: booted in {meta['boot_seconds']} s, "
          f"dump agreed with /proc/buddyinfo and pagetypeinfo after {meta['tries']} boot(s)\n",
          flush=True)
    commands._load()
    status = 0
    for name in [c for c in DEMO if c in commands.COMMANDS]:
        argv = ["-c", str(snap.vmcore), "-s", str(snap.vmlinux), name]
        print(f"== memscope {' '.join(argv)}", flush=True)
        rc = cli.main(argv)
        print(flush=True)
        status = status or (rc if rc not in (0, 1) else 0)
    return status


#: The reports the demo prints, in this order: the commands that need no argument (a pid,
#: an address, a cache) and answer "what does memory hold" in one screen each.
DEMO = ("buddyinfo", "pagetypeinfo", "freelists", "check", "pages", "pageblocks", "frag",
        "slabinfo", "vmalloc", "ps", "meminfo")


if __name__ == "__main__":
    sys.exit(main())
