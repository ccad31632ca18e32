"""One page-table walker for kernel and user address spaces: x86_64 with 4 or 5 levels,
arm64 with the 4K granule (39-, 48- and 52-bit VA; 52 bits with FEAT_LPA2 descriptors,
which the lab's arm64 6.12 guest runs on QEMU's ``-cpu max``).

The walker needs the physical address of the top table (the pgd: ``__pa(mm->pgd)``; the
kernel's is ``init_mm.pgd``, x86_64 ``init_top_pgt`` / arm64 ``swapper_pg_dir``) and a
callable that reads physical memory, ``read_phys(pa, size) -> bytes | None``.  It returns
``(physical address of the page or block, its size)``, or None where the address is not
mapped (or a table cannot be read).

Entries (arch/x86/include/asm/pgtable_types.h; the Arm ARM's VMSAv8-64 descriptors):

- x86_64: _PAGE_PRESENT (bit 0); _PAGE_PSE (bit 7) makes a PUD (1 GiB) or PMD (2 MiB)
  entry a leaf; the address is bits 12-51 (__PHYSICAL_MASK).  Each level indexes 9 VA
  bits; 4 levels translate 48-bit VAs, 5 levels (LA57) 57-bit ones.
- arm64, 4K granule: bit 0 valid; at levels 0-2 bit 1 set is a table, clear a block
  (level 1: 1 GiB, level 2: 2 MiB); at level 3 bits 1:0 = 0b11 is a page.  The output
  address is bits 47:12; with FEAT_LPA2 (TCR_EL1.DS, 52-bit VA) bits 49:12 plus OA[51:50]
  in bits 9:8.  The top level indexes ``va_bits - its shift`` bits: 52-bit VA walks 5
  levels, the first indexing VA[51:48].  The kernel's VA bits are ``64 - TCR_EL1.T1SZ``
  (VMCOREINFO ``NUMBER(TCR_EL1_T1SZ)``: a 52-bit kernel on a CPU without LPA2 runs with
  48), and user space runs with the same (``vabits_actual``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ..target.base import FaultError, Target, TargetError
from .addr import KernelLayout, phys_to_virt, x86_pgtable_levels

__all__ = ("LEVEL_NAMES", "Leaf", "Step", "walk_steps", "Paging", "PageTableWalker", "direct_map_reader", "follow_phys",
           "kernel_paging", "phys_reader", "walk", "walk_range", "Leaves", "walk_leaves")

MASK64 = (1 << 64) - 1
X86_PHYS_MASK = 0x000FFFFFFFFFF000  # bits 12-51
X86_PAGE_PRESENT = 1 << 0
X86_PAGE_PSE = 1 << 7
ARM64_OA_MASK = 0x0000FFFFFFFFF000  # bits 47:12
ARM64_OA_MASK_LPA2 = 0x0003FFFFFFFFF000  # bits 49:12

#: Reads SIZE bytes of physical memory at PA, or None when it cannot.
PhysRead = Callable[[int, int], "bytes | None"]


@dataclasses.dataclass(frozen=True)
class Paging:
    """How the MMU translates an address space: the architecture, the number of levels
    and the VA bits they translate, and (arm64) whether descriptors are FEAT_LPA2's."""

    arch: str  # "x86_64" or "aarch64"
    levels: int
    va_bits: int
    lpa2: bool = False

    @classmethod
    def x86_64(cls, levels: int) -> "Paging":
        """x86_64 with 4 (48-bit VA) or 5 (57-bit VA, LA57) levels."""
        if levels not in (4, 5):
            raise TargetError(f"x86_64 has 4 or 5 page-table levels, not {levels}")
        return cls("x86_64", levels, 48 if levels == 4 else 57)

    @classmethod
    def arm64(cls, va_bits: int, page_size: int = 4096) -> "Paging":
        """arm64 with the 4K granule: VA_BITS 39 (3 levels), 48 (4) or 52 (5, LPA2)."""
        if page_size != 4096:
            raise TargetError(f"arm64 page tables with {page_size}-byte pages are not "
                              "walked (4K granule only)")
        levels = {39: 3, 48: 4, 52: 5}.get(va_bits)
        if levels is None:
            raise TargetError(f"arm64 with {va_bits}-bit VA is not walked (39, 48 or 52)")
        return cls("aarch64", levels, va_bits, lpa2=va_bits == 52)

    @property
    def shifts(self) -> tuple[int, ...]:
        """The VA shift of each level's index, top level first (12 for the last)."""
        return tuple(12 + 9 * i for i in reversed(range(self.levels)))


def kernel_paging(t: Target) -> Paging:
    """The kernel's paging (see the module for where each number comes from).

    :raises TargetError: an architecture or configuration the walker does not handle."""
    if t.arch == "x86_64":
        return Paging.x86_64(x86_pgtable_levels(t))
    if t.arch == "aarch64":
        vi = t.vmcoreinfo_fields
        if "NUMBER(TCR_EL1_T1SZ)" in vi:
            va_bits = 64 - int(vi["NUMBER(TCR_EL1_T1SZ)"], 0)
        elif "NUMBER(VA_BITS)" in vi:
            va_bits = int(vi["NUMBER(VA_BITS)"], 0)
        else:
            raise TargetError("VMCOREINFO has neither TCR_EL1_T1SZ nor VA_BITS: cannot "
                              "tell arm64's page-table shape")
        return Paging.arm64(va_bits, t.page_size)
    raise TargetError(f"no page-table walker for architecture {t.arch}")


def _canonical(paging: Paging, va: int) -> bool:
    """Whether VA's bits above va_bits are all 0 or all 1 (the other ones never translate:
    x86_64 faults, arm64 has no table for them)."""
    top = va >> paging.va_bits
    return top == 0 or top == MASK64 >> paging.va_bits


def _entry(read_phys: PhysRead, pa: int) -> int | None:
    raw = read_phys(pa, 8)
    if raw is None or len(raw) != 8:
        return None
    return int.from_bytes(raw, "little")


def _walk_x86_64(paging: Paging, pgd: int, va: int, read_phys: PhysRead):
    table = pgd
    for shift in paging.shifts:
        e = _entry(read_phys, table + (va >> shift & 511) * 8)
        if e is None or not e & X86_PAGE_PRESENT:
            return None
        if shift == 12 or shift in (21, 30) and e & X86_PAGE_PSE:
            return e & X86_PHYS_MASK & ~((1 << shift) - 1), 1 << shift
        table = e & X86_PHYS_MASK
    return None


def _walk_arm64(paging: Paging, pgd: int, va: int, read_phys: PhysRead):
    table = pgd
    oa_mask = ARM64_OA_MASK_LPA2 if paging.lpa2 else ARM64_OA_MASK
    for i, shift in enumerate(paging.shifts):
        bits = paging.va_bits - shift if i == 0 else 9
        e = _entry(read_phys, table + (va >> shift & ((1 << bits) - 1)) * 8)
        if e is None or not e & 1:
            return None
        oa = e & oa_mask
        if paging.lpa2:
            oa |= (e & 0x300) << 42  # OA[51:50] from bits 9:8
        if shift == 12:
            return (oa, 4096) if e & 2 else None  # 0b01 at level 3 is reserved
        if not e & 2:  # a block: level 1 (1 GiB) or 2 (2 MiB)
            if shift not in (21, 30):
                return None
            return oa & ~((1 << shift) - 1), 1 << shift
        table = oa
    return None


@dataclasses.dataclass(frozen=True)
class Leaf:
    """A last-level entry found by :func:`walk_range`: ``va`` the first address it maps,
    ``size`` bytes (4 KiB, or a 2 MiB / 1 GiB block), ``entry`` the raw descriptor,
    ``present`` whether it maps memory (x86_64: _PAGE_PRESENT or _PAGE_PROTNONE, as
    ``pte_present()``: a PROT_NONE entry, such as NUMA balancing's hinting entries, still
    maps its page, its pfn stored inverted; arm64: valid) and ``pa`` the physical
    address it maps (0 when not present: the entry is a
    swap or migration entry, whatever is not empty), ``special`` the PTE's software
    "special" bit (x86_64 _PAGE_SPECIAL, bit 9; arm64 PTE_SPECIAL, bit 56): no struct page
    backs it for ``vm_normal_page()`` (the zero page, PFN maps)."""

    va: int
    size: int
    entry: int
    present: bool
    pa: int
    special: bool


X86_PAGE_PROTNONE = 1 << 8
X86_PAGE_SPECIAL = 1 << 9
ARM64_PTE_SPECIAL = 1 << 56


def _table(read_phys: PhysRead, pa: int) -> np.ndarray | None:
    raw = read_phys(pa, 4096)
    if raw is None or len(raw) != 4096:
        return None
    return np.frombuffer(raw, "<u8")


@dataclasses.dataclass(frozen=True)
class Leaves:
    """Every non-empty leaf entry of a range (:func:`walk_leaves`), as parallel arrays of
    one element per entry, in address order (the fields of :class:`Leaf`):

    - ``va`` (uint64) the first address each maps; ``shift`` (uint8) log2 of its size (12
      for a page, 21 or 30 for a 2 MiB / 1 GiB block);
    - ``entry`` (uint64) the raw descriptor;
    - ``present`` (bool) as :attr:`Leaf.present`; ``pa`` (uint64) the physical address
      it maps, 0 where not present; ``special`` (bool) the software special bit."""

    va: np.ndarray
    shift: np.ndarray
    entry: np.ndarray
    present: np.ndarray
    pa: np.ndarray
    special: np.ndarray

    def __len__(self) -> int:
        return len(self.va)

    @property
    def size(self) -> np.ndarray:
        """Bytes each entry maps (int64)."""
        return np.left_shift(1, self.shift.astype(np.int64))

    def take(self, sel) -> "Leaves":
        """The entries SEL selects (a boolean mask or indices)."""
        return Leaves(*(getattr(self, f.name)[sel] for f in dataclasses.fields(self)))

    def leaf(self, i: int) -> Leaf:
        """Entry I as a :class:`Leaf`."""
        return Leaf(int(self.va[i]), 1 << int(self.shift[i]), int(self.entry[i]),
                    bool(self.present[i]), int(self.pa[i]), bool(self.special[i]))

    @classmethod
    def empty(cls) -> "Leaves":
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint8), np.zeros(0, np.uint64),
                   np.zeros(0, bool), np.zeros(0, np.uint64), np.zeros(0, bool))


class _Decode:
    """The vectorized entry tests of one paging mode (the per-entry rules of
    :func:`walk` and :class:`Leaf`, on arrays of raw entries)."""

    def __init__(self, paging: Paging):
        self.arm = arm = paging.arch == "aarch64"
        self.lpa2 = paging.lpa2
        self.oa_mask = np.uint64((ARM64_OA_MASK_LPA2 if paging.lpa2 else ARM64_OA_MASK)
                                 if arm else X86_PHYS_MASK)
        self.special_bit = np.uint64(ARM64_PTE_SPECIAL if arm else X86_PAGE_SPECIAL)

    def present(self, e: np.ndarray) -> np.ndarray:
        """pte_present(): arm64 valid; x86_64 _PAGE_PRESENT or _PAGE_PROTNONE."""
        bits = 1 if self.arm else X86_PAGE_PRESENT | X86_PAGE_PROTNONE
        return (e & np.uint64(bits)) != 0

    def block(self, e: np.ndarray) -> np.ndarray:
        """At levels above the last: a leaf block (arm64 bit 1 clear, x86_64 _PAGE_PSE)."""
        if self.arm:
            return (e & np.uint64(2)) == 0
        return (e & np.uint64(X86_PAGE_PSE)) != 0

    def oa(self, e: np.ndarray) -> np.ndarray:
        """The output address.  x86_64, L1TF (v4.19, commit 6b28baca9b1f): an entry without
        _PAGE_PRESENT keeps its pfn inverted (__pte_needs_invert()): a PROT_NONE one
        (NUMA balancing's hinting entries, mprotect(PROT_NONE)) still maps its page."""
        if not self.arm:  # all ones where _PAGE_PRESENT is clear, else 0
            e = e ^ ((e & np.uint64(X86_PAGE_PRESENT)) - np.uint64(1))
        a = e & self.oa_mask
        if self.lpa2:
            a = a | ((e & np.uint64(0x300)) << np.uint64(42))  # OA[51:50] from bits 9:8
        return a

    def special(self, e: np.ndarray) -> np.ndarray:
        return (e & self.special_bit) != 0


def walk_leaves(paging: Paging, pgd: int, start: int, end: int, read_phys: PhysRead,
                problems: list | None = None) -> Leaves:
    """Every non-empty leaf entry mapping [START, END) (user or kernel addresses), in
    address order, as arrays (:class:`Leaves`): present pages and blocks, and non-present
    entries that are not empty (swap and migration entries).  Each table is read whole
    (one 4 KiB physical read) and decoded with numpy: the only Python loop is over the
    entries that point at lower tables.

    :param problems: a table that cannot be read is appended here as a string (its
        range is skipped); None: skipped silently.
    :return: the leaves; none for a non-canonical or empty range."""
    start &= MASK64
    if end <= start or not _canonical(paging, start):
        return Leaves.empty()
    d = _Decode(paging)
    top_bits = paging.va_bits - paging.shifts[0]
    chunks: list[tuple] = []

    def emit(va, shift, e, pres, pa, special) -> None:
        chunks.append((va, np.full(len(va), shift, np.uint8), e, pres, pa, special))

    def visit(table_pa: int, level: int, base: int) -> None:
        shift = paging.shifts[level]
        entries = _table(read_phys, table_pa)
        if entries is None:
            if problems is not None:
                problems.append(f"page table at {table_pa:#x} (level {level}) cannot be read")
            return
        bits = top_bits if level == 0 else 9
        lo = max(start, base)
        first = (lo - base) >> shift
        last = min((end - 1 - base) >> shift, (1 << bits) - 1)
        sl = entries[first:last + 1]
        nz = np.flatnonzero(sl)
        if not len(nz):
            return
        e = sl[nz]
        va = np.uint64(base) + (nz + first).astype(np.uint64) * np.uint64(1 << shift)
        pres = d.present(e)
        if shift == 12:
            if d.arm:
                pres &= (e & np.uint64(2)) != 0  # 0b01 at level 3 is reserved
            emit(va, shift, e, pres, np.where(pres, d.oa(e), np.uint64(0)), d.special(e))
            return
        gone = ~pres  # e.g. a PMD migration entry
        if gone.any():
            emit(va[gone], shift, e[gone], pres[gone], np.zeros(int(gone.sum()), np.uint64),
                 np.zeros(int(gone.sum()), bool))
        block = pres & d.block(e)
        if block.any() and shift in (21, 30):
            eb = e[block]
            emit(va[block], shift, eb, pres[block], d.oa(eb) & ~np.uint64((1 << shift) - 1),
                 d.special(eb))
        tables = pres & ~d.block(e)
        for pa, v in zip(d.oa(e[tables]).tolist(), va[tables].tolist()):
            visit(pa, level + 1, v)

    # the top table indexes the VA bits below va_bits; the upper half (kernel addresses)
    # starts over at index 0 with the sign bits set
    sign = start & ~(MASK64 >> (64 - paging.va_bits))
    visit(pgd, 0, sign)
    if not chunks:
        return Leaves.empty()
    cols = [np.concatenate(c) for c in zip(*chunks)]
    order = np.argsort(cols[0], kind="stable")
    return Leaves(*(c[order] for c in cols))


def walk_range(paging: Paging, pgd: int, start: int, end: int, read_phys: PhysRead,
               problems: list | None = None) -> list[Leaf]:
    """:func:`walk_leaves` as one :class:`Leaf` per entry (for a few entries; the
    arrays are what a large range wants).

    :param problems: as :func:`walk_leaves`.
    :return: the leaves in address order; an empty list for a non-canonical range."""
    lv = walk_leaves(paging, pgd, start, end, read_phys, problems)
    return [lv.leaf(i) for i in range(len(lv))]


#: The kernel's names of the levels, top first, by number of levels (x86_64 and arm64
#: fold the same way: P4D exists only with 5 levels, PUD with 4 or more).
LEVEL_NAMES = {3: ("PGD", "PMD", "PTE"), 4: ("PGD", "PUD", "PMD", "PTE"),
               5: ("PGD", "P4D", "PUD", "PMD", "PTE")}


@dataclasses.dataclass(frozen=True)
class Step:
    """One level of a translation (:func:`walk_steps`): the level's name (PGD ... PTE),
    the physical address of the table read, the index used, the entry's physical address
    and its raw value (None when it could not be read)."""

    level: str
    table: int
    index: int
    entry_pa: int
    entry: int | None


def walk_steps(paging: Paging, pgd: int, va: int, read_phys: PhysRead
               ) -> tuple[list[Step], tuple[int, int] | None]:
    """:func:`walk`, level by level, as crash's ``vtop`` shows it.

    :return: the entries read, top first, and the result of :func:`walk` (physical
        address of the page or block and its size, or None)."""
    va &= MASK64
    steps: list[Step] = []
    names = LEVEL_NAMES[paging.levels]

    def recording(pa: int, size: int) -> bytes | None:
        raw = read_phys(pa, size)
        level = len(steps)
        shift = paging.shifts[level]
        table = pa - 8 * ((va >> shift) & 511) if level else pgd
        steps.append(Step(names[level], table, (pa - table) // 8, pa,
                          int.from_bytes(raw, "little") if raw and len(raw) == 8 else None))
        return raw

    return steps, walk(paging, pgd, va, recording)


def walk(paging: Paging, pgd: int, va: int, read_phys: PhysRead) -> tuple[int, int] | None:
    """Translate VA through the page tables whose top table is at physical address PGD.

    :param read_phys: reads physical memory (None when it cannot).
    :return: (physical address of the page or block that maps VA, its size in bytes), or
        None: not mapped, not canonical, or a table could not be read."""
    va &= MASK64
    if not _canonical(paging, va):
        return None
    if paging.arch == "aarch64":
        return _walk_arm64(paging, pgd, va, read_phys)
    return _walk_x86_64(paging, pgd, va, read_phys)


def follow_phys(paging: Paging, pgd: int, va: int, read_phys: PhysRead) -> int | None:
    """The physical address VA maps to (as drgn's ``follow_phys(mm, va)``), or None."""
    t = walk(paging, pgd, va, read_phys)
    if t is None:
        return None
    page, size = t
    return page + (va & (size - 1))


class PageTableWalker:
    """:func:`walk` bound to one address space: ``PageTableWalker(paging, pgd,
    read_phys).walk(va)``."""

    def __init__(self, paging: Paging, pgd: int, read_phys: PhysRead):
        self.paging = paging
        self.pgd = pgd
        self.read_phys = read_phys

    def walk(self, va: int) -> tuple[int, int] | None:
        """(physical address of VA's page or block, its size), or None."""
        return walk(self.paging, self.pgd, va, self.read_phys)

    def follow_phys(self, va: int) -> int | None:
        """The physical address VA maps to, or None."""
        return follow_phys(self.paging, self.pgd, va, self.read_phys)


def phys_reader(t: Target) -> PhysRead:
    """A ``read_phys`` for T: the target's own physical reads (``Target.read_phys``) where
    it has them, else the kernel's direct map (:func:`direct_map_reader`)."""
    from .addr import kernel_layout

    try:
        t.read_phys(0, 8)
    except TargetError as e:
        if not isinstance(e, FaultError):
            return direct_map_reader(t, kernel_layout(t))

    def read_phys(pa: int, size: int) -> bytes | None:
        try:
            return t.read_phys(pa, size)
        except FaultError:
            return None

    return read_phys


def direct_map_reader(t: Target, layout: KernelLayout) -> PhysRead:
    """A ``read_phys`` for targets that read only virtual memory: physical memory through
    the kernel's direct map (every RAM page is in it, page tables included)."""

    def read_phys(pa: int, size: int) -> bytes | None:
        try:
            return t.read(phys_to_virt(layout, pa), size)
        except (FaultError, TargetError):
            return None

    return read_phys
