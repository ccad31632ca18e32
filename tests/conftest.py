"""Shared fixtures: lab cases (real Debian kernels booted in QEMU and dumped), built once
and cached across runs under $MEMSCOPE_CACHE/lab-cases (see memscope/lab/cases.py)."""

from __future__ import annotations

import pytest

from memscope.lab import cases


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "lab_case" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab_case():
    """lab_case(NAME, SNAPSHOT="") -> cases.Snapshot for a case in cases.CASES."""
    memo: dict[tuple[str, str], cases.Snapshot] = {}

    def get(name: str, snapshot: str = "") -> cases.Snapshot:
        key = (name, snapshot)
        if key not in memo:
            memo[key] = cases.snapshot(name, snapshot)
        return memo[key]

    return get


@pytest.fixture(scope="session", params=cases.REAL_KERNEL_CASES)
def real_kernel(request, lab_case) -> cases.Snapshot:
    """Each real-kernel lab case in turn: 5.10, 6.1, 6.12, 7.2, 6.12-arm64, 6.12 NUMA."""
    return lab_case(request.param)
