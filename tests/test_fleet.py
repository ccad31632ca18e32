"""`memscope fleet` over real lab dumps on Dask: several kernels (x86_64 and arm64), one
dump cut short, one dump whose vmlinux is not in --vmlinux-dir.  Each good row is what the
guest's kernel printed (/proc/buddyinfo in the snapshot's truth) and exactly what the
command prints when run alone; each bad dump is one error row, and the run goes on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

GOOD = ["5.10", "6.1", "6.12", "6.12-arm64"]
NO_VMLINUX = "7.2"  # its vmlinux is left out of --vmlinux-dir
CUT = "6.12"  # a copy cut after 64 MiB: node_data's page is past the end


def run_cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "memscope.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def truth_buddyinfo(snap) -> list[dict]:
    out = []
    for line in snap.truth_text("buddyinfo").splitlines():
        m = re.match(r"Node (\d+), zone\s+(\S+)\s+(.*)", line)
        out.append(dict(node=int(m[1]), zone=m[2], nr_free=[int(x) for x in m[3].split()]))
    return out


@pytest.fixture(scope="module")
def fleet_dirs(lab_case, tmp_path_factory):
    """A directory of dumps (symlinks to the lab's, nested; a non-dump file beside them)
    and a nested --vmlinux-dir holding every vmlinux but NO_VMLINUX's."""
    root = tmp_path_factory.mktemp("fleet")
    dumps, vml = root / "dumps", root / "vmlinux"
    snaps = {}
    for name in GOOD + [NO_VMLINUX]:
        snap = snaps[name] = lab_case(name)
        d = dumps / "site" / name
        d.mkdir(parents=True)
        (d / "vmcore").symlink_to(snap.vmcore)
        (d / "README").write_text("not a dump\n")
        if name != NO_VMLINUX:
            v = vml / "by-kernel" / name
            v.mkdir(parents=True)
            (v / "vmlinux").symlink_to(snap.vmlinux)
    cut = dumps / "cut" / "vmcore"
    cut.parent.mkdir(parents=True)
    with open(lab_case(CUT).vmcore, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(64 << 20))
    return dumps, vml, snaps, cut


def _rows_by_dump(rows):
    return {r["dump"]: r for r in rows}


def _check_rows(rows, fleet_dirs):
    dumps, vml, snaps, cut = fleet_dirs
    by = _rows_by_dump(rows)
    assert len(rows) == len(snaps) + 1
    assert list(by) == [str(p) for p in sorted(map(Path, by))]  # sorted paths
    for name in GOOD:
        snap = snaps[name]
        row = by[str(dumps / "site" / name / "vmcore")]
        assert row["status"] == "ok", row["status"]
        assert row["kernel"] == snap.meta["release"]
        assert row["result"] == truth_buddyinfo(snap)
        free = [sum(z["nr_free"][o] for z in truth_buddyinfo(snap))
                for o in range(len(row["result"][0]["nr_free"]))]
        assert row["headline"]["free_blocks_by_order"] == free
        assert row["headline"]["free_pages"] == sum(n << o for o, n in enumerate(free))
    bad = by[str(dumps / "site" / NO_VMLINUX / "vmcore")]
    assert bad["result"] is None and bad["kernel"] == snaps[NO_VMLINUX].meta["release"]
    assert bad["status"].startswith("no vmlinux with build ID ") and "\n" not in bad["status"]
    cut_row = by[str(cut)]
    assert cut_row["result"] is None and "\n" not in cut_row["status"]
    assert cut_row["status"].startswith("buddyinfo: cannot answer: physical page ")
    assert "truncated dump" in cut_row["status"]
    return by


def test_fleet_rows_are_each_dump_alone_and_the_kernel_s_truth(fleet_dirs):
    dumps, vml, snaps, cut = fleet_dirs
    r = run_cli("fleet", str(dumps), "--vmlinux-dir", str(vml), "--format", "json",
                "buddyinfo")
    assert r.returncode == 1, r.stderr  # some rows are errors
    assert r.stderr == ""  # no progress bar off a terminal
    by = _check_rows(json.loads(r.stdout), fleet_dirs)
    for name in GOOD[:2]:  # the command alone, on two of them
        snap = snaps[name]
        alone = run_cli("-c", str(snap.vmcore), "-s", str(snap.vmlinux), "buddyinfo",
                        "-f", "json")
        assert json.loads(alone.stdout) == by[str(dumps / "site" / name / "vmcore")]["result"]
    # The same error, alone: one line, exit status 2.
    alone = run_cli("-c", str(cut), "-s", str(snaps[CUT].vmlinux), "buddyinfo")
    assert alone.returncode == 2
    assert alone.stderr == f"memscope: {by[str(cut)]['status']}\n"


def truth_slabinfo(snap) -> list[dict]:
    """/proc/slabinfo of the snapshot's truth: name, active_objs, num_objs, objsize,
    objperslab, pagesperslab, active_slabs, num_slabs."""
    out = []
    for line in snap.truth_text("slabinfo").splitlines()[2:]:
        f = line.split()
        out.append(dict(name=f[0], active_objs=int(f[1]), num_objs=int(f[2]),
                        objsize=int(f[3]), pagesperslab=int(f[5]), num_slabs=int(f[14])))
    return out


def test_fleet_slab_headline_is_the_kernels_slabinfo_arithmetic(fleet_dirs):
    """slabinfo over the fleet: each good row's headline is /proc/slabinfo's own sums (the
    objects in use, their bytes, the cache whose objects take the most); with --walk, the
    slabs' bytes are /proc/slabinfo's num_slabs x pagesperslab pages."""
    dumps, vml, snaps, cut = fleet_dirs
    for argv, walk in ((["slabinfo"], False), (["slabinfo", "--walk"], True)):
        r = run_cli("fleet", str(dumps / "site" / "*" / "vmcore"), "--vmlinux-dir",
                    str(vml), "--format", "json", *argv)
        assert r.returncode == 1, r.stderr  # NO_VMLINUX's row
        by = _rows_by_dump(json.loads(r.stdout))
        for name in GOOD:
            row = by[str(dumps / "site" / name / "vmcore")]
            assert row["status"] == "ok", row["status"]
            t = truth_slabinfo(snaps[name])
            h = row["headline"]
            page = 65536 if "64k" in snaps[name].meta["release"] else 4096
            if walk:
                assert h["slab_bytes"] == sum(c["num_slabs"] * c["pagesperslab"] * page
                                              for c in t), name
                continue
            used = {c["name"]: c["active_objs"] * c["objsize"] for c in t}
            assert h["slab_objects"] == sum(c["active_objs"] for c in t), name
            assert h["slab_object_bytes"] == sum(used.values()), name
            assert h["largest_cache_bytes"] == max(used.values()), name
            assert used[h["largest_cache"]] == h["largest_cache_bytes"], name


def test_fleet_on_a_running_scheduler_writes_parquet(fleet_dirs, tmp_path):
    pd = pytest.importorskip("pandas")
    from dask.distributed import LocalCluster

    dumps, vml, snaps, cut = fleet_dirs
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        out = tmp_path / "fleet.parquet"
        r = run_cli("fleet", str(dumps / "**" / "vmcore"), "--vmlinux-dir", str(vml),
                    "--scheduler", cluster.scheduler_address, "--format", "parquet",
                    "-o", str(out), "buddyinfo")
        assert r.returncode == 1, r.stderr
        assert r.stdout == ""
    df = pd.read_parquet(out)
    rows = [dict(dump=d.dump, kernel=d.kernel, status=d.status,
                 result=json.loads(d.result) if isinstance(d.result, str) else None,
                 headline={k: (list(getattr(d, k)) if k == "free_blocks_by_order"
                               else int(getattr(d, k)))
                           for k in ("free_blocks_by_order", "free_pages")
                           if d.status == "ok"})
            for d in df.itertuples()]
    _check_rows(rows, fleet_dirs)


def test_fleet_bad_arguments_are_one_line(fleet_dirs, tmp_path):
    dumps, vml, _, _ = fleet_dirs
    for args, needle in (
            ([str(dumps), "--vmlinux-dir", str(vml)], "needs a COMMAND"),
            ([str(tmp_path / "nothing-*"), "--vmlinux-dir", str(vml), "buddyinfo"],
             "no dumps found"),
            ([str(dumps), "--vmlinux-dir", str(tmp_path / "none"), "buddyinfo"],
             "not a directory"),
            ([str(dumps), "--vmlinux-dir", str(vml), "--format", "parquet", "buddyinfo"],
             "needs -o FILE"),
            ([str(dumps), "--vmlinux-dir", str(vml), "-o", str(tmp_path / "x.parquet"),
              "buddyinfo"], "-o FILE is where --format parquet writes"),
            ([str(dumps), "--vmlinux-dir", str(vml), "--scheduler", "tcp://127.0.0.1:9",
              "buddyinfo"], "cannot reach the Dask scheduler")):
        r = run_cli("fleet", *args, timeout=120)
        assert r.returncode == 2 and r.stdout == "", (args, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, r.stderr)
