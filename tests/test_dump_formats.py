"""One snapshot in each of QEMU's dump formats (lab case "6.12-kdump": the ELF dump that
acceptance read, and a kdump-zlib dump of the same stopped guest, written
flattened): every command gives the same answer on each form, and where the guest printed
the file, that answer is the guest's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CASE = "6.12-kdump"
FORMS = ["kdump-zlib"]  # what this QEMU offers (memscope/lab/cases.py)
# (argv, the truth file it must equal or None)
COMMANDS = [(["buddyinfo", "-f", "proc"], "buddyinfo"),
            (["pagetypeinfo", "-f", "proc"], "pagetypeinfo"),
            (["vmallocinfo", "-f", "proc"], "vmallocinfo"),
            (["check", "-f", "json"], None), (["pages", "-f", "json"], None),
            (["frag", "-f", "json"], None), (["meminfo", "-f", "json"], None),
            (["slabinfo", "-f", "json"], None), (["ps", "-f", "json"], None)]


@pytest.fixture(scope="module")
def snap(lab_case):
    return lab_case(CASE)


@pytest.fixture(scope="module")
def answers(snap, tmp_path_factory):
    """(form, command name) -> (exit status, stdout, stderr), the CLI on each form; the
    flattened forms are reassembled into a private cache."""
    env = dict(os.environ, MEMSCOPE_CACHE=str(tmp_path_factory.mktemp("cache")))
    out = {}
    for form in ["elf"] + FORMS:
        for argv, _ in COMMANDS:
            r = subprocess.run([sys.executable, "-m", "memscope.cli", "-c",
                                str(snap.form(form)), "-s", str(snap.vmlinux), *argv],
                               capture_output=True, text=True, env=env, timeout=600)
            out[form, argv[0]] = (r.returncode, r.stdout, r.stderr)
    return out


@pytest.mark.parametrize("form", FORMS)
def test_qemu_writes_the_kdump_forms_flattened_and_info_says_so(snap, form, tmp_path):
    with open(snap.form(form), "rb") as f:
        assert f.read(12) == b"makedumpfile"
    env = dict(os.environ, MEMSCOPE_CACHE=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "memscope.cli", "-c", str(snap.form(form)),
                        "info", "-f", "json"], capture_output=True, text=True, env=env,
                       timeout=600)
    info = json.loads(r.stdout)
    assert (info["format"], info["compression"]) == ("flattened", form.split("-")[1])
    assert info["release"] == snap.meta["release"]
    elf = subprocess.run([sys.executable, "-m", "memscope.cli", "-c", str(snap.vmcore),
                          "info", "-f", "json"], capture_output=True, text=True, timeout=600)
    assert info["build_id"] == json.loads(elf.stdout)["build_id"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("argv,truth", COMMANDS, ids=[c[0][0] for c in COMMANDS])
def test_each_form_gives_the_elf_answer_and_the_guest_s(snap, answers, form, argv, truth):
    status, out, err = answers[form, argv[0]]
    assert (status, err) == (0, ""), err
    assert answers["elf", argv[0]] == (status, out, err)
    if truth:
        assert out == snap.truth_text(truth)
