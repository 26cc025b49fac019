"""One test's use of a shared sandbox: start from nothing, end with its responses checked."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fleet.sandbox.server import Sandbox


@contextmanager
def fresh(sandbox: Sandbox) -> Iterator[Sandbox]:
    """Forget everything (ours, and moto's process-wide backends); afterwards, fail the test if
    a response of the sandbox broke its service model."""
    sandbox.app.reset()
    sandbox.app.shape_errors.clear()
    yield sandbox
    assert sandbox.app.shape_errors == [], "sandbox responses broke the service model"
