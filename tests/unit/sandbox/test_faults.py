"""Injected throttling and server errors: every service the sandbox serves answers them in its
own protocol, so boto3 (and the agent) read the error code AWS would send."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from fleet.sandbox.errors import ServiceError
from fleet.sandbox.faults import Faults
from fleet.sandbox.server import Sandbox
from tests.support.sandbox import fresh

CALLS: dict[str, Callable[[Any], Any]] = {
    "s3": lambda c: c.list_buckets(),
    "iam": lambda c: c.list_users(),
    "sts": lambda c: c.get_caller_identity(),
    "iot": lambda c: c.list_things(),
    "codedeploy": lambda c: c.list_applications(),
}
THROTTLE_CODES = {"s3": "SlowDown", "iam": "Throttling", "sts": "Throttling",
                  "iot": "ThrottlingException", "codedeploy": "ThrottlingException"}


@pytest.fixture
def sandbox(sandbox: Sandbox) -> Iterator[Sandbox]:
    """conftest's session sandbox, reset for each test (faults included)."""
    with fresh(sandbox) as served:
        yield served


@pytest.mark.parametrize("service", sorted(CALLS))
def test_each_service_is_throttled_in_its_own_protocol_then_answers(
        sandbox: Sandbox, service: str) -> None:
    client = sandbox.endpoint.client(service)
    sandbox.state.faults.apply({"kind": "throttle", "count": 2, "services": [service]})
    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            CALLS[service](client)
        assert caught.value.response["Error"]["Code"] == THROTTLE_CODES[service]
    CALLS[service](client)  # the third request goes through
    assert sandbox.state.faults.injected[service] == 2


@pytest.mark.parametrize("service", sorted(CALLS))
@pytest.mark.parametrize("status", [500, 503])
def test_each_service_fails_with_the_injected_status(sandbox: Sandbox, service: str,
                                                     status: int) -> None:
    sandbox.state.faults.apply({"kind": "server_error", "status": status, "seconds": 60,
                                "services": [service]})
    with pytest.raises(ClientError) as caught:
        CALLS[service](sandbox.endpoint.client(service))
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    other = "iam" if service != "iam" else "sts"
    CALLS[other](sandbox.endpoint.client(other))  # other services are not hit


def test_a_refused_upload_does_not_corrupt_the_next_request(sandbox: Sandbox) -> None:
    s3 = sandbox.endpoint.client("s3")
    s3.create_bucket(Bucket="bucket-faults")
    sandbox.state.faults.apply({"kind": "server_error", "count": 1, "services": ["s3"]})
    with pytest.raises(ClientError):
        s3.put_object(Bucket="bucket-faults", Key="k", Body=b"x" * 200_000)
    s3.put_object(Bucket="bucket-faults", Key="k", Body=b"y" * 10)
    assert s3.get_object(Bucket="bucket-faults", Key="k")["Body"].read() == b"y" * 10


def test_operations_narrow_a_fault_and_attempts_are_counted_per_operation() -> None:
    faults = Faults(clock=lambda: 0.0)
    faults.apply({"kind": "throttle", "count": 5, "services": ["codedeploy-commands"],
                  "operations": ["PutHostCommandComplete"]})
    faults.check_request("codedeploy-commands", "PollHostCommand")
    with pytest.raises(ServiceError, match="ThrottlingException"):
        faults.check_request("codedeploy-commands", "PutHostCommandComplete")
    assert faults.injected == {"codedeploy-commands": 1,
                               "codedeploy-commands.PutHostCommandComplete": 1}


def test_a_window_ends_and_clear_forgets_everything() -> None:
    now = [100.0]
    faults = Faults(clock=lambda: now[0])
    faults.apply({"kind": "server_error", "status": 503, "seconds": 10})
    with pytest.raises(ServiceError) as caught:
        faults.check_request("codedeploy")
    assert caught.value.status == 503
    now[0] = 111.0
    faults.check_request("codedeploy")
    faults.apply({"kind": "throttle", "seconds": 10})
    faults.clear()
    faults.check_request("codedeploy")
    assert not faults.injected


@pytest.mark.parametrize(("spec", "message"), [
    ({"kind": "throttle", "count": 0}, "count must be a whole number >= 1"),
    ({"kind": "server_error", "status": 502}, "status must be 500 or 503"),
    ({"kind": "explode"}, "unknown fault kind 'explode'"),
])
def test_bad_fault_descriptions_are_refused_clearly(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ServiceError, match=message):
        Faults().apply(spec)
