"""The drgn adapter: a vmcore (-c), the live kernel (-k) or a QEMU guest over QMP (--qemu).

Only this module (and the drgn front end) imports drgn."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import drgn

from ..errors import MemscopeError
from .base import FaultError, Layout, Member, MissingPage, Target, TargetError, Variable
from .dumpfile import KDUMP_SIGNATURE, DumpFile, NotADump, read_dump_file
from .elf import PT_LOAD, NotElf64, program_headers


_TYPEDEF, _ARRAY = drgn.TypeKind.TYPEDEF, drgn.TypeKind.ARRAY
_COMPOUND = (drgn.TypeKind.STRUCT, drgn.TypeKind.UNION)


def _flatten(t: drgn.Type, base: int, out: dict[str, Member]) -> None:
    # Type.kind builds a new enum member per access: read it once per member.
    for m in t.members:
        name = m.name
        if name is not None and name in out:
            continue
        mt = m.type
        kind = mt.kind
        while kind == _TYPEDEF:
            mt = mt.type
            kind = mt.kind
        bit_offset = m.bit_offset
        off = base + bit_offset // 8
        if name is None:
            if kind in _COMPOUND:
                _flatten(mt, off, out)
            continue
        try:
            size = drgn.sizeof(mt)
        except (TypeError, ValueError):
            size = 0
        length = mt.length if kind == _ARRAY else None
        out[name] = Member(name, off, size, str(m.type.type_name()), length,
                           bit_offset % 8, m.bit_field_size)


class DumpHoles:
    """The holes of one dump, made to fault in one drgn Program.

    drgn reads a PT_LOAD's bytes past its file size as zeros and says nothing; for every
    :class:`~memscope.target.dumpfile.Missing` range of the dump this adds a memory
    segment of its own on top (drgn: "the new segment takes precedence"), physical and,
    where the dump maps it, virtual, whose reader raises ``drgn.FaultError`` naming the
    page and why it is missing.  Reads that translate through the page tables reach the
    physical segments, so every path into a hole faults, drgn's own helpers' included.
    Each hole touched is recorded (:attr:`hits`) unless :attr:`speculative` is set."""

    def __init__(self, prog: drgn.Program, dump: DumpFile, page_size: int):
        self.dump = dump
        self.page_size = page_size
        self.hits: dict[int, MissingPage] = {}
        self.speculative = 0
        self.last: MissingPage | None = None
        for m in dump.missing:
            prog.add_memory_segment(m.start, m.size, self._reader(m, m.start), True)
            if m.vaddr is not None:
                prog.add_memory_segment(m.vaddr, m.size, self._reader(m, m.start), False)

    def _reader(self, m, phys_start: int):
        mask = ~(self.page_size - 1)
        shift = self.page_size.bit_length() - 1

        def read(address: int, count: int, offset: int, physical: bool) -> bytes:
            page = (phys_start + offset) & mask
            miss = self.last = MissingPage(page, page >> shift, m.why)
            if not self.speculative:
                self.hits.setdefault(page, miss)
            raise drgn.FaultError(str(miss), address)

        return read


def dump_holes(prog: drgn.Program) -> DumpHoles | None:
    """The :class:`DumpHoles` of PROG's dump, installed on first use and kept in
    ``prog.cache``; None for a live kernel, a QEMU guest or a dump whose headers cannot
    be read (drgn then reports what it can)."""
    key = "memscope_dump_holes"
    if key in prog.cache:
        return prog.cache[key]
    holes = None
    path = getattr(prog, "core_dump_path", None)
    if path and not (prog.flags & drgn.ProgramFlags.IS_LIVE):
        try:
            dump = read_dump_file(path)
        except (NotADump, OSError, ValueError):
            dump = None
        if dump is not None:
            vi_page = dump.vmcoreinfo_fields().get("PAGESIZE", "")
            page_size = int(vi_page) if vi_page.isdigit() else dump.page_size or 4096
            holes = DumpHoles(prog, dump, page_size)
    prog.cache[key] = holes
    return holes


class DrgnTarget(Target):
    """The Target interface over a drgn Program: a vmcore, /proc/kcore or a QEMU guest.
    For a dump, its holes (:class:`DumpHoles`) fault with the page named and are
    recorded (:meth:`missing_pages_read`)."""

    def __init__(self, prog: drgn.Program):
        self.prog = prog
        self.arch = "aarch64" if prog.platform.arch == drgn.Architecture.AARCH64 else "x86_64"
        # Layouts and symbol addresses are the Program's, not one command's: kept in
        # prog.cache (as drgn's own helpers keep their probes), every target of the Program
        # shares them.  Flattening the layouts and drgn's ELF symbol searches were half of
        # a one-process command (maps PID --rss: ~26 of ~50 ms).  A symbol not found is
        # remembered per target only on a live kernel, where a module may load meanwhile.
        shared = prog.cache.setdefault("memscope.target.drgn", {"layouts": {}, "symbols": {}})
        self._layouts: dict[str, Layout] = shared["layouts"]
        self._symbols: dict[str, int | None] = shared["symbols"]
        self._live = bool(prog.flags & drgn.ProgramFlags.IS_LIVE)
        self._not_found: set[str] = set()
        self.holes = dump_holes(prog)

    def missing_pages_read(self) -> list[MissingPage]:
        return list(self.holes.hits.values()) if self.holes else []

    def forget_missing_pages(self) -> None:
        if self.holes:
            self.holes.hits.clear()

    @contextlib.contextmanager
    def speculative(self):
        if self.holes is None:
            yield
            return
        self.holes.speculative += 1
        try:
            yield
        finally:
            self.holes.speculative -= 1

    def _fault(self, e: drgn.FaultError, address: int, size: int,
               physical: bool = False) -> FaultError:
        """Our FaultError for drgn's E, with the missing page when a hole raised it."""
        holes = self.holes
        if holes is None or not holes.dump.missing:
            return FaultError(address, size)
        last = holes.last
        if last is not None and str(e).startswith(str(last)):
            holes.last = None
            return FaultError(address, size, last)
        # A read that drgn did not route through our segments: a kdump-compressed dump's
        # virtual reads are translated by libkdumpfile itself.  Find the page by the
        # kernel's page tables.
        miss = self._missing_page(address, size, physical)
        if miss is not None and not holes.speculative:
            holes.hits.setdefault(miss.phys, miss)
        return FaultError(address, size, miss)

    def _missing_page(self, address: int, size: int, physical: bool) -> MissingPage | None:
        """The first page of [ADDRESS, ADDRESS + SIZE) that lies in a hole of the dump
        (virtual addresses translated through init_mm's page tables), or None."""
        from drgn.helpers.linux.mm import follow_phys

        ps = self.holes.page_size
        init_mm = None
        for page in range(address & ~(ps - 1), address + size, ps):
            if physical:
                phys = page
            else:
                try:
                    if init_mm is None:
                        init_mm = self.prog["init_mm"].address_of_()
                    phys = int(follow_phys(init_mm, page))
                except (drgn.FaultError, LookupError, ValueError):
                    # The page tables themselves may be what the dump lacks: the kernel
                    # image's own pages by the formula, without them.
                    phys = self._kernel_image_phys(page)
                    if phys is None:
                        continue
            m = self.holes.dump.missing_at(phys)
            if m is not None:
                p = phys & ~(ps - 1)
                return MissingPage(p, p // ps, m.why)
        return None

    def _kernel_image_phys(self, address: int) -> int | None:
        """The physical address of ADDRESS in the kernel image by VMCOREINFO alone, or
        None: x86_64's ``__phys_addr_symbol()`` (ADDRESS - __START_KERNEL_map +
        ``phys_base``), arm64's ``__kimg_to_phys()`` (ADDRESS - ``kimage_voffset``)."""
        fields = self.holes.dump.vmcoreinfo_fields()
        try:
            if "NUMBER(phys_base)" in fields and address >= 0xFFFFFFFF80000000:
                return address - 0xFFFFFFFF80000000 + int(fields["NUMBER(phys_base)"])
            if "NUMBER(kimage_voffset)" in fields:
                start, end = self.symbol("_text"), self.symbol("_end")
                if start <= address < end:
                    return address - int(fields["NUMBER(kimage_voffset)"], 16)
        except (ValueError, TargetError):
            return None
        return None

    def symbol(self, name: str) -> int:
        # Cached, misses included: the commands ask for the same few globals many times.
        try:
            address = self._symbols[name]
        except KeyError:
            if name in self._not_found:
                address = None
            else:
                address = self._lookup(name)
                if address is None and self._live:
                    self._not_found.add(name)
                else:
                    self._symbols[name] = address
        if address is None:
            raise TargetError(f"symbol {name} not found")
        return address

    def _lookup(self, name: str) -> int | None:
        # drgn's object index (prog[name], from DWARF) answers in microseconds; its ELF
        # symbol table search (prog.symbol) takes 0.5-5 ms per call in drgn 0.3.0, so it is
        # only the fallback (symbols without debug info).  Both give the same address for
        # every global memscope uses, on every lab kernel.
        try:
            address = self.prog[name].address_
            if address is not None:
                return address
        except (KeyError, LookupError):
            pass
        try:
            address = self.prog.symbol(name).address
        except LookupError:
            return None
        return self._absolute(name, address)

    def _absolute(self, name: str, address: int) -> int:
        """ADDRESS of ELF symbol NAME with the KASLR offset applied where drgn did not:
        drgn 0.3.0 does not relocate linker-script symbols defined outside any section
        (arm64's ``_end`` and ``init_pg_dir``), so one in the kernel half that reads below
        ``_text`` while KERNELOFFSET moves it above is such a symbol.  Done here, once, so
        every user (and the debug-info cache, which stores addresses without the offset)
        sees the kernel's address."""
        if address < 1 << 63 or name == "_text":
            return address
        try:
            text = self.prog.symbol("_text").address
        except LookupError:
            return address
        if address >= text:
            return address
        off = int(self.vmcoreinfo_fields.get("KERNELOFFSET", "0") or "0", 16)
        moved = (address + off) & ((1 << 64) - 1)
        return moved if off and moved >= text else address

    def variable(self, name: str) -> Variable:
        try:
            obj = self.prog.variable(name)
        except LookupError:
            raise TargetError(f"variable {name} not found in the debug info") from None
        t = obj.type_
        while t.kind == _TYPEDEF:
            t = t.type
        try:
            size = drgn.sizeof(t)
        except (TypeError, ValueError):
            size = 0
        return Variable(name, obj.address_, size, str(obj.type_.type_name()),
                        t.length if t.kind == _ARRAY else None)

    def constant(self, name: str) -> int:
        try:
            return self.prog.constant(name).value_()
        except LookupError:
            raise TargetError(f"enumerator {name} not found in the debug info") from None

    def _type(self, type_name: str) -> drgn.Type:
        try:
            t = self.prog.type(type_name)
        except LookupError:
            raise TargetError(f"type {type_name} not found in the debug info") from None
        while t.kind == drgn.TypeKind.TYPEDEF:
            t = t.type
        return t

    def layout(self, type_name: str) -> Layout:
        lay = self._layouts.get(type_name)
        if lay is None:
            t = self._type(type_name)
            if t.kind not in (drgn.TypeKind.STRUCT, drgn.TypeKind.UNION):
                raise TargetError(f"{type_name} is not a struct or union")
            members: dict[str, Member] = {}
            _flatten(t, 0, members)
            lay = self._layouts[type_name] = Layout(type_name, t.size, members)
        return lay

    def enum(self, type_name: str) -> dict[str, int]:
        t = self._type(type_name)
        if t.kind != drgn.TypeKind.ENUM:
            raise TargetError(f"{type_name} is not an enum")
        return {e.name: e.value for e in t.enumerators}

    def sizeof(self, type_name: str) -> int:
        return drgn.sizeof(self._type(type_name))

    def array_length(self, name: str) -> int:
        try:
            t = self.prog[name].type_
        except (KeyError, LookupError):
            raise TargetError(f"variable {name} not found in the debug info") from None
        while t.kind == _TYPEDEF:
            t = t.type
        if t.kind != _ARRAY or t.length is None:
            raise TargetError(f"{name} is not an array of known length")
        return t.length

    def read(self, address: int, size: int) -> bytes:
        try:
            return self.prog.read(address, size)
        except drgn.FaultError as e:
            raise self._fault(e, address, size) from None

    def read_phys(self, address: int, size: int) -> bytes:
        """SIZE bytes at physical ADDRESS (a vmcore's PT_LOAD physical addresses, /proc/kcore's
        direct map, QEMU's guest memory)."""
        try:
            return self.prog.read(address, size, True)
        except drgn.FaultError as e:
            raise self._fault(e, address, size, physical=True) from None
        except ValueError:
            raise FaultError(address, size) from None

    def away_from_cpu(self, cpu: int):
        """On the live kernel (/proc/kcore): run on any allowed CPU but CPU for the block
        (sched_setaffinity), then on the CPUs allowed before.  See Target.away_from_cpu."""
        if not self.prog.flags & drgn.ProgramFlags.IS_LIVE:
            return super().away_from_cpu(cpu)
        return _away_from(cpu)

    def vmcoreinfo(self) -> bytes:
        # drgn exposes the VMCOREINFO note it found (in the dump, or from the live kernel).
        try:
            return self.prog["VMCOREINFO"].string_()
        except (KeyError, LookupError):
            return b""

    @property
    def release(self) -> str:
        return self.prog["UTS_RELEASE"].string_().decode()


class CachedDrgnTarget(DrgnTarget):
    """A dump read through drgn whose debug-info answers come from the build's
    :class:`~memscope.target.debuginfo_cache.DebugInfoCache`; the DWARF is loaded (by
    LOAD_DWARF) only for a question the cache has not seen, whose answer is then added.
    :meth:`save_cache` writes what was added.  The release and VMCOREINFO come from the
    dump file itself."""

    def __init__(self, prog: drgn.Program, cache, dump: DumpFile, load_dwarf,
                 dwarf_loaded: bool):
        super().__init__(prog)
        self.cache, self.dump, self._load_dwarf = cache, dump, load_dwarf
        self.dwarf_loaded = dwarf_loaded

    def _dwarf(self) -> None:
        if not self.dwarf_loaded:
            self._load_dwarf()
            self.dwarf_loaded = True

    def _ask(self, kind: str, name: str, compute):
        hit, value = self.cache.get(kind, name)
        if hit:
            if isinstance(value, TargetError):
                raise value
            return value
        self._dwarf()
        try:
            value = compute()
        except TargetError as e:
            self.cache.put(kind, name, error=str(e))
            raise
        self.cache.put(kind, name, value)
        return value

    def save_cache(self) -> None:
        """Write the answers added since the cache was read (no-op when none were)."""
        try:
            self.cache.save()
        except OSError:
            pass  # a read-only cache directory: the next run loads the DWARF again

    def symbol(self, name: str) -> int:
        return self._ask("symbol", name, lambda: DrgnTarget.symbol(self, name))

    def variable(self, name: str) -> Variable:
        v = self._ask("variable", name, lambda: DrgnTarget.variable(self, name))
        return v if isinstance(v, Variable) else Variable(name, *v)

    def constant(self, name: str) -> int:
        return self._ask("constant", name, lambda: DrgnTarget.constant(self, name))

    def layout(self, type_name: str) -> Layout:
        return self._ask("layout", type_name, lambda: DrgnTarget.layout(self, type_name))

    def enum(self, type_name: str) -> dict[str, int]:
        return self._ask("enum", type_name, lambda: DrgnTarget.enum(self, type_name))

    def sizeof(self, type_name: str) -> int:
        return self._ask("sizeof", type_name, lambda: DrgnTarget.sizeof(self, type_name))

    def array_length(self, name: str) -> int:
        return self._ask("array_length", name, lambda: DrgnTarget.array_length(self, name))

    def vmcoreinfo(self) -> bytes:
        return self.dump.vmcoreinfo

    @property
    def release(self) -> str:
        return self.dump.vmcoreinfo_fields().get("OSRELEASE") or DrgnTarget.release.fget(self)

    def _missing_page(self, address: int, size: int, physical: bool):
        if not physical:
            self._dwarf()  # the page-table walk of drgn's helpers needs the types
        return super()._missing_page(address, size, physical)


@contextlib.contextmanager
def _away_from(cpu: int):
    allowed = os.sched_getaffinity(0)
    others = allowed - {cpu}
    if not others or others == allowed:
        yield
        return
    os.sched_setaffinity(0, others)
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def open_dump_target(vmcore: str | os.PathLike, vmlinux: str | os.PathLike | None,
                     cache_root: str | os.PathLike | None = None) -> DrgnTarget:
    """The target for the dump VMCORE with debug info from VMLINUX, the debug-info cache
    used where it can be (:mod:`memscope.target.debuginfo_cache` under CACHE_ROOT,
    default $MEMSCOPE_CACHE or ~/.cache/memscope; none when $MEMSCOPE_DEBUGINFO_CACHE is
    0, or the dump has no build ID, or no VMLINUX is given): a
    :class:`CachedDrgnTarget`, else a :class:`DrgnTarget` as :func:`open_core` opens it.

    :raises MemscopeError: as :func:`open_core`; also a VMLINUX whose build ID is not the
        dump's (checked before any DWARF is read)."""
    from .debuginfo_cache import DebugInfoCache, cache_path

    path = _reassembled(Path(vmcore))
    try:
        dump = read_dump_file(path)
    except (NotADump, OSError, ValueError):
        dump = None
    build = dump.build_id if dump else None
    if vmlinux is not None and build:
        from .elf import build_id

        _readable_file(Path(vmlinux))
        try:
            with open(vmlinux, "rb") as f:
                theirs = build_id(f)
        except (NotElf64, ValueError):
            # checked here, not only when drgn loads it: a warm cache never opens the file
            raise MemscopeError(f"{vmlinux}: not an ELF file (give the kernel's vmlinux "
                                "with -s)") from None
        except OSError as e:
            raise MemscopeError(f"{vmlinux}: cannot be read ({e.strerror or e})") from None
        if theirs is not None and theirs != build:
            raise MemscopeError(f"{vmlinux}: does not match this kernel (build ID {theirs}; "
                                f"the dump's is {build})")
        if theirs is None:
            build = None  # a vmlinux without a build ID: no cache, drgn checks the file
    if (os.environ.get("MEMSCOPE_DEBUGINFO_CACHE") == "0" or not build or vmlinux is None):
        return DrgnTarget(open_core(path, vmlinux))
    prog = open_core(path, vmlinux, load_debug_info=False)
    vi = dump.vmcoreinfo_fields()
    root = Path(cache_root or os.environ.get("MEMSCOPE_CACHE")
                or Path.home() / ".cache" / "memscope")
    try:
        kaslr = int(vi.get("KERNELOFFSET", "0"), 16)
    except ValueError:
        kaslr = 0
    cache = DebugInfoCache(cache_path(root, build), build, vi.get("OSRELEASE", ""), kaslr)
    cold = cache.load(vi) is not None
    if cold:
        _load_debug_info(prog, vmlinux)
    return CachedDrgnTarget(prog, cache, dump, lambda: _load_debug_info(prog, vmlinux),
                            dwarf_loaded=cold)


def open_core(vmcore: str | os.PathLike, vmlinux: str | os.PathLike | None,
              load_debug_info: bool = True) -> drgn.Program:
    """A drgn Program for VMCORE with debug info from VMLINUX (none yet when
    LOAD_DEBUG_INFO is false: the debug-info cache loads it on demand); one-line errors."""
    vmcore = _reassembled(Path(vmcore))
    _check_elf_core_size(vmcore)
    prog = _program()
    try:
        prog.set_core_dump(str(vmcore))
    except Exception as e:  # libelf errors come as a plain Exception
        raise MemscopeError(f"{vmcore}: not a usable kernel core dump ({e}){_cut(vmcore)}") \
            from None
    if not (prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL):
        raise MemscopeError(f"{vmcore}: not a Linux kernel core dump (no VMCOREINFO)")
    if load_debug_info:
        _load_debug_info(prog, vmlinux)
    return prog


def _reassembled(vmcore: Path) -> Path:
    """VMCORE itself, or for a flattened dump (makedumpfile -F, QEMU's kdump output) its
    reassembled copy in the cache ($MEMSCOPE_CACHE/reassembled, made on first use as
    ``makedumpfile -R`` would): drgn cannot read the flattened stream."""
    from .flattened import SIZE_FLAT_HEADER, FlattenedError, reassembled_path

    _readable_file(vmcore)
    with open(vmcore, "rb") as f:
        if not f.read(SIZE_FLAT_HEADER).startswith(b"makedumpfile"):
            return vmcore
    cache = Path(os.environ.get("MEMSCOPE_CACHE") or Path.home() / ".cache" / "memscope")
    try:
        return reassembled_path(vmcore, cache)
    except FlattenedError as e:
        raise MemscopeError(str(e)) from None
    except OSError as e:
        raise MemscopeError(f"{vmcore}: a flattened dump that could not be reassembled into "
                            f"{cache / 'reassembled'}: {e.strerror or e} (reassemble it "
                            "with makedumpfile -R and give the result)") from None


def _readable_file(path: Path) -> None:
    """One-line errors for a path that is missing, not a file, or not readable (a parent
    directory we may not search counts as unreadable)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise MemscopeError(f"{path}: no such file") from None
    except PermissionError:
        raise MemscopeError(f"{path}: permission denied") from None
    except OSError as e:
        raise MemscopeError(f"{path}: {e.strerror}") from None
    import stat

    if stat.S_ISDIR(st.st_mode):
        raise MemscopeError(f"{path}: is a directory")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        # a FIFO or a character device would be read without end (or cannot seek)
        raise MemscopeError(f"{path}: not a regular file (a pipe or device cannot be "
                            "read as a dump or an ELF file)")
    if not os.access(path, os.R_OK):
        raise MemscopeError(f"{path}: permission denied")


def _program() -> drgn.Program:
    # drgn logs warnings (e.g. "provided file ... did not match any loaded modules") through
    # the "drgn" logger; memscope reports the outcome itself, in one line.
    logging.getLogger("drgn").setLevel(logging.ERROR)
    return drgn.Program()


def _cut(vmcore: Path) -> str:
    """", truncated at byte N" when the dump's headers say it is cut short, else ""."""
    try:
        d = read_dump_file(vmcore)
    except (NotADump, OSError, ValueError):
        return ""
    if any(m.why.startswith("cut off") for m in d.missing):
        return f": truncated at byte {os.path.getsize(vmcore)}"
    return ""


def _check_elf_core_size(vmcore: Path) -> None:
    """A truncated ELF vmcore whose program headers are cut, or a kdump-compressed one cut
    inside its headers or bitmaps: what it holds cannot be told (and libkdumpfile, which
    maps the file, would die of SIGBUS reading past its end).  Memory cut off by the end
    of the file is not refused here: it is a hole
    (:func:`memscope.target.dumpfile.read_dump_file`), and only a command that needs a
    page from it fails, naming it."""
    try:
        with open(vmcore, "rb") as f:
            if f.read(len(KDUMP_SIGNATURE)) == KDUMP_SIGNATURE:
                try:
                    read_dump_file(vmcore)
                except NotADump as e:
                    raise MemscopeError(str(e)) from None
                return
            f.seek(0)
            phdrs, phnum = program_headers(f)
    except NotElf64:
        return  # not ELF64: let drgn say what it is (kdump-compressed, garbage...)
    except OSError as e:
        raise MemscopeError(f"{vmcore}: cannot read: {e.strerror}") from None
    if len(phdrs) < phnum:
        raise MemscopeError(f"{vmcore}: truncated: the file ends inside its ELF program "
                            "headers")


def _load_debug_info(prog: drgn.Program, vmlinux) -> None:
    try:
        if vmlinux is None:
            prog.load_default_debug_info()
        else:
            _readable_file(Path(vmlinux))
            prog.load_debug_info([str(vmlinux)])
    except drgn.MissingDebugInfoError:
        pass  # modules without debug info: the core kernel is what we need
    except OSError as e:
        raise MemscopeError(f"cannot load debug info: {e}") from None
    try:
        prog["init_uts_ns"]
    except (KeyError, LookupError):
        if vmlinux is None:
            raise MemscopeError("no debug info for this kernel: give its vmlinux with -s "
                                "VMLINUX (Debian: linux-image-RELEASE-dbg; lab runs: the "
                                "\"vmlinux\" of DIR/meta.json)") from None
        raise MemscopeError(f"{vmlinux}: {_why_not_debug_info(Path(vmlinux))}") from None


def _why_not_debug_info(path: Path) -> str:
    """Why the file PATH gave drgn no kernel debug info: not ELF, no DWARF, or another
    kernel's."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF":
            return "not an ELF file (-s takes the kernel's vmlinux with DWARF debug info)"
        f.seek(0)
        try:
            from .elf import section_names
            names = section_names(f)
        except Exception:  # noqa: BLE001 - a damaged ELF file
            return "a damaged or truncated ELF file"
    if ".debug_info" not in names:
        return ("has no DWARF debug info (stripped?): give the vmlinux of the -dbg package "
                "(Debian: /usr/lib/debug/boot/vmlinux-RELEASE)")
    return ("does not match this kernel (its debug info was not accepted for the dump's "
            "kernel release)")


def open_live(vmlinux: str | os.PathLike | None) -> drgn.Program:
    """The running kernel through /proc/kcore (root only), with debug info from VMLINUX
    or, without it, where drgn looks by default (Debian's -dbg package installs
    ``/usr/lib/debug/boot/vmlinux-RELEASE``).

    :raises MemscopeError: not root; no /proc/kcore (a kernel built without
        CONFIG_PROC_KCORE, or /proc not mounted); no debug info for the running release
        (the message names every path drgn's default lookup tried)."""
    if os.geteuid() != 0:
        raise MemscopeError("-k reads /proc/kcore, which needs root: run as root (sudo)")
    if not os.path.exists("/proc/kcore"):
        raise MemscopeError("-k needs /proc/kcore, and this system has none (a kernel "
                            "without CONFIG_PROC_KCORE, or /proc not mounted)")
    prog = _program()
    try:
        prog.set_kernel()
    except (OSError, ValueError) as e:
        raise MemscopeError(f"cannot open the running kernel through /proc/kcore: {e}") from None
    if vmlinux is None:
        try:
            _load_debug_info(prog, None)
        except MemscopeError:
            release = prog["UTS_RELEASE"].string_().decode()
            raise MemscopeError(
                f"no debug info for the running kernel {release}: no vmlinux with DWARF in "
                f"{', '.join(default_vmlinux_paths(prog, release))}; install "
                f"linux-image-{release}-dbg (Debian) or give the vmlinux with -s") from None
        return prog
    _load_debug_info(prog, vmlinux)
    return prog


def default_vmlinux_paths(prog: drgn.Program, release: str) -> list[str]:
    """Where drgn 0.3.0's default lookup (``load_default_debug_info``) looks for the
    kernel's vmlinux: by build ID under each debug directory (``/usr/lib/debug``), then
    Debian's, Fedora's and SUSE's places under each, then the places a kernel build or
    package may leave it (libdrgn/debug_info.c, ``drgn_module_try_vmlinux_files``)."""
    opts = prog.debug_info_options
    paths = []
    try:
        build_id = prog.main_module().build_id  # from /proc/kcore's notes
    except (LookupError, AttributeError):
        build_id = None
    for d in opts.directories:
        if build_id:
            paths.append(f"{d}/.build-id/{build_id[:1].hex()}/{build_id[1:].hex()}.debug")
    for d in opts.directories:
        paths += [f"{d}/boot/vmlinux-{release}", f"{d}/lib/modules/{release}/vmlinux",
                  f"{d}/lib/modules/{release}/vmlinux.debug"]
    return paths + [f"/boot/vmlinux-{release}", f"/lib/modules/{release}/build/vmlinux",
                    f"/lib/modules/{release}/vmlinux"]


def _probe_qmp(address: str, timeout: float = 10.0) -> None:
    """Connect once and wait for QEMU's QMP greeting, so that a dead socket or one held by
    another client (QMP serves one client at a time: a second one is accepted by the kernel
    but never greeted) is a one-line error instead of a hang inside drgn."""
    from .qmp import connect

    connect(address, timeout).close()


def open_qemu(address: str, vmlinux: str | os.PathLike | None) -> drgn.Program:
    """A running QEMU guest over its QMP socket (drgn's own QMP target)."""
    if "/" in address or not ":" in address:
        try:
            Path(address).stat()
        except FileNotFoundError:
            raise MemscopeError(f"{address}: no such QMP socket") from None
        except OSError as e:
            raise MemscopeError(f"{address}: {e.strerror}") from None
    _probe_qmp(address)
    prog = _program()
    try:
        prog.set_qemu_qmp(address)
    except Exception as e:  # OSError, ValueError, drgn.FaultError, or libelf's Exception
        raise MemscopeError(f"cannot talk to QEMU at {address}: {e}") from None
    _load_debug_info(prog, vmlinux)
    return prog
