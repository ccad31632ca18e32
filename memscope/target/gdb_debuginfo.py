"""What gdb's debug info says about the kernel: the vmlinux gdb loaded, link-time addresses
of symbols, struct layouts (flattened exactly as the drgn adapter flattens them), enums and
sizes, cached per vmlinux; and bytes of the vmlinux file itself.  Imported only inside gdb."""

from __future__ import annotations

import gdb  # noqa: F401  (gdb's embedded module; this adapter runs only inside gdb)

from ..errors import MemscopeError
from .base import Layout, Member, TargetError
from .elf import PT_LOAD, NotElf64, ProgramHeader, program_headers, symbol_size
from .gdb_connection import KERNEL_HALF, _u64

#: Debug-info caches by vmlinux path (dropped by gdb_session.forget).
_debuginfo: dict[str, "_DebugInfo"] = {}


def vmlinux_path() -> str:
    """The file of the objfile that defines linux_banner (the kernel's vmlinux)."""
    try:
        sym = gdb.lookup_global_symbol("linux_banner")
    except gdb.error:
        sym = None
    if sym is None or sym.symtab is None:
        raise MemscopeError("no kernel symbols in gdb: load the guest's vmlinux first "
                            "with 'file VMLINUX'")
    return sym.symtab.objfile.filename


class _DebugInfo:
    """What gdb's debug info says (link-time addresses, layouts), cached per vmlinux."""

    def __init__(self, path: str):
        self.path = path
        self.symbols: dict[str, int | None] = {}
        self.layouts: dict[str, Layout] = {}
        self.enums: dict[str, dict[str, int]] = {}
        self.sizes: dict[str, int] = {}
        self.array_lengths: dict[str, int] = {}
        #: (link address, bytes) of linux_banner as the file holds them (gdb_kaslr).
        self.banner: tuple[int, bytes] | None = None

    def link_address(self, name: str) -> int | None:
        """The address gdb has for NAME (before the kernel offset), or None."""
        if name in self.symbols:
            return self.symbols[name]
        addr = None
        for lookup in (gdb.lookup_global_symbol, gdb.lookup_static_symbol):
            try:
                sym = lookup(name)
                if sym is not None and (sym.is_variable or sym.is_function):
                    a = sym.value().address
                    if a is not None:
                        addr = _u64(a)
                        break
            except (gdb.error, RuntimeError):
                continue
        if addr is None and name.replace("_", "").isalnum():
            # ELF-only symbols (no DWARF), e.g. _stext or __per_cpu_start on some builds.
            try:
                addr = _u64(gdb.parse_and_eval(f"(unsigned long)&'{name}'"))
            except gdb.error:
                addr = None
        self.symbols[name] = addr
        return addr

    def _lookup(self, name: str, want):
        """The first of gdb's global, then static, symbols NAME for which WANT(sym)."""
        for lookup in (gdb.lookup_global_symbol, gdb.lookup_static_symbol):
            try:
                sym = lookup(name)
            except (gdb.error, RuntimeError):
                continue
            if sym is not None and want(sym):
                return sym
        return None

    def variable_type(self, name: str) -> tuple[str, int, int | None] | None:
        """(type name, size, array length) of the variable NAME, or None."""
        # A global whose symtab gdb has not expanded yet is LOC_UNRESOLVED (its address in
        # the minimal symbols), not is_variable; its type is known either way.
        sym = self._lookup(name, lambda s: s.is_variable
                           or s.addr_class == gdb.SYMBOL_LOC_UNRESOLVED)
        if sym is None:
            return None
        t = mt = sym.type
        while mt.code == gdb.TYPE_CODE_TYPEDEF:
            mt = mt.target()
        length = None
        if mt.code == gdb.TYPE_CODE_ARRAY and not str(t).endswith("[]"):
            lo, hi = mt.range()
            length = hi - lo + 1
        try:
            size = mt.sizeof
        except gdb.error:
            size = 0
        return _type_name(t), size, length

    def constant(self, name: str) -> int | None:
        """The value of the enumerator NAME, or None."""
        sym = self._lookup(name, lambda s: s.addr_class == gdb.SYMBOL_LOC_CONST)
        return None if sym is None else int(sym.value())

    def array_length(self, name: str) -> int:
        """The length of the global array variable NAME (Target.array_length).

        gdb's symbol lookup may find a declaration (``extern struct pglist_data
        *node_data[];`` in include/linux/numa.h) rather than the definition: an array of
        unknown length, whose length is then the definition's size in the vmlinux's ELF
        symbol table over the element's size."""
        length = self.array_lengths.get(name)
        if length is not None:
            return length
        sym = self._lookup(name, lambda s: s.is_variable
                           or s.addr_class == gdb.SYMBOL_LOC_UNRESOLVED)
        if sym is None:
            raise TargetError(f"variable {name} not found in the debug info")
        t = sym.type
        while t.code == gdb.TYPE_CODE_TYPEDEF:
            t = t.target()
        if t.code != gdb.TYPE_CODE_ARRAY:
            raise TargetError(f"{name} is not an array of known length")
        if not str(t).endswith("[]"):
            lo, hi = t.range()
            length = hi - lo + 1
        else:
            with open(self.path, "rb") as f:
                size = symbol_size(f, name)
            elem = t.target().sizeof
            if not size or not elem or size % elem:
                raise TargetError(f"{name} is not an array of known length")
            length = size // elem
        self.array_lengths[name] = length
        return length

    def type(self, type_name: str):
        try:
            t = gdb.lookup_type(type_name)
        except gdb.error:
            raise TargetError(f"type {type_name} not found in the debug info") from None
        while t.code == gdb.TYPE_CODE_TYPEDEF:
            t = t.target()
        return t


def _type_name(t) -> str:
    # gdb spells an anonymous struct "struct {...}", drgn "struct <anonymous>": use drgn's,
    # so that both adapters give identical layouts.
    return str(t).replace("{...}", "<anonymous>")


def _flatten(t, base: int, out: dict[str, Member]) -> None:
    """Members of struct/union T at BASE, anonymous struct/union members flattened in, the
    first of two equal names winning: exactly what target/drgn.py's _flatten does."""
    for f in t.fields():
        if getattr(f, "is_base_class", False) or not hasattr(f, "bitpos"):
            continue
        mt = f.type
        while mt.code == gdb.TYPE_CODE_TYPEDEF:
            mt = mt.target()
        off = base + f.bitpos // 8
        if not f.name:
            if mt.code in (gdb.TYPE_CODE_STRUCT, gdb.TYPE_CODE_UNION):
                _flatten(mt, off, out)
            continue
        if f.name in out:
            continue
        name = _type_name(f.type)
        length = None
        if mt.code == gdb.TYPE_CODE_ARRAY:
            if name.endswith("[]"):
                length = None  # flexible array member: drgn says no length
            else:
                lo, hi = mt.range()
                length = hi - lo + 1
        try:
            size = mt.sizeof if not (length is None and mt.code == gdb.TYPE_CODE_ARRAY) else 0
        except gdb.error:
            size = 0
        out[f.name] = Member(f.name, off, size, name, length, f.bitpos % 8, f.bitsize or None)


def _elf_file_read(path: str, vaddr: int, size: int) -> bytes:
    """SIZE bytes at link address VADDR in the ELF file PATH (its PT_LOAD segments)."""
    with open(path, "rb") as f:
        for ph in _load_segments(path, f):
            if ph.p_vaddr <= vaddr and vaddr + size <= ph.p_vaddr + ph.p_filesz:
                f.seek(ph.p_offset + vaddr - ph.p_vaddr)
                return f.read(size)
    raise MemscopeError(f"{path}: no loadable segment holds {vaddr:#x}")


def _elf_first_load(path: str) -> int:
    """The link address of the first PT_LOAD segment in the kernel (upper) half."""
    with open(path, "rb") as f:
        for ph in _load_segments(path, f):
            if ph.p_vaddr & KERNEL_HALF:
                return ph.p_vaddr
    raise MemscopeError(f"{path}: no kernel-half loadable segment (is this a vmlinux?)")


def _load_segments(path: str, f) -> list[ProgramHeader]:
    try:
        phdrs, _ = program_headers(f)
    except NotElf64:
        raise MemscopeError(f"{path}: not a 64-bit ELF file") from None
    return [ph for ph in phdrs if ph.p_type == PT_LOAD]


def debuginfo() -> _DebugInfo:
    path = vmlinux_path()
    di = _debuginfo.get(path)
    if di is None:
        di = _debuginfo[path] = _DebugInfo(path)
    return di
