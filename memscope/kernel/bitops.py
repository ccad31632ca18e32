"""Bitmaps (include/linux/bitops.h, include/linux/bitmap.h): arrays of ``unsigned long``
whose bit N is bit N % 64 of word N / 64 (little-endian 64-bit words, so a bitmap's bytes
read as one little-endian integer give bit N at ``1 << N``)."""

from __future__ import annotations

from typing import Iterator

from ..target.base import Target

__all__ = ("bitmap_weight", "find_first_bit", "for_each_clear_bit", "for_each_set_bit",
           "read_bitmap", "test_bit")

BITS_PER_LONG = 64


def BITS_TO_LONGS(nbits: int) -> int:
    """The number of ``unsigned long`` words that hold NBITS bits."""
    return (nbits + BITS_PER_LONG - 1) // BITS_PER_LONG


def read_bitmap(t: Target, address: int, nbits: int) -> int:
    """The bitmap of NBITS bits at ADDRESS (whole words are read), as an integer with bit N
    at ``1 << N``; bits at or above NBITS are cleared.

    :raises FaultError: the bitmap cannot be read."""
    raw = t.read(address, BITS_TO_LONGS(nbits) * 8) if nbits > 0 else b""
    return int.from_bytes(raw, "little") & ((1 << nbits) - 1)


def _bits(bitmap: int | bytes, size: int) -> int:
    if not isinstance(bitmap, int):
        bitmap = int.from_bytes(bytes(bitmap), "little")
    return bitmap & ((1 << size) - 1)


def for_each_set_bit(bitmap: int | bytes, size: int) -> Iterator[int]:
    """``for_each_set_bit(bit, addr, size)``: the set bits below SIZE, in order.

    :param bitmap: an integer (bit N at ``1 << N``) or the bitmap's bytes."""
    bits = _bits(bitmap, size)
    while bits:
        low = bits & -bits
        yield low.bit_length() - 1
        bits ^= low


def for_each_clear_bit(bitmap: int | bytes, size: int) -> Iterator[int]:
    """``for_each_clear_bit(bit, addr, size)``: the clear bits below SIZE, in order."""
    return for_each_set_bit(~_bits(bitmap, size), size)


def test_bit(nr: int, bitmap: int | bytes) -> bool:
    """``test_bit(nr, addr)``: whether bit NR is set."""
    if not isinstance(bitmap, int):
        bitmap = int.from_bytes(bytes(bitmap), "little")
    return bool(bitmap >> nr & 1)


def bitmap_weight(bitmap: int | bytes, size: int) -> int:
    """``bitmap_weight(src, nbits)``: the number of set bits below SIZE."""
    return _bits(bitmap, size).bit_count()


def find_first_bit(bitmap: int | bytes, size: int) -> int:
    """``find_first_bit(addr, size)``: the first set bit, or SIZE when none is."""
    return next(for_each_set_bit(bitmap, size), size)
