"""Kernel symbols as the kernel itself names an address: ``%pS`` (kernel/kallsyms.c
``sprint_symbol()``, kernel/module/kallsyms.c ``find_kallsyms_symbol()``).

The answer comes from the kallsyms tables in the kernel's memory, not from the debugger's
ELF symbols, because that is what the kernel prints: a symbol's size in ``%pS`` is the
distance to the next kallsyms address (not the ELF ``st_size``), aliases resolve to the
first name at the address, and modules are named by their own ``mod->kallsyms``.  So a
``/proc/vmallocinfo`` caller such as ``kernel_clone+0xbd/0x440`` is reproduced exactly,
from a dump or a paused guest alike.

vmlinux (``kallsyms_num_syms``, ``kallsyms_names``, ``kallsyms_markers``,
``kallsyms_token_table``/``_index`` and the addresses) is read once per kernel
(:meth:`~memscope.mm.context.KernelContext.probe`): the addresses in bulk with numpy,
a name only when an address resolves to it.  The addresses have had four encodings; the
one that gives ``_stext`` its real address is kept, as drgn's loader does:

- ``kallsyms_addresses[]``: absolute (no CONFIG_KALLSYMS_BASE_RELATIVE);
- ``kallsyms_relative_base + (u32)kallsyms_offsets[i]`` (base-relative, v4.6, commit
  2213e9a66bb8);
- with CONFIG_KALLSYMS_ABSOLUTE_PERCPU, an offset >= 0 is absolute and a negative one is
  ``kallsyms_relative_base - 1 - offset``;
- place-relative, ``&kallsyms_offsets[i] + kallsyms_offsets[i]``, since v7.0 (commit
  a081b5789255, "kallsyms: Get rid of kallsyms relative base").

A name's length byte became a ULEB128 of up to two bytes in v6.1 (commit 73bbb94466fd,
"kallsyms: support "big" kernel symbols"); reading it that way is right for older kernels
too (their lengths stay below 0x80).

Modules (the ``modules`` list, read per snapshot: a live kernel loads and unloads them)
resolve as ``find_kallsyms_symbol()`` does: the closest preceding defined, named,
non-mapping symbol of ``mod->kallsyms``, its size up to the next symbol or the end of the
module's text.  The module text layout is ``mod->mem[MOD_TEXT]`` since v6.4 (commit
ac3b43283923, "module: replace module_layout with module_memory"), ``core_layout`` /
``init_layout`` before.  BPF, ftrace and kprobe trampolines are not resolved (the
kernel names those from its own lists); they print as a bare address, as the kernel does
for an address it cannot name.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from ..target.base import FaultError, TargetError
from . import list as klist
from .addr import kernel_layout

if TYPE_CHECKING:  # pragma: no cover
    from ..mm.context import KernelContext

__all__ = ("KernelSymbol", "format_symbol", "symbolize")

#: Markers: one offset into kallsyms_names every 256 symbols (kernel/kallsyms.c).
_MARKER_EVERY = 256
#: Elf64_Sym {st_name u32, st_info u8, st_other u8, st_shndx u16, st_value u64, st_size u64}
_ELF_SYM = np.dtype([("st_name", "<u4"), ("st_info", "u1"), ("st_other", "u1"),
                     ("st_shndx", "<u2"), ("st_value", "<u8"), ("st_size", "<u8")])
_SHN_UNDEF = 0
_MASK64 = (1 << 64) - 1
#: Bounds for data read from a possibly corrupted dump.
_MAX_SYMS = 4 << 20
_MAX_MODULES = 4096
_MAX_MODULE_SYMS = 1 << 20


@dataclasses.dataclass(frozen=True)
class KernelSymbol:
    """An address resolved as ``%pS`` resolves it.

    ``name`` the symbol; ``address`` its start; ``size`` bytes up to the next symbol (the
    kernel's symbol size, not ELF's); ``offset`` = the looked-up address - ``address``;
    ``module`` the module's name, or None for vmlinux.  ``str()`` is what ``%pS`` prints:
    ``name+0xoff/0xsize`` and `` [module]`` for a module."""

    name: str
    address: int
    size: int
    offset: int
    module: str | None = None

    def __str__(self) -> str:
        s = f"{self.name}+{self.offset:#x}/{self.size:#x}"
        return f"{s} [{self.module}]" if self.module else s


class _Vmlinux:
    """vmlinux's kallsyms tables: addresses decoded in bulk, names on demand."""

    def __init__(self, ctx: KernelContext):
        t = self.t = ctx.t
        for name in ("kallsyms_num_syms", "kallsyms_names", "kallsyms_markers",
                     "kallsyms_token_table", "kallsyms_token_index"):
            if not t.has_symbol(name):
                raise TargetError(f"the kernel has no {name} (built without CONFIG_KALLSYMS?)")
        n = self.n = t.read_u32(t.symbol("kallsyms_num_syms"))
        if not 0 < n <= _MAX_SYMS:
            raise TargetError(f"kallsyms_num_syms is {n}: not a kallsyms table")
        self.addresses = _addresses(t, n)
        self.names = t.symbol("kallsyms_names")
        nmark = (n + _MARKER_EVERY - 1) // _MARKER_EVERY
        self.markers = np.frombuffer(t.read(t.symbol("kallsyms_markers"), 4 * nmark), "<u4")
        index = np.frombuffer(t.read(t.symbol("kallsyms_token_index"), 2 * 256), "<u2")
        table = t.read(t.symbol("kallsyms_token_table"), int(index.max()) + 256)
        self.tokens = [table[i:table.index(b"\0", i)] for i in index.tolist()]
        self._blocks: dict[int, list[str]] = {}
        self.stext = t.symbol("_stext")
        self.end = kernel_layout(t).kernel_end  # _end (drgn misses its KASLR offset on arm64)
        self.sinittext = t.symbol("_sinittext")
        self.einittext = t.symbol("_einittext")
        self.etext = t.symbol("_etext")
        # CONFIG_KALLSYMS_ALL: data symbols are in the table, and every address in the
        # image resolves (is_ksym_addr() -> is_kernel()); else only text does.
        self.all = int(self.addresses[-1]) > self.etext

    def name(self, i: int) -> str:
        """The name of symbol I (kallsyms_expand_symbol(), the type letter skipped)."""
        block = self._blocks.get(i // _MARKER_EVERY)
        if block is None:
            block = self._blocks[i // _MARKER_EVERY] = self._read_block(i // _MARKER_EVERY)
        return block[i % _MARKER_EVERY]

    def _read_block(self, b: int) -> list[str]:
        count = min(_MARKER_EVERY, self.n - b * _MARKER_EVERY)
        start = self.names + int(self.markers[b])
        size = 16 << 10
        while True:
            data = self.t.read(start, size)
            out, pos = [], 0
            try:
                for _ in range(count):
                    length = data[pos]
                    pos += 1
                    if length & 0x80:  # two-byte length (v6.1, commit 73bbb94466fd)
                        length = (length & 0x7F) | data[pos] << 7
                        pos += 1
                    if pos + length > len(data):
                        raise IndexError
                    out.append(b"".join(self.tokens[c] for c in data[pos:pos + length])[1:]
                               .decode(errors="replace"))
                    pos += length
                return out
            except IndexError:
                if size >= 1 << 20:
                    raise TargetError("kallsyms_names is corrupted (a block of 256 names "
                                      "longer than 1 MiB)") from None
                size *= 4

    def is_ksym_addr(self, addr: int) -> bool:
        """is_ksym_addr(): in the kernel image (with KALLSYMS_ALL) or its text."""
        if self.sinittext <= addr < self.einittext:
            return True
        return self.stext <= addr < (self.end if self.all else self.etext)

    def lookup(self, addr: int) -> KernelSymbol:
        """get_symbol_pos() and the name: the first alias at the closest address <= ADDR."""
        a = self.addresses
        low = max(int(np.searchsorted(a, addr, side="right")) - 1, 0)
        start = int(a[low])
        low = int(np.searchsorted(a, start, side="left"))  # the first alias
        nxt = int(np.searchsorted(a, start, side="right"))
        if nxt < self.n:
            end = int(a[nxt])
        elif self.sinittext <= addr < self.einittext:
            end = self.einittext
        else:
            end = self.end if self.all else self.etext
        return KernelSymbol(self.name(low), start, end - start, addr - start)


def _addresses(t, n: int) -> np.ndarray:
    """kallsyms_sym_address() for every symbol, as uint64 (see the module's docstring for
    the encodings); raises TargetError when none gives ``_stext`` its address."""
    want = t.symbol("_stext")
    if t.has_symbol("kallsyms_addresses"):
        cands = [np.frombuffer(t.read(t.symbol("kallsyms_addresses"), 8 * n), "<u8")]
    else:
        where = t.symbol("kallsyms_offsets")
        off = np.frombuffer(t.read(where, 4 * n), "<i4").astype(np.int64)
        cands = []
        # uint64 arithmetic wraps modulo 2**64, as the kernel's unsigned long does
        if t.has_symbol("kallsyms_relative_base"):
            base = np.uint64(t.read_u64(t.symbol("kallsyms_relative_base")))
            cands.append(base + (off & 0xFFFFFFFF).astype(np.uint64))
            cands.append(np.where(off >= 0, off.astype(np.uint64),
                                  base - np.uint64(1) + (-off).astype(np.uint64)))
        # place-relative (v7.0, commit a081b5789255)
        cands.append(np.uint64(where) + (4 * np.arange(n, dtype=np.int64) + off).astype(np.uint64))
    for a in cands:
        if want in a and bool(np.all(a[1:] >= a[:-1])):
            return a
    raise TargetError("cannot decode the kallsyms addresses: no encoding gives _stext "
                      f"its address {want:#x} (wrong vmlinux for this dump?)")


@dataclasses.dataclass(frozen=True)
class _Module:
    name: str
    ranges: tuple[tuple[int, int], ...]  # every [base, end) of the module's memory
    text: tuple[int, int]  # core text [base, end): the last symbol's end
    init_text: tuple[int, int]
    values: np.ndarray  # candidate symbols' st_value, sorted
    name_offsets: np.ndarray  # their st_name, in the same order
    strtab: int


def _modules(ctx: KernelContext) -> list[_Module]:
    t = ctx.t
    if not t.has_symbol("modules"):
        return []
    mods = []
    for m in klist.list_for_each_entry(t, "struct module", t.symbol("modules"), "list",
                                       bound=_MAX_MODULES, problems=[], where="modules"):
        try:
            mods.append(_module(ctx, m))
        except FaultError:
            continue  # a module being unloaded, or a page the dump lacks: unnamed
    return mods


def _module(ctx: KernelContext, m: int) -> _Module:
    t = ctx.t
    ml = t.layout("struct module")
    name = t.read_cstr(m + ml.offset("name"), 64)
    ranges = []
    if ml.has("mem"):
        # v6.4 (commit ac3b43283923): mod->mem[MOD_MEM_NUM_TYPES] {base, size, ...}
        types = t.enum("enum mod_mem_type")
        mm = t.layout("struct module_memory")
        step = mm.size

        def span(kind: str) -> tuple[int, int]:
            at = m + ml.offset("mem") + step * types[kind]
            base = t.read_u64(at + mm.offset("base"))
            return base, base + t.read_u32(at + mm.offset("size"))

        for kind in types:
            if kind.startswith("MOD_") and kind not in ("MOD_MEM_NUM_TYPES",) \
                    and types[kind] < ml["mem"].array_length:
                ranges.append(span(kind))
        text, init_text = span("MOD_TEXT"), span("MOD_INIT_TEXT")
    else:
        # core_layout / init_layout {base, size, text_size, ...} (v4.5 - v6.3)
        lay = t.layout("struct module_layout")
        spans = {}
        for which in ("core_layout", "init_layout"):
            at = m + ml.offset(which)
            base = t.read_u64(at + lay.offset("base"))
            size = t.read_u32(at + lay.offset("size"))
            text = t.read_u32(at + lay.offset("text_size"))
            ranges.append((base, base + size))
            spans[which] = (base, base + text)
        text, init_text = spans["core_layout"], spans["init_layout"]
    ks = t.read_u64(m + ml.offset("kallsyms"))
    kl = t.layout("struct mod_kallsyms")
    symtab = t.read_u64(ks + kl.offset("symtab"))
    num = t.read_u32(ks + kl.offset("num_symtab"))
    strtab = t.read_u64(ks + kl.offset("strtab"))
    if num > _MAX_MODULE_SYMS:
        raise FaultError(ks, 0)
    syms = np.frombuffer(t.read(symtab, num * _ELF_SYM.itemsize), _ELF_SYM)[1:] if num else \
        np.zeros(0, _ELF_SYM)
    keep = (syms["st_shndx"] != _SHN_UNDEF) & (syms["st_name"] != 0)
    syms = syms[keep]
    order = np.argsort(syms["st_value"], kind="stable")
    return _Module(name, tuple(r for r in ranges if r[1] > r[0]), text, init_text,
                   syms["st_value"][order], syms["st_name"][order], strtab)


def _is_mapping_symbol(name: str) -> bool:
    """is_mapping_symbol() (include/linux/module_symbol.h): assembler-local and ELF
    mapping symbols, which find_kallsyms_symbol() skips."""
    return name.startswith(("$", ".L", "L0"))


def _module_lookup(t, mod: _Module, addr: int) -> KernelSymbol | None:
    """find_kallsyms_symbol(): the closest preceding named symbol, its size up to the next
    one or the end of the module's text."""
    in_init = mod.init_text[0] <= addr < mod.init_text[1]
    nextval = (mod.init_text if in_init else mod.text)[1]
    i = int(np.searchsorted(mod.values, addr, side="right"))
    # the best: the first (lowest-index) symbol at the greatest value <= addr that is not
    # a mapping symbol; the next: the smallest value > addr
    best = None
    j = i - 1
    while j >= 0:
        name = t.read_cstr(mod.strtab + int(mod.name_offsets[j]), 512)
        if name and not _is_mapping_symbol(name):
            best = (int(mod.values[j]), name)
            break
        j -= 1
    if best is None:
        return None
    for k in range(i, len(mod.values)):
        v = int(mod.values[k])
        if v > addr:
            nextval = min(nextval, v)
            break
    start, name = best
    # unsigned long arithmetic: a data symbol past the text gets the kernel's wrapped size
    return KernelSymbol(name, start, (nextval - start) & _MASK64, addr - start, mod.name)


def symbolize(ctx: KernelContext, addr: int) -> KernelSymbol | None:
    """The kernel's name for ADDR, as ``%pS`` finds it (``kallsyms_lookup()``): vmlinux's
    kallsyms, then the loaded modules' symbol tables.  None where the kernel would print
    the bare address (outside the image and every module).

    :raises TargetError: the kernel has no kallsyms tables, or they do not decode."""
    vm = ctx.probe("kallsyms", lambda: _Vmlinux(ctx))
    if vm.is_ksym_addr(addr):
        return vm.lookup(addr)
    for mod in ctx.snapshot("kallsyms_modules", lambda: _modules(ctx)):
        if any(lo <= addr < hi for lo, hi in mod.ranges):
            return _module_lookup(ctx.t, mod, addr)
    return None


def format_symbol(ctx: KernelContext, addr: int) -> str:
    """``%pS`` of ADDR: ``name+0xoff/0xsize`` (`` [module]`` for a module), or
    ``0x<hex>`` when the kernel cannot name it (``__sprint_symbol()``)."""
    sym = symbolize(ctx, addr)
    return str(sym) if sym else f"{addr:#x}"
