"""Are two dumps of one boot, the earlier first?  (``replay --from A --to B``,
``events --since A``: a window between two dumps means something only within one boot.)

What a boot fixes and the next boot of the same kernel very likely changes, compared
where both dumps have it:

- VMCOREINFO's ``BUILD-ID`` and ``OSRELEASE`` (the same kernel at all);
- ``KERNELOFFSET``: the image's KASLR offset (arch/x86/boot/compressed/kaslr.c,
  arch/arm64/kernel/kaslr.c), drawn at every boot;
- x86_64's randomized region bases ``page_offset_base``, ``vmalloc_base`` and
  ``vmemmap_base`` (arch/x86/mm/kaslr.c ``kernel_randomize_memory()``), and arm64's
  ``memstart_addr`` (the linear map's randomized base, arch/arm64/mm/init.c);
- ``sysctl_bootid``, the boot's random UUID (drivers/char/random.c), once some reader of
  /proc/sys/kernel/random/boot_id has made it (all zeros until then: not compared);

and the later dump's ``jiffies_64`` must not be below the earlier's.  Two boots without
KASLR and without a boot_id read in both can only be told apart by their ring buffers
(:func:`memscope.kernel.ftrace.window`)."""

from __future__ import annotations

from ..target.base import Target, TargetError

__all__ = ("not_one_boot",)

_BASES = ("page_offset_base", "vmalloc_base", "vmemmap_base", "memstart_addr")


def _u64(t: Target, name: str) -> int | None:
    try:
        return t.read_u64(t.symbol(name))
    except TargetError:
        return None


def _bootid(t: Target) -> bytes | None:
    try:
        v = t.read(t.symbol("sysctl_bootid"), 16)
    except TargetError:
        return None
    return v if any(v) else None


def not_one_boot(a: Target, b: Target) -> str | None:
    """Why dump B cannot be a later dump of dump A's boot, or None when nothing says so
    (see the module).  Reads a few words of each; never raises for what a dump lacks."""
    va, vb = a.vmcoreinfo_fields, b.vmcoreinfo_fields
    for key in ("BUILD-ID", "OSRELEASE"):
        if va.get(key) and vb.get(key) and va[key] != vb[key]:
            return f"their kernels differ ({key} {va[key]} and {vb[key]})"
    ka, kb = va.get("KERNELOFFSET"), vb.get("KERNELOFFSET")
    if ka is not None and kb is not None and ka != kb:
        return f"their KASLR offsets differ (KERNELOFFSET {ka} and {kb})"
    for name in _BASES:
        x, y = _u64(a, name), _u64(b, name)
        if x is not None and y is not None and x != y:
            return f"their {name} differ ({x:#x} and {y:#x}: randomized at boot)"
    x, y = _bootid(a), _bootid(b)
    if x is not None and y is not None and x != y:
        return "their boot_id differ"
    x, y = _u64(a, "jiffies_64"), _u64(b, "jiffies_64")
    if x is not None and y is not None and y < x:
        return f"the later dump's jiffies_64 ({y}) is below the earlier's ({x})"
    return None
