"""Load memscope into gdb:  (gdb) source gdb_scripts/memscope.py

Defines the gdb command ``memscope`` (see ``help memscope``): the memscope command line's
commands and flags, run against the guest gdb is attached to (QEMU's gdbstub), with the
symbols of the vmlinux gdb has loaded.  This file only finds the memscope package (the
source tree around it, or an installed copy already on gdb's sys.path) and registers the
command; everything else is in memscope/gdb_frontend.py.

gdb embeds the system's python3, not a virtualenv's: it needs numpy and tabulate there
(Debian: apt-get install python3-numpy python3-tabulate).  A pip-installed memscope without
the source tree: run ``python3 -m memscope.gdb_frontend`` with the python memscope is
installed in; it prints the ``source`` line to use instead of this file.
"""

import os
import sys

_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_root, "memscope")) and _root not in sys.path:
    sys.path.insert(0, _root)

try:
    import memscope.gdb_frontend as _memscope_gdb
except ImportError as _e:
    import gdb

    raise gdb.GdbError(
        f"memscope: cannot load the memscope package into gdb's python {sys.version.split()[0]} "
        f"({_e}); gdb's python needs numpy and tabulate (apt-get install python3-numpy "
        "python3-tabulate), and an installed memscope is loaded with the line that "
        "'python3 -m memscope.gdb_frontend' prints") from None

_memscope_gdb.register()
