"""The kernel's virtual address layout: where the direct map (``PAGE_OFFSET``), the
vmemmap, the vmalloc range, the kernel image and the modules live, and ``virt_to_phys()``
/ ``phys_to_virt()`` for the addresses that translate without page tables.

Everything comes from the running kernel (symbols and VMCOREINFO), never from a version
number; what the architecture fixes is named as the kernel names it.

x86_64 (Documentation/arch/x86/x86_64/mm.rst, arch/x86/include/asm/page_64*.h,
pgtable_64_types.h):

- ``page_offset_base``, ``vmalloc_base``, ``vmemmap_base``: variables (randomised by
  CONFIG_RANDOMIZE_MEMORY; the constants of the 4- and 5-level layouts without them);
- page-table levels: VMCOREINFO ``NUMBER(pgtable_l5_enabled)``, else
  ``__pgtable_l5_enabled``;
- the direct map spans ``1 << MAX_PHYSMEM_BITS`` bytes (VMCOREINFO; 46 / 52 bits: the
  documented 64 TB / 4 PB); the vmemmap the struct pages of that many page frames;
- ``VMALLOC_END = VMALLOC_START + (VMALLOC_SIZE_TB << 40) - 1`` (inclusive) with
  VMALLOC_SIZE_TB 32 (4-level) or 12800 (5-level);
- the kernel image ``[_text, _end)`` in the mapping at ``__START_KERNEL_map``
  (0xffffffff80000000), ``__pa_symbol(x) = x - __START_KERNEL_map + phys_base`` for
  ``x`` below ``__START_KERNEL_map + KERNEL_IMAGE_SIZE`` (VMCOREINFO); modules from
  there (``MODULES_VADDR``) to ``MODULES_END`` (0xffffffffff000000).

arm64 (arch/arm64/include/asm/memory.h, arch/arm64/kernel/vmcoreinfo.c):

- ``PAGE_OFFSET = -(1 << VA_BITS)`` (since v5.4, commit 14c127c957c1 "arm64: mm: Flip
  kernel VA space"), VA_BITS from VMCOREINFO; the linear map ends at ``PAGE_END``, which
  is where the modules start (``MODULES_VADDR = _PAGE_END(VA_BITS_MIN)``);
- ``PHYS_OFFSET`` (``memstart_addr``), ``kimage_voffset``, ``MODULES_VADDR`` (=
  PAGE_END), ``VMALLOC_START/END`` and ``VMEMMAP_START/END`` from VMCOREINFO (exported since v6.1,
  commit 2369f171d5c5 "arm64: crash_core: Export MODULES, VMALLOC, and VMEMMAP ranges");
- ``__lm_to_phys(x) = (x & ~PAGE_OFFSET) + PHYS_OFFSET``, ``__kimg_to_phys(x) = x -
  kimage_voffset``, ``__phys_to_virt(x) = (x - PHYS_OFFSET) | PAGE_OFFSET``; the kernel
  image lies inside the vmalloc range, and since v6.5 so do the modules, near the image
  (``module_direct_base``, ``module_plt_base``).
"""

from __future__ import annotations

import dataclasses

from ..target.base import Target, TargetError

__all__ = ("KernelLayout", "is_kernel_address", "kernel_layout", "phys_to_virt", "region",
           "virt_to_phys", "START_KERNEL_MAP")

MASK64 = (1 << 64) - 1

#: x86_64 __START_KERNEL_map: where the kernel image mapping starts.
START_KERNEL_MAP = 0xFFFFFFFF80000000
#: x86_64 MODULES_END (arch/x86/include/asm/pgtable_64_types.h).
X86_MODULES_END = 0xFFFFFFFFFF000000
#: x86_64 VMALLOC_SIZE_TB_L4 / VMALLOC_SIZE_TB_L5.
X86_VMALLOC_SIZE_TB = {4: 32, 5: 12800}
#: x86_64 __PAGE_OFFSET_BASE_L4 / _L5 and VMALLOC_BASE_L4 / _L5, VMEMMAP_BASE_L4 / _L5:
#: the layout without CONFIG_RANDOMIZE_MEMORY.
X86_BASES = {4: (0xFFFF888000000000, 0xFFFFC90000000000, 0xFFFFEA0000000000),
             5: (0xFF11000000000000, 0xFFA0000000000000, 0xFFD4000000000000)}


@dataclasses.dataclass(frozen=True)
class KernelLayout:
    """The kernel's virtual memory map.  Ranges are ``[start, end)`` except
    ``vmalloc_end``, which is the kernel's ``VMALLOC_END`` as is (x86_64: its last byte;
    arm64: one past it; /proc/meminfo's VmallocTotal is ``(vmalloc_end - vmalloc_start)
    >> 10`` kB on both)."""

    arch: str
    page_shift: int
    page_offset: int  # PAGE_OFFSET: the direct map's first address
    direct_map_end: int
    phys_offset: int  # the physical address at PAGE_OFFSET (arm64 PHYS_OFFSET; x86 0)
    vmalloc_start: int
    vmalloc_end: int
    vmemmap: int  # the struct page of pfn 0
    vmemmap_start: int
    vmemmap_end: int
    kernel_start: int  # _text
    kernel_end: int  # _end
    #: kernel image virtual - physical: x86_64 __START_KERNEL_map - phys_base, arm64
    #: kimage_voffset.
    kimage_voffset: int
    kimage_map_end: int  # the end of what __pa_symbol() translates
    modules_start: int
    modules_end: int


def is_kernel_address(p: int) -> bool:
    """Whether P is in the kernel's half of the address space (bit 63 set, on x86_64 and
    arm64 alike).  The walks reject other pointers before reading them: NULL and small
    values are corruption, and a QEMU vmcore read through drgn answers low addresses
    with physical memory instead of faulting."""
    return p >> 63 == 1


def _vmcoreinfo_number(t: Target, key: str) -> int | None:
    """VMCOREINFO's NUMBER(KEY) (or SYMBOL(KEY), hexadecimal), or None."""
    vi = t.vmcoreinfo_fields
    if f"NUMBER({key})" in vi:
        return int(vi[f"NUMBER({key})"], 0) & MASK64
    if f"SYMBOL({key})" in vi:
        return int(vi[f"SYMBOL({key})"], 16)
    return None


def _read_symbol(t: Target, name: str) -> int | None:
    """The u64 value of the global NAME, or None when the kernel has no such symbol."""
    if not t.has_symbol(name):
        return None
    return t.read_u64(t.symbol(name))


def x86_pgtable_levels(t: Target) -> int:
    """4 or 5: whether the kernel runs with 5-level paging (``pgtable_l5_enabled()``)."""
    l5 = _vmcoreinfo_number(t, "pgtable_l5_enabled")
    if l5 is None and t.has_symbol("__pgtable_l5_enabled"):
        l5 = t.read_u32(t.symbol("__pgtable_l5_enabled"))
    return 5 if l5 else 4


def _image_end(t: Target, start: int) -> int:
    """``_end``.  drgn 0.3.0 does not apply the KASLR offset to linker-script symbols
    defined outside any section (arm64's ``_end``, ``init_pg_dir``): one that reads below
    ``_text`` is moved by VMCOREINFO's KERNELOFFSET."""
    end = t.symbol("_end")
    if end <= start:
        end += int(t.vmcoreinfo_fields.get("KERNELOFFSET", "0"), 16)
    if end <= start:
        raise TargetError(f"_end {end:#x} is not above _text {start:#x}")
    return end


def _x86_64(t: Target, page_shift: int) -> KernelLayout:
    levels = x86_pgtable_levels(t)
    bases = X86_BASES[levels]
    page_offset = _read_symbol(t, "page_offset_base") or bases[0]
    vmalloc_start = _read_symbol(t, "vmalloc_base") or bases[1]
    vmemmap = _read_symbol(t, "vmemmap_base") or bases[2]
    physmem_bits = _vmcoreinfo_number(t, "MAX_PHYSMEM_BITS") or (52 if levels == 5 else 46)
    struct_page = t.sizeof("struct page")
    phys_base = _vmcoreinfo_number(t, "phys_base")
    if phys_base is None:
        phys_base = t.read_u64(t.symbol("phys_base"))
    image_size = _vmcoreinfo_number(t, "KERNEL_IMAGE_SIZE") or 1 << 30
    return KernelLayout(
        arch="x86_64", page_shift=page_shift,
        page_offset=page_offset, direct_map_end=page_offset + (1 << physmem_bits),
        phys_offset=0,
        vmalloc_start=vmalloc_start,
        vmalloc_end=vmalloc_start + (X86_VMALLOC_SIZE_TB[levels] << 40) - 1,
        vmemmap=vmemmap, vmemmap_start=vmemmap,
        vmemmap_end=vmemmap + (1 << (physmem_bits - page_shift)) * struct_page,
        kernel_start=t.symbol("_text"), kernel_end=_image_end(t, t.symbol("_text")),
        kimage_voffset=(START_KERNEL_MAP - phys_base) & MASK64,
        kimage_map_end=START_KERNEL_MAP + image_size,
        modules_start=START_KERNEL_MAP + image_size, modules_end=X86_MODULES_END)


def _need(t: Target, key: str) -> int:
    v = _vmcoreinfo_number(t, key)
    if v is None:
        raise TargetError(f"VMCOREINFO has no {key}: cannot lay out arm64's address space")
    return v


def _arm64(t: Target, page_shift: int) -> KernelLayout:
    va_bits = _need(t, "VA_BITS")
    page_offset = -(1 << va_bits) & MASK64
    phys_offset = _vmcoreinfo_number(t, "PHYS_OFFSET")
    if phys_offset is None:
        phys_offset = t.read_u64(t.symbol("memstart_addr"))
    kimage_voffset = _vmcoreinfo_number(t, "kimage_voffset")
    if kimage_voffset is None:
        kimage_voffset = t.read_u64(t.symbol("kimage_voffset"))
    modules_start = _need(t, "MODULES_VADDR")
    vmemmap_start = _need(t, "VMEMMAP_START")
    vmemmap = _vmcoreinfo_number(t, "vmemmap")
    if vmemmap is None:
        # vmemmap = (struct page *)VMEMMAP_START - (memstart_addr >> PAGE_SHIFT)
        vmemmap = (vmemmap_start - (phys_offset >> page_shift) * t.sizeof("struct page")) \
            & MASK64
    end = _image_end(t, t.symbol("_text"))
    modules_start, modules_end = _arm64_modules(t, modules_start, _need(t, "MODULES_END"))
    return KernelLayout(
        arch="aarch64", page_shift=page_shift,
        page_offset=page_offset, direct_map_end=modules_start,  # PAGE_END
        phys_offset=phys_offset,
        vmalloc_start=_need(t, "VMALLOC_START"), vmalloc_end=_need(t, "VMALLOC_END"),
        vmemmap=vmemmap, vmemmap_start=vmemmap_start, vmemmap_end=_need(t, "VMEMMAP_END"),
        kernel_start=t.symbol("_text"), kernel_end=end,
        kimage_voffset=kimage_voffset, kimage_map_end=end,
        modules_start=modules_start, modules_end=modules_end)


def _arm64_modules(t: Target, start: int, end: int) -> tuple[int, int]:
    """Where arm64 modules are: since v6.5 (commit 3e35d303ab7d "arm64: module: rework
    module VA range selection") within 128 MiB (``module_direct_base``) or 2 GiB
    (``module_plt_base``) of the kernel image, wherever KASLR put it; before, in
    [MODULES_VADDR, MODULES_END)."""
    ranges = []
    for name, size in (("module_direct_base", 128 << 20), ("module_plt_base", 2 << 30)):
        base = _read_symbol(t, name)
        if base:
            ranges.append((base, base + size))
    if not ranges:
        return start, end
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def kernel_layout(t: Target) -> KernelLayout:
    """The virtual memory map of the kernel behind T (see the module for the sources).

    :raises TargetError: an architecture memscope does not lay out, or (arm64) a kernel
        whose VMCOREINFO lacks the ranges."""
    page_shift = t.page_size.bit_length() - 1
    if t.arch == "x86_64":
        return _x86_64(t, page_shift)
    if t.arch == "aarch64":
        return _arm64(t, page_shift)
    raise TargetError(f"no address layout for architecture {t.arch}")


def region(layout: KernelLayout, addr: int) -> str | None:
    """Which part of the kernel's address space ADDR is in: ``"kernel image"``,
    ``"modules"``, ``"vmemmap"``, ``"direct map"`` or ``"vmalloc"`` (tested in that order:
    on arm64 the image and the vmemmap lie inside the vmalloc range), else None."""
    L = layout
    if L.kernel_start <= addr < L.kernel_end:
        return "kernel image"
    if L.modules_start <= addr < L.modules_end:
        return "modules"
    if L.vmemmap_start <= addr < L.vmemmap_end:
        return "vmemmap"
    if L.page_offset <= addr < L.direct_map_end:
        return "direct map"
    if L.vmalloc_start <= addr <= L.vmalloc_end:
        return "vmalloc"
    return None


def virt_to_phys(layout: KernelLayout, addr: int) -> int:
    """``__pa(addr)`` / ``virt_to_phys()``: the physical address of a direct-map address,
    or ``__pa_symbol()`` of a kernel image address (x86_64: anything the kernel text
    mapping covers).  Other addresses (vmalloc, modules, vmemmap, user) need the page
    tables (:mod:`memscope.kernel.pgtable`).

    :raises TargetError: ADDR is neither."""
    L = layout
    if L.page_offset <= addr < L.direct_map_end:
        if L.arch == "aarch64":
            return (addr & ~L.page_offset & MASK64) + L.phys_offset  # __lm_to_phys
        return addr - L.page_offset
    image_lo = START_KERNEL_MAP if L.arch == "x86_64" else L.kernel_start
    if image_lo <= addr < L.kimage_map_end:
        return (addr - L.kimage_voffset) & MASK64
    raise TargetError(f"{addr:#x} is not a direct-map or kernel image address")


def phys_to_virt(layout: KernelLayout, pa: int) -> int:
    """``__va(pa)`` / ``phys_to_virt()``: the direct-map address of physical address PA.

    :raises TargetError: PA is outside what the direct map spans."""
    L = layout
    va = (pa - L.phys_offset) | L.page_offset if L.arch == "aarch64" else pa + L.page_offset
    if not (pa >= L.phys_offset and L.page_offset <= va < L.direct_map_end):
        raise TargetError(f"physical address {pa:#x} is outside the direct map")
    return va
