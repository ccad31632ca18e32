"""SLUB debugging read back from memory (mm/slub.c, ``slub_debug=FZPU``): the red zones and
poison the kernel writes around and into each object, checked as the kernel's own
validate_slab() would (check_object(), check_pad_bytes(), slab_pad_check()), the requested
size kmalloc stores in each object (get_orig_size()), and the slab half of ``check``.

What the kernel writes (include/linux/poison.h, mm/slub.c calculate_sizes()), per object
slot of ``s->size`` bytes, the object at ``s->red_left_pad``:

- ``SLAB_RED_ZONE``: ``red_left_pad`` bytes before the object ("Left Redzone") and the
  bytes from ``object_size`` to ``inuse`` after it ("Right Redzone") are
  ``SLUB_RED_ACTIVE`` (0xcc) while the object is allocated, ``SLUB_RED_INACTIVE`` (0xbb)
  while it is free; in a kmalloc cache with ``SLAB_STORE_USER`` the bytes from the
  requested size to ``object_size`` of an allocated object are 0xcc too ("kmalloc
  Redzone", since v6.2, commit 946fa0dbf2d8 "mm/slub: extend redzone check to extra
  allocated kmalloc space than requested").  Without a red zone, ``SLAB_POISON`` fills
  ``object_size`` to ``inuse`` with ``POISON_INUSE`` (0x5a, "Alignment padding").
- ``SLAB_POISON`` (``__OBJECT_POISON``: no constructor, not ``SLAB_TYPESAFE_BY_RCU``): a
  free object is ``POISON_FREE`` (0x6b) but its last byte, ``POISON_END`` (0xa5)
  ("Poison", "End Poison"); after the metadata (free pointer when outside the object,
  two ``struct track``, the stored requested size, KASAN's, a ``struct slabobj_ext``
  stored in the object on 7.x) up to the slot's end, ``POISON_INUSE`` ("Object
  padding"); the slab's tail after the last slot is ``POISON_INUSE`` too ("Padding";
  7.x keeps the slab's ``slabobj_ext`` vector in that tail when it fits, commit
  "mm/slab: use unused slab space to allocate slabobj_ext if possible", and the padding
  is what is left after it).
- ``SLAB_STORE_USER`` on a ``SLAB_KMALLOC`` cache: the size the caller asked for, after
  the two tracks (``orig_size``, since v6.1, commit 6edf2576a6cc "mm/slub: enable
  debugging memory wasting of kmalloc"): an ``unsigned int`` in v6.1, an ``unsigned
  long`` in v6.12 and v7.2 (Debian's sources; the debug info keeps no type for it, so
  the width is decided as drgn decides the freelist's swab(): the 8-byte reading is kept
  when the high half is zero on every allocated object, the 4-byte one otherwise).

The SLAB_* flag values come from ``enum _slab_flag_bits`` (bit numbers, since v6.9,
commit cc61eb851c9a "mm, slab: use an enum to define SLAB_ cache creation flags"); kernels before it
have them as #defines, which the debug info does not keep: their values (stable since
v4.x, SLAB_KMALLOC since v6.1) are :data:`SLAB_FLAG_DEFINES`.

The commit ids above were checked against the kernel's history in public mail and git
archives (the slabobj_ext one could not be found there, so it is named by its subject
only); the code they describe was read in Debian's 5.10, 6.1, 6.12 and 7.2 sources.

Everything is decoded in bulk: a cache's slabs are read whole, laid out as one
(objects x ``s->size``) byte matrix, and each region is compared with numpy.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..kernel.problem import Problem, ProblemSink
from ..target.base import TargetError
from . import slub
from .context import KernelContext

__all__ = ["SLUB_RED_INACTIVE", "SLUB_RED_ACTIVE", "POISON_INUSE", "POISON_FREE",
           "POISON_END", "SLAB_FLAG_DEFINES", "slab_flags", "DebugLayout", "debug_layout",
           "CacheDebug", "check_cache_debug", "orig_sizes", "SlabCheck", "check_slabs"]

#: include/linux/poison.h
SLUB_RED_INACTIVE = 0xbb
SLUB_RED_ACTIVE = 0xcc
POISON_INUSE = 0x5a
POISON_FREE = 0x6b
POISON_END = 0xa5

#: The SLAB_* values of kernels without ``enum _slab_flag_bits`` (include/linux/slab.h
#: #defines; ``OBJECT_POISON`` is mm/slub.c's ``__OBJECT_POISON``).
SLAB_FLAG_DEFINES = {"RED_ZONE": 0x400, "POISON": 0x800, "KMALLOC": 0x1000,
                     "STORE_USER": 0x10000, "TYPESAFE_BY_RCU": 0x80000,
                     "OBJECT_POISON": 0x80000000}


def slab_flags(ctx: KernelContext) -> dict[str, int]:
    """The SLAB_* flag values of the target's kernel, named without ``SLAB_`` (``"RED_ZONE"``,
    ``"POISON"``, ``"KMALLOC"``, ``"STORE_USER"``, ``"TYPESAFE_BY_RCU"``,
    ``"OBJECT_POISON"``, and every other enumerator the kernel has): ``1 << _SLAB_X`` from
    ``enum _slab_flag_bits`` where the kernel has it, else :data:`SLAB_FLAG_DEFINES`."""

    def probe() -> dict[str, int]:
        try:
            bits = ctx.t.enum("enum _slab_flag_bits")
        except TargetError:
            return dict(SLAB_FLAG_DEFINES)
        return {k[len("_SLAB_"):]: 1 << v for k, v in bits.items()
                if k.startswith("_SLAB_") and not k.endswith("LAST_BIT")}

    return ctx.probe("slab_flags", probe)


@dataclasses.dataclass(frozen=True)
class DebugLayout:
    """
    Where SLUB debugging puts its bytes in one cache's object slots (offsets in bytes from
    the object, as mm/slub.c computes them; the object is at ``red_left_pad`` in its slot).

    - ``red_zone``, ``poison``, ``object_poison``, ``store_user``, ``kmalloc``: the
      cache's ``SLAB_RED_ZONE``, ``SLAB_POISON``, ``__OBJECT_POISON``,
      ``SLAB_STORE_USER``, ``SLAB_KMALLOC`` flags.
    - ``info_end``: get_info_end(): ``inuse`` (+ 8 when the free pointer is outside the
      object, ``offset >= inuse``).
    - ``orig_size_off``: get_orig_size()'s offset (``info_end + 2 * sizeof(struct
      track)``), None unless ``store_user`` and ``kmalloc`` (slub_debug_orig_size()).
    - ``pad_off``: check_pad_bytes()'s ``off`` without the 7.x in-object ``slabobj_ext``
      and without orig_size's width (added by the caller once known).
    - ``size_from_object``: size_from_object(): ``size - red_left_pad`` with a red zone,
      else ``size``.
    """

    red_zone: bool
    poison: bool
    object_poison: bool
    store_user: bool
    kmalloc: bool
    info_end: int
    orig_size_off: int | None
    pad_off: int
    size_from_object: int


def debug_layout(ctx: KernelContext, c: slub.KmemCache) -> DebugLayout:
    """The :class:`DebugLayout` of cache C.

    :raises TargetError: ``struct track`` is missing while the cache stores users."""
    f = slab_flags(ctx)
    has = {k: bool(c.flags & f[k]) if k in f else False
           for k in ("RED_ZONE", "POISON", "OBJECT_POISON", "STORE_USER", "KMALLOC")}
    info_end = c.inuse + 8 if c.offset >= c.inuse else c.inuse
    pad_off = info_end
    orig = None
    if has["STORE_USER"]:
        pad_off += 2 * ctx.t.sizeof("struct track")
        if has["KMALLOC"]:
            orig = pad_off
    size_from_object = c.size - c.red_left_pad if has["RED_ZONE"] else c.size
    return DebugLayout(has["RED_ZONE"], has["POISON"], has["OBJECT_POISON"],
                       has["STORE_USER"], has["KMALLOC"], info_end, orig, pad_off,
                       size_from_object)


class _Slots:
    """The object slots of one cache's slabs as an (objects x ``s->size``) uint8 matrix,
    rows in :func:`memscope.mm.slub.object_addresses` order, and the slabs' tails."""

    def __init__(self, ctx: KernelContext, w: slub.CacheWalk, sink: ProblemSink):
        wk = slub.slab_walker(ctx)
        c = w.cache
        self.addr, self.pos, self.index = slub.object_addresses(w)
        self.alloc = slub.allocated_mask(w, self.addr)
        self.idx = wk.slab_indices(c.address)
        rows, self.tails, self.readable = [], [], np.ones(len(self.idx), bool)
        for k, i in enumerate(self.idx.tolist()):
            n = int(wk.objects[i])
            mem = wk.slab_memory(i)
            if mem is None or n * c.size > len(mem):
                self.readable[k] = False
                rows.append(np.zeros((n, c.size), np.uint8))
                self.tails.append(None)
                if mem is None:
                    sink.add("unreadable", f"slab {wk.slab_addr(i):#x}: its memory cannot "
                             "be read")
                continue
            m = np.frombuffer(mem, np.uint8)
            rows.append(m[:n * c.size].reshape(n, c.size))
            self.tails.append(m)
        self.m = (np.concatenate(rows) if rows else np.zeros((0, c.size), np.uint8))
        self.ok_row = np.repeat(self.readable, [int(wk.objects[i]) for i in self.idx.tolist()]) \
            if len(self.idx) else np.zeros(0, bool)


def _orig_width(slots: _Slots, at: int) -> int:
    """4 or 8: the width of orig_size (see the module), tried on the allocated objects."""
    rows = slots.m[slots.alloc & slots.ok_row]
    if not len(rows):
        return 8
    high = rows[:, at + 4:at + 8]
    return 8 if not high.any() else 4


def _orig_values(slots: _Slots, at: int, width: int) -> np.ndarray:
    cols = slots.m[:, at:at + width]
    return np.ascontiguousarray(cols).view("<u8" if width == 8 else "<u4")[:, 0].astype(
        np.int64)


@dataclasses.dataclass
class CacheDebug:
    """
    What :func:`check_cache_debug` found in one cache.

    - ``checked``: objects whose bytes were checked (0 for a cache without red zones or
      poison).
    - ``orig_size``: per object (rows of :func:`memscope.mm.slub.object_addresses`) the
      stored requested size in bytes, or None when the cache stores none.
    - ``problems``: one :class:`~memscope.kernel.problem.Problem` per finding, its kind
      the kernel's message in snake case (``left_redzone``, ``right_redzone``,
      ``kmalloc_redzone``, ``alignment_padding``, ``poison``, ``end_poison``,
      ``object_padding``, ``padding``), the message starting with the kernel's own name
      ("Left Redzone overwritten") and giving slab, object (index and state), the first
      wrong byte's offset from the object, the byte expected and the one found, and how
      many bytes of the region are wrong.
    """

    checked: int
    orig_size: np.ndarray | None
    problems: list[Problem]


def check_cache_debug(ctx: KernelContext, w: slub.CacheWalk) -> CacheDebug:
    """(Once per snapshot and cache.)  Check every object of the cache walked in W as mm/slub.c validate_slab() does:
    check_object() with ``SLUB_RED_ACTIVE`` for allocated objects and ``SLUB_RED_INACTIVE``
    for free ones (free: on the slab's freelist, a CPU freelist, a sheaf or a barn, as
    :func:`memscope.mm.slub.allocated_mask` says), then slab_pad_check() on each slab.

    :param ctx: the context of the target
    :param w: :func:`memscope.mm.slub.cache_walk` of the cache
    :return: a :class:`CacheDebug` (bounded: at most
        :data:`~memscope.kernel.problem.MAX_PROBLEMS` findings per cache)
    """
    return ctx.snapshot(f"cache_debug {w.cache.address:#x}", lambda: _check(ctx, w))


def _check(ctx: KernelContext, w: slub.CacheWalk) -> CacheDebug:
    c = w.cache
    d = debug_layout(ctx, c)
    problems: list[Problem] = []
    if not (d.red_zone or d.poison or d.orig_size_off is not None):
        return CacheDebug(0, None, problems)
    sink = ProblemSink(problems, c.name)
    s = _Slots(ctx, w, sink)
    rlp = c.red_left_pad
    orig = None
    width = 0
    if d.orig_size_off is not None:
        width = _orig_width(s, rlp + d.orig_size_off)
        orig = _orig_values(s, rlp + d.orig_size_off, width)
    if not (d.red_zone or d.poison):
        return CacheDebug(0, orig, problems)
    m, alloc, ok = s.m, s.alloc, s.ok_row
    val = np.where(alloc, SLUB_RED_ACTIVE, SLUB_RED_INACTIVE).astype(np.uint8)
    osz = c.object_size
    wk = slub.slab_walker(ctx)
    # obj_exts_in_object() (7.x): the slab's slabobj_ext vector inside the objects.
    in_obj = _obj_exts_in_object(ctx, wk, s, c)

    def region(kind: str, name: str, lo: int, hi: int, expect, rows: np.ndarray,
               extra: np.ndarray | None = None) -> None:
        """Slot bytes [LO, HI) of ROWS must be EXPECT (a byte, or one per row)."""
        if hi <= lo or not rows.any():
            return
        exp = expect[:, None] if isinstance(expect, np.ndarray) else np.uint8(expect)
        bad = m[:, lo:hi] != exp
        if extra is not None:
            bad &= extra
        bad &= rows[:, None]
        hit = bad.any(axis=1)
        for r in np.flatnonzero(hit).tolist():
            if sink.full:
                return
            col = int(np.argmax(bad[r]))
            e = int(expect[r]) if isinstance(expect, np.ndarray) else expect
            _report(sink, wk, s, c, r, kind, name, lo + col - rlp, e, int(m[r, lo + col]),
                    int(bad[r].sum()))

    if d.red_zone:
        region("left_redzone", "Left Redzone", 0, rlp, val, ok)
        region("right_redzone", "Right Redzone", rlp + osz, rlp + c.inuse, val, ok)
        if orig is not None:
            cols = np.arange(osz)
            region("kmalloc_redzone", "kmalloc Redzone", rlp, rlp + osz, SLUB_RED_ACTIVE,
                   ok & alloc & (orig < osz), cols[None, :] >= orig[:, None])
    elif d.poison and osz < c.inuse:
        region("alignment_padding", "Alignment padding", rlp + osz, rlp + c.inuse,
               POISON_INUSE, ok)
    if d.poison:
        if d.object_poison:
            region("poison", "Poison", rlp, rlp + osz - 1, POISON_FREE, ok & ~alloc)
            region("end_poison", "End Poison", rlp + osz - 1, rlp + osz, POISON_END,
                   ok & ~alloc)
        off = d.pad_off + width
        ext = _slabobj_ext_size(ctx)
        for extra_rows, o in ((ok & ~in_obj, off), (ok & in_obj, off + ext)):
            region("object_padding", "Object padding", rlp + o, rlp + d.size_from_object,
                   POISON_INUSE, extra_rows)
        _pad_check(ctx, wk, s, c, sink)
    return CacheDebug(int(ok.sum()), orig, problems)


def _report(sink, wk, s: _Slots, c, r: int, kind: str, name: str, off: int, expect: int,
            found: int, nbad: int) -> None:
    slab_i = int(s.idx[int(s.pos[r])])
    state = "allocated" if s.alloc[r] else "free"
    sink.add(kind, f"{name} overwritten: slab {wk.slab_addr(slab_i):#x}, object "
             f"{int(s.addr[r]):#x} (index {int(s.index[r])}, {state}) at offset {off}: "
             f"{expect:#04x} expected, {found:#04x} found ({nbad} byte(s) wrong)")


def _slabobj_ext_size(ctx: KernelContext) -> int:
    t = ctx.t
    return ctx.probe("slabobj_ext_size", lambda: t.sizeof("struct slabobj_ext")
                     if t.has_type("struct slabobj_ext") else 0)


def _obj_exts(ctx: KernelContext, wk, s: _Slots) -> list[int]:
    """slab_obj_exts() of each slab of S: ``slab->obj_exts`` without the flag bits
    (``~(__NR_OBJEXTS_FLAGS - 1)``, enum objext_flags), 0 where the kernel has none."""
    t = ctx.t
    sl = slub.slub_layout(ctx)
    if not sl.slab.has("obj_exts"):
        return [0] * len(s.idx)
    try:
        mask = ~(t.enum_value("enum objext_flags", "__NR_OBJEXTS_FLAGS") - 1)
    except TargetError:
        mask = ~0
    off = sl.slab.offset("obj_exts")
    return [t.read_u64(wk.slab_addr(i) + off) & mask for i in s.idx.tolist()]


def _obj_exts_in_slab(wk, i: int, ext: int) -> bool:
    base = int(wk.base[i])
    return base <= ext < base + (int(wk.npages[i]) << wk.page_shift)


def _obj_exts_in_object(ctx, wk, s: _Slots, c) -> np.ndarray:
    """Per object row: obj_exts_in_object() of its slab (the vector inside the slab and
    the slab's stride, ``slab->stride`` where struct slab has one, equal to ``s->size``).
    Sets ``s.ext_in_slab`` and ``s.ext_in_obj`` per slab."""
    sl = slub.slub_layout(ctx)
    exts = _obj_exts(ctx, wk, s)
    s.ext_in_slab = np.zeros(len(s.idx), bool)
    s.ext_in_obj = np.zeros(len(s.idx), bool)
    for k, (i, ext) in enumerate(zip(s.idx.tolist(), exts)):
        if ext and _obj_exts_in_slab(wk, i, ext):
            stride = (ctx.t.read_u32(wk.slab_addr(i) + sl.slab.offset("stride"))
                      if sl.slab.has("stride") else _slabobj_ext_size(ctx))
            s.ext_in_slab[k] = True
            s.ext_in_obj[k] = stride == c.size
    return s.ext_in_obj[s.pos] if len(s.pos) else np.zeros(0, bool)


def _pad_check(ctx, wk, s: _Slots, c, sink: ProblemSink) -> None:
    """slab_pad_check(): the slab's tail after its objects (or, on 7.x, after the
    slabobj_ext vector kept in the tail: obj_exts_offset_in_slab() +
    obj_exts_size_in_slab()) is POISON_INUSE."""
    ext_size = _slabobj_ext_size(ctx)
    for k, i in enumerate(s.idx.tolist()):
        mem = s.tails[k]
        if mem is None or sink.full:
            continue
        length = len(mem)
        nobj = int(wk.objects[i])
        if s.ext_in_slab[k] and not s.ext_in_obj[k]:
            start = -(-(c.size * nobj) // ext_size) * ext_size + ext_size * nobj
        else:
            start = length - length % c.size
        tail = mem[start:]
        bad = np.flatnonzero(tail != POISON_INUSE)
        if len(bad):
            f = int(bad[0])
            sink.add("padding", f"Padding overwritten: slab {wk.slab_addr(i):#x} "
                     f"@offset={start + f}: {POISON_INUSE:#04x} expected, {int(tail[f]):#04x} "
                     f"found ({len(bad)} byte(s) wrong)")


def orig_sizes(ctx: KernelContext, w: slub.CacheWalk) -> np.ndarray | None:
    """The requested size kmalloc stored in each object of the cache walked in W
    (get_orig_size(): ``SLAB_STORE_USER`` kmalloc caches, v6.1+), one int64 per row of
    :func:`memscope.mm.slub.object_addresses`, in bytes; None when the cache stores
    none."""
    d = debug_layout(ctx, w.cache)
    if d.orig_size_off is None:
        return None
    return check_cache_debug(ctx, w).orig_size


# --- the slab half of ``check`` ---------------------------------------------------------
@dataclasses.dataclass
class SlabCheck:
    """
    The slab half of ``check`` (:func:`check_slabs`).

    - ``caches``, ``slabs``, ``objects``: caches on ``slab_caches``, slabs found in the
      memmap, objects they hold.
    - ``debug_caches``: caches with red zones or poison (``SLAB_RED_ZONE``,
      ``SLAB_POISON``); ``debug_objects``: objects whose bytes were checked.
    - ``problems``: every :class:`~memscope.kernel.problem.Problem`, ``where`` the cache's
      name: the walk's (cycle, bad_pointer, too_long, unreadable, inuse_mismatch,
      double_free, unlisted, wrong_slab, bad_sheaf, unknown_cache, broken_link, gave_up)
      then the debugging checks' (see :class:`CacheDebug`).
    """

    caches: int
    slabs: int
    objects: int
    debug_caches: int
    debug_objects: int
    problems: list[Problem]


def check_slabs(ctx: KernelContext) -> SlabCheck:
    """
    Walk every slab of every cache (:func:`memscope.mm.slub.cache_walk`: each freelist
    decoded and bounded, per-CPU freelists and partial lists, sheaves, barns) and, on
    caches with SLUB debugging, check every object's red zones and poison
    (:func:`check_cache_debug`).

    :param ctx: the context of the target
    :return: a :class:`SlabCheck`
    :raises TargetError: as :func:`memscope.mm.slub.kmem_caches`
    """
    caches = slub.kmem_caches(ctx)
    if not caches:
        # Early boot (before kmem_cache_init(): slab_caches is empty): no slab to check,
        # and no need for the address-space layout the walk would set up.
        return SlabCheck(0, 0, 0, 0, 0, [])
    wk = slub.slab_walker(ctx)
    problems: list[Problem] = list(wk.problems)
    slabs = objects = ndebug = nchecked = 0
    for c in caches:
        w = slub.cache_walk(ctx, c)
        problems += w.problems
        slabs += len(w.slabs.pfn)
        objects += int(w.slabs.objects.sum())
        dbg = check_cache_debug(ctx, w)
        if dbg.checked:
            ndebug += 1
            nchecked += dbg.checked
        problems += dbg.problems
    return SlabCheck(len(wk.caches), slabs, objects, ndebug, nchecked, problems)
