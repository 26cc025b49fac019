"""A real sandbox server on a loopback port per test, strict about response shapes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from fleet.sandbox.scripted_host import ScriptedHost, register_host
from fleet.sandbox.server import Endpoint, Sandbox
from fleet.sandbox.state import Timeouts
from tests.support.sandbox import fresh


@dataclass
class Fleet:
    sandbox: Sandbox
    endpoint: Endpoint

    def client(self, service: str) -> Any:
        return self.endpoint.client(service)

    def host(self, name: str, tags: dict[str, str] | None = None, **behaviour: str,
             ) -> ScriptedHost:
        """An IAM user with a key (moto IAM), registered and tagged as an on-prem instance."""
        return register_host(self.endpoint, name, tags, **behaviour)

@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(strict=True, timeouts=Timeouts(start_s=2.0, event_s=2.0)) as server:
        yield server


@pytest.fixture
def fleet(sandbox: Sandbox) -> Iterator[Fleet]:
    """The shared sandbox, reset (ours and moto's state) for each test."""
    with fresh(sandbox):
        yield Fleet(sandbox, sandbox.endpoint)
