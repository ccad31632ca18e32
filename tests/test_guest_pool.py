"""tests/guests.py's Pool (the guests of the GDB, QMP and CMA tests booted ahead of them),
on what it decides without a kernel booting: a boot that fails is the error of every test
that asks for its guest (not a hang), and once closed it boots nothing."""

from __future__ import annotations

import pytest

import guests
from memscope.errors import LabError


def test_a_failed_boot_is_every_gets_one_line_error_and_a_closed_pool_boots_nothing(
        tmp_path, monkeypatch):
    monkeypatch.setitem(guests.KEPT, "no-such", dict(kernel="no-such-kernel"))
    pool = guests.Pool(1)
    try:
        pool.plan(["no-such"], lambda name: tmp_path / name / "guest")
        for _ in range(2):  # each test of the guest fails with the boot's own error
            with pytest.raises(LabError, match=r"^the boot of guest no-such failed: .*"
                                               r"no-such-kernel") as e:
                pool.get("no-such")
            assert "\n" not in str(e.value)
        assert pool.up == 0 and pool.procs == []
    finally:
        pool.close()
    assert not pool.thread.is_alive()
    with pytest.raises(LabError, match="the test session is ending"):
        pool.get("no-such")
