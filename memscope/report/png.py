"""Physical memory maps as PNG pictures, drawn with Pillow (``python3-pil`` for gdb's
python) on a numpy canvas of one pixel per page:

- :func:`page_map`: one pixel per page (two when the rows are narrow), one row per
  pageblock, so a pageblock's fate reads as a line; a colour per page class.
- :func:`pageblock_map`: one square per pageblock, a colour per migratetype, a dot for the
  compaction skip bit, a white frame for isolated blocks and a black frame around "mixed"
  blocks (free pages on another migratetype's list: memscope.mm.pageblock.zone_blocks).

Both have a title, a left axis labelled in physical addresses (hex and MiB/GiB), a line
and a label where each node's zone starts, and a legend with each colour's page or block
count.  The geometry is stored in the PNG's text chunks (``memscope:map_x``,
``memscope:map_y``, ``memscope:px_x``, ``memscope:px_y`` and ``memscope:pages_per_row``
in the page map, ``memscope:blocks_per_row`` and ``memscope:pageblock_order`` in the
pageblock map, ``memscope:origin_pfn`` in both: a map starts at the first zone's first
row, not at pfn 0, so that RAM placed high, as arm64's at 1 GiB, is not drawn below a
band of holes), so that a pixel can be mapped back to its pfn: in the page map pfn ``p``
(``q = p - origin_pfn``) is drawn at ``x = map_x + (q % pages_per_row) * px_x``,
``y = map_y + (q // pages_per_row) * px_y``; in the pageblock map its block ``b = (p -
origin_pfn) >> pageblock_order`` is the square at ``x = map_x + (b % blocks_per_row) *
px_x``, ``y = map_y + (b // blocks_per_row) * px_y``, whose pixel (x + 2, y + 2) has the
migratetype's colour (the marks
are a frame at the square's edge, a frame one pixel inside it and a dot in its middle).
Nothing is drawn over a map's pixels but those marks.
"""

from __future__ import annotations

import io
import os

import numpy as np

# Page classes (memscope.mm.page.CLASSES) and migratetypes: distinct, colour-blind aware
# where possible; free memory is green, holes dark.
CLASS_COLOURS = {
    "hole": (40, 40, 40), "buddy": (60, 170, 60), "pcp": (150, 220, 120),
    "slab": (230, 120, 30), "kmalloc_large": (250, 180, 90), "pagetable": (170, 60, 170),
    "hugetlb": (120, 80, 40), "offline": (90, 90, 90), "reserved": (130, 130, 150),
    "anon": (220, 50, 50), "pagecache": (50, 110, 220), "free": (200, 240, 200),
    "kernel": (240, 210, 40), "other": (0, 200, 200),
    # CMA maps (memscope.mm.cma): pinned user pages, chunks taken by cma_alloc(), pfns
    # between an area's ranges
    "pinned": (120, 0, 0), "cma_taken": (30, 30, 110), "not_in_area": (235, 235, 235),
}
MIGRATETYPE_COLOURS = {
    "Unmovable": (220, 50, 50), "Movable": (60, 170, 60), "Reclaimable": (50, 110, 220),
    "HighAtomic": (230, 150, 30), "CMA": (170, 60, 170), "Isolate": (240, 240, 240),
    "none": (40, 40, 40),
}
UNKNOWN = (255, 0, 255)
BG = (255, 255, 255)
FG = (0, 0, 0)
GRID = (160, 160, 160)
GRID_TEXT = (90, 90, 90)
LABELS_W = 300  # the column of zone labels right of a map
FONT_SIZE = 13
LINE = FONT_SIZE + 5


def _font(size: int = FONT_SIZE):
    """DejaVu Sans (Debian's fonts-dejavu-core) when Pillow finds it, else Pillow's own."""
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def human_bytes(n: int) -> str:
    """'512 MiB', '1.5 GiB', '640 KiB': binary units, at most one decimal."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.0f} {unit}" if v == int(v) or v >= 100 else f"{v:.1f} {unit}"
    return f"{n} B"


def exact_bytes(n: int) -> str:
    """N in the largest binary unit that divides it exactly: '1 GiB', '1088 MiB', '4 KiB'."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def _nice_step(total: int, ticks: int) -> int:
    """The largest power of two not above TOTAL/TICKS (so that labels fall on round
    MiB/GiB addresses)."""
    want = max(total // max(ticks, 1), 1)
    step = 1
    while step * 2 <= want:
        step *= 2
    return step


class _Picture:
    """A white canvas of palette indices (numpy uint8: a quarter of RGB's bytes to encode)
    with the map pasted in; text is drawn last by Pillow."""

    def __init__(self, width: int, height: int):
        self.colours: dict[tuple, int] = {}
        self.img = np.empty((height, width), np.uint8)
        self.img[:] = self.ink(BG)
        self.texts: list[tuple[int, int, str, tuple]] = []
        self.meta: dict[str, str] = {}

    def ink(self, colour: tuple) -> int:
        """The palette index of COLOUR (added on first use)."""
        return self.colours.setdefault(tuple(colour), len(self.colours))

    def rect(self, x: int, y: int, w: int, h: int, colour) -> None:
        self.img[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)] = self.ink(colour)

    def frame(self, x: int, y: int, w: int, h: int, colour) -> None:
        self.rect(x, y, w, 1, colour)
        self.rect(x, y + h - 1, w, 1, colour)
        self.rect(x, y, 1, h, colour)
        self.rect(x + w - 1, y, 1, h, colour)

    def text(self, x: int, y: int, s: str, colour=FG) -> None:
        self.texts.append((x, y, s, colour))

    def legend(self, x: int, y: int, heading: str,
               items: list[tuple[str, tuple, str]]) -> int:
        """A heading and one swatch per (name, colour, note); returns the y below it."""
        self.text(x, y, heading)
        y += LINE + 2
        for name, colour, note in items:
            self.rect(x, y + 2, 16, 11, colour)
            self.frame(x, y + 2, 16, 11, FG)
            self.text(x + 22, y, f"{name}  {note}".rstrip().replace("  1 pages", "  1 page"))
            y += LINE
        return y + LINE // 2

    def png(self) -> bytes:
        from PIL import Image, ImageDraw, PngImagePlugin

        for _, _, _, colour in self.texts:
            self.ink(colour)
        im = Image.fromarray(self.img)  # uint8 2-D: mode "L", then "P" with the palette
        im.putpalette([v for c in sorted(self.colours, key=self.colours.get) for v in c])
        draw = ImageDraw.Draw(im)
        font = _font()
        for x, y, s, colour in self.texts:
            draw.text((x, y), s, fill=self.ink(colour), font=font)
        info = PngImagePlugin.PngInfo()
        for k, v in self.meta.items():
            info.add_text(f"memscope:{k}", v)
        out = io.BytesIO()
        im.save(out, "PNG", pnginfo=info, compress_level=6)
        return out.getvalue()


def _address_axis(c: _Picture, x_right: int, top: int, rows: int, px_y: int,
                  bytes_per_row: int, origin: int) -> None:
    """Tick marks and labels ('0x40000000  1 GiB') left of the map every few rows."""
    total = rows * bytes_per_row
    step_rows = max(_nice_step(total, max(rows * px_y // (LINE * 3), 1)) // bytes_per_row, 1)
    for r in range(0, rows + 1, step_rows):
        y = top + r * px_y
        c.rect(x_right - 6, y, 6, 1, FG)
        addr = origin + r * bytes_per_row
        c.text(4, max(y - LINE // 2, top - LINE // 2), f"{addr:#011x}  {exact_bytes(addr)}"
               if addr else "0x0")


def _zone_marks(c: _Picture, x0: int, x1: int, label_x: int, top: int, px_y: int,
                zones: list[tuple[str, int, int]], pfn_to_row, page_size: int) -> None:
    """Where each zone starts: a mark in both margins (never over the map's pixels) and the
    zone's name, address range and size at the right."""
    last = -LINE
    for label, lo, hi in zones:
        y = top + pfn_to_row(lo) * px_y
        c.rect(x0 - 16, y, 10, 1, GRID)
        c.rect(x1 + 1, y, label_x - x1 - 4, 1, GRID)
        ly = max(y - 2, last + LINE)
        c.text(label_x, ly, f"{label}: {lo * page_size:#x}-{hi * page_size:#x}")
        c.text(label_x + 12, ly + LINE, f"{hi - lo} pages ({human_bytes((hi - lo) * page_size)})",
               GRID_TEXT)
        ly += LINE
        last = ly


def page_map(cls: np.ndarray, class_names: list[str], counts: dict[str, int],
             zones: list[tuple[str, int, int]], row_pages: int, title: str,
             page_size: int = 4096, origin_pfn: int = 0) -> bytes:
    """The page map as PNG bytes.

    CLS: class code per pfn (indexes CLASS_NAMES), from pfn ORIGIN_PFN (a multiple of
    ROW_PAGES); COUNTS: pages per class name; ZONES: (label, start_pfn, end_pfn) per zone;
    ROW_PAGES: pages per row (a pageblock); PAGE_SIZE in bytes (the axis is in physical
    addresses)."""
    n = len(cls)
    rows = (n + row_pages - 1) // row_pages
    px_y = max(1, min(4, 768 // max(rows, 1)))
    px_x = max(1, min(2, 1024 // row_pages))
    axis_w = 170
    top = 2 * LINE + 8
    map_w = row_pages * px_x
    label_x = axis_w + map_w + 12
    legend_x = label_x + LABELS_W
    items = [(nm, CLASS_COLOURS.get(nm, UNKNOWN),
              f"{counts.get(nm, 0)} pages ({human_bytes(counts.get(nm, 0) * page_size)})")
             for nm in class_names if counts.get(nm, 0)]
    height = max(top + rows * px_y + LINE + 8, top + 2 * len(zones) * LINE + 8,
                 top + (len(items) + 4) * LINE)
    c = _Picture(legend_x + 330, height)
    c.text(6, 4, title)
    cell = "one pixel" if px_x == px_y == 1 else f"{px_x} x {px_y} pixels"
    c.text(6, 4 + LINE, f"{cell} per page ({human_bytes(page_size)}), one row per "
           f"{row_pages} pages ({human_bytes(row_pages * page_size)})")
    palette = np.array([c.ink(CLASS_COLOURS.get(nm, UNKNOWN)) for nm in class_names],
                       np.uint8)
    padded = np.zeros(rows * row_pages, np.uint8)
    padded[:n] = cls
    pix = palette[padded].reshape(rows, row_pages)
    if px_y > 1 or px_x > 1:
        pix = np.repeat(np.repeat(pix, px_y, axis=0), px_x, axis=1)
    c.img[top:top + pix.shape[0], axis_w:axis_w + pix.shape[1]] = pix
    if rows * row_pages > n:  # past the last pfn: background, not "hole"
        last = n - (rows - 1) * row_pages
        c.rect(axis_w + last * px_x, top + (rows - 1) * px_y, (row_pages - last) * px_x, px_y,
               BG)
    _address_axis(c, axis_w, top, rows, px_y, row_pages * page_size, origin_pfn * page_size)
    _zone_marks(c, axis_w, axis_w + map_w, label_x, top, px_y, zones,
                lambda pfn: (pfn - origin_pfn) // row_pages, page_size)
    c.legend(legend_x, top, "pages by class", items)
    c.meta.update(pages_per_row=str(row_pages), origin_pfn=str(origin_pfn), map_x=str(axis_w),
                  map_y=str(top), px_x=str(px_x), px_y=str(px_y))
    return c.png()


def pageblock_map(mt_names: list[str], blocks: list[tuple[int, int, int, bool, bool, bool]],
                  zones: list[tuple[str, int, int]], pageblock_order: int, nr_blocks: int,
                  title: str, counts: dict[str, int], page_size: int = 4096,
                  origin_pfn: int = 0) -> bytes:
    """The pageblock map as PNG bytes.

    BLOCKS: (block index, migratetype value or -1, zone index, skip, isolate, mixed), from
    memscope.mm.pageblock.zone_blocks; ZONES: (label, start_pfn, end_pfn); COUNTS: blocks
    per migratetype name."""
    per_row = 64 if nr_blocks > 512 else 32
    sq = 10 if nr_blocks > 1024 else 16
    rows = (nr_blocks + per_row - 1) // per_row
    axis_w = 170
    top = 2 * LINE + 8
    map_w = per_row * sq
    label_x = axis_w + map_w + 12
    legend_x = label_x + LABELS_W
    items = [(nm, MIGRATETYPE_COLOURS.get(nm, UNKNOWN), f"{counts.get(nm, 0)} blocks")
             for nm in mt_names]
    height = max(top + rows * sq + LINE + 8, top + 2 * len(zones) * LINE + 8,
                 top + (len(items) + 12) * LINE)
    c = _Picture(legend_x + 330, height)
    block_bytes = page_size << pageblock_order
    c.text(6, 4, title)
    c.text(6, 4 + LINE, f"one square per pageblock ({human_bytes(block_bytes)}), "
           f"{per_row} per row ({human_bytes(per_row * block_bytes)})")
    c.rect(axis_w, top, map_w, rows * sq, MIGRATETYPE_COLOURS["none"])
    n_skip = n_iso = n_mixed = 0
    for b, mt, _zi, skip, iso, mixed in blocks:
        b -= origin_pfn >> pageblock_order
        x = axis_w + (b % per_row) * sq
        y = top + (b // per_row) * sq
        name = mt_names[mt] if 0 <= mt < len(mt_names) else "none"
        c.rect(x, y, sq - 1, sq - 1, MIGRATETYPE_COLOURS.get(name, UNKNOWN))
        if mixed:
            c.frame(x, y, sq - 1, sq - 1, FG)
            n_mixed += 1
        if iso:
            c.frame(x + 1, y + 1, sq - 3, sq - 3, BG)
            n_iso += 1
        if skip:
            c.rect(x + sq // 2 - 2, y + sq // 2 - 2, 3, 3, FG)
            n_skip += 1
    _address_axis(c, axis_w, top, rows, sq, per_row * block_bytes, origin_pfn * page_size)
    _zone_marks(c, axis_w, axis_w + map_w, label_x, top, sq, zones,
                lambda pfn: ((pfn - origin_pfn) >> pageblock_order) // per_row, page_size)
    y = c.legend(legend_x, top, "pageblocks by migratetype", items)
    grey = (200, 200, 200)
    c.text(legend_x, y, "marks")
    y += LINE + 2
    c.rect(legend_x, y + 2, 16, 11, grey)
    c.rect(legend_x + 6, y + 6, 3, 3, FG)
    c.text(legend_x + 22, y, f"compaction skip bit  {n_skip} blocks")
    y += LINE
    c.rect(legend_x, y + 2, 16, 11, grey)
    c.frame(legend_x, y + 2, 16, 11, FG)
    c.text(legend_x + 22, y, f"mixed (free pages of another type)  {n_mixed} blocks")
    y += LINE
    c.rect(legend_x, y + 2, 16, 11, grey)
    c.frame(legend_x + 1, y + 3, 14, 9, BG)
    c.text(legend_x + 22, y, f"isolated  {n_iso} blocks")
    c.meta.update(blocks_per_row=str(per_row), origin_pfn=str(origin_pfn), map_x=str(axis_w), map_y=str(top), px_x=str(sq), px_y=str(sq),
                  pageblock_order=str(pageblock_order))
    return c.png()


#: vmalloc areas by kind (memscope.mm.vmalloc), their guard pages, and the unused space
#: between areas inside a drawn stretch.
VMALLOC_COLOURS = {
    "vmalloc": (60, 110, 220), "vmap": (60, 170, 60), "ioremap": (230, 150, 30),
    "vm_map_ram": (170, 60, 170), "user": (0, 200, 200), "dma-coherent": (220, 50, 50),
    "sparse": (120, 80, 40), "other": (130, 130, 150), "unpurged": (200, 200, 200),
    "guard": (40, 40, 40), "unused": (245, 245, 245),
}


def vmalloc_map(areas: list[tuple[int, int, str, int]], title: str, page_size: int = 4096,
                row_pages: int = 512, max_gap: int = 16 << 20) -> bytes:
    """The vmalloc range as PNG bytes: one pixel per page, ROW_PAGES pages a row, the
    areas coloured by kind (VMALLOC_COLOURS) with their guard pages dark.  The range is
    mostly empty (32 TiB on x86_64): stretches of areas closer than MAX_GAP bytes are
    drawn, each under a label with its address, and a gap between two stretches is a
    labelled break, not drawn to scale.

    AREAS: (start, end, kind, guard bytes at the end), any order."""
    areas = sorted(areas)
    stretches: list[list] = []
    for a in areas:
        if stretches and a[0] - stretches[-1][-1][1] <= max_gap:
            stretches[-1].append(a)
        else:
            stretches.append([a])
    row_bytes = row_pages * page_size
    counts: dict[str, int] = {}
    for start, end, kind, _guard in areas:
        counts[kind] = counts.get(kind, 0) + 1
    axis_w, top = 190, 2 * LINE + 8
    px = max(1, min(2, 1024 // row_pages))
    plans = []
    y = top
    for st in stretches:
        base = st[0][0] - st[0][0] % row_bytes
        end = st[-1][1]
        rows = (end - base + row_bytes - 1) // row_bytes
        plans.append((st, base, rows, y + LINE))
        y += LINE + rows * px + LINE
    items = [(k, VMALLOC_COLOURS.get(k, UNKNOWN), f"{n} areas") for k, n in sorted(counts.items())]
    items += [("guard pages", VMALLOC_COLOURS["guard"], ""),
              ("no area", VMALLOC_COLOURS["unused"], "")]
    legend_x = axis_w + row_pages * px + 20
    c = _Picture(legend_x + 260, max(y + 8, top + (len(items) + 3) * LINE))
    c.text(6, 4, title)
    c.text(6, 4 + LINE, f"one pixel per page ({human_bytes(page_size)}), one row per "
           f"{row_pages} pages ({human_bytes(row_bytes)}); stretches more than "
           f"{human_bytes(max_gap)} apart are drawn apart")
    prev_end = None
    for st, base, rows, y0 in plans:
        gap = f" ({human_bytes(st[0][0] - prev_end)} after the last)" if prev_end else ""
        c.text(6, y0 - LINE, f"{st[0][0]:#x} - {st[-1][1]:#x}{gap}", GRID_TEXT)
        c.rect(axis_w, y0, row_pages * px, rows * px, VMALLOC_COLOURS["unused"])
        pix = np.full(rows * row_pages, c.ink(VMALLOC_COLOURS["unused"]), np.uint8)
        for start, end, kind, guard in st:
            lo, hi = (start - base) // page_size, (end - base) // page_size
            g = guard // page_size
            pix[lo:hi - g] = c.ink(VMALLOC_COLOURS.get(kind, UNKNOWN))
            pix[hi - g:hi] = c.ink(VMALLOC_COLOURS["guard"])
        img = pix.reshape(rows, row_pages)
        if px > 1:
            img = np.repeat(np.repeat(img, px, axis=0), px, axis=1)
        c.img[y0:y0 + img.shape[0], axis_w:axis_w + img.shape[1]] = img
        step = max(rows // 4, -(-2 * LINE // px))  # labels at least two lines apart
        for r in range(step, rows, step):
            c.rect(axis_w - 6, y0 + r * px, 6, 1, FG)
            c.text(4, y0 + r * px - LINE // 2, f"{base + r * row_bytes:#x}", GRID_TEXT)
        prev_end = st[-1][1]
    c.legend(legend_x, top, "vmalloc areas by kind", items)
    c.meta.update(pages_per_row=str(row_pages), px_x=str(px), px_y=str(px), map_x=str(axis_w))
    return c.png()


def write_png(path, data: bytes) -> None:
    """Write PNG bytes to PATH, a new file: an existing file is never overwritten
    (FileExistsError)."""
    with open(path, "xb") as f:
        try:
            f.write(data)
        except BaseException:  # a half-written picture is not left behind
            f.close()
            os.unlink(path)
            raise
