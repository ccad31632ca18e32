"""Physical memory maps as PNG files, with no imaging library: a PNG writer (zlib +
struct), a 3x5 bitmap font drawn at 2x for labels, and the two maps:

- :func:`page_map`: one pixel per page, one row per pageblock (so a pageblock's fate reads
  as a line), a colour per page class; a strip on the left marks nodes and zones, labelled
  with their start pfn; the legend gives each class's colour and page count.
- :func:`pageblock_map`: one square per pageblock, a colour per migratetype, a dot for the
  compaction skip bit, a white frame for isolated blocks and a black frame around "mixed"
  blocks (free pages on another migratetype's list).

Both scale so that a 512 MiB and a 4 GiB guest fit a screen.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_FONT_ROWS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111", "A": "010101111101101", "B": "110101110101110",
    "C": "011100100100011", "D": "110101101101110", "E": "111100110100111",
    "F": "111100110100100", "G": "011100101101011", "H": "101101111101101",
    "I": "111010010010111", "J": "001001001101010", "K": "101101110101101",
    "L": "100100100100111", "M": "101111101101101", "N": "110101101101101",
    "O": "010101101101010", "P": "110101110100100", "Q": "010101101110011",
    "R": "110101110101101", "S": "011100010001110", "T": "111010010010010",
    "U": "101101101101111", "V": "101101101101010", "W": "101101101111101",
    "X": "101101010101101", "Y": "101101010010010", "Z": "111001010100111",
    " ": "000000000000000", "-": "000000111000000", ".": "000000000000010",
    ":": "000010000010000", "/": "001001010100100", "_": "000000000000111",
    "(": "010100100100010", ")": "010001001001010", ",": "000000000010100",
    "%": "101001010100101", "=": "000111000111000", "+": "000010111010000",
    "#": "101111101111101", ">": "100010001010100", "<": "001010100010001",
}
_FONT = {c: np.array([int(b) for b in bits], bool).reshape(5, 3)
         for c, bits in _FONT_ROWS.items()}
SCALE = 2
CHAR_W = 4 * SCALE  # 3 pixels and a gap
CHAR_H = 6 * SCALE

# Page classes (memscope.mm.page.CLASSES) and migratetypes: distinct, colour-blind aware
# where possible; free memory is green, holes dark.
CLASS_COLOURS = {
    "hole": (40, 40, 40), "buddy": (60, 170, 60), "pcp": (150, 220, 120),
    "slab": (230, 120, 30), "kmalloc_large": (250, 180, 90), "pagetable": (170, 60, 170),
    "hugetlb": (120, 80, 40), "offline": (90, 90, 90), "reserved": (130, 130, 150),
    "anon": (220, 50, 50), "pagecache": (50, 110, 220), "free": (200, 240, 200),
    "kernel": (240, 210, 40), "other": (0, 200, 200),
}
MIGRATETYPE_COLOURS = {
    "Unmovable": (220, 50, 50), "Movable": (60, 170, 60), "Reclaimable": (50, 110, 220),
    "HighAtomic": (230, 150, 30), "CMA": (170, 60, 170), "Isolate": (240, 240, 240),
    "none": (40, 40, 40),
}
ZONE_COLOURS = [(100, 100, 220), (220, 160, 60), (80, 180, 180), (200, 90, 140),
                (140, 140, 60), (90, 160, 90)]
BG = (255, 255, 255)
FG = (0, 0, 0)


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes of an RGB image (H x W x 3 uint8)."""
    h, w, _ = img.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, w * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + chunk(b"IEND", b""))


def write_png(path, img: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(encode_png(img))


class Canvas:
    def __init__(self, width: int, height: int):
        self.img = np.empty((height, width, 3), np.uint8)
        self.img[:] = BG

    def rect(self, x: int, y: int, w: int, h: int, colour) -> None:
        self.img[max(y, 0):y + h, max(x, 0):x + w] = colour

    def frame(self, x: int, y: int, w: int, h: int, colour) -> None:
        self.rect(x, y, w, 1, colour)
        self.rect(x, y + h - 1, w, 1, colour)
        self.rect(x, y, 1, h, colour)
        self.rect(x + w - 1, y, 1, h, colour)

    def text(self, x: int, y: int, s: str, colour=FG) -> int:
        """Draw S (upper-cased) at x, y; returns the x after it."""
        for ch in s.upper():
            g = _FONT.get(ch, _FONT["#"])
            big = np.kron(g, np.ones((SCALE, SCALE), bool))
            sub = self.img[y:y + big.shape[0], x:x + big.shape[1]]
            sub[big[:sub.shape[0], :sub.shape[1]]] = colour
            x += CHAR_W
        return x


def _legend(c: Canvas, x: int, y: int, items: list[tuple[str, tuple, str]]) -> None:
    for name, colour, note in items:
        c.rect(x, y, 14, 10, colour)
        c.frame(x, y, 14, 10, FG)
        c.text(x + 20, y, f"{name} {note}".rstrip())
        y += CHAR_H + 4


def page_map(cls: np.ndarray, class_names: list[str], counts: dict[str, int],
             zones: list[tuple[str, int, int]], row_pages: int, title: str) -> np.ndarray:
    """The page map image.  CLS: class code per pfn; ZONES: (label, start_pfn, end_pfn);
    ROW_PAGES: pages per row (a pageblock)."""
    n = len(cls)
    rows = (n + row_pages - 1) // row_pages
    # Scale so that small guests are not tiny: aim for >= 512 rows of pixels.
    sy = max(1, min(4, 512 // max(rows, 1)))
    sx = max(1, min(2, 1024 // row_pages))
    strip = 10
    left = 8 * CHAR_W + strip + 6  # zone labels (pfn), then the strip
    map_w = row_pages * sx
    legend_x = left + map_w + 16
    legend_w = 24 * CHAR_W
    top = CHAR_H + 10
    height = max(top + rows * sy + 10, top + len(class_names) * (CHAR_H + 4) + 140)
    c = Canvas(legend_x + legend_w, height)
    c.text(4, 4, title)
    palette = np.array([CLASS_COLOURS.get(nm, (255, 0, 255)) for nm in class_names], np.uint8)
    padded = np.zeros(rows * row_pages, np.uint8)
    padded[:n] = cls
    rgb = palette[padded].reshape(rows, row_pages, 3)
    rgb = np.repeat(np.repeat(rgb, sy, axis=0), sx, axis=1)
    c.img[top:top + rgb.shape[0], left:left + rgb.shape[1]] = rgb
    # Nodes and zones: a coloured strip and a label at each zone's start.
    last_label_y = -100
    for i, (label, lo, hi) in enumerate(zones):
        colour = ZONE_COLOURS[i % len(ZONE_COLOURS)]
        y0 = top + (lo // row_pages) * sy
        y1 = top + ((hi + row_pages - 1) // row_pages) * sy
        c.rect(left - strip - 2, y0, strip, max(y1 - y0, 1), colour)
        c.rect(left - strip - 2, y0, map_w + strip + 2, 1, FG)
        ly = max(y0, last_label_y + CHAR_H + 2)
        c.text(2, ly, f"{lo:#x}"[:8])
        last_label_y = ly
    ly = top
    zitems = [(label, ZONE_COLOURS[i % len(ZONE_COLOURS)], "") for i, (label, _, _) in
              enumerate(zones)]
    items = [(nm, CLASS_COLOURS.get(nm, (255, 0, 255)), str(counts.get(nm, 0)))
             for nm in class_names if counts.get(nm, 0)]
    c.text(legend_x, ly, "pages by class")
    _legend(c, legend_x, ly + CHAR_H + 4, items)
    zy = ly + (len(items) + 2) * (CHAR_H + 4)
    c.text(legend_x, zy, "zones")
    _legend(c, legend_x, zy + CHAR_H + 4, zitems)
    ny = zy + (len(zitems) + 2) * (CHAR_H + 4)
    c.text(legend_x, ny, f"1 row = {row_pages} pages")
    return c.img


def pageblock_map(mt_names: list[str], blocks: list[tuple[int, int, int, bool, bool, bool]],
                  zones: list[tuple[str, int, int]], pageblock_order: int, nr_blocks: int,
                  title: str, counts: dict[str, int]) -> np.ndarray:
    """BLOCKS: (block index, migratetype or -1, zone index, skip, isolate, mixed)."""
    per_row = 64 if nr_blocks > 512 else 32
    sq = 10 if nr_blocks > 1024 else 16
    rows = (nr_blocks + per_row - 1) // per_row
    top = CHAR_H + 10
    strip = 10
    left = 8 * CHAR_W + strip + 6
    map_w = per_row * sq
    legend_x = left + map_w + 16
    c = Canvas(legend_x + 24 * CHAR_W, max(top + rows * sq + 10, top + 22 * (CHAR_H + 4)))
    c.text(4, 4, title)
    c.rect(left, top, map_w, rows * sq, MIGRATETYPE_COLOURS["none"])
    for b, mt, zi, skip, iso, mixed in blocks:
        x = left + (b % per_row) * sq
        y = top + (b // per_row) * sq
        name = mt_names[mt] if 0 <= mt < len(mt_names) else "none"
        c.rect(x, y, sq - 1, sq - 1, MIGRATETYPE_COLOURS.get(name, (255, 0, 255)))
        # the zone, as a bar along the bottom of the square
        c.rect(x, y + sq - 3, sq - 1, 2, ZONE_COLOURS[zi % len(ZONE_COLOURS)])
        if mixed:
            c.frame(x, y, sq - 1, sq - 1, FG)
        if iso:
            c.frame(x + 1, y + 1, sq - 3, sq - 3, (255, 255, 255))
        if skip:
            c.rect(x + sq // 2 - 1, y + sq // 2 - 1, 2, 2, FG)
    last_label_y = -100
    for i, (label, lo, hi) in enumerate(zones):
        colour = ZONE_COLOURS[i % len(ZONE_COLOURS)]
        b0, b1 = lo >> pageblock_order, (hi - 1 >> pageblock_order) + 1
        y0 = top + (b0 // per_row) * sq
        y1 = top + ((b1 + per_row - 1) // per_row) * sq
        c.rect(left - strip - 2, y0, strip, max(y1 - y0, 1), colour)
        ly = max(y0, last_label_y + CHAR_H + 2)
        c.text(2, ly, f"{lo:#x}"[:8])
        last_label_y = ly
    items = [(nm, MIGRATETYPE_COLOURS.get(nm, (255, 0, 255)), str(counts.get(nm, 0)))
             for nm in mt_names]
    c.text(legend_x, top, "pageblocks by type")
    _legend(c, legend_x, top + CHAR_H + 4, items)
    y = top + (len(items) + 2) * (CHAR_H + 4)
    c.rect(legend_x, y, 14, 10, (200, 200, 200))
    c.rect(legend_x + 6, y + 4, 2, 2, FG)
    c.text(legend_x + 20, y, "skip bit")
    y += CHAR_H + 4
    c.rect(legend_x, y, 14, 10, (200, 200, 200))
    c.frame(legend_x, y, 14, 10, FG)
    c.text(legend_x + 20, y, "mixed")
    y += 2 * (CHAR_H + 4)
    c.text(legend_x, y, "zones")
    _legend(c, legend_x, y + CHAR_H + 4,
            [(label, ZONE_COLOURS[i % len(ZONE_COLOURS)], "") for i, (label, _, _) in
             enumerate(zones)])
    y += (len(zones) + 2) * (CHAR_H + 4)
    c.text(legend_x, y, f"1 square = {1 << pageblock_order} pages")
    return c.img
