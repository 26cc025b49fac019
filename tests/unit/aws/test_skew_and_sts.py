"""What the agent says when AWS refuses its clock, and how sts:GetCallerIdentity rides out
throttling: against the sandbox (its SigV4 check and its injected faults), not a mock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.aws.commands import AwsError, explain_skew
from agent.aws.credentials import Credentials
from agent.aws.http import HttpClient
from agent.aws.sts import StsError, get_caller_identity
from fleet.sandbox.server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, Sandbox
from tests.support.sandbox import fresh

NOW = 1_790_000_000.0  # 2026-09-21T14:13:20Z


def refusal(message: str) -> AwsError:
    return AwsError("InvalidSignatureException", message, status=400)


def test_an_expired_signature_says_how_far_behind_the_clock_is_and_what_to_do() -> None:
    error = explain_skew(refusal(
        "Signature expired: 20260921T141320Z is now earlier than 20260921T150820Z "
        "(20260921T151320Z - 5 min.)"), NOW)
    assert error.code == "InvalidSignatureException" and error.status == 400
    assert "the device clock is 60 min behind the service's (20260921T151320Z)" in error.message
    assert "synchronise it (NTP" in error.message


def test_a_signature_from_the_future_says_the_clock_is_ahead() -> None:
    error = explain_skew(refusal(
        "Signature not yet current: 20260921T141320Z is still later than 20260921T134320Z "
        "(20260921T133820Z + 5 min.)"), NOW)
    assert "the device clock is 35 min ahead of the service's" in error.message


def test_a_skew_error_without_times_still_points_at_the_clock() -> None:
    error = explain_skew(AwsError("RequestTimeTooSkewed", "too skewed", status=403), NOW)
    assert "the device clock is wrong" in error.message


def test_other_errors_are_left_alone() -> None:
    error = refusal("The request signature we calculated does not match")
    assert explain_skew(error, NOW) is error


@pytest.fixture(scope="module")
def shared() -> Iterator[Sandbox]:
    with Sandbox(strict=True) as sandbox:
        yield sandbox


@pytest.fixture
def sandbox(shared: Sandbox) -> Iterator[Sandbox]:
    with fresh(shared) as sandbox:
        yield sandbox


def who(sandbox: Sandbox, sleeps: list[float]) -> str:
    with HttpClient(timeout_s=10) as http:
        return get_caller_identity(http, lambda: Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY),
                                   sandbox.state.region, sandbox.endpoint.url,
                                   sleep=sleeps.append)


def test_sts_is_retried_through_throttling(sandbox: Sandbox) -> None:
    sandbox.state.faults.apply({"kind": "throttle", "count": 2, "services": ["sts"]})
    sleeps: list[float] = []
    assert who(sandbox, sleeps).startswith("arn:aws:")
    assert sandbox.state.faults.injected["sts"] == 2
    assert len(sleeps) == 2 and all(0 <= s <= 0.2 for s in sleeps)


@pytest.mark.parametrize("kind", ["throttle", "server_error"])
def test_sts_gives_up_after_three_attempts_with_the_code(sandbox: Sandbox, kind: str) -> None:
    sandbox.state.faults.apply({"kind": kind, "seconds": 60, "services": ["sts"]})
    with pytest.raises(StsError, match=r"failed: (Throttling|InternalFailure): .*\(after 3 "
                                       r"attempts\)"):
        who(sandbox, [])
    assert sandbox.state.faults.injected["sts"] == 3
