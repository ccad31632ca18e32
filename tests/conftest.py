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


def _pool_guest(item) -> str | None:
    """The guest of guests.POOL that ITEM uses (its frozen_guest or kept_guest), or None."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return params.get("frozen_guest") or params.get("kept_guest")


#: For each guest of guests.POOL, the index in session.items of the last test using it.
_last_use: dict[str, int] = {}
_index: dict[str, int] = {}


def pytest_collection_finish(session):
    # The guests of the GDB, QMP and CMA tests boot in the background, one at a time, in
    # the order the tests use them (tests/guests.py Pool); a guest whose tests were all
    # deselected is never booted.
    first: list[str] = []
    for i, item in enumerate(session.items):
        _index[item.nodeid] = i
        name = _pool_guest(item)
        if name is not None:
            if name not in _last_use:
                first.append(name)
            _last_use[name] = i
    if first and not session.config.option.collectonly:
        factory = session.config._tmp_path_factory
        guests.POOL.plan(first, lambda name: factory.mktemp(f"kept-{name}") / "guest")
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
    # Every guest of the pool stopped, the boot under way too (Ctrl-C and -x included).
    guests.POOL.close()
    # Let the build under way finish (it owns a QEMU process) and start no other.
    _stop.set()
    if _thread is not None:
        _thread.join()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if {"lab_case", "frozen_guest", "kept_guest"} & set(getattr(item, "fixturenames", ())):
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
def frozen_guest(request) -> guests.Guest:
    """A frozen guest of each lab kernel in turn (lab run --keep), shared by the GDB and
    QMP tests: pytest groups the tests by guest; guests.POOL boots each ahead of its
    tests and stops it as soon as no later test needs it (pytest_runtest_teardown)."""
    return guests.POOL.get(request.param)


@pytest.fixture
def kept_guest(request) -> guests.Guest:
    """The guest of guests.KEPT named by the test's parameter (indirect), from guests.POOL
    like frozen_guest."""
    return guests.POOL.get(request.param)


def pytest_runtest_teardown(item, nextitem):
    i = _index.get(item.nodeid)
    for name, last in _last_use.items():
        if last == i:
            guests.POOL.release(name)
