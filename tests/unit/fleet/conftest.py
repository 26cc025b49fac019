"""Shared fixtures for fleetctl tests: one strict sandbox per session, reset per test, an
``Aws`` pointed at it, and ``fleetctl(*args)`` running the real CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from fleet.aws import Aws, AwsOptions
from fleet.sandbox.server import Sandbox

Fleetctl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(strict=True) as server:
        yield server


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def aws(sandbox: Sandbox) -> Aws:
    sandbox.app.reset()
    return Aws(AwsOptions(region="us-east-1", endpoint_url=sandbox.endpoint.url))


@pytest.fixture
def fleetctl(sandbox: Sandbox) -> Fleetctl:
    sandbox.app.reset()

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
               "COLUMNS": "200", "NO_COLOR": "1"}
        env.pop("AWS_PROFILE", None)
        return subprocess.run(
            [sys.executable, "-c", "from fleet.cli import main; main()",
             "--endpoint-url", sandbox.endpoint.url, *args],
            capture_output=True, text=True, env=env, timeout=timeout, check=False)

    return run
