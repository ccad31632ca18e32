"""How the GDB adapter reads guest memory beside gdbstub packets.

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

_ProcMem translates kernel virtual addresses with the kernel's page tables
(memscope/kernel/pgtable.py).  Imported only inside gdb."""

from __future__ import annotations

import os

import gdb  # noqa: F401  (gdb's embedded module; this adapter runs only inside gdb)

from ..errors import MemscopeError
from ..kernel.pgtable import PageTableWalker, Paging
from .base import TargetError
from .gdb_connection import MASK64, _connection_key, _register, _try_read

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

#: Whether QEMU's monitor can save memory for us, by (connection, read path).
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
    def probe(cls, target, fast: "_MemSave | None") -> "_ProcMem | None":
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
        64 - T1SZ; 6.12's 52-bit kernels fall back to 48 bits on CPUs without FEAT_LPA2);
        before the kernel has written VMCOREINFO, the page size from the debug info and
        T1SZ from the TCR_EL1 register.
        Only the 4K granule: 39-bit (3 levels), 48-bit (4) and 52-bit VA (5, which with
        4K pages is FEAT_LPA2's descriptor format).  Everything is checked against gdb's
        reads; anything else, or any disagreement, leaves memsave and gdbstub packets."""
        info = _vmcoreinfo_direct(target)
        page_size = int(info["PAGESIZE"]) if "PAGESIZE" in info \
            else target.page_size_from_debuginfo()
        if "NUMBER(TCR_EL1_T1SZ)" in info:
            t1sz = int(info["NUMBER(TCR_EL1_T1SZ)"], 0)
        else:
            # Before the kernel writes VMCOREINFO (early in boot): TCR_EL1 itself, as
            # arch/arm64/kernel/vmcoreinfo.c reads it (T1SZ: bits 16-21).
            tcr = _register("TCR_EL1")
            if tcr is None:
                return None
            t1sz = tcr >> 16 & 0x3F
        va_bits = 64 - t1sz
        if page_size != 4096 or va_bits not in (39, 48, 52):
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
        probe = [target.symbol("linux_banner")]
        vmcoreinfo_page = target._gdb_read_u64(target.symbol("vmcoreinfo_data"))
        if vmcoreinfo_page:  # NULL before the kernel has written VMCOREINFO
            probe.append(vmcoreinfo_page)
        lo, hi = ram[-1][0], ram[-1][1]
        mid = (lo + hi) // 2
        if "SYMBOL(vmemmap)" in info:
            sz = target.sizeof("struct page")
            vmemmap = int(info["SYMBOL(vmemmap)"], 16)
            probe += [vmemmap + (mid >> 12) * sz, vmemmap + ((hi >> 12) - 1) * sz]
        # __phys_to_virt: (pa - PHYS_OFFSET) | PAGE_OFFSET, PAGE_OFFSET = -(1 << VA_BITS);
        # without VMCOREINFO, VA_BITS as TCR_EL1 has it and PHYS_OFFSET = memstart_addr
        # (a guess where the CPU runs fewer VA bits than the kernel's VA_BITS: the reads
        # below then disagree with gdb's and the probe refuses)
        kernel_va_bits = int(info["NUMBER(VA_BITS)"], 0) if "NUMBER(VA_BITS)" in info \
            else va_bits
        phys_offset = int(info["NUMBER(PHYS_OFFSET)"], 0) if "NUMBER(PHYS_OFFSET)" in info \
            else target._gdb_read_u64(target.symbol("memstart_addr"))
        page_offset = -(1 << kernel_va_bits) & MASK64
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


def _vmcoreinfo_direct(target) -> dict[str, str]:
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


def _procmem_for(target, fast: "_MemSave | None") -> _ProcMem | None:
    key = _connection_key()
    if key not in _procmem:
        _procmem[key] = _ProcMem.probe(target, fast)
    return _procmem[key]
