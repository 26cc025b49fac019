"""Forged deployment specifications and misaddressed commands, through `pifleet-agent run`.

The sandbox signs each deployment's specification once and caches the envelope; the tests put
the adversary's envelope in that cache before the agent asks, so the agent receives it over its
real signed HTTP exchange. Unit cases: tests/unit/deploy/test_specification.py (tampered content,
another key than the embedded certificate, unsigned only when allowed).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from fleet.sandbox import command_service
from fleet.sandbox.specs import SigningIdentity, sign_spec, unsigned_spec
from tests.support.waiting import wait_for

from .conftest import World, revision_zip

pytestmark = pytest.mark.integration
HOOKS = ("ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart",
         "ValidateService")
ATTACKER = SigningIdentity.generate("pifleet sandbox deployment signer")  # same name, other key

Envelope = dict[str, str]


def spec_json(envelope: Envelope) -> bytes:
    """The signed JSON, read out of the PKCS#7 without checking it."""
    done = subprocess.run([shutil.which("openssl") or "openssl", "cms", "-verify", "-noverify",
                           "-binary", "-inform", "PEM"], input=envelope["Payload"].encode(),
                          capture_output=True, check=True, timeout=30)
    return done.stdout


def tampered(envelope: Envelope) -> Envelope:
    """The genuine signature, with the signed S3 key changed to the attacker's bundle."""
    pem = envelope["Payload"]
    body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    der = base64.b64decode(body)
    assert der.count(b"proof/v1.zip") == 1
    der = der.replace(b"proof/v1.zip", b"proof/ev.zip")
    lines = re.findall(".{1,64}", base64.b64encode(der).decode())
    return {"Format": envelope["Format"],
            "Payload": "-----BEGIN PKCS7-----\n" + "\n".join(lines) + "\n-----END PKCS7-----\n"}


def unsigned(envelope: Envelope) -> Envelope:
    return unsigned_spec(json.loads(spec_json(envelope)))


def other_key(envelope: Envelope) -> Envelope:
    return sign_spec(json.loads(spec_json(envelope)), ATTACKER)


def forge(world: World, deployment_id: str, rewrite: Callable[[Envelope], Envelope]) -> None:
    state = world.sandbox.state
    with state.lock:
        deployment = state.deployments[deployment_id]
        genuine = command_service._signed_spec(deployment, world.sandbox.app.signer)
        state.signed_specs[deployment_id] = rewrite(genuine)


@pytest.mark.parametrize(("rewrite", "reason"), [
    (tampered, "signature does not verify"),
    (unsigned, "Unsupported DeploymentSpecification format: TEXT/JSON"),
    (other_key, "signature does not verify"),
], ids=["tampered", "unsigned", "signed-by-another-key"])
def test_a_forged_specification_is_refused_and_nothing_runs(
        world: World, rewrite: Callable[[Envelope], Envelope], reason: str) -> None:
    device = world.device("pi-1")  # trusts the sandbox's signer certificate only
    hooks = {h: "true" for h in HOOKS}
    world.push("proof/ev.zip", revision_zip(hooks, {"evil.txt": "owned"}))
    deployment = world.deploy(world.push("proof/v1.zip", revision_zip(hooks)))
    forge(world, deployment, rewrite)
    device.start()
    info = world.wait_deployment(deployment)
    assert info["status"] == "Failed"
    failed = [e for e in world.events(deployment, "pi-1").values() if e["status"] == "Failed"]
    assert len(failed) == 1, failed
    diagnostics = failed[0]["diagnostics"]
    assert reason in diagnostics["message"], diagnostics
    assert "the command was refused" in diagnostics["message"] or "TEXT/JSON" in reason
    assert diagnostics["errorCode"] == "UnknownError"  # code 5, as docs/agent.md says
    assert not (device.root / "proof.txt").exists()  # no hook ran
    assert not (device.root / "fs").exists()  # nothing installed
    assert not (device.root / "deployment-root" / "deployment-instructions").exists()
    assert f"refusing {failed[0]['lifecycleEventName']}" in device.output()
    assert "Traceback" not in device.output()


def test_a_command_for_another_host_is_refused(world: World,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    device = world.device("pi-1")
    other = "arn:aws:iam::123456789012:user/pi-2"
    asked: list[dict[str, Any]] = []
    poll = command_service.HANDLERS["PollHostCommand"]
    get_spec = command_service.HANDLERS["GetDeploymentSpecification"]

    def misaddressed(*args: Any) -> dict[str, Any]:
        reply = poll(*args)
        if reply:
            reply["HostCommand"]["HostIdentifier"] = other
        return reply

    def counted(*args: Any) -> dict[str, Any]:
        asked.append(args[1])
        return get_spec(*args)

    monkeypatch.setitem(command_service.HANDLERS, "PollHostCommand", misaddressed)
    monkeypatch.setitem(command_service.HANDLERS, "GetDeploymentSpecification", counted)
    deployment = world.deploy(world.push("proof/v1.zip",
                                         revision_zip({h: "true" for h in HOOKS})))
    device.start()
    wait_for(lambda: "refusing it" in device.output(), 60, "the agent to refuse the command")
    assert f"received a command for host {other!r}, but this agent is {device.arn!r}" \
        in device.output()
    assert asked == []  # the specification was never even fetched
    assert not (device.root / "proof.txt").exists()
    state = world.sandbox.state
    with state.lock:
        statuses = {c.status for c in state.commands.values() if c.deployment_id == deployment}
    assert statuses <= {"Pending", "Dispatched"}  # never acknowledged nor completed
    assert "Traceback" not in device.output()
    assert device.stop() == 0
