"""The QMP backend (``memscope --qemu SOCKET``, drgn's QEMU target) on a paused guest prints
exactly what the command line prints on a dump of the same paused guest, for every command,
format and flag, on every lab kernel.

The guests are the frozen ones of tests/test_gdb.py (tests/guests.py, ``lab run --keep``):
the lab stopped each over QMP and dumped it with ``dump-guest-memory``, and it stays
paused, so its vmcore is a dump of the very state ``--qemu`` reads.  The guest must still
be paused after the run (nothing resumed it in between).  A live guest, paused and dumped
by the test itself, is in tests/test_live.py.
"""

from __future__ import annotations

import time

import guests


def test_every_command_and_flag_over_qmp_prints_exactly_what_drgn_prints_on_the_dump(
        frozen_guest, tmp_path_factory):
    g = frozen_guest
    assert guests.status(g.qmp_socket) == "paused"
    work = tmp_path_factory.mktemp(f"qmp-{g.name}")
    want, want_png = guests.cli_on_vmcore(g, tmp_path_factory.mktemp(f"cli-{g.name}"))
    t0 = time.monotonic()
    got = guests.run_cli(["--qemu", g.qmp_socket, "-s", g.vmlinux], guests.plan(g), work,
                         work / "png")
    print(f"\n{g.name}: {len(got)} commands over QMP in {time.monotonic() - t0:.1f} s")
    assert guests.status(g.qmp_socket) == "paused"
    guests.assert_same(got, want, work / "png", want_png, f"{g.name} --qemu")
