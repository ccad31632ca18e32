"""The GDB adapter: a kernel seen through gdb attached to QEMU's gdbstub.

Imported only inside gdb (it imports gdb's own ``gdb`` module).  Symbols and types come from
the vmlinux that gdb loaded (``file VMLINUX``); memory is read through the remote target.
Nothing here imports drgn.

The adapter is the GdbTarget class; the rest of it lives beside it, one idea per module:
gdb_connection (gdb's connection to the guest), gdb_debuginfo (symbols, layouts and the
vmlinux file), gdb_kaslr (the kernel offset), qemu_memory (reading QEMU's memory: the
monitor's memsave and /proc/PID/mem, the read paths and their counters) and gdb_session
(what is kept from one command to the next).  The names the gdb commands and the tests use
are imported here too.
"""

from __future__ import annotations

import gdb  # noqa: F401  (gdb's embedded module; this adapter runs only inside gdb)

from ..errors import MemscopeError
from .base import FaultError, Layout, Member, Target, TargetError, Variable
from .gdb_connection import (KERNEL_HALF, MASK64, KernelView, _arch, _check_connected,
                             _try_read)
from .gdb_debuginfo import _flatten, debuginfo, vmlinux_path  # noqa: F401
from .gdb_kaslr import METHODS, detect_kernel_offset, linux_banner  # noqa: F401
from .gdb_session import (forget, install_hooks, invalidate_memory,  # noqa: F401
                          kernel_offset, session_target, set_kernel_offset)
from .qemu_memory import (BLOCK, CHUNK, FAST_MIN, PROMOTE, READ_PATHS,  # noqa: F401
                          REGION, SMALL, _count, _memsave, _memsave_for, _procmem_for,
                          read_counts, read_path, reset_read_counts)

#: A kept target caches reads larger than SMALL too (whole, by address and size), up to this
#: many bytes in all (the memmap of a 4 GiB guest is 64 MiB).
READ_CACHE_BYTES = 256 << 20


class GdbTarget(Target):
    """The Target interface over gdb.  It caches guest memory: use one per command, or the
    one :func:`session_target` keeps while the guest stays stopped."""

    # Small reads already go through the block cache and its REGION promotion.
    bulk_read_after = None

    def __init__(self, offset: int | None = None):
        self.di = debuginfo()
        _check_connected()
        self.arch = _arch()
        self.offset = kernel_offset() if offset is None else offset
        self._inf = gdb.selected_inferior()
        self._blocks: dict[int, bytes | None] = {}
        self._regions: dict[int, bytes] = {}
        self._misses: dict[int, int] = {}
        self._reads: dict[tuple[int, int], bytes] = {}
        self._read_bytes = 0
        self._tlb: dict[int, tuple[int, int]] = {}
        self._layout = None  # memscope.kernel.addr.KernelLayout, for read_phys
        # Read through a vCPU that has the kernel mapped (KPTI: see KernelView).  A target
        # made here stays on that vCPU; gdb's memscope command gives the user's thread back
        # after each command (view.restore()).
        self._banner = linux_banner(self.di)[1]
        self.view = KernelView()
        self.select_kernel_view()
        self.read_path = path = read_path()
        # QEMU's monitor: memsave serves bulk reads (auto, memsave), and pmemsave finds
        # guest RAM inside QEMU for the direct path (auto, procmem).
        monitor = _memsave_for(self.symbol("linux_banner"), path)
        self._proc = _procmem_for(self, monitor) if path in ("auto", "procmem") else None
        self._fast = monitor if path in ("auto", "memsave") else None
        if path == "procmem" and self._proc is None:
            raise MemscopeError(
                "MEMSCOPE_GDB_READS=procmem: cannot read the guest's memory out of QEMU's "
                "process (QEMU not on this machine, its /proc/PID/mem not readable, or its "
                "RAM not found); use auto")
        if path == "memsave" and self._fast is None:
            raise MemscopeError(
                "MEMSCOPE_GDB_READS=memsave: QEMU's monitor cannot save guest memory where "
                "memscope can read it (QEMU not on this machine?); use auto or packets")

    def select_kernel_view(self) -> bool:
        """Select (gdb's thread, QEMU's monitor vCPU) a vCPU through which the kernel reads:
        the selected one when it does.  False when none does (reads then fail)."""
        return self.view.select(self.symbol("linux_banner"), self._banner)

    # --- symbols and types --------------------------------------------------------
    def symbol(self, name: str) -> int:
        addr = self.di.link_address(name)
        if addr is None:
            raise TargetError(f"symbol {name} not found")
        # Only kernel-half addresses move: x86_64 per-CPU symbols are offsets from 0.
        return (addr + self.offset) & MASK64 if addr & KERNEL_HALF else addr

    def variable(self, name: str) -> Variable:
        found = self.di.variable_type(name)
        if found is None:
            raise TargetError(f"variable {name} not found in the debug info")
        type_name, size, length = found
        return Variable(name, self.symbol(name), size, type_name, length)

    def constant(self, name: str) -> int:
        value = self.di.constant(name)
        if value is None:
            raise TargetError(f"enumerator {name} not found in the debug info")
        return value

    def layout(self, type_name: str) -> Layout:
        lay = self.di.layouts.get(type_name)
        if lay is None:
            t = self.di.type(type_name)
            if t.code not in (gdb.TYPE_CODE_STRUCT, gdb.TYPE_CODE_UNION):
                raise TargetError(f"{type_name} is not a struct or union")
            members: dict[str, Member] = {}
            _flatten(t, 0, members)
            lay = self.di.layouts[type_name] = Layout(type_name, t.sizeof, members)
        return lay

    def enum(self, type_name: str) -> dict[str, int]:
        e = self.di.enums.get(type_name)
        if e is None:
            t = self.di.type(type_name)
            if t.code != gdb.TYPE_CODE_ENUM:
                raise TargetError(f"{type_name} is not an enum")
            e = self.di.enums[type_name] = {f.name: int(f.enumval) for f in t.fields()}
        return dict(e)

    def sizeof(self, type_name: str) -> int:
        n = self.di.sizes.get(type_name)
        if n is None:
            try:
                n = self.di.type(type_name).sizeof
            except TargetError:
                try:  # types lookup_type cannot parse ("struct page *")
                    n = int(gdb.parse_and_eval(f"sizeof({type_name})"))
                except gdb.error:
                    raise TargetError(f"type {type_name} not found in the debug info") from None
            self.di.sizes[type_name] = n
        return n

    def array_length(self, name: str) -> int:
        return self.di.array_length(name)

    # --- memory -------------------------------------------------------------------
    def _read_direct(self, address: int, size: int) -> bytes:
        try:
            return bytes(self._inf.read_memory(address, size))
        except (gdb.MemoryError, gdb.error, OverflowError, ValueError):
            raise FaultError(address, size) from None

    def _gdb_read_u64(self, address: int) -> int:
        return int.from_bytes(self._read_direct(address, 8), "little")

    def _block(self, base: int) -> bytes | None:
        if base in self._blocks:
            return self._blocks[base]
        if self._proc is not None and base & KERNEL_HALF:
            data = self._proc.read(base, BLOCK, self._tlb)
            if data is not None:
                _count("procmem", BLOCK)
                self._blocks[base] = data
                return data
        if self._fast is not None:
            rbase = base - base % REGION
            region = self._regions.get(rbase)
            if region is not None:
                return region[base - rbase:base - rbase + BLOCK]
            n = self._misses[rbase] = self._misses.get(rbase, 0) + 1
            if n == PROMOTE:
                region = self._fast.read(rbase, REGION)
                if region is not None:
                    _count("memsave", REGION)
                    self._regions[rbase] = region
                    return region[base - rbase:base - rbase + BLOCK]
        data = _try_read(base, BLOCK)
        if data is not None:
            _count("packets", BLOCK)
        self._blocks[base] = data
        return data

    def read(self, address: int, size: int) -> bytes:
        address &= MASK64
        if size <= 0:
            return b""
        if address + size > 1 << 64:
            raise FaultError(address, size)
        if self._proc is not None and address & KERNEL_HALF:
            # QEMU's memory, read directly (see _ProcMem); what it cannot translate or
            # read goes the gdb way below, which knows best what faults.
            # Small reads still go through the block cache below (filled from here): a
            # kept target's second run of a walk then reads nothing at all.
            if size > SMALL:
                data = self._reads.get((address, size))
                if data is None:
                    data = self._proc.read(address, size, self._tlb)
                    if data is not None:
                        _count("procmem", size)
                    if data is not None and self._read_bytes + size <= READ_CACHE_BYTES:
                        self._reads[(address, size)] = data
                        self._read_bytes += size
                if data is not None:
                    return data
        if size <= SMALL:
            first = address - address % BLOCK
            last = (address + size - 1) - (address + size - 1) % BLOCK
            parts = []
            for base in range(first, last + 1, BLOCK):
                b = self._block(base)
                if b is None:
                    break
                parts.append(b)
            else:
                data = b"".join(parts)
                return data[address - first:address - first + size]
            data = self._read_direct(address, size)  # raises FaultError, or the block edge
            _count("packets", size)
            return data
        data = self._reads.get((address, size))
        if data is None:
            data = self._read_large(address, size)
            if self._read_bytes + size <= READ_CACHE_BYTES:
                self._reads[(address, size)] = data
                self._read_bytes += size
        return data

    def _read_large(self, address: int, size: int) -> bytes:
        if self._fast is not None and size >= FAST_MIN:
            data = self._fast.read(address, size)
            if data is not None:
                _count("memsave", size)
                return data
            # fall through: gdb's reads tell exactly what cannot be read
        if size <= CHUNK:
            data = self._read_direct(address, size)
            _count("packets", size)
            return data
        out = bytearray(size)
        for pos in range(0, size, CHUNK):
            n = min(CHUNK, size - pos)
            try:
                out[pos:pos + n] = self._inf.read_memory(address + pos, n)
            except (gdb.MemoryError, gdb.error):
                raise FaultError(address, size) from None
        _count("packets", size)
        return bytes(out)

    def read_phys(self, address: int, size: int) -> bytes:
        """SIZE bytes at guest physical ADDRESS: out of QEMU's process or through its
        monitor (``pmemsave``) where the read path allows, else through the kernel's direct
        map (gdb's stub reads virtual memory only; the direct map holds all of RAM)."""
        if self._proc is not None:
            data = self._proc.phys(address, size)
            if data is not None:
                return data
        if self._fast is not None:
            data = self._fast.pread_phys(address, size)
            if data is not None:
                return data
        from ..kernel.addr import kernel_layout, phys_to_virt
        if self._layout is None:
            self._layout = kernel_layout(self)
        try:
            va = phys_to_virt(self._layout, address)
        except TargetError:
            raise FaultError(address, size) from None
        return self.read(va, size)

    def vmcoreinfo(self) -> bytes:
        # The guest's own VMCOREINFO text (kernel/crash_core.c, vmcoreinfo_data[] and its
        # length vmcoreinfo_size), the same text QEMU puts into a dump's ELF note.
        try:
            data = self.read_u64(self.symbol("vmcoreinfo_data"))
            size = self.read_u64(self.symbol("vmcoreinfo_size"))
        except TargetError:
            return b""
        if not data or not 0 < size <= 1 << 16:
            return b""
        try:
            return self.read(data, size)
        except FaultError:
            return b""

    @property
    def release(self) -> str:
        uts = self.layout("struct uts_namespace")
        name = self.layout("struct new_utsname")
        return self.read_cstr(self.symbol("init_uts_ns") + uts.offset("name")
                              + name.offset("release"), 65)
