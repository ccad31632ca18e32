"""Shared by the tests/test_kernel_*.py modules: one drgn Program and one DrgnTarget per
lab dump (the kernel layer reads through the target; drgn's own helpers on the same
Program are the answer key), and a Target that overrides a few words of a real one to
make corrupted in-memory copies."""

from __future__ import annotations

import struct

from memscope.target.base import Target
from memscope.target.drgn import DrgnTarget, open_core

_OPEN: dict[str, tuple] = {}


def open_dump(snap):
    """(drgn.Program, DrgnTarget) of lab snapshot SNAP, opened once per test session."""
    key = str(snap.vmcore)
    if key not in _OPEN:
        prog = open_core(snap.vmcore, snap.vmlinux)
        _OPEN[key] = (prog, DrgnTarget(prog))
    return _OPEN[key]


class Delegating(Target):
    """A real target seen through another: every question goes to REAL (subclasses
    change some answers)."""

    def __init__(self, real: Target):
        self.real = real
        self.arch = real.arch

    def read(self, address: int, size: int) -> bytes:
        return self.real.read(address, size)

    def symbol(self, name):
        return self.real.symbol(name)

    def variable(self, name):
        return self.real.variable(name)

    def constant(self, name):
        return self.real.constant(name)

    def layout(self, type_name):
        return self.real.layout(type_name)

    def enum(self, type_name):
        return self.real.enum(type_name)

    def sizeof(self, type_name):
        return self.real.sizeof(type_name)

    def array_length(self, name):
        return self.real.array_length(name)

    def vmcoreinfo(self):
        return self.real.vmcoreinfo()


class PatchedTarget(Delegating):
    """A real target with some 8-byte words replaced: ``patch(address, value)``."""

    def __init__(self, real: Target):
        super().__init__(real)
        self.words: dict[int, int] = {}

    def patch(self, address: int, value: int) -> None:
        self.words[address] = value & (1 << 64) - 1

    def read(self, address: int, size: int) -> bytes:
        data = bytearray(self.real.read(address, size))
        for a, v in self.words.items():
            for i, b in enumerate(struct.pack("<Q", v)):
                if address <= a + i < address + size:
                    data[a + i - address] = b
        return bytes(data)
