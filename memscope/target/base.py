"""The target interface: everything memscope's reconstruction needs from a kernel.

A target answers questions about the debug info (symbol addresses, type layouts,
enumerator values) and reads memory in bulk.  The reconstruction code in ``memscope.mm``
is written against this interface only: it never imports drgn or gdb.  Adapters
(``memscope.target.drgn``, ``memscope.target.gdb``) implement it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import struct
from functools import cached_property


class TargetError(Exception):
    """The target cannot answer (missing symbol or type, unreadable memory)."""


class FaultError(TargetError):
    """Memory at an address cannot be read.

    ``address`` and ``size`` are the read asked for; ``missing`` is the
    :class:`MissingPage` when the read touched a page the dump left out (a hole of a
    filtered or truncated dump), else None."""

    def __init__(self, address: int, size: int, missing: MissingPage | None = None):
        text = f"cannot read {size} bytes at {address:#x}"
        if missing is not None:
            text += f": {missing}"
        super().__init__(text)
        self.address = address
        self.size = size
        self.missing = missing


@dataclasses.dataclass(frozen=True)
class MissingPage:
    """A page of the machine's memory that the target does not hold: the dump describes
    it (inside a PT_LOAD's memory size, or marked as RAM in a kdump bitmap) but left it
    out.  ``phys``: the page's physical address (bytes, page-aligned); ``pfn``: its page
    frame number; ``why``: one phrase from the dump's headers
    (:class:`memscope.target.dumpfile.Missing`)."""

    phys: int
    pfn: int
    why: str

    def __str__(self) -> str:
        return (f"physical page {self.phys:#x} (pfn {self.pfn:#x}) is not in the dump: "
                f"{self.why}")


@dataclasses.dataclass(frozen=True)
class Member:
    name: str
    offset: int  # bytes from the start of the containing type
    size: int
    type_name: str  # e.g. "unsigned long", "struct list_head", "struct free_area [11]"
    array_length: int | None = None  # for array members
    bit_offset: int = 0  # bits, within the member's storage unit, for bit fields
    bit_size: int | None = None


@dataclasses.dataclass(frozen=True)
class Layout:
    """The layout of a struct or union type: its size and its members, by name.

    Members of anonymous structs and unions are flattened in, as C lets you name them."""

    name: str
    size: int
    members: dict[str, Member]

    def has(self, member: str) -> bool:
        return member in self.members

    def offset(self, member: str) -> int:
        try:
            return self.members[member].offset
        except KeyError:
            raise TargetError(f"{self.name} has no member {member}") from None

    def __getitem__(self, member: str) -> Member:
        try:
            return self.members[member]
        except KeyError:
            raise TargetError(f"{self.name} has no member {member}") from None


@dataclasses.dataclass(frozen=True)
class Variable:
    """A global (or file-static) variable: where it is and its type as the debug info
    gives it (for what a probe needs: ``atomic_t`` or ``atomic_long_t``? how long is the
    array?)."""

    name: str
    address: int
    size: int  # bytes (0 for an incomplete type)
    type_name: str  # e.g. "atomic_long_t", "unsigned long [6]", "struct hstate [2]"
    array_length: int | None = None  # for arrays (typedefs looked through)


class Target:
    """Base class of the adapters.  Subclasses implement the abstract methods; the rest is
    derived here once, for every adapter."""

    #: "x86_64" or "aarch64"
    arch: str

    # --- what each adapter supplies -------------------------------------------------
    def symbol(self, name: str) -> int:
        """The address of the global variable or function NAME."""
        raise NotImplementedError

    def has_symbol(self, name: str) -> bool:
        try:
            self.symbol(name)
            return True
        except TargetError:
            return False

    def variable(self, name: str) -> Variable:
        """The global variable NAME with its type (:class:`Variable`); raises TargetError
        when the debug info has no such variable."""
        raise TargetError(f"this target cannot give the type of variable {name}")

    def constant(self, name: str) -> int:
        """The value of the enumerator NAME, also of an anonymous enum (``SWP_USED``);
        raises TargetError when the debug info has no such enumerator."""
        raise TargetError(f"this target cannot look up the enumerator {name}")

    def layout(self, type_name: str) -> Layout:
        """The layout of TYPE_NAME ("struct zone")."""
        raise NotImplementedError

    def has_type(self, type_name: str) -> bool:
        try:
            self.layout(type_name)
            return True
        except TargetError:
            return False

    def enum(self, type_name: str) -> dict[str, int]:
        """The enumerators of TYPE_NAME ("enum migratetype")."""
        raise NotImplementedError

    def sizeof(self, type_name: str) -> int:
        raise NotImplementedError

    def array_length(self, name: str) -> int:
        """The number of elements of the global array variable NAME, as its type in the
        debug info says (``struct pglist_data *node_data[MAX_NUMNODES]`` gives
        MAX_NUMNODES): what VMCOREINFO's ``LENGTH(NAME)`` says, without VMCOREINFO.

        :raises TargetError: no such variable in the debug info, or it is not an array
            of known length."""
        raise NotImplementedError

    def read(self, address: int, size: int) -> bytes:
        """SIZE bytes at virtual ADDRESS; raises FaultError."""
        raise NotImplementedError

    def read_phys(self, address: int, size: int) -> bytes:
        """SIZE bytes at physical ADDRESS.

        :raises FaultError: the target does not hold those bytes.
        :raises TargetError: the target cannot read physical memory at all."""
        raise TargetError(f"{type(self).__name__} cannot read physical memory")

    def vmcoreinfo(self) -> bytes:
        raise NotImplementedError

    def away_from_cpu(self, cpu: int) -> contextlib.AbstractContextManager:
        """A context in which this process does not run on CPU, for reading CPU's own
        per-CPU lists.  Only a live kernel needs it (memscope's own page faults take pages
        from the lists of the CPU it runs on, which would move under the walk); on every
        other target, and where only one CPU is allowed, it does nothing."""
        return contextlib.nullcontext()

    @property
    def release(self) -> str:
        raise NotImplementedError

    # --- holes: pages the target describes but does not hold ---------------------------
    # A live target (QEMU, /proc/kcore, gdb) has every page; a filtered or truncated dump
    # does not.  Adapters that read dumps override these three.
    def missing_pages_read(self) -> list[MissingPage]:
        """The pages the dump left out that reads have touched since
        :meth:`forget_missing_pages` (reads inside :meth:`speculative` excepted), in the
        order first touched.  A command whose answer used such a read must say so: it
        read no bytes there, whatever the caller did with the FaultError."""
        return []

    def forget_missing_pages(self) -> None:
        """Start a new record for :meth:`missing_pages_read` (each command starts one)."""

    @contextlib.contextmanager
    def speculative(self):
        """Reads inside this block are guesses the caller can do without (a bulk read of
        a region that is retried piece by piece when it fails): a hole they touch is not
        recorded in :meth:`missing_pages_read`; FaultError is raised as usual."""
        yield

    # --- derived --------------------------------------------------------------------
    @cached_property
    def vmcoreinfo_fields(self) -> dict[str, str]:
        out = {}
        for line in self.vmcoreinfo().decode(errors="replace").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key] = value
        return out

    @cached_property
    def page_size(self) -> int:
        """PAGE_SIZE in bytes: VMCOREINFO's PAGESIZE, else :meth:`page_size_from_debuginfo`
        (a guest stopped before the kernel wrote VMCOREINFO, or a kernel built without it)."""
        v = self.vmcoreinfo_fields.get("PAGESIZE")
        return int(v) if v else self.page_size_from_debuginfo()

    def page_size_from_debuginfo(self) -> int:
        """PAGE_SIZE without VMCOREINFO.  x86_64 has one base page size, 4 KiB
        (arch/x86/include/asm/page_types.h: PAGE_SHIFT 12).  arm64 has three (4, 16 and
        64 KiB: CONFIG_ARM64_*K_PAGES), told apart by the debug info: arch/arm64/mm/mmu.c
        declares ``unsigned long empty_zero_page[PAGE_SIZE / sizeof(unsigned long)]``.

        :raises TargetError: another architecture, or arm64 debug info without
            ``empty_zero_page``, or a length that is not a page size."""
        if self.arch == "x86_64":
            return 4096
        if self.arch != "aarch64":
            raise TargetError(f"no PAGE_SIZE for {self.arch} without VMCOREINFO")
        n = self.array_length("empty_zero_page") * self.sizeof("unsigned long")
        if n not in (4096, 16384, 65536):
            raise TargetError(f"empty_zero_page is {n} bytes, not an arm64 page size: "
                              "cannot tell PAGE_SIZE without VMCOREINFO")
        return n

    def vmcoreinfo_length(self, name: str) -> int:
        """VMCOREINFO's ``LENGTH(NAME)``, else the array's length in the debug info
        (:meth:`array_length`; the kernel writes the former from the latter,
        kernel/vmcore_info.c ``VMCOREINFO_LENGTH(name, value)``).

        :raises TargetError: neither says."""
        v = self.vmcoreinfo_fields.get(f"LENGTH({name})")
        return int(v, 0) if v else self.array_length(name)

    def read_u64(self, address: int) -> int:
        return struct.unpack("<Q", self.read(address, 8))[0]

    def read_u32(self, address: int) -> int:
        return struct.unpack("<I", self.read(address, 4))[0]

    def read_int(self, address: int, size: int, signed: bool = False) -> int:
        return int.from_bytes(self.read(address, size), "little", signed=signed)

    def read_cstr(self, address: int, limit: int = 256) -> str:
        data = self.read(address, limit)
        return data.split(b"\0", 1)[0].decode(errors="replace")

    def enum_value(self, type_name: str, enumerator: str) -> int:
        try:
            return self.enum(type_name)[enumerator]
        except KeyError:
            raise TargetError(f"{type_name} has no enumerator {enumerator}") from None

    # --- per-CPU data: memscope.kernel.cpumask and memscope.kernel.percpu ----------------
    @cached_property
    def possible_cpus(self) -> list[int]:
        """for_each_possible_cpu(): :func:`memscope.kernel.cpumask.for_each_possible_cpu`
        (the bits of __cpu_possible_mask below nr_cpu_ids), kept for callers of the
        Target; the core uses the kernel layer."""
        from ..kernel.cpumask import for_each_possible_cpu

        return list(for_each_possible_cpu(self))

    def per_cpu_offset(self, cpu: int) -> int:
        """__per_cpu_offset[cpu]: add to a __percpu pointer to get CPU's copy (SMP
        kernels): :func:`memscope.kernel.percpu.per_cpu_ptr` of address 0."""
        from ..kernel.percpu import per_cpu_ptr

        return per_cpu_ptr(self, 0, cpu)

    #: Bulk readers (the free-list walks) read a whole 64 KiB piece of the memmap once they
    #: have needed this many struct pages in it (a 64 KiB read costs about two small reads
    #: from a vmcore or /proc/kcore); None: never, the adapter batches small reads itself.
    bulk_read_after: int | None = 2
