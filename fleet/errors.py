"""fleetctl's one exception family: every failure the user can act on, said plainly."""

from __future__ import annotations


class FleetError(Exception):
    """A failure with a message that says what went wrong and what to do; exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(FleetError):
    """The device, group, deployment or revision named does not exist."""


class Conflict(FleetError):
    """It exists already, differently (a name taken, a device registered another way)."""
