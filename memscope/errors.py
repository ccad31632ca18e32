"""Errors that front ends print as one line (no traceback)."""


class MemscopeError(Exception):
    """A failure the user can act on: the message names the cause and what to do.

    ``exit_status`` is what the command-line front end exits with."""

    exit_status = 2

    def __init__(self, message: str, exit_status: int | None = None):
        super().__init__(message)
        if exit_status is not None:
            self.exit_status = exit_status


class LabError(MemscopeError):
    """The lab could not fetch, boot, freeze or dump a guest."""

    exit_status = 1
