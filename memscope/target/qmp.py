"""A minimal QMP (QEMU Machine Protocol) client, and pausing a guest around a read.

QEMU serves one QMP client at a time (a second one is accepted by the kernel but never
greeted), so a connection here is closed before drgn connects (``--qemu``), and opened
again after drgn let go of the socket."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from typing import Iterator

from ..errors import MemscopeError


class QMPError(MemscopeError):
    """QEMU refused a command or closed the connection."""


class QMPConnection:
    """One QMP session on a connected socket: greeting read, capabilities negotiated.
    Failures raise ``self.error`` (QMPError; the lab's subclass raises LabError)."""

    error: type[Exception] = QMPError

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.file = sock.makefile("rwb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise self.error("not a QEMU QMP socket (no QMP greeting)")
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        while True:
            line = self.file.readline()
            if not line:
                raise self.error("QEMU closed its QMP connection (did it exit?)")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def execute(self, cmd: str, **arguments) -> object:
        """Run CMD with ARGUMENTS; its ``return`` value.  Raises ``self.error`` when QEMU
        refuses, stops answering (the socket's timeout) or answers garbage."""
        req: dict = {"execute": cmd}
        if arguments:
            req["arguments"] = arguments
        try:
            self.file.write(json.dumps(req).encode() + b"\n")
            self.file.flush()
            reply = self._read()
        except TimeoutError:
            raise self.error(f"QEMU did not answer {cmd} in time") from None
        except (OSError, ValueError) as e:
            raise self.error(f"QEMU's answer to {cmd} is unusable: {e}") from None
        if "error" in reply:
            raise self.error(f"QEMU refused {cmd}: {reply['error'].get('desc')}")
        return reply.get("return")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()


def connect(address: str, timeout: float = 10.0) -> QMPConnection:
    """A QMP session with the QEMU at ADDRESS (a Unix socket path, or HOST:PORT).
    Raises MemscopeError (one line) when nothing answers within TIMEOUT seconds."""
    import stat

    host, sep, port = address.rpartition(":")
    unix = "/" in address or not sep or not port.isdigit()
    if unix:
        try:
            mode = os.stat(address).st_mode
        except FileNotFoundError:
            raise MemscopeError(f"{address}: no such QMP socket") from None
        except OSError as e:
            raise MemscopeError(f"{address}: {e.strerror or e}") from None
        if not stat.S_ISSOCK(mode):
            raise MemscopeError(f"{address} is not a socket (QEMU's -qmp unix:PATH,server=on "
                                "makes one)")
    try:
        if unix:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(address)
        else:
            s = socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout)
    except FileNotFoundError:
        raise MemscopeError(f"{address}: no such QMP socket") from None
    except OSError as e:
        raise MemscopeError(f"cannot connect to QEMU's QMP socket {address}: "
                            f"{e.strerror or e} (is the guest running?)") from None
    try:
        return QMPConnection(s)
    except socket.timeout:
        s.close()
        raise MemscopeError(f"QEMU at {address} does not answer within {timeout:.0f} s (another "
                            "client holds its QMP socket? QMP serves one at a time)") from None
    except QMPError as e:
        s.close()
        raise QMPError(f"{address}: {e}") from None
    except ValueError:
        s.close()
        raise MemscopeError(f"{address} is not a QEMU QMP socket (its greeting is not "
                            "QMP's JSON)") from None
    except OSError as e:
        s.close()
        raise MemscopeError(f"cannot talk to QEMU at {address}: {e.strerror or e}") from None


def run_state(address: str) -> str:
    """QEMU's run state of the guest at ADDRESS ("running", "paused", "debug", ...)."""
    q = connect(address)
    try:
        return str(q.execute("query-status").get("status"))
    finally:
        q.close()


@contextlib.contextmanager
def paused(address: str) -> Iterator[bool]:
    """Stop the guest at ADDRESS (QMP ``stop``) for the block and let it run again
    (``cont``) when the block ends, whichever way it ends (an error, Ctrl-C).  A guest
    that was not running (already paused, stopped by gdb) is left as it was.  Yields
    whether this call stopped it.  The block must have closed its own QMP connections
    (drgn's: end the process that holds it) before it ends: QEMU serves one client at a
    time."""
    q = connect(address)
    try:
        running = q.execute("query-status").get("running", False)
        if running:
            q.execute("stop")
    finally:
        q.close()
    try:
        yield bool(running)
    finally:
        if running:
            q = connect(address)
            try:
                q.execute("cont")
            finally:
                q.close()
