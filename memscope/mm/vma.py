"""A process's address space: its VMAs as /proc/PID/maps prints them
(fs/proc/task_mmu.c ``show_map_vma()``, ``get_vma_name()``).

- The VMAs: ``mm->mmap``, a list through ``vm_next`` (to v6.0), the maple tree
  ``mm->mm_mt`` since v6.1 (commit d4af56c5c7c6, "mm: start tracking VMAs with maple
  tree"), both walked bounded by ``mm->map_count``.
- A line: ``start-end perms offset major:minor inode``, padded to 72 columns (``25 +
  sizeof(void *) * 6 - 1``) before the name; perms from VM_READ/WRITE/EXEC/MAYSHARE; the
  offset, device and inode only for a file mapping (``i_sb->s_dev``, ``i_ino``).
- The name, in ``get_vma_name()``'s order: a file's path (``d_path()`` through the
  dentry and mount chain up to the task's root, `` (deleted)`` for an unlinked file; a
  pseudo file's own ``d_dname()``: ``/dev/zero (deleted)`` for a shared anonymous
  mapping, ``/memfd:NAME (deleted)``, ``anon_inode:NAME``), or
  ``[anon_shmem:NAME]`` for a named shared anonymous mapping; a special mapping's own
  name (``[vdso]``, ``[vvar]``...: ``vm_special_mapping.name``); ``[heap]`` for a VMA that
  meets ``[start_brk, brk]``; ``[stack]`` for the one holding ``start_stack``;
  ``[anon:NAME]`` (CONFIG_ANON_VMA_NAME, ``vm_area_struct.anon_name``, v5.17).
- The gate VMA last: x86_64's ``[vsyscall]`` page unless ``vsyscall_mode`` is NONE
  (Debian's default: none is printed on the lab kernels).

The VM_* bits are #defines, not in the debug info; the four used here are unchanged
since long before v5.10.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..kernel import list as klist, maple
from ..kernel.fields import member, read_member
from ..kernel.kallsyms import format_symbol
from ..kernel.problem import Problem
from ..target.base import FaultError, TargetError
from .context import KernelContext
from .task import Task

__all__ = ("Vma", "VmaRss", "Walked", "address_space", "format_maps", "vma_rss", "vmas", "walk_vmas")

VM_READ, VM_WRITE, VM_EXEC, VM_MAYSHARE = 0x1, 0x2, 0x4, 0x80
#: arch/x86/entry/vsyscall: the gate page, and vsyscall_mode's NONE (enum {EMULATE,
#: XONLY, NONE})
VSYSCALL_ADDR = 0xFFFFFFFFFF600000
VSYSCALL_NONE, VSYSCALL_XONLY = 2, 1
_PAD = 25 + 8 * 6 - 1
_MAX_PATH_DEPTH = 256


@dataclasses.dataclass(frozen=True)
class Vma:
    """One VMA: ``start``/``end`` virtual addresses; ``flags`` the vm_flags; ``pgoff`` the
    file offset in bytes (0 without a file); ``dev`` (major, minor) and ``ino`` of the
    file's inode ((0, 0) and 0 without one); ``name`` what /proc/PID/maps prints after the
    padding ("" for an anonymous mapping without a name); ``file`` whether it maps a
    file; ``vma`` the ``struct vm_area_struct`` address (0 for the gate VMA)."""

    start: int
    end: int
    flags: int
    pgoff: int
    dev: tuple[int, int]
    ino: int
    name: str
    file: bool
    vma: int

    @property
    def perms(self) -> str:
        f = self.flags
        return ("r" if f & VM_READ else "-") + ("w" if f & VM_WRITE else "-") + \
            ("x" if f & VM_EXEC else "-") + ("s" if f & VM_MAYSHARE else "p")


class _Paths:
    """d_path() for (vfsmount, dentry) pairs, relative to a root (vfsmount, dentry)."""

    def __init__(self, ctx: KernelContext):
        t = self.t = ctx.t
        self.ctx = ctx
        self.dentry = t.layout("struct dentry")
        self.qstr_name = member(t, "struct dentry", "d_name.name")
        self.qstr_len = member(t, "struct dentry", "d_name.len") \
            if _has_path(t, "struct dentry", "d_name.len") else None
        self.mount = t.layout("struct mount")
        self.mnt_in_mount = self.mount.offset("mnt")
        vm = t.layout("struct vfsmount")
        self.mnt_root = vm.offset("mnt_root")
        self.d_op = self.dentry.offset("d_op")
        self.d_dname = t.layout("struct dentry_operations").offset("d_dname")
        # The d_dname() methods whose text this module reproduces (fs/d_path.c, fs/anon_inodes.c).
        self.dname_methods = {t.symbol(s): s for s in ("simple_dname", "anon_inodefs_dname")
                              if t.has_symbol(s)}

    def file_path(self, mnt: int, dentry: int, root: tuple[int, int]) -> str:
        """d_path() of the file at (MNT, DENTRY) as seq_path() prints it in /proc/PID/maps:
        a pseudo file's dentry (a shared anonymous mapping's "dev/zero", a memfd) names
        itself through its ``d_op->d_dname`` unless it is its mount's root (fs/d_path.c
        d_path()): simple_dname() prints "/NAME (deleted)", anon_inodefs_dname()
        "anon_inode:NAME"; otherwise the names up to ROOT (:meth:`d_path`), " (deleted)"
        after an unlinked file's.

        :raises TargetError: the dentry names itself with a d_dname() method this module
            does not reproduce (its symbol in the message)"""
        t = self.t
        ops = t.read_u64(dentry + self.d_op)
        dname = t.read_u64(ops + self.d_dname) if ops else 0
        parent = t.read_u64(dentry + self.dentry.offset("d_parent"))
        if dname and not (parent == dentry and dentry == t.read_u64(mnt + self.mnt_root)):
            method = self.dname_methods.get(dname)
            name = self.name(dentry).decode(errors="replace")
            if method == "simple_dname":
                return f"/{name} (deleted)"
            if method == "anon_inodefs_dname":
                return f"anon_inode:{name}"
            raise TargetError(f"the file of dentry {dentry:#x} names itself with "
                              f"{format_symbol(self.ctx, dname)}, which memscope does not "
                              "reproduce")
        path = self.d_path(mnt, dentry, root)
        if self.unlinked(dentry):
            path += " (deleted)"
        return path

    def unlinked(self, dentry: int) -> bool:
        """d_unlinked(): not hashed and not a root."""
        t = self.t
        pprev = t.read_u64(dentry + self.dentry.offset("d_hash") + 8)
        parent = t.read_u64(dentry + self.dentry.offset("d_parent"))
        return pprev == 0 and parent != dentry

    def name(self, dentry: int) -> bytes:
        t = self.t
        ptr = t.read_u64(dentry + self.qstr_name.offset)
        if self.qstr_len is not None:
            n = t.read_u32(dentry + self.qstr_len.offset)
            return t.read(ptr, n) if n else b""
        return t.read_cstr(ptr, 256).encode()

    def d_path(self, mnt: int, dentry: int, root: tuple[int, int]) -> str:
        """prepend_path(): names up the dentry tree, crossing to the mount point at each
        mount's root, until ROOT or a mount with no parent."""
        t = self.t
        parts: list[bytes] = []
        mount = mnt - self.mnt_in_mount
        for _ in range(_MAX_PATH_DEPTH):
            if (mnt, dentry) == root:
                break
            parent = t.read_u64(dentry + self.dentry.offset("d_parent"))
            if dentry == t.read_u64(mnt + self.mnt_root) or dentry == parent:
                pmount = t.read_u64(mount + self.mount.offset("mnt_parent"))
                if pmount == mount:
                    break  # the global root, or an internal mount
                dentry = t.read_u64(mount + self.mount.offset("mnt_mountpoint"))
                mount = pmount
                mnt = mount + self.mnt_in_mount
                continue
            parts.append(self.name(dentry))
            dentry = parent
        else:
            raise TargetError(f"path of dentry {dentry:#x} deeper than {_MAX_PATH_DEPTH}")
        path = b"/" + b"/".join(reversed(parts))
        # seq_path(m, path, "\n"): a newline in a name prints as \012
        return path.decode(errors="replace").replace("\n", "\\012")


def _has_path(t, type_name: str, path: str) -> bool:
    try:
        member(t, type_name, path)
        return True
    except TargetError:
        return False


class _Reader:
    def __init__(self, ctx: KernelContext):
        t = self.t = ctx.t
        self.ctx = ctx
        self.v = t.layout("struct vm_area_struct")
        self.mm = t.layout("struct mm_struct")
        self.file = t.layout("struct file")
        self.inode = t.layout("struct inode")
        self.sb = t.layout("struct super_block")
        self.paths = _Paths(ctx)
        self.f_mnt = member(t, "struct file", "f_path.mnt").offset
        self.f_dentry = member(t, "struct file", "f_path.dentry").offset
        # legacy_special_mapping_vmops (install_special_mapping()) is gone from the 6.12
        # and 7.2 lab kernels; a missing symbol costs drgn a search of the whole ELF symbol table, so it is
        # looked up only for an anonymous VMA with other vm_ops (see _special())
        self.special = {t.symbol("special_mapping_vmops")} \
            if t.has_symbol("special_mapping_vmops") else set()
        self.legacy_checked = False
        self.files: dict[int, tuple] = {}  # struct file -> _file()
        self.page_shift = t.page_size.bit_length() - 1

    def vma(self, addr: int, mm: dict, root: tuple[int, int]) -> Vma:
        t = self.t
        buf = t.read(addr, self.v.size)
        start = read_member(self.v["vm_start"], buf)
        end = read_member(self.v["vm_end"], buf)
        flags = read_member(self.v["vm_flags"], buf)
        f = read_member(self.v["vm_file"], buf)
        anon_name = self._anon_name(buf, f)
        if f:
            pgoff = read_member(self.v["vm_pgoff"], buf) << self.page_shift
            if anon_name is not None:
                dev, ino, _ = self._file(f, root)
                name = f"[anon_shmem:{anon_name}]"
            else:
                dev, ino, name = self._file(f, root)
            return Vma(start, end, flags, pgoff, dev, ino, name, True, addr)
        name = ""
        ops = read_member(self.v["vm_ops"], buf)
        if ops and self._special(ops):
            # special_mapping_name(): ((struct vm_special_mapping *)vm_private_data)->name
            sm = read_member(self.v["vm_private_data"], buf)
            name = t.read_cstr(t.read_u64(sm), 64) if sm else ""
        elif start <= mm["brk"] and end >= mm["start_brk"]:
            name = "[heap]"
        elif start <= mm["start_stack"] <= end:
            name = "[stack]"
        elif anon_name is not None:
            name = f"[anon:{anon_name}]"
        return Vma(start, end, flags, 0, (0, 0), 0, name, False, addr)

    def _file(self, f: int, root: tuple[int, int]) -> tuple[tuple[int, int], int, str]:
        """(device (major, minor), inode number, d_path() with " (deleted)" when
        unlinked) of struct file F, read once per file (a binary's text, data and bss
        VMAs share one)."""
        hit = self.files.get(f)
        if hit is None:
            t = self.t
            inode = t.read_u64(f + self.file.offset("f_inode"))
            sb = t.read_u64(inode + self.inode.offset("i_sb"))
            s_dev = t.read_u32(sb + self.sb.offset("s_dev"))
            ino = t.read_u64(inode + self.inode.offset("i_ino"))
            name = self.paths.file_path(t.read_u64(f + self.f_mnt),
                                        t.read_u64(f + self.f_dentry), root)
            hit = self.files[f] = ((s_dev >> 20, s_dev & 0xFFFFF), ino, name)
        return hit

    def _special(self, ops: int) -> bool:
        """Whether vm_ops OPS are a special mapping's (``vma_is_special_mapping()``)."""
        if ops not in self.special and not self.legacy_checked:
            self.legacy_checked = True
            if self.t.has_symbol("legacy_special_mapping_vmops"):
                self.special.add(self.t.symbol("legacy_special_mapping_vmops"))
        return ops in self.special

    def _anon_name(self, buf: bytes, file: int) -> str | None:
        """anon_vma_name(): up to v6.6 ``anon_name`` shares a union with ``shared`` (the
        file's interval tree node) and names anonymous VMAs only; from v6.7 (commit
        d09e8ca6cb93, "mm: anonymous shared memory naming") it is a member of its own and
        names shared anonymous (shmem) VMAs too."""
        if not self.v.has("anon_name"):
            return None
        if file and self.v.has("shared") and \
                self.v.offset("anon_name") == self.v.offset("shared"):
            return None
        p = read_member(self.v["anon_name"], buf)
        if not p:
            return None
        off = self.t.layout("struct anon_vma_name").offset("name")
        return self.t.read_cstr(p + off, 256)



def vmas(ctx: KernelContext, task: Task, problems: list[Problem] | None = None) -> list[Vma]:
    """The VMAs of TASK's address space in address order, the gate VMA last, as
    /proc/PID/maps lists them (see the module).

    :param problems: where the bounded VMA walk puts what it finds.
    :raises TargetError: TASK has no address space (a kernel thread), or a type is
        missing from the debug info."""
    t = ctx.t
    if not task.mm:
        raise TargetError(f"pid {task.pid} ({task.comm}) has no address space "
                          "(a kernel thread)")
    problems = [] if problems is None else problems
    r = _Reader(ctx)
    mm = task.mm
    mmbuf = t.read(mm, r.mm.size)
    fields = {k: read_member(r.mm[k], mmbuf) for k in ("brk", "start_brk", "start_stack",
                                                       "map_count")}
    ts = t.layout("struct task_struct")
    fs = t.read_u64(task.task + ts.offset("fs"))
    root = (t.read_u64(fs + member(t, "struct fs_struct", "root.mnt").offset),
            t.read_u64(fs + member(t, "struct fs_struct", "root.dentry").offset))
    bound = fields["map_count"]
    if r.mm.has("mm_mt"):
        addrs = [e for _, _, e in maple.mt_for_each(t, mm + r.mm.offset("mm_mt"), bound=bound,
                                                    problems=problems, where="mm_mt")]
    else:
        addrs = list(_vm_next_list(t, read_member(r.mm["mmap"], mmbuf),
                                   r.v.offset("vm_next"), bound, problems))
    out = []
    for a in addrs:
        try:
            out.append(r.vma(a, fields, root))
        except FaultError as e:
            problems.append(Problem("unreadable", "vma", f"vma {a:#x}: {e}"))
    gate = _gate_vma(t)
    if gate:
        out.append(gate)
    return out


def _vm_next_list(t, first: int, next_off: int, bound: int, problems: list[Problem]):
    """mm->mmap, linked through vm_next (NULL-terminated, to v6.0): a lock-less list's
    walk, with each vm_next (which points at the next VMA, not at its vm_next) read as a
    pointer to the next vm_next."""

    def read(address: int, size: int) -> bytes:
        nxt = int.from_bytes(t.read(address, 8), "little")
        return (nxt + next_off if nxt else 0).to_bytes(8, "little")

    if not first:
        return
    yield from klist.llist_for_each_entry(t, "struct vm_area_struct", first + next_off,
                                          "vm_next", bound=bound, problems=problems,
                                          where="mm->mmap", read=read)


def _gate_vma(t) -> Vma | None:
    if not t.has_symbol("vsyscall_mode"):
        return None
    mode = t.read_u32(t.symbol("vsyscall_mode"))
    if mode == VSYSCALL_NONE:
        return None
    flags = VM_EXEC if mode == VSYSCALL_XONLY else VM_READ | VM_EXEC
    return Vma(VSYSCALL_ADDR, VSYSCALL_ADDR + 4096, flags, 0, (0, 0), 0, "[vsyscall]",
               False, 0)


def format_maps(vmas: list[Vma]) -> str:
    """/proc/PID/maps' text."""
    out = []
    for v in vmas:
        head = (f"{v.start:08x}-{v.end:08x} {v.perms} {v.pgoff:08x} "
                f"{v.dev[0]:02x}:{v.dev[1]:02x} {v.ino} ")
        if v.name:
            head = head.ljust(_PAD) + " " + v.name
        out.append(head + "\n")
    return "".join(out)


@dataclasses.dataclass(frozen=True)
class VmaRss:
    """What a VMA's page tables map (fs/proc/task_mmu.c ``smaps_pte_entry()`` /
    ``smaps_pmd_entry()``), in pages: ``resident`` present entries backed by a struct page
    (``vm_normal_page()``: not the zero page, not a PFN map; a 2 MiB block counts 512),
    ``anon`` those whose folio is anonymous (``folio->mapping & PAGE_MAPPING_ANON``),
    ``swap`` the swap entries (non-present PTEs whose type is below MAX_SWAPFILES, as
    smaps counts them: :func:`memscope.mm.swap.swap_entries`; migration and other
    non-swap entries are not swap, and their pages, which smaps counts as resident, are
    not counted here; where a kernel's entries are not decoded, arm64, every non-present
    entry).  Only the struct pages of
    the resident pfns (and their folio heads) are read, not the whole memmap."""

    vma: Vma
    resident: int
    anon: int
    swap: int


@dataclasses.dataclass(frozen=True)
class Walked:
    """TASK's VMAs and their page tables, walked once (:func:`walk_vmas`): ``vmas`` as
    :func:`vmas` gives them; ``all`` every non-empty leaf entry of the walk
    (:class:`memscope.kernel.pgtable.Leaves`, address order), of which ``vmas[i]``'s are
    ``all[lo[i]:hi[i]]`` (none for the gate VMA, the kernel's page in no process's
    tables); ``max_pfn`` the end of the memmap (a pfn at or past it has no struct page:
    ``vm_normal_page()``'s ``highest_memmap_pfn + 1``, or the end of the last zone where
    the kernel has no such variable)."""

    vmas: list[Vma]
    all: object
    lo: np.ndarray
    hi: np.ndarray
    max_pfn: int

    @property
    def leaves(self) -> list:
        """Each VMA's entries (``all[lo[i]:hi[i]]``), in the order of ``vmas``."""
        return [self.all.take(slice(a, b)) for a, b in zip(self.lo.tolist(), self.hi.tolist())]


def address_space(ctx: KernelContext, task: Task):
    """(the kernel's :class:`~memscope.kernel.addr.KernelLayout`, its
    :class:`~memscope.kernel.pgtable.Paging`, a ``read_phys``, the physical address of
    TASK's top page table ``__pa(mm->pgd)``): what a walk of TASK's tables needs, the
    first three probed once per context."""
    from ..kernel.addr import kernel_layout, virt_to_phys
    from ..kernel.pgtable import kernel_paging, phys_reader

    t = ctx.t
    lay, paging, read_phys = ctx.probe("address_space", lambda: (
        kernel_layout(t), kernel_paging(t), phys_reader(t)))
    mm = t.layout("struct mm_struct")
    return lay, paging, read_phys, virt_to_phys(lay, t.read_u64(task.mm + mm.offset("pgd")))


def walk_vmas(ctx: KernelContext, task: Task, problems: list[Problem] | None = None
              ) -> Walked:
    """TASK's VMAs with the leaf entries of its page tables (from ``mm->pgd``), the
    tables walked once over [first VMA's start, last VMA's end) with
    :func:`memscope.kernel.pgtable.walk_leaves` and the entries split among the VMAs by
    address (entries between VMAs belong to none and are dropped).

    :param problems: a page table that cannot be read is recorded here (its range holds
        no entries).
    :raises TargetError: as :func:`vmas`."""
    from ..kernel.pgtable import Leaves, walk_leaves
    from . import page as _page

    t = ctx.t
    problems = [] if problems is None else problems
    out_vmas = vmas(ctx, task, problems)
    real = [v for v in out_vmas if v.vma]
    _lay, paging, read_phys, pgd = address_space(ctx, task)
    errors: list[str] = []
    lv = walk_leaves(paging, pgd, real[0].start, real[-1].end, read_phys,
                     errors) if real else Leaves.empty()
    problems += [Problem("unreadable", f"pid {task.pid} page tables", m) for m in errors]
    starts = np.array([v.start for v in out_vmas], np.uint64)
    ends = np.array([v.end for v in out_vmas], np.uint64)
    lo = np.searchsorted(lv.va, starts, "left")
    hi = np.searchsorted(lv.va, ends, "left")
    if t.has_symbol("highest_memmap_pfn"):  # mm/memory.c, what vm_normal_page() checks
        end_pfn = t.read_u64(t.symbol("highest_memmap_pfn")) + 1
    else:
        end_pfn = _page.max_pfn(ctx)
    gate = np.array([not v.vma for v in out_vmas], bool)
    lo[gate] = hi[gate] = 0
    return Walked(out_vmas, lv, lo, hi, end_pfn)


def vma_rss(ctx: KernelContext, task: Task, problems: list[Problem] | None = None
            ) -> list[VmaRss]:
    """Each VMA of TASK (as :func:`vmas`) with the pages its page tables map
    (:func:`walk_vmas`); anonymous pages are told by their folio's ``mapping``.

    :param problems: a page table that cannot be read is recorded here (its range counts
        nothing).
    :raises TargetError: as :func:`vmas`."""
    from . import swap as _swap

    shift = ctx.t.page_size.bit_length() - 1
    w = walk_vmas(ctx, task, problems)
    lv = w.all
    pages = (lv.size >> shift).astype(np.int64)
    pfn = (lv.pa >> np.uint64(shift)).astype(np.int64)
    mapped = lv.present & ~lv.special & (pfn < w.max_pfn)
    anon_pfns = _anon_pfns(ctx, np.unique(pfn[mapped]))
    anon = mapped & np.isin(pfn, anon_pfns, assume_unique=False)
    # per VMA: sums over its slice [lo, hi) of the address-ordered entries
    sums = np.zeros((3, len(lv) + 1), np.int64)
    np.cumsum(np.where(mapped, pages, 0), out=sums[0, 1:])
    np.cumsum(np.where(anon, pages, 0), out=sums[1, 1:])
    np.cumsum(np.where(_swap.swap_entries(ctx, lv), pages, 0), out=sums[2, 1:])
    per = sums[:, w.hi] - sums[:, w.lo]
    return [VmaRss(v, int(r), int(a), int(sw)) for v, r, a, sw in zip(w.vmas, *per.tolist())]


def _anon_pfns(ctx: KernelContext, pfns: np.ndarray) -> np.ndarray:
    """The pfns among PFNS (sorted, unique) whose folio is anonymous (``folio_test_anon()``:
    the head's ``mapping & PAGE_MAPPING_ANON``), reading only their struct pages (and
    their heads')."""
    from . import memmap, page as _page

    pl = _page.page_layout(ctx)
    rec = memmap.struct_pages_of(ctx, pfns)
    mapping = memmap.struct_page_word(rec, pl.mapping_off)
    info = memmap.struct_page_word(rec, pl.compound_off)
    tail = (info & np.uint64(1)) == 1
    if tail.any():
        heads = _page._heads(pl, _page.vmemmap_base(ctx), pfns[tail], info[tail])
        mapping = mapping.copy()
        mapping[tail] = memmap.struct_page_word(memmap.struct_pages_of(ctx, heads),
                                                pl.mapping_off)
    return pfns[(mapping & np.uint64(_page.PAGE_MAPPING_ANON)) != 0]
