"""The CodeDeployCommand client against a real sandbox (and a recording server for the wire)."""

# ruff: noqa: PLR0917 - pytest passes fixtures positionally

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.aws.commands import (
    BACKOFF_BASE_S,
    BACKOFF_CAP_S,
    AwsError,
    CommandClient,
    default_endpoint,
)
from agent.aws.credentials import Credentials
from agent.aws.http import HttpClient, HttpError
from agent.aws.model import load_commands_model
from fleet.sandbox.server import Sandbox
from fleet.sandbox.state import Timeouts
from tests.support.sandbox import fresh as fresh_sandbox

from .loopback import Origin, Running, start_origin

pytestmark = pytest.mark.integration

ROLE = "arn:aws:iam::123456789012:role/CodeDeployServiceRole"
REVISION = {"revisionType": "S3", "s3Location": {"bucket": "artifacts", "key": "aqi/v1.zip",
                                                 "bundleType": "zip", "eTag": "abc"}}
VERSION = "OFFICIAL_1.8.1-0_pifleet"
SUCCESS = {"Format": "JSON", "Payload": json.dumps(
    {"error_code": 0, "script_name": "", "message": "Succeeded", "log": ""})}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(strict=True, timeouts=Timeouts(start_s=2.0, event_s=2.0)) as server:
        yield server


@pytest.fixture
def fresh(sandbox: Sandbox) -> Iterator[Sandbox]:
    with fresh_sandbox(sandbox) as clean:
        yield clean


@pytest.fixture
def http() -> Iterator[HttpClient]:
    with HttpClient(timeout_s=10) as client:
        yield client


def boto(sandbox: Sandbox, service: str) -> Any:
    return sandbox.endpoint.client(service)


def register_host(sandbox: Sandbox, name: str) -> tuple[str, Credentials]:
    """An IAM user with a key, registered and tagged as an on-premises instance."""
    iam = boto(sandbox, "iam")
    arn = iam.create_user(UserName=name, Path="/pifleet/")["User"]["Arn"]
    key = iam.create_access_key(UserName=name)["AccessKey"]
    codedeploy = boto(sandbox, "codedeploy")
    codedeploy.register_on_premises_instance(instanceName=name, iamUserArn=arn)
    codedeploy.add_tags_to_on_premises_instances(
        instanceNames=[name], tags=[{"Key": "ring", "Value": "prod"}])
    return arn, Credentials(key["AccessKeyId"], key["SecretAccessKey"])


def deploy(sandbox: Sandbox) -> str:
    cd = boto(sandbox, "codedeploy")
    cd.create_application(applicationName="aqi", computePlatform="Server")
    cd.create_deployment_group(
        applicationName="aqi", deploymentGroupName="pis", serviceRoleArn=ROLE,
        deploymentConfigName="CodeDeployDefault.OneAtATime",
        onPremisesInstanceTagFilters=[{"Key": "ring", "Value": "prod",
                                       "Type": "KEY_AND_VALUE"}])
    return str(cd.create_deployment(applicationName="aqi", deploymentGroupName="pis",
                                    revision=REVISION)["deploymentId"])


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def command_client(endpoint: str, region: str, credentials: Credentials, http: HttpClient,
                   sleep: Sleeps | None = None, **kwargs: Any) -> CommandClient:
    return CommandClient(endpoint_url=endpoint, region=region, credentials=lambda: credentials,
                         http=http, agent_version=VERSION, sleep=sleep or Sleeps(), **kwargs)


def wait_for_command(client: CommandClient, host: str, timeout_s: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        command = client.poll_host_command(host)
        if command is not None:
            return command
        time.sleep(0.05)  # the orchestrator starts the deployment on its own tick
    raise AssertionError("no command arrived")


# -- against the sandbox -------------------------------------------------------------------


def test_a_whole_deployment_through_the_command_client(fresh: Sandbox, http: HttpClient) -> None:
    host, credentials = register_host(fresh, "pi-1")
    client = command_client(fresh.endpoint.url, fresh.endpoint.region, credentials, http)
    assert client.poll_host_command(host) is None
    deployment = deploy(fresh)
    cd = boto(fresh, "codedeploy")
    seen = []
    while cd.get_deployment(deploymentId=deployment)["deploymentInfo"]["status"] in (
            "Created", "Queued", "InProgress"):
        command = wait_for_command(client, host)
        assert command["HostIdentifier"] == host
        seen.append(command["CommandName"])
        spec = client.get_deployment_specification(command["DeploymentExecutionId"], host)
        assert spec["DeploymentSystem"] == "CodeDeploy"
        envelope = spec["DeploymentSpecification"]["GenericEnvelope"]
        assert envelope["Format"] == "PKCS7/JSON"
        assert "BEGIN PKCS7" in envelope["Payload"]
        status = client.put_host_command_acknowledgement(
            command["HostCommandIdentifier"],
            {"Format": "JSON", "Payload": json.dumps({"IsCommandNoop": False})})
        assert status == "InProgress"
        client.put_host_command_complete(command["HostCommandIdentifier"], "Succeeded", SUCCESS)
    assert cd.get_deployment(deploymentId=deployment)["deploymentInfo"]["status"] == "Succeeded"
    assert seen[:2] == ["ApplicationStop", "DownloadBundle"]
    assert seen[-1] == "ValidateService"


def test_acknowledgement_without_diagnostics(fresh: Sandbox, http: HttpClient) -> None:
    host, credentials = register_host(fresh, "pi-1")
    client = command_client(fresh.endpoint.url, fresh.endpoint.region, credentials, http)
    deploy(fresh)
    command = wait_for_command(client, host)
    assert client.put_host_command_acknowledgement(
        command["HostCommandIdentifier"], None) == "InProgress"
    client.put_host_command_complete(command["HostCommandIdentifier"], "Failed", None)


def test_a_client_error_is_not_retried(fresh: Sandbox, http: HttpClient) -> None:
    _, credentials = register_host(fresh, "pi-1")
    sleeps = Sleeps()
    client = command_client(fresh.endpoint.url, fresh.endpoint.region, credentials, http, sleeps)
    with pytest.raises(AwsError) as info:
        client.put_host_command_complete("no-such-command", "Succeeded", None)
    assert info.value.code == "ClientException"
    assert info.value.status == 400
    assert not info.value.retryable
    assert sleeps.calls == []


def test_wrong_secret_is_an_invalid_signature_not_retried(fresh: Sandbox,
                                                          http: HttpClient) -> None:
    host, credentials = register_host(fresh, "pi-1")
    wrong = Credentials(credentials.access_key_id, "not-the-secret")
    sleeps = Sleeps()
    client = command_client(fresh.endpoint.url, fresh.endpoint.region, wrong, http, sleeps)
    with pytest.raises(AwsError) as info:
        client.poll_host_command(host)
    assert info.value.code == "InvalidSignatureException"
    assert str(info.value).startswith("InvalidSignatureException: The request signature")
    assert "not-the-secret" not in str(info.value)
    assert sleeps.calls == []


def test_unknown_key_is_unrecognized(fresh: Sandbox, http: HttpClient) -> None:
    host, _ = register_host(fresh, "pi-1")
    client = command_client(fresh.endpoint.url, fresh.endpoint.region,
                            Credentials("AKIAUNKNOWN000000000", "x"), http)
    with pytest.raises(AwsError, match="UnrecognizedClientException"):
        client.poll_host_command(host)


@pytest.mark.parametrize("max_attempts", [1, 3, 5])
def test_throttling_is_retried_then_raised(fresh: Sandbox, http: HttpClient,
                                           max_attempts: int) -> None:
    host, credentials = register_host(fresh, "pi-1")
    fresh.state.faults.apply({"kind": "throttle", "seconds": 30})
    requests_before = fresh.app.requests
    sleeps = Sleeps()
    client = command_client(fresh.endpoint.url, fresh.endpoint.region, credentials, http, sleeps,
                            max_attempts=max_attempts)
    with pytest.raises(AwsError) as info:
        client.poll_host_command(host)
    assert info.value.code == "ThrottlingException"
    assert info.value.retryable
    assert len(sleeps.calls) == max_attempts - 1
    assert fresh.app.requests - requests_before == max_attempts
    for attempt, delay in enumerate(sleeps.calls, start=1):
        assert 0 <= delay <= min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))


def test_server_unavailable_is_retried_then_raised(fresh: Sandbox, http: HttpClient) -> None:
    host, credentials = register_host(fresh, "pi-1")
    fresh.state.faults.apply({"kind": "server_error", "status": 503, "seconds": 30})
    sleeps = Sleeps()
    client = command_client(fresh.endpoint.url, fresh.endpoint.region, credentials, http, sleeps)
    with pytest.raises(AwsError) as info:
        client.poll_host_command(host)
    assert (info.value.code, info.value.status) == ("ServiceUnavailableException", 503)
    assert len(sleeps.calls) == 2


def test_a_retry_that_succeeds(fresh: Sandbox, http: HttpClient) -> None:
    host, credentials = register_host(fresh, "pi-1")
    fresh.state.faults.apply({"kind": "throttle", "seconds": 30})
    delays: list[float] = []

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        fresh.state.faults.clear()  # the throttling ends while we back off

    client = CommandClient(endpoint_url=fresh.endpoint.url, region=fresh.endpoint.region,
                           credentials=lambda: credentials, http=http, agent_version=VERSION,
                           sleep=sleep)
    assert client.poll_host_command(host) is None
    assert len(delays) == 1


def test_network_errors_are_retried_then_raised(http: HttpClient) -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    sleeps = Sleeps()
    client = command_client(f"http://127.0.0.1:{port}", "us-east-1",
                            Credentials("AKIA", "secret"), http, sleeps)
    with pytest.raises(HttpError, match="connection refused"):
        client.poll_host_command("arn:aws:iam::123456789012:user/pi")
    assert len(sleeps.calls) == 2


# -- the wire, against a recording server ----------------------------------------------------


@pytest.fixture
def recorder() -> Iterator[tuple[Origin, Running]]:
    origin = Origin(body=b"{}")
    server = start_origin(origin)
    yield origin, server
    server.stop()


def test_request_format(recorder: tuple[Origin, Running], http: HttpClient) -> None:
    origin, server = recorder
    calls = []

    def credentials() -> Credentials:
        calls.append(1)
        return Credentials("AKIAEXAMPLE", "secret", "session-token")

    client = CommandClient(endpoint_url=f"http://127.0.0.1:{server.port}/", region="eu-west-1",
                           credentials=credentials, http=http, agent_version=VERSION)
    assert client.poll_host_command("arn:aws:iam::123456789012:user/pi") is None
    seen = origin.requests[0]
    metadata = load_commands_model()["metadata"]
    assert (seen.method, seen.path) == ("POST", "/")
    assert seen.body == b'{"HostIdentifier":"arn:aws:iam::123456789012:user/pi"}'
    assert seen.headers["Content-Type"] == "application/x-amz-json-1.1"
    assert seen.headers["X-Amz-Target"] == f"{metadata['targetPrefix']}.PollHostCommand"
    assert seen.headers["x-amz-codedeploy-agent-version"] == VERSION
    assert seen.headers["X-Amz-Security-Token"] == "session-token"
    assert seen.headers["User-Agent"].startswith("pifleet-agent/")
    authorization = seen.headers["Authorization"]
    assert "/eu-west-1/codedeploy-commands/aws4_request, " in authorization
    assert ("SignedHeaders=content-type;host;x-amz-codedeploy-agent-version;"
            "x-amz-content-sha256;x-amz-date;x-amz-security-token;x-amz-target, ") in authorization
    assert calls == [1]


@pytest.mark.parametrize(
    ("status", "body", "code", "message", "retried"),
    [
        (400, b'{"__type": "com.amazonaws.codedeploy#ClientException", "Message": "m"}',
         "ClientException", "m", False),
        (400, b'{"__type": "ThrottlingException", "message": "Rate exceeded"}',
         "ThrottlingException", "Rate exceeded", True),
        (400, b'{"__type": "RequestThrottled"}', "RequestThrottled",
         "HTTP 400 without an AWS error message", True),
        (429, b'{"__type": "SlowDown", "message": "x"}', "SlowDown", "x", True),
        (403, b'{"__type": "AccessDeniedException", "message": "no"}',
         "AccessDeniedException", "no", False),
        (502, b"<html>Bad Gateway</html>", "502", "HTTP 502 without an AWS error message", True),
        (500, b'{"__type": "ServerException", "message": "oops"}', "ServerException", "oops",
         True),
    ],
)
def test_error_responses(recorder: tuple[Origin, Running], http: HttpClient, status: int,
                         body: bytes, code: str, message: str, retried: bool) -> None:
    origin, server = recorder
    origin.status, origin.body = status, body
    sleeps = Sleeps()
    client = command_client(f"http://127.0.0.1:{server.port}", "us-east-1",
                            Credentials("AKIA", "secret"), http, sleeps)
    with pytest.raises(AwsError) as info:
        client.get_deployment_specification("a/b/c/d", "arn:aws:iam::123456789012:user/pi")
    assert (info.value.code, info.value.message, info.value.status) == (code, message, status)
    assert str(info.value) == f"{code}: {message}"
    assert len(sleeps.calls) == (2 if retried else 0)
    assert len(origin.requests) == (3 if retried else 1)


def test_session_token_echoed_in_an_error_is_redacted(recorder: tuple[Origin, Running],
                                                      http: HttpClient) -> None:
    origin, server = recorder
    origin.status = 403
    origin.body = json.dumps({"__type": "InvalidSignatureException", "message":
                              "The Canonical String for this request should have been 'POST\n/"
                              "\nx-amz-security-token:TOKEN123\n'"}).encode()
    client = command_client(f"http://127.0.0.1:{server.port}", "us-east-1",
                            Credentials("AKIA", "secret", "TOKEN123"), http)
    with pytest.raises(AwsError) as info:
        client.poll_host_command("arn:aws:iam::123456789012:user/pi")
    assert "TOKEN123" not in str(info.value)
    assert "<redacted>" in info.value.message


def test_a_non_object_reply_is_an_error(recorder: tuple[Origin, Running],
                                        http: HttpClient) -> None:
    origin, server = recorder
    origin.body = b"[1, 2]"
    client = command_client(f"http://127.0.0.1:{server.port}", "us-east-1",
                            Credentials("AKIA", "secret"), http)
    with pytest.raises(AwsError, match="InvalidResponse"):
        client.poll_host_command("arn:aws:iam::123456789012:user/pi")


@pytest.mark.parametrize(("command", "missing"), [
    ({"HostIdentifier": "h", "CommandName": "Install", "DeploymentExecutionId": "e"},
     "HostCommandIdentifier"),
    ({"HostCommandIdentifier": "c", "HostIdentifier": "h", "CommandName": "Install",
      "DeploymentExecutionId": ["e"]}, "DeploymentExecutionId"),
    ({"HostCommandIdentifier": "c", "DeploymentExecutionId": "e"},
     "HostIdentifier or CommandName"),
])
def test_a_host_command_without_its_fields_is_an_error(recorder: tuple[Origin, Running],
                                                       http: HttpClient, command: dict[str, Any],
                                                       missing: str) -> None:
    # Found by tests/security/test_fuzz.py: the poller's worker died on a KeyError, silently,
    # and the command was never completed.
    origin, server = recorder
    origin.body = json.dumps({"HostCommand": command}).encode()
    client = command_client(f"http://127.0.0.1:{server.port}", "us-east-1",
                            Credentials("AKIA", "secret"), http)
    with pytest.raises(AwsError, match=f"InvalidResponse: .*HostCommand without {missing} as "
                                       "text; it was not run"):
        client.poll_host_command("arn:aws:iam::123456789012:user/pi")


# -- endpoints and the import budget -----------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "endpoint"),
    [
        ("us-west-2", "https://codedeploy-commands.us-west-2.amazonaws.com"),
        ("eu-west-1", "https://codedeploy-commands.eu-west-1.amazonaws.com"),
        ("cn-north-1", "https://codedeploy-commands.cn-north-1.amazonaws.com.cn"),
        ("cn-northwest-1", "https://codedeploy-commands.cn-northwest-1.amazonaws.com.cn"),
        ("eusc-de-east-1", "https://codedeploy-commands.eusc-de-east-1.amazonaws.eu"),
    ],
)
def test_default_endpoint(region: str, endpoint: str) -> None:
    assert default_endpoint(region) == endpoint


def test_max_attempts_must_be_positive(http: HttpClient) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        command_client("https://x", "us-east-1", Credentials("a", "b"), http, max_attempts=0)


def test_the_agent_modules_do_not_import_boto() -> None:
    code = ("import sys, agent.aws.commands, agent.aws.http, agent.aws.sigv4, "
            "agent.aws.credentials; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore')); "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
