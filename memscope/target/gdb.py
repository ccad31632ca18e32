"""The GDB adapter: a kernel seen through gdb attached to QEMU's gdbstub.

Imported only inside gdb (it imports gdb's own ``gdb`` module).  Symbols and types come from
the vmlinux that gdb loaded (``file VMLINUX``); memory is read through the remote target.
Nothing here imports drgn.

KASLR.  Debian kernels randomize where the kernel image sits (KASLR), so the addresses in
vmlinux are off by a constant (the kernel offset).  :func:`kernel_offset` finds it without
``nokaslr``: every candidate offset is checked by reading ``linux_banner`` at the candidate
address and comparing it, byte for byte, with the banner stored in the vmlinux file.  The
candidates, cheapest first:

1. 0 (the guest booted with ``nokaslr``, or gdb's symbols are already relocated);
2. arm64: ``VBAR_EL1`` (QEMU's gdbstub calls it ``VBAR``) holds the address of the kernel's
   exception ``vectors``, so the offset is ``VBAR_EL1 - &vectors`` exactly;
3. the program counter of every vCPU that is in the kernel: the offset is the PC minus some
   address inside the kernel text, a multiple of the KASLR alignment (2 MiB on x86_64,
   64 KiB on arm64), which leaves a few hundred candidates;
4. x86_64 only: every 2 MiB step of the 1 GiB kernel image area (512 reads, ~30 ms).

The offset is cached per gdb connection and vmlinux.  Per-CPU symbols of x86_64 (linked at
0 in the .data..percpu section) are not relocated, as the kernel does not relocate them:
only addresses in the upper (kernel) half move.

Reads.  gdbstub memory packets carry ~2 KiB of hex each (~16 MB/s here) and cost a
~50 us round trip however small: a cold free-list walk of a 4 GiB guest (~1k struct pages
scattered over the whole memmap, one per 64 KiB) is latency-bound at ~60 ms.  When QEMU
runs on this machine, kernel addresses are read straight out of QEMU's memory
(``/proc/PID/mem``, see :class:`_ProcMem`: ~2 us per read, the memmap at memcpy speed),
else reads of 64 KiB and more go through QEMU's monitor (``monitor memsave`` into tmpfs,
see :class:`_MemSave`); both are probed once per connection, verified against gdb's own
reads, and fall back to gdbstub packets whenever they do not deliver.
``MEMSCOPE_GDB_READS`` forces one path (:func:`read_path`), and :func:`read_counts` says
how many reads and bytes each path served.

Caches between commands.  Each command used to build its parser and target anew
(argparse, gdb look-ups, VMCOREINFO and zone reads: ~3 ms of a 0.3 ms buddyinfo).  The
target and the guest memory it has read are now kept from one command to the next while
the guest stays stopped (:func:`session_target`), and dropped on gdb's cont, stop,
memory_changed, inferior_call and exited events, when QEMU's monitor says the VM is not
paused, or when ``jiffies`` changed; symbols, layouts and the KASLR offset are kept per
vmlinux and connection, dropped when objfiles change.
"""

from __future__ import annotations

import os
import struct

import gdb  # noqa: F401  (gdb's embedded module; this adapter runs only inside gdb)

from ..errors import MemscopeError
from ..kernel.pgtable import PageTableWalker, Paging
from .base import FaultError, Layout, Member, Target, TargetError

MASK64 = (1 << 64) - 1
KERNEL_HALF = 1 << 63
#: Reads larger than this are split (gdb itself splits them into gdbstub packets).
CHUNK = 1 << 20
#: Small reads go through a per-command cache of aligned blocks of this size: list walks
#: touch neighbouring struct pages, and a gdbstub round trip costs ~45 us for 64 bytes,
#: ~60 us for 512, ~80 us for 1 KiB.  512 was best over the buddy walks of a 4 GiB guest
#: (freelists, check, pagetypeinfo; 64 to 2048 tried).  The guest is paused while a
#: command runs, and the cache lives as long as one command's target.
BLOCK = 512
#: Reads of at most this many bytes are served from the block cache.
SMALL = 256
#: With QEMU's monitor (memsave), a REGION-aligned region in which blocks were missed
#: PROMOTE times is fetched whole: a memsave of 64 KiB costs a few gdbstub round trips, and
#: list walks (free lists, pcp lists) keep coming back to the same parts of the memmap.
#: 64 KiB after 4 misses halved freelists/check on a 4 GiB guest (16 KiB-1 MiB, 2-8 tried).
REGION = 64 << 10
PROMOTE = 4
#: Reads of at least this many bytes go through QEMU's monitor (``memsave``) when that works.
FAST_MIN = 64 << 10

_KASLR_ALIGN = {"x86_64": 2 << 20, "aarch64": 64 << 10}
_X86_IMAGE_SIZE = 1 << 30  # KERNEL_IMAGE_SIZE with KASLR (arch/x86/include/asm/page_64_types.h)

# Per gdb session: kernel offsets by (connection, vmlinux), debug-info caches by vmlinux,
# whether QEMU's monitor can save memory for us, by (connection, read path).
_offsets: dict[tuple, int] = {}
_debuginfo: dict[str, "_DebugInfo"] = {}
_memsave: dict[tuple, "_MemSave | None"] = {}

#: The ways guest memory is read (see the module docstring and :func:`read_path`).
READ_PATHS = ("auto", "procmem", "memsave", "packets")
#: What each path served to GdbTarget.read (not the probes' or the KASLR search's own
#: reads): reads and bytes, and of those the bulk ones (at least FAST_MIN bytes in one
#: read: what memsave exists for).  See read_counts().
_served: dict[str, list[int]] = {}


def read_path() -> str:
    """How bulk reads reach guest memory, from ``MEMSCOPE_GDB_READS``:

    - ``auto`` (default): QEMU's memory straight out of /proc/PID/mem when QEMU runs on
      this machine, else QEMU's monitor (memsave) when it writes where we can read, else
      gdbstub packets; whichever is probed to work;
    - ``procmem``: /proc/PID/mem only (an error when it cannot be used);
    - ``memsave``: QEMU's monitor for reads of FAST_MIN (64 KiB) and more and for
      promoted REGIONs, gdbstub packets for the rest (what a QEMU whose process we may
      not read gets); an error when memsave does not work;
    - ``packets``: gdbstub memory packets only (a remote QEMU, or any other gdbstub).

    The older switches still work when MEMSCOPE_GDB_READS is unset:
    MEMSCOPE_GDB_MEMSAVE=0 means packets, MEMSCOPE_GDB_PROCMEM=0 memsave."""
    v = os.environ.get("MEMSCOPE_GDB_READS")
    if v is None:
        if os.environ.get("MEMSCOPE_GDB_MEMSAVE", "1") == "0":
            return "packets"
        if os.environ.get("MEMSCOPE_GDB_PROCMEM", "1") == "0":
            return "memsave"
        return "auto"
    v = v.strip().lower()
    if v not in READ_PATHS:
        raise MemscopeError(f"MEMSCOPE_GDB_READS={v!r}: expected one of "
                            f"{', '.join(READ_PATHS)}")
    return v


def _count(path: str, size: int) -> None:
    """Count a read of SIZE bytes that PATH served."""
    c = _served.setdefault(path, [0, 0, 0, 0])
    c[0] += 1
    c[1] += size
    if size >= FAST_MIN:
        c[2] += 1
        c[3] += size


def read_counts() -> dict[str, dict[str, int]]:
    """{path: {"reads", "bytes", "bulk_reads", "bulk_bytes"}} for procmem, memsave and
    packets: the guest memory each path served to memscope's commands since the last
    :func:`reset_read_counts` (reads answered from memscope's own caches are not counted;
    bulk: reads of at least FAST_MIN bytes)."""
    return {p: dict(zip(("reads", "bytes", "bulk_reads", "bulk_bytes"),
                        _served.get(p, [0, 0, 0, 0])))
            for p in READ_PATHS[1:]}


def reset_read_counts() -> None:
    _served.clear()
#: The target of the current connection, kept from one command to the next while the guest
#: stays stopped (see session_target): {"key": ..., "target": GdbTarget}.
_session: dict[str, object] = {}


def _u64(v) -> int:
    return int(v) & MASK64


def _arch() -> str:
    name = gdb.selected_inferior().architecture().name()
    if "aarch64" in name:
        return "aarch64"
    if "x86-64" in name or "x86_64" in name:
        return "x86_64"
    raise MemscopeError(f"gdb's target architecture is {name}: memscope reads x86_64 and "
                        "aarch64 kernels (for arm64 use gdb-multiarch)")


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


def _check_connected() -> None:
    inf = gdb.selected_inferior()
    if inf.pid == 0 or not inf.threads():
        raise MemscopeError("gdb is not attached to a guest: connect to QEMU's gdbstub "
                            "first with 'target remote HOST:PORT'")


def _connection_key() -> tuple:
    inf = gdb.selected_inferior()
    conn = getattr(inf, "connection", None)
    if conn is None:
        return (inf.num,)
    return (conn.num, conn.details)


class _DebugInfo:
    """What gdb's debug info says (link-time addresses, layouts), cached per vmlinux."""

    def __init__(self, path: str):
        self.path = path
        self.symbols: dict[str, int | None] = {}
        self.layouts: dict[str, Layout] = {}
        self.enums: dict[str, dict[str, int]] = {}
        self.sizes: dict[str, int] = {}

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
        ident = f.read(64)
        if ident[:4] != b"\x7fELF" or ident[4] != 2:
            raise MemscopeError(f"{path}: not a 64-bit ELF file")
        e_phoff, = struct.unpack_from("<Q", ident, 32)
        e_phentsize, e_phnum = struct.unpack_from("<HH", ident, 54)
        f.seek(e_phoff)
        ph = f.read(e_phentsize * e_phnum)
        for i in range(e_phnum):
            p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
                "<IIQQQQ", ph, i * e_phentsize)
            if p_type == 1 and p_vaddr <= vaddr and vaddr + size <= p_vaddr + p_filesz:
                f.seek(p_offset + vaddr - p_vaddr)
                return f.read(size)
    raise MemscopeError(f"{path}: no loadable segment holds {vaddr:#x}")


def _elf_first_load(path: str) -> int:
    with open(path, "rb") as f:
        ident = f.read(64)
        e_phoff, = struct.unpack_from("<Q", ident, 32)
        e_phentsize, e_phnum = struct.unpack_from("<HH", ident, 54)
        f.seek(e_phoff)
        ph = f.read(e_phentsize * e_phnum)
    for i in range(e_phnum):
        p_type, _flags, _off, p_vaddr = struct.unpack_from("<IIQQ", ph, i * e_phentsize)
        if p_type == 1 and p_vaddr & KERNEL_HALF:
            return p_vaddr
    raise MemscopeError(f"{path}: no kernel-half loadable segment (is this a vmlinux?)")


def _try_read(address: int, size: int) -> bytes | None:
    try:
        return bytes(gdb.selected_inferior().read_memory(address & MASK64, size))
    except (gdb.MemoryError, gdb.error, OverflowError):
        return None


def _register(name: str) -> int | None:
    try:
        v = gdb.parse_and_eval(f"${name}")
    except gdb.error:
        return None
    if v.type.code == gdb.TYPE_CODE_VOID:
        return None  # gdb has no such register for this target
    try:
        return _u64(v)
    except (gdb.error, ValueError):
        return None


def _kernel_pcs() -> list[int]:
    """The PC of every vCPU that is in the kernel (upper half)."""
    pcs = []
    inf = gdb.selected_inferior()
    current = gdb.selected_thread()
    try:
        for th in inf.threads():
            try:
                th.switch()
                pc = _register("pc")
            except gdb.error:
                continue
            if pc is not None and pc & KERNEL_HALF and pc not in pcs:
                pcs.append(pc)
    finally:
        if current is not None and current.is_valid():
            current.switch()
    return pcs


#: The ways of finding the kernel offset, cheapest first (see the module docstring).
METHODS = ("zero", "vbar", "pc", "scan")


def detect_kernel_offset(debuginfo: _DebugInfo, arch: str,
                         methods: tuple[str, ...] = METHODS) -> tuple[int, str]:
    """(offset, how it was found) by the first of METHODS that finds it."""
    path = debuginfo.path
    banner_link = debuginfo.link_address("linux_banner")
    text = debuginfo.link_address("_text")
    etext = debuginfo.link_address("_etext")
    if banner_link is None or text is None or etext is None:
        raise MemscopeError("no kernel symbols in gdb: load the guest's vmlinux first "
                            "with 'file VMLINUX'")
    # gdb's addresses may already be relocated (symbol-file -o): map back to the file.
    file_bias = text - _elf_first_load(path)
    raw = _elf_file_read(path, banner_link - file_bias, 512)
    want = raw.split(b"\0", 1)[0] + b"\0"

    def good(off: int) -> bool:
        return _try_read(banner_link + off, len(want)) == want

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
    align = _KASLR_ALIGN[arch]
    tried = set()
    for pc in _kernel_pcs() if "pc" in methods else ():
        # pc = (some address in [_text, _etext)) + offset, offset a multiple of ALIGN.
        hi, lo = pc - text, pc - etext
        off = hi - hi % align
        while off > lo - align and len(tried) < 4096:
            if off not in tried:
                tried.add(off)
                if good(off):
                    return off & MASK64, "a vCPU's program counter"
            off -= align
    if arch == "x86_64" and "scan" in methods:
        for off in range(0, _X86_IMAGE_SIZE, align):
            if off not in tried and good(off):
                return off, "a scan of the kernel image area"
    raise MemscopeError(
        f"cannot find the kernel's KASLR offset: linux_banner of {os.path.basename(path)} is "
        "nowhere in the guest (is this vmlinux the guest's kernel?); give it by hand with "
        "'memscope kaslr OFFSET' (e.g. KERNELOFFSET from the guest's VMCOREINFO)")


def debuginfo() -> _DebugInfo:
    path = vmlinux_path()
    di = _debuginfo.get(path)
    if di is None:
        di = _debuginfo[path] = _DebugInfo(path)
    return di


def kernel_offset(force: bool = False, quiet: bool = False,
                  methods: tuple[str, ...] = METHODS) -> int:
    """The kernel offset for the current connection, found once and cached."""
    di = debuginfo()
    _check_connected()
    key = (_connection_key(), di.path)
    if force or key not in _offsets:
        _session.pop("target", None)
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
    _session.pop("target", None)


def forget() -> None:
    """Drop cached offsets and debug info (a new vmlinux or connection)."""
    _offsets.clear()
    _debuginfo.clear()
    _memsave.clear()
    for pm in _procmem.values():
        if pm is not None:
            try:
                os.close(pm.fd)
            except OSError:
                pass
    _procmem.clear()
    _session.clear()


def invalidate_memory(*_event) -> None:
    """The guest may have run or its memory been written: drop the kept target and with it
    every byte of guest memory cached (connected to gdb's cont, stop, memory_changed,
    inferior_call and exited events by :func:`install_hooks`)."""
    _session.clear()


def install_hooks() -> None:
    """Connect the cache invalidations to gdb's events (once per gdb session)."""
    if _hooked:
        return
    ev = gdb.events
    for name in ("cont", "stop", "exited", "memory_changed", "inferior_call",
                 "new_inferior", "inferior_deleted", "new_thread"):
        registry = getattr(ev, name, None)
        if registry is not None:
            registry.connect(invalidate_memory)
    for name in ("new_objfile", "clear_objfiles"):
        registry = getattr(ev, name, None)
        if registry is not None:
            registry.connect(lambda _ev: forget())
    _hooked.append(True)


_hooked: list[bool] = []


def _guest_paused() -> bool | None:
    """Whether QEMU says the VM is paused (``monitor info status``), None when the remote
    does not say.  A guest resumed behind gdb's back (QMP ``cont``) sends gdb no event."""
    if _session.get("no_status"):
        return None
    try:
        msg = gdb.execute("monitor info status", to_string=True)
    except gdb.error:
        msg = ""
    if "VM status" not in msg:
        _session.clear()
        _session["no_status"] = True
        return None
    return "running" not in msg


def session_target() -> "GdbTarget":
    """The GdbTarget for a command: the previous command's (with the guest memory it has
    read) when the guest has not run since, else a new one.

    Guest memory is kept only while nothing says the guest may have run: gdb's events
    (:func:`install_hooks`) drop it, and so do QEMU reporting the VM not paused and a
    changed ``jiffies`` (a guest resumed and paused again through QMP sends gdb nothing).  Debug
    info (symbols, layouts) and the KASLR offset are kept per vmlinux and connection."""
    inf = gdb.selected_inferior()
    if inf.pid == 0:
        _session.pop("target", None)
        debuginfo()  # raises the one-line errors, the missing vmlinux first
        _check_connected()
    def key() -> tuple:
        # the connection, the read path, and whether/how QEMU's monitor reads were probed
        # for it (a cleared _memsave or a changed MEMSCOPE_GDB_READS starts afresh)
        conn = (_connection_key(), read_path())
        return conn, inf.num, inf.pid, id(_memsave[conn]) if conn in _memsave else None

    target = _session.get("target")
    paused = _guest_paused() if _hooked else False
    if target is not None and (_session.get("key") != key() or paused is False
                               or _session.get("jiffies") != _jiffies(target)):
        target = None
    if target is None:
        target = GdbTarget()
        if _hooked and paused is not False:
            _session["key"], _session["target"] = key(), target
            _session["jiffies"] = _jiffies(target)
        else:
            _session.pop("target", None)
    return target


def _jiffies(target: "GdbTarget") -> bytes | None:
    """jiffies, read past every cache: a guest that ran between two commands (paused and
    resumed through QEMU's monitor, which tells gdb nothing) has ticked it."""
    try:
        return _try_read(target.symbol("jiffies"), 8)
    except TargetError:
        return None


class _MemSave:
    """Bulk reads through QEMU's monitor: ``monitor memsave ADDR SIZE FILE`` (sent by gdb as
    a qRcmd packet) makes QEMU write guest virtual memory to a file, some 30 times faster
    than gdbstub memory packets (hex, ~2 KiB each).  Used only when a probe shows that QEMU
    writes where we can read (QEMU on this machine) and the bytes agree with gdb's own read
    of the same address; used with MEMSCOPE_GDB_READS auto or memsave (:func:`read_path`)."""

    def __init__(self):
        import atexit
        import shutil
        import tempfile

        # tmpfs when there is one: QEMU writes the file and we read it back at once, and
        # a disk-backed directory costs ~1.6x the time per MiB (2 MiB: 2.5 vs 1.5 ms).
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) \
            else None
        self.dir = tempfile.mkdtemp(prefix="memscope-gdb-", dir=shm)
        os.chmod(self.dir, 0o700)
        self.path = os.path.join(self.dir, "read.bin")
        atexit.register(shutil.rmtree, self.dir, True)

    def read(self, address: int, size: int, how: str = "memsave") -> bytes | None:
        """SIZE bytes at ADDRESS, or None when QEMU could not save them all."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        try:
            msg = gdb.execute(f'monitor {how} {address:#x} {size} "{self.path}"',
                              to_string=True)
        except gdb.error:
            return None
        if msg.strip():
            return None  # e.g. "Error: Invalid addr ... specified"
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        finally:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        return data if len(data) == size else None

    def pread_phys(self, address: int, size: int) -> bytes | None:
        """SIZE bytes at guest physical ADDRESS (``pmemsave``), or None."""
        return self.read(address, size, "pmemsave")

    @classmethod
    def probe(cls, address: int) -> "_MemSave | None":
        ms = cls()
        if '"' in ms.path:
            return None
        want = _try_read(address, 64)
        got = ms.read(address, 64)
        return ms if want is not None and got == want else None


def _memsave_for(address: int, path: str) -> _MemSave | None:
    """QEMU's monitor memsave for the current connection, probed once per read PATH (None
    for packets, which never asks QEMU's monitor for memory)."""
    key = (_connection_key(), path)
    if key not in _memsave:
        _memsave[key] = None if path == "packets" else _MemSave.probe(address)
    return _memsave[key]


_START_KERNEL_MAP = 0xFFFFFFFF80000000  # x86_64 __START_KERNEL_map (__pa_symbol)
_procmem: dict[tuple, "_ProcMem | None"] = {}
#: Bytes sampled at the top of each guest RAM range to find it in QEMU (see _ProcMem).
SAMPLE = 2 << 20


def _qemu_pid(details: str) -> int | None:
    """The pid of the local process listening on (or connected from) the TCP port of
    gdb's connection DETAILS ("127.0.0.1:1234", "localhost:1234", "tcp:host:1234"), if it
    is a QEMU (/proc/PID/comm starts with "qemu")."""
    host, _, port = details.rpartition(":")
    if not port.isdigit():
        return None
    port = int(port)
    inodes = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            # LISTEN (0A), or the ESTABLISHED (01) end whose local port is the gdbstub's
            if len(parts) > 9 and parts[3] in ("0A", "01") \
                    and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{parts[9]}]")
    if not inodes:
        return None
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if not f.read().startswith("qemu"):
                    continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid)
        except OSError:
            continue
    return None


class _ProcMem:
    """Guest physical memory read straight out of the local QEMU process
    (``/proc/PID/mem``): a scattered 64-byte read costs ~2 us instead of a ~50 us gdbstub
    round trip, and the 64 MiB memmap of a 4 GiB guest is a memcpy instead of 50 ms of
    ``memsave``.  Kernel virtual addresses are translated by walking the kernel's own page
    tables in guest memory: x86_64 init_top_pgt (4 or 5 levels), arm64 swapper_pg_dir
    (TTBR1, 4K granule: 3, 4 or 5 levels, the last with FEAT_LPA2 descriptors, as the
    6.12 lab kernel runs on QEMU's ``-cpu max``; see :meth:`_probe_arm64`).

    Where guest RAM sits in QEMU: ``monitor info mtree -f`` gives each RAM range of the
    system address space as (guest physical range, memory region, offset in it); the host
    address of each region is the start of the one mapping of QEMU's /proc/PID/maps at
    which samples of the region read the same as QEMU's own ``pmemsave`` of them.  Used
    only when that probe finds every RAM region unambiguously and a kernel address reads
    the same as through gdb; otherwise memsave and gdbstub packets, as before.
    Used with MEMSCOPE_GDB_READS auto or procmem (:func:`read_path`).  Reads are never
    cached here: the process's memory is the guest's memory now."""

    def __init__(self, fd: int, ram: list[tuple[int, int, int]], pgd: int, paging: Paging):
        self.fd = fd
        self.ram = ram  # (guest physical start, end, host address), sorted
        self.pgd = pgd  # physical address of init_top_pgt / swapper_pg_dir
        self.paging = paging
        self.walker = PageTableWalker(paging, pgd, self.phys)

    def phys(self, pa: int, size: int) -> bytes | None:
        for start, end, hva in self.ram:
            if start <= pa and pa + size <= end:
                try:
                    data = os.pread(self.fd, size, hva + pa - start)
                except OSError:
                    return None
                return data if len(data) == size else None
        return None

    def walk(self, va: int) -> tuple[int, int] | None:
        """(physical address of VA's page or block, its size) from the kernel's page
        tables (memscope/kernel/pgtable.py), or None."""
        return self.walker.walk(va)

    @classmethod
    def probe(cls, target: "GdbTarget", fast: "_MemSave | None") -> "_ProcMem | None":
        """FAST (QEMU's monitor, pmemsave) finds guest RAM in QEMU; without it, None."""
        if target.arch not in ("x86_64", "aarch64"):
            return None
        conn = getattr(gdb.selected_inferior(), "connection", None)
        if fast is None or conn is None or not conn.details:
            return None  # QEMU not shown to be local (memsave), or no TCP details
        pid = _qemu_pid(conn.details)
        if pid is None:
            return None
        try:
            fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None  # not ours to read (ptrace rules): memsave it is
        try:
            pm = cls._probe(target, fast, pid, fd)
        except (OSError, ValueError, TargetError, gdb.error):
            pm = None
        if pm is None:
            os.close(fd)
        return pm

    @classmethod
    def _probe(cls, target, fast, pid, fd) -> "_ProcMem | None":
        # guest physical RAM ranges: (start, end, region name, offset in the region)
        text = gdb.execute("monitor info mtree -f", to_string=True)
        ranges = []
        view = None
        for line in text.splitlines():
            if line.startswith("FlatView"):
                view = None
            elif line.strip().startswith('AS "memory"'):
                # the system address space's view (arm64 virt: ' AS "memory", root:
                # system' then 'Root memory region: system')
                view = "memory"
            elif "Root memory region:" in line:
                if view != "memory":
                    view = line.split(":", 1)[1].strip()
            elif view == "memory" and "(prio" in line and "ram):" in line:
                span, _, rest = line.strip().partition(" (prio")
                lo, hi = (int(x, 16) for x in span.split("-"))
                name = rest.split("ram):", 1)[1].strip()
                off = 0
                if " @" in name:
                    name, _, o = name.rpartition(" @")
                    off = int(o, 16)
                ranges.append((lo, hi + 1, name.split()[0], off))
        if not ranges:
            return None
        maps = []
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split()
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if parts[1].startswith("rw"):
                    maps.append((lo, hi))
        # the host address of each region: the mapping at which samples read as pmemsave
        base: dict[str, int] = {}
        for name in {r[2] for r in ranges}:
            mine = [r for r in ranges if r[2] == name]
            # The top of each range: memblock allocates top-down, so a node's memmap,
            # page tables and per-CPU areas end there (idle free memory reads as zeros).
            samples = []
            for lo, hi, _, off in mine:
                n = min(hi - lo, SAMPLE)
                got = fast.pread_phys(hi - n, n)
                if got is not None:
                    samples.append((hi - n - lo + off, got))
            if not any(g.count(0) != len(g) for _, g in samples):
                return None  # nothing distinctive to recognise it by
            need = max(o + len(g) for o, g in samples)
            found = []
            for mlo, mhi in maps:
                if mhi - mlo < need:
                    continue
                if all(_pread(fd, mlo + o, len(g)) == g for o, g in samples):
                    found.append(mlo)
            if len(found) != 1:
                return None
            base[name] = found[0]
        ram = sorted((lo, hi, base[name] + off) for lo, hi, name, off in ranges)
        if target.arch == "aarch64":
            return cls._probe_arm64(target, fd, ram)
        # the kernel's page tables: __pa_symbol(init_top_pgt), 5 levels with LA57
        phys_base = target._gdb_read_u64(target.symbol("phys_base"))
        # phys_base = physical load address - LOAD_PHYSICAL_ADDR - the virtual KASLR offset:
        # "negative" (two's complement) when the virtual offset is the larger, so the sum
        # wraps (a guest-dependent failure before this mask: the probe refused the path).
        pgd = (target.symbol("init_top_pgt") - _START_KERNEL_MAP + phys_base) & MASK64
        levels = 4
        if target.has_symbol("__pgtable_l5_enabled"):
            if int.from_bytes(target._read_direct(target.symbol("__pgtable_l5_enabled"), 4),
                              "little"):
                levels = 5
        pm = cls(fd, ram, pgd, Paging.x86_64(levels))
        # a kernel text address and a direct-map one read as gdb reads them
        banner = target.symbol("linux_banner")
        probe = [banner]
        if target.has_symbol("page_offset_base"):
            pob = target._gdb_read_u64(target.symbol("page_offset_base"))
            probe.append(pob + ranges[-1][0] + (ranges[-1][1] - ranges[-1][0]) // 2)
        for va in probe:
            want = _try_read(va, 64)
            if want is None or pm.read(va, 64, {}) != want:
                return None
        return pm

    @classmethod
    def _probe_arm64(cls, target, fd, ram) -> "_ProcMem | None":
        """The arm64 kernel's TTBR1 tables: swapper_pg_dir, at __pa_symbol(swapper_pg_dir) =
        its address - kimage_voffset.  The walk's shape comes from the guest's VMCOREINFO
        (arch/arm64/kernel/vmcoreinfo.c): PAGESIZE, and TCR_EL1_T1SZ (VA bits in use:
        64 - T1SZ; 6.12's 52-bit kernels fall back to 48 bits on CPUs without FEAT_LPA2).
        Only the 4K granule: 39-bit (3 levels), 48-bit (4) and 52-bit VA (5, which with
        4K pages is FEAT_LPA2's descriptor format).  Everything is checked against gdb's
        reads; anything else, or any disagreement, leaves memsave and gdbstub packets."""
        info = _vmcoreinfo_direct(target)
        if info.get("PAGESIZE") != "4096" or "NUMBER(TCR_EL1_T1SZ)" not in info:
            return None
        va_bits = 64 - int(info["NUMBER(TCR_EL1_T1SZ)"], 0)
        if va_bits not in (39, 48, 52):
            return None
        voff = target._gdb_read_u64(target.symbol("kimage_voffset"))
        if "NUMBER(kimage_voffset)" in info and int(info["NUMBER(kimage_voffset)"], 0) != voff:
            return None
        pgd_va = target.symbol("swapper_pg_dir")
        pgd = (pgd_va - voff) & MASK64
        pm = cls(fd, ram, pgd, Paging.arm64(va_bits))
        # the table itself, as gdb reads it through the kernel's mapping: not all zeros
        want = target._read_direct(pgd_va, 4096)
        if want.count(0) == len(want) or pm.phys(pgd, 4096) != want:
            return None
        # a kernel text address, VMCOREINFO's page (linear map), struct pages (vmemmap)
        # and direct-map addresses in the middle and at the top of the last RAM range
        probe = [target.symbol("linux_banner"),
                 target._gdb_read_u64(target.symbol("vmcoreinfo_data"))]
        lo, hi = ram[-1][0], ram[-1][1]
        mid = (lo + hi) // 2
        if "SYMBOL(vmemmap)" in info:
            sz = target.sizeof("struct page")
            vmemmap = int(info["SYMBOL(vmemmap)"], 16)
            probe += [vmemmap + (mid >> 12) * sz, vmemmap + ((hi >> 12) - 1) * sz]
        if "NUMBER(VA_BITS)" in info and "NUMBER(PHYS_OFFSET)" in info:
            # __phys_to_virt: (pa - PHYS_OFFSET) | PAGE_OFFSET, PAGE_OFFSET = -(1 << VA_BITS)
            page_offset = -(1 << int(info["NUMBER(VA_BITS)"], 0)) & MASK64
            phys_offset = int(info["NUMBER(PHYS_OFFSET)"], 0)
            for pa in (mid, hi - 4096):
                if pa >= phys_offset:
                    probe.append(((pa - phys_offset) | page_offset) & MASK64)
        checked = 0
        for va in probe:
            want = _try_read(va, 64)
            got = pm.read(va, 64, {})
            if want != got:
                return None  # a translation gdb disagrees with (or one that gdb faults on)
            checked += want is not None
        return pm if checked >= 3 else None

    def read(self, va: int, size: int, tlb: dict) -> bytes | None:
        """SIZE bytes at kernel virtual address VA, or None (not mapped, not RAM).  TLB
        caches translations (va >> 12 -> (page physical address, page size)) for one
        target, i.e. while the guest stays stopped."""
        parts = []
        pos, end = va, va + size
        run_pa = run_len = 0
        while pos < end:
            t = tlb.get(pos >> 21) or tlb.get(pos >> 12)
            if t is None:
                t = self.walk(pos)
                if t is None:
                    return None
                tlb[(pos >> 21) if t[1] > 4096 else (pos >> 12)] = (
                    t if t[1] <= 1 << 21 else
                    (t[0] + (pos & (t[1] - 1) & ~((1 << 21) - 1)), 1 << 21))
                t = tlb.get(pos >> 21) or tlb[pos >> 12]
            page_pa, page_size = t
            pa = page_pa + (pos & (page_size - 1))
            n = min(end - pos, page_size - (pos & (page_size - 1)))
            if run_len and run_pa + run_len == pa:
                run_len += n
            else:
                if run_len:
                    parts.append((run_pa, run_len))
                run_pa, run_len = pa, n
            pos += n
        parts.append((run_pa, run_len))
        if len(parts) == 1:
            return self.phys(*parts[0])
        out = []
        for pa, n in parts:
            d = self.phys(pa, n)
            if d is None:
                return None
            out.append(d)
        return b"".join(out)


def _vmcoreinfo_direct(target: "GdbTarget") -> dict[str, str]:
    """The guest's VMCOREINFO as {KEY: value}, read through gdb alone (the target's own
    read() is not set up while _ProcMem probes)."""
    try:
        data = target._gdb_read_u64(target.symbol("vmcoreinfo_data"))
        size = target._gdb_read_u64(target.symbol("vmcoreinfo_size"))
        if not data or not 0 < size <= 1 << 16:
            return {}
        text = target._read_direct(data, size).decode("ascii", "replace")
    except TargetError:
        return {}
    out = {}
    for line in text.splitlines():
        k, eq, v = line.partition("=")
        if eq:
            out[k] = v.strip()
    return out


def _pread(fd: int, address: int, size: int) -> bytes | None:
    try:
        return os.pread(fd, size, address)
    except OSError:
        return None


def _procmem_for(target: "GdbTarget", fast: "_MemSave | None") -> _ProcMem | None:
    key = _connection_key()
    if key not in _procmem:
        _procmem[key] = _ProcMem.probe(target, fast)
    return _procmem[key]


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

    # --- symbols and types --------------------------------------------------------
    def symbol(self, name: str) -> int:
        addr = self.di.link_address(name)
        if addr is None:
            raise TargetError(f"symbol {name} not found")
        # Only kernel-half addresses move: x86_64 per-CPU symbols are offsets from 0.
        return (addr + self.offset) & MASK64 if addr & KERNEL_HALF else addr

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
