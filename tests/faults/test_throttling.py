"""Throttling and 5xx from every AWS call the agent and fleetctl make: retried within limits
(attempts counted on the sandbox's side), then a clear error, never a traceback.

The agent's calls: the four CodeDeployCommand operations, S3 GetObject (the bundle) and
sts:GetCallerIdentity (iot-cert start-up). fleetctl's: every boto3 client it creates goes
through ``fleet.aws.Aws.client`` with one retry configuration, so each *service* (each wire
protocol, which decides whether botocore recognises the error as retryable) is exercised
through a real fleetctl process; the list of services is read from fleet/'s source so that a
new one cannot go untested.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fleet.aws import Aws, AwsOptions
from tests.faults.conftest import World, revision_zip
from tests.faults.support_net import status
from tests.support.waiting import wait_for

FLEETCTL = str(Path(sys.executable).parent / "fleetctl")
AGENT_TRIES = 3      # the command client's attempts per call (and sts)
S3_TRIES = 6         # agent.aws.s3.download's GETs
FLEETCTL_TRIES = 3   # AWS_MAX_ATTEMPTS in these tests (the default is 1 + 8 retries)


def fault(world: World, kind: str, service: str, operation: str | None = None,
          **extra: Any) -> None:
    spec: dict[str, Any] = {"kind": kind, "services": [service], **extra}
    if operation:
        spec["operations"] = [operation]
    if kind == "server_error":
        spec.setdefault("status", 503)
    world.sandbox.state.faults.apply(spec)


def injected(world: World, key: str) -> int:
    return world.sandbox.state.faults.injected[key]


# -- the agent --------------------------------------------------------------------------

AGENT_CALLS = [
    ("codedeploy-commands", "PollHostCommand", "throttle"),
    ("codedeploy-commands", "GetDeploymentSpecification", "server_error"),
    ("codedeploy-commands", "PutHostCommandAcknowledgement", "throttle"),
    ("codedeploy-commands", "PutHostCommandComplete", "server_error"),
    ("s3", None, "throttle"),  # GetObject of the bundle: 503 SlowDown
]


@pytest.mark.parametrize(("service", "operation", "kind"), AGENT_CALLS,
                         ids=[f"{o or s}-{k}" for s, o, k in AGENT_CALLS])
def test_the_agent_retries_each_call_through_transient_throttling_and_5xx(
        world: World, service: str, operation: str | None, kind: str) -> None:
    device = world.device("pi-throttled")
    device.start()
    wait_for(lambda: status(device).get("state") == "polling", 30, "the agent to poll")
    revision = world.push("app.zip", revision_zip({"AfterInstall": ""}))
    # One short of the agent's limit: every call must get through on its last try.
    fault(world, kind, service, operation, count=AGENT_TRIES - 1)
    deployment = world.deploy(revision)
    info = world.wait_deployment(deployment, 60)
    assert info["status"] == "Succeeded", info.get("errorInformation")
    key = f"{service}.{operation}" if operation else service
    assert injected(world, key) == AGENT_TRIES - 1, "the fault never hit the call"
    log = device.output()
    assert "polling failed" not in log, "a retried call must not fail the poll"
    assert "Traceback" not in log


def test_persistent_throttling_of_polls_is_retried_within_limits_and_logged_once(
        world: World) -> None:
    device = world.device("pi-throttled", max_backoff_s=0.5)
    device.start()
    wait_for(lambda: status(device).get("state") == "polling", 30, "the agent to poll")
    fault(world, "throttle", "codedeploy-commands", "PollHostCommand", seconds=600)
    wait_for(lambda: status(device).get("consecutive_errors", 0) >= 4, 60, "four failed polls")
    world.sandbox.state.faults.rules.clear()
    wait_for(lambda: "polling works again" in device.output(), 30, "the recovery")
    log = device.output()
    failed = int(log.split("polling works again after ")[1].split()[0])
    # Each failed poll is three attempts, no more: the fleet is not hammering a throttled API.
    assert injected(world, "codedeploy-commands.PollHostCommand") == AGENT_TRIES * failed
    assert log.count("polling failed, backing off") == 1
    assert "ThrottlingException: Rate exceeded" in log
    assert "Traceback" not in log


def test_a_persistently_failing_s3_fails_the_deployment_with_a_clear_message(
        world: World) -> None:
    device = world.device("pi-no-s3")
    device.start()
    wait_for(lambda: status(device).get("state") == "polling", 30, "the agent to poll")
    revision = world.push("app.zip", revision_zip({"AfterInstall": ""}))
    fault(world, "server_error", "s3", seconds=600)
    deployment = world.deploy(revision)
    info = world.wait_deployment(deployment, 90)
    assert info["status"] == "Failed"
    assert injected(world, "s3") == S3_TRIES
    message = world.events(deployment, device.name)["DownloadBundle"]["diagnostics"]["message"]
    assert f"Could not download s3://pifleet-artifacts/app.zip in {S3_TRIES} attempts" in message
    assert "SlowDown" in message
    assert "Traceback" not in device.output()


def test_sts_throttled_at_start_up_is_retried_then_stops_the_agent_with_one_clear_line(
        world: World) -> None:
    transient = world.iot_device("pi-sts-1")
    fault(world, "throttle", "sts", count=AGENT_TRIES - 1)
    transient.start()
    wait_for(lambda: status(transient).get("state") == "polling", 60, "the agent to start")
    assert injected(world, "sts") == AGENT_TRIES - 1

    world.sandbox.state.faults.clear()
    persistent = world.iot_device("pi-sts-2")
    fault(world, "throttle", "sts", seconds=600)
    persistent.start()
    assert persistent.process is not None
    code = persistent.process.wait(timeout=60)
    persistent.process = None
    assert code != 0
    assert injected(world, "sts") == AGENT_TRIES
    log = persistent.output()
    assert "cannot learn this device's identity: sts:GetCallerIdentity failed: Throttling" in log
    assert f"(after {AGENT_TRIES} attempts)" in log
    assert "Traceback" not in log


# -- fleetctl -----------------------------------------------------------------------------

def fleetctl_services() -> set[str]:
    """Every service fleet/ creates a boto3 client for: ``.client("x")`` and helpers called
    with a service name literal (``_no_retries(aws, "codepipeline")``)."""
    root = Path(__file__).resolve().parents[2] / "fleet"
    found: set[str] = set()
    for path in root.rglob("*.py"):
        if "sandbox" in path.parts:
            continue  # the sandbox's own server side, not fleetctl's AWS calls
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
                    and (getattr(node.func, "attr", None) or getattr(node.func, "id", None))
                    in ("client", "_no_retries")):
                found.update(arg.value for arg in node.args
                             if isinstance(arg, ast.Constant) and isinstance(arg.value, str))
    return found


# A fleetctl command whose first AWS call goes to the service, and what the error must say.
FLEETCTL_CASES: dict[str, tuple[list[str], str]] = {
    "sts": (["init", "--dry-run"], "GetCallerIdentity"),
    "codedeploy": (["deployments"], "ListDeployments"),
    "s3": (["deploy", "s3://pifleet-artifacts/app.zip", "--group", "pis"], "HeadObject"),
    "iam": (["init"], "GetRole"),
    "iot": (["register", "pi-x", "--tag", "fleet=proof"], "DescribeRoleAlias"),
    "iot-data": (["shadow", "pi-x"], "GetThingShadow"),
    "codepipeline": (["pipeline", "list"], "ListPipelines"),
}


def test_every_service_fleetctl_calls_has_a_throttling_case() -> None:
    assert fleetctl_services() == set(FLEETCTL_CASES)


def test_fleetctl_retries_adaptively_by_default_and_honours_the_aws_cli_settings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_CONFIG_FILE", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    assert Aws(AwsOptions(region="us-east-1")).retries() == {"mode": "adaptive",
                                                              "max_attempts": 8}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    assert Aws(AwsOptions(region="us-east-1")).retries() == {"mode": "standard",
                                                              "total_max_attempts": 3}


@pytest.mark.parametrize("kind", ["throttle", "server_error"])
@pytest.mark.parametrize("service", sorted(FLEETCTL_CASES))
def test_fleetctl_retries_each_service_within_limits_then_fails_clearly(
        world: World, service: str, kind: str) -> None:
    args, operation = FLEETCTL_CASES[service]
    if service == "s3":
        world.device("pi-s3")  # deploy checks the group selects a device before S3
    fault(world, kind, service, seconds=600)
    env = {**os.environ, **world.sandbox.endpoint.env(), "AWS_MAX_ATTEMPTS": str(FLEETCTL_TRIES),
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    started = time.monotonic()
    result = subprocess.run([FLEETCTL, "--fleet", "proof", *args], capture_output=True,
                            text=True, env=env, cwd=world.tmp, timeout=120, check=False)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert injected(world, service) == FLEETCTL_TRIES, output
    assert operation in output, output
    assert f"even after retries ({FLEETCTL_TRIES} attempts)" in output, output
    assert len(output.strip().splitlines()) == 1, output
    assert elapsed < 60
