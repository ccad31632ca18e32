"""KASLR.  Debian kernels randomize where the kernel image sits (KASLR), so the addresses in
vmlinux are off by a constant (the kernel offset).  :func:`kernel_offset` finds it without
``nokaslr``: every candidate offset is checked by reading ``linux_banner`` at the candidate
address and comparing it, byte for byte, with the banner stored in the vmlinux file.  The
candidates, cheapest first:

1. 0 (the guest booted with ``nokaslr``, or gdb's symbols are already relocated);
2. arm64: ``VBAR_EL1`` (QEMU's gdbstub calls it ``VBAR``) holds the address of the kernel's
   exception ``vectors``, so the offset is ``VBAR_EL1 - &vectors`` exactly;
3. the program counter of a vCPU that is in the kernel: the offset is the PC minus some
   address inside the kernel image (``[_text, _end)``: the __init code, where a guest
   stopped early in boot runs, lies after ``_etext``), a multiple of the KASLR alignment
   (2 MiB on x86_64, 64 KiB on arm64), which leaves a few hundred candidates;
4. x86_64 only: every 2 MiB step of the 1 GiB kernel image area (512 reads, ~30 ms).

Each method is tried through every vCPU, the selected one first (a vCPU stopped in user
mode under KPTI has the kernel unmapped: gdb_connection.KernelView).  The offset is cached
per gdb connection and vmlinux.  Per-CPU symbols of x86_64 (linked at
0 in the .data..percpu section) are not relocated, as the kernel does not relocate them:
only addresses in the upper (kernel) half move.

Finding the offset does not drop a kept target: gdb_session's kernel_offset and
set_kernel_offset, which the gdb commands call, do.  Imported only inside gdb."""

from __future__ import annotations

import os

import gdb  # noqa: F401  (gdb's embedded module; this adapter runs only inside gdb)

from ..errors import MemscopeError
from .gdb_connection import (KERNEL_HALF, MASK64, _arch, _check_connected, _connection_key,
                             _register, _try_read)
from .gdb_debuginfo import _DebugInfo, _elf_file_read, _elf_first_load, debuginfo

_KASLR_ALIGN = {"x86_64": 2 << 20, "aarch64": 64 << 10}
_X86_IMAGE_SIZE = 1 << 30  # KERNEL_IMAGE_SIZE with KASLR (arch/x86/include/asm/page_64_types.h)

#: Kernel offsets by (connection, vmlinux).
_offsets: dict[tuple, int] = {}


#: The ways of finding the kernel offset, cheapest first (see the module docstring).
METHODS = ("zero", "vbar", "pc", "scan")


def linux_banner(debuginfo: _DebugInfo) -> tuple[int, bytes]:
    """(link address of linux_banner, its bytes up to the NUL as the vmlinux file holds
    them): what a read of the running kernel at that address plus the offset must give.
    Read from the file once per vmlinux (kept in DEBUGINFO)."""
    if debuginfo.banner is not None:
        return debuginfo.banner
    banner_link = debuginfo.link_address("linux_banner")
    text = debuginfo.link_address("_text")
    if banner_link is None or text is None:
        raise MemscopeError("no kernel symbols in gdb: load the guest's vmlinux first "
                            "with 'file VMLINUX'")
    # gdb's addresses may already be relocated (symbol-file -o): map back to the file.
    file_bias = text - _elf_first_load(debuginfo.path)
    raw = _elf_file_read(debuginfo.path, banner_link - file_bias, 512)
    debuginfo.banner = banner_link, raw.split(b"\0", 1)[0] + b"\0"
    return debuginfo.banner


def detect_kernel_offset(debuginfo: _DebugInfo, arch: str,
                         methods: tuple[str, ...] = METHODS) -> tuple[int, str]:
    """(offset, how it was found) by the first of METHODS that finds it.

    Each method reads through one vCPU (gdb's selected thread), and a vCPU stopped in user
    mode under KPTI has the kernel unmapped (see gdb_connection.KernelView): the selected
    thread is tried first, then every other; the selection is given back afterwards."""
    path = debuginfo.path
    banner_link, want = linux_banner(debuginfo)
    text = debuginfo.link_address("_text")
    # The code a vCPU may be running lies in [_text, _end): .text up to _etext, and the
    # __init code (start_kernel, mm_core_init: a guest stopped early in boot) between
    # __init_begin and __init_end, after _etext.
    end = debuginfo.link_address("_end") or debuginfo.link_address("_etext")
    if end is None:
        raise MemscopeError("no kernel symbols in gdb: load the guest's vmlinux first "
                            "with 'file VMLINUX'")

    def good(off: int) -> bool:
        return _try_read(banner_link + off, len(want)) == want

    align = _KASLR_ALIGN[arch]
    tried: set[int] = set()

    def cheap() -> tuple[int, str] | None:
        if "zero" in methods and good(0):
            return 0, "vmlinux addresses as loaded (no KASLR or already relocated)"
        if arch == "aarch64" and "vbar" in methods:
            vectors = debuginfo.link_address("vectors")
            for reg in ("VBAR_EL1", "VBAR"):
                vbar = _register(reg)
                if vbar is not None and vectors is not None:
                    off = (vbar - vectors) & MASK64
                    if good(off):
                        return off, f"{reg} - &vectors"
        pc = _register("pc") if "pc" in methods else None
        if pc is not None and pc & KERNEL_HALF:
            # pc = (some address in [_text, _end)) + offset, offset a multiple of ALIGN.
            hi, lo = pc - text, pc - end
            off = hi - hi % align
            while off > lo - align and len(tried) < 4096:
                if off not in tried:
                    tried.add(off)
                    if good(off):
                        return off & MASK64, "a vCPU's program counter"
                off -= align
        return None

    def scan() -> tuple[int, str] | None:
        if arch == "x86_64" and "scan" in methods:
            for off in range(0, _X86_IMAGE_SIZE, align):
                if off not in tried and good(off):
                    return off, "a scan of the kernel image area"
        return None

    current = gdb.selected_thread()
    threads = [current] + [t for t in gdb.selected_inferior().threads()
                           if t != current and t.is_valid()]
    try:
        for how in (cheap, scan):
            for th in threads:
                if th is not None:
                    th.switch()
                tried.clear()  # what failed through one vCPU may read through another
                found = how()
                if found is not None:
                    return found
    finally:
        if current is not None and current.is_valid():
            current.switch()
    pcs = []
    for th in threads:
        if th is not None:
            th.switch()
            pcs.append(_register("pc"))
    if current is not None and current.is_valid():
        current.switch()
    why = "is this vmlinux the guest's kernel?"
    if pcs and all(pc is not None and not pc & KERNEL_HALF for pc in pcs):
        why = ("every vCPU is stopped in user mode, where KPTI unmaps the kernel: stepi "
               "until $pc is in the kernel, or boot the guest with nopti (x86_64) or "
               "kpti=0 (arm64)")
    raise MemscopeError(
        f"cannot find the kernel's KASLR offset: linux_banner of {os.path.basename(path)} is "
        f"nowhere in the guest ({why}); give it by hand with "
        "'memscope kaslr OFFSET' (e.g. KERNELOFFSET from the guest's VMCOREINFO)")


def kernel_offset(force: bool = False, quiet: bool = False,
                  methods: tuple[str, ...] = METHODS) -> int:
    """The kernel offset for the current connection, found once and cached."""
    di = debuginfo()
    _check_connected()
    key = (_connection_key(), di.path)
    if force or key not in _offsets:
        off, how = detect_kernel_offset(di, _arch(), methods)
        _offsets[key] = off
        if not quiet:
            gdb.write(f"memscope: kernel offset {off:#x} (KASLR), found from {how}\n",
                      gdb.STDERR)
    return _offsets[key]


def set_kernel_offset(offset: int) -> None:
    di = debuginfo()
    _check_connected()
    _offsets[(_connection_key(), di.path)] = offset & MASK64
