"""Shared fixtures: lab cases (real Debian kernels booted in QEMU and dumped), built once
and cached across runs under $MEMSCOPE_CACHE/lab-cases (see memscope/lab/cases.py)."""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from memscope.lab import cases
from memscope.lab import runner as labrun

import guests  # tests/guests.py: the frozen guests of the GDB and QMP tests

# gdb embeds the system python; memscope's gdb front end takes tabulate from "memscope's own
# python".  In the tests that is the python running them (a fresh machine's python3 on PATH
# may have neither memscope nor tabulate).
os.environ.setdefault("MEMSCOPE_PYTHON", sys.executable)

# With MEMSCOPE_PREBUILD=1 (make test sets it), the lab cases are built in the background,
# two at a time, while the first tests run: on a fresh machine this overlaps the downloads
# of one kernel with the boots of another.  Tests wait for their case on its lock.
PREBUILD = ["6.12", "6.12-arm64", "5.10", "6.1", "7.2", "6.12-numa", "6.12-snapshots"]


_stop = threading.Event()
_thread: threading.Thread | None = None


def _prebuild() -> None:
    def one(name: str) -> None:
        if _stop.is_set():
            return
        try:
            cases.build(labrun.RunOptions(**cases.CASES[name], progress=False))
        except Exception:  # the test that needs the case builds it again and reports
            pass

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, PREBUILD))


def pytest_collection_finish(session):
    # The live userland guest (tests/test_live_userland.py) boots in the background from
    # the start: its ~9 minutes of guest time overlap the other tests.
    for item in session.items:
        if item.path.name == "test_live_userland.py":
            item.module.start(session.config._tmp_path_factory)
            break
    if os.environ.get("MEMSCOPE_PREBUILD") == "1" and any(
            "lab" in item.keywords for item in session.items):
        global _thread
        _thread = threading.Thread(target=_prebuild, name="lab-prebuild", daemon=True)
        _thread.start()


def pytest_sessionfinish(session):
    # Let the build under way finish (it owns a QEMU process) and start no other.
    _stop.set()
    if _thread is not None:
        _thread.join()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if {"lab_case", "frozen_guest"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab_case():
    """lab_case(NAME, SNAPSHOT="") -> cases.Snapshot for a case in cases.CASES."""
    memo: dict[tuple[str, str], cases.Snapshot] = {}

    def get(name: str, snapshot: str = "") -> cases.Snapshot:
        key = (name, snapshot)
        if key not in memo:
            snap = cases.snapshot(name, snapshot)
            # A case is evidence only if the lab accepted it by checks independent of
            # memscope (memscope/lab/verify.py): say so loudly otherwise.
            problem = cases.acceptance_problem(snap)
            if problem:
                pytest.fail(problem, pytrace=False)
            memo[key] = snap
        return memo[key]

    return get


@pytest.fixture(scope="session", params=cases.REAL_KERNEL_CASES)
def real_kernel(request, lab_case) -> cases.Snapshot:
    """Each real-kernel lab case in turn: 5.10, 6.1, 6.12, 7.2, 6.12-arm64, 6.12 NUMA."""
    return lab_case(request.param)


@pytest.fixture(scope="session", params=list(guests.GUESTS),
                ids=[f"kernel-{k}" for k in guests.GUESTS])
def frozen_guest(request, tmp_path_factory) -> guests.Guest:
    """A frozen guest of each lab kernel in turn (lab run --keep), shared by the GDB and
    QMP tests: pytest groups the tests by guest, and each guest is stopped as soon as no
    later test needs it (pytest_runtest_teardown), so one is up at a time."""
    name = request.param
    d = tmp_path_factory.mktemp(f"frozen-{name}") / "guest"
    request.addfinalizer(lambda: guests.stop(d))
    _frozen[name] = d
    return guests.boot(name, d)


_frozen: dict[str, object] = {}


def pytest_runtest_teardown(item, nextitem):
    name = getattr(getattr(item, "callspec", None), "params", {}).get("frozen_guest")
    if name is None or name not in _frozen:
        return
    later = item.session.items[item.session.items.index(item) + 1:]
    if not any(getattr(getattr(i, "callspec", None), "params", {}).get("frozen_guest") == name
               for i in later):
        guests.stop(_frozen.pop(name))
