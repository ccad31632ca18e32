"""Members and bit fields taken out of memory already read, by the type's
:class:`~memscope.target.base.Layout`.

The commands read kernel structures in bulk (a zone, the whole memmap) and decode them
here, without a read per member:

- :func:`member` resolves a member path (``"free_area[3].nr_free"``, ``"se.group_node"``)
  to a :class:`~memscope.target.base.Member` with its offset from the start of the outer
  type; :func:`offsetof` is ``offsetof(type, member)``;
- :func:`read_member` takes one member or bit field out of a ``bytes`` buffer;
- :func:`member_values` takes it out of many records at once: a numpy structured array
  (whose ``itemsize`` is the type's size, as ``memscope.mm.page`` reads the memmap), a 2-D
  ``uint8`` array of records, or a ``bytes`` buffer of back-to-back records;
- :func:`record_dtype` builds the structured dtype of some members, for ``np.frombuffer``.

Integers are little-endian (x86_64 and arm64).  A bit field is read from the bytes that
hold it: ``Member.offset`` is the byte of its first bit, ``Member.bit_offset`` the bit in
that byte (as both adapters flatten them), ``Member.bit_size`` its width.  Signedness
follows the member's C type name (``int``, ``long``, ``s32``... are signed; plain
``char`` is read unsigned, as arm64 defines it: pass ``signed=True`` for x86_64's).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from ..target.base import Layout, Member, Target, TargetError

__all__ = ("is_signed", "member", "member_values", "offsetof", "read_member",
           "record_dtype")

#: C integer type names that are signed (typedefs memscope meets included).
_SIGNED = {"signed char", "short", "short int", "int", "signed int", "long",
           "long int", "long long", "long long int", "signed", "s8", "s16", "s32", "s64",
           "__s8", "__s16", "__s32", "__s64", "pid_t", "ssize_t", "loff_t", "time64_t",
           "long signed int", "short signed int", "long long signed int"}

_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")


def is_signed(m: Member) -> bool:
    """Whether member M's C type is a signed integer type."""
    return m.type_name.strip() in _SIGNED


def _element_type(type_name: str) -> str:
    """``"struct free_area [11]"`` -> ``"struct free_area"``."""
    return type_name.split("[", 1)[0].strip()


def _unqualified(type_name: str) -> str:
    """``"const struct qstr"`` -> ``"struct qstr"``: the name to look a member's type up by
    (gdb knows no layout for a qualified name; drgn looks through the qualifiers)."""
    words = [w for w in type_name.split() if w not in ("const", "volatile")]
    return " ".join(words)


def member(t: Target, type_name: str, path: str) -> Member:
    """The member at PATH of TYPE_NAME, its offset counted from the start of TYPE_NAME.

    PATH is C's member designator: names separated by dots, each optionally indexed
    (``"free_area[3].free_list[1]"``, ``"pcp.lists"``).  An indexed step yields the
    element (its size and type name, no array length).

    :raises TargetError: a step names no member, indexes past an array's length, or
        descends into something that is not a struct or union."""
    lay: Layout = t.layout(type_name)
    base = 0
    m: Member | None = None
    steps = path.split(".")
    for i, step in enumerate(steps):
        match = _STEP.match(step.strip())
        if not match:
            raise TargetError(f"{type_name}: bad member path {path!r}")
        name, index = match.group(1), match.group(2)
        m = lay[name]
        off = base + m.offset
        if index is not None:
            n = m.array_length
            if not n or int(index) >= n:
                raise TargetError(f"{lay.name}.{name} has no element {index}")
            size = m.size // n
            off += int(index) * size
            m = Member(name, off, size, _element_type(m.type_name))
        else:
            m = dataclasses.replace(m, offset=off)
        if i + 1 < len(steps):
            if "<anonymous>" in m.type_name or m.type_name.startswith(("union {", "struct {")):
                # Target.layout() looks types up by name: an unnamed one has none.
                raise TargetError(f"{type_name}: cannot descend into {name}, whose type "
                                  f"({m.type_name}) has no name")
            lay = t.layout(_unqualified(m.type_name))
            base = m.offset
    assert m is not None
    return m


def offsetof(t: Target, type_name: str, path: str) -> int:
    """``offsetof(TYPE_NAME, PATH)`` (see :func:`member` for PATH)."""
    return member(t, type_name, path).offset


def _width(m: Member) -> int:
    """Bytes that hold member M (a bit field: the bytes its bits touch)."""
    if m.bit_size:
        return (m.bit_offset + m.bit_size + 7) // 8
    return m.size


def read_member(m: Member, buf: bytes | bytearray | memoryview, offset: int = 0,
                signed: bool | None = None) -> int:
    """The integer value of member (or bit field) M of the structure at OFFSET in BUF.

    :param m: from ``Target.layout(...)[name]`` or :func:`member`.
    :param signed: override the signedness taken from M's type name.
    :raises TargetError: M does not fit in BUF at OFFSET (or has no size)."""
    width = _width(m)
    start = offset + m.offset
    if width <= 0 or start < 0 or start + width > len(buf):
        raise TargetError(f"member {m.name} ({width} bytes at {start}) is not in the buffer "
                          f"of {len(buf)} bytes")
    v = int.from_bytes(bytes(buf[start:start + width]), "little")
    signed = is_signed(m) if signed is None else signed
    if m.bit_size:
        v = v >> m.bit_offset & ((1 << m.bit_size) - 1)
        bits = m.bit_size
    else:
        bits = 8 * width
    if signed and v >> (bits - 1) & 1:
        v -= 1 << bits
    return v


def _records(data, itemsize: int | None) -> np.ndarray:
    """DATA as a 2-D uint8 array, one row per record."""
    if isinstance(data, np.ndarray):
        if data.dtype.names is not None or data.dtype.itemsize > 1:
            a = np.ascontiguousarray(data)
            return a.view(np.uint8).reshape(len(a), a.dtype.itemsize)
        if data.ndim == 2:
            return data
        data = data.tobytes()
    if itemsize is None:
        raise TargetError("a bytes buffer of records needs the record size")
    raw = np.frombuffer(data, np.uint8)
    if len(raw) % itemsize:
        raise TargetError(f"{len(raw)} bytes is not a whole number of {itemsize}-byte records")
    return raw.reshape(len(raw) // itemsize, itemsize)


def member_values(m: Member, data, itemsize: int | None = None,
                  signed: bool | None = None) -> np.ndarray:
    """Member (or bit field) M of every record in DATA, as an int64 (signed) or uint64 array.

    :param data: a numpy structured array whose items are whole records (e.g. viewed with
        :func:`record_dtype` or ``memscope.mm.page``'s dtype), a 2-D uint8 array (one row
        per record), or ``bytes`` of back-to-back records of ITEMSIZE bytes.
    :param itemsize: the record size, needed for ``bytes`` (``Layout.size``).
    :param signed: override the signedness taken from M's type name.
    :raises TargetError: M lies outside the records or is wider than 8 bytes."""
    rows = _records(data, itemsize)
    width = _width(m)
    if not 0 < width <= 8 or m.offset + width > rows.shape[1]:
        raise TargetError(f"member {m.name} ({width} bytes at {m.offset}) is not in records "
                          f"of {rows.shape[1]} bytes")
    cols = rows[:, m.offset:m.offset + width].astype(np.uint64)
    v = np.zeros(len(rows), np.uint64)
    for i in range(width):
        v |= cols[:, i] << np.uint64(8 * i)
    if m.bit_size:
        v = (v >> np.uint64(m.bit_offset)) & np.uint64((1 << m.bit_size) - 1)
        bits = m.bit_size
    else:
        bits = 8 * width
    signed = is_signed(m) if signed is None else signed
    if not signed:
        return v
    out = v.astype(np.int64)
    if bits < 64:
        neg = (v >> np.uint64(bits - 1)) & np.uint64(1)
        out = out - (neg.astype(np.int64) << np.int64(bits))
    return out


def record_dtype(layout: Layout, names: list[str]) -> np.dtype:
    """A numpy structured dtype of LAYOUT's members NAMES (whole members of 1, 2, 4 or 8
    bytes, at their offsets), ``itemsize`` the type's size: ``np.frombuffer(raw, dtype)``
    then views bulk-read records in place.

    :raises TargetError: a member is a bit field or not 1, 2, 4 or 8 bytes."""
    formats = []
    for name in names:
        m = layout[name]
        if m.bit_size or m.size not in (1, 2, 4, 8):
            raise TargetError(f"{layout.name}.{name} is not a whole 1-8 byte integer")
        formats.append(f"<{'i' if is_signed(m) else 'u'}{m.size}")
    return np.dtype({"names": list(names), "formats": formats,
                     "offsets": [layout[n].offset for n in names], "itemsize": layout.size})
