"""`pifleet-agent run` as a real process against the sandbox: the whole command plane."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from fleet.sandbox.broker import Mosquitto
from fleet.sandbox.shadows import ShadowResponder
from fleet.sandbox.specs import SigningIdentity
from tests.support.link import Link
from tests.support.waiting import wait_for

from .conftest import World, revision_zip

pytestmark = pytest.mark.integration
IN_PLACE = ["ApplicationStop", "DownloadBundle", "BeforeInstall", "Install", "AfterInstall",
            "ApplicationStart", "ValidateService"]
HOOKS = ("ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart",
         "ValidateService")


def test_a_deployment_runs_every_event_and_reports_it(world: World) -> None:
    device = world.device("pi-1")
    device.start()
    revision = world.push("proof/v1.zip", revision_zip({h: "true" for h in HOOKS}))
    deployment = world.deploy(revision)
    info = world.wait_deployment(deployment)
    assert info["status"] == "Succeeded", device.output()[-3000:]
    events = world.events(deployment, "pi-1")
    assert [e for e in IN_PLACE if events[e]["status"] == "Succeeded"] == IN_PLACE
    proof = (device.root / "proof.txt").read_text().split()
    assert proof[0::2] == ["BeforeInstall", "AfterInstall", "ApplicationStart",
                           "ValidateService"]  # no ApplicationStop: first deployment
    assert set(proof[1::2]) == {deployment}
    assert (device.root / "fs" / "opt" / "proof" / "version.txt").read_text() == "1"
    status = json.loads((device.root / "status.json").read_text())
    assert status["identity"] == {"mode": "iam-user", "host_identifier": device.arn}
    assert device.stop() == 0


def test_a_failing_hook_fails_the_deployment_with_its_diagnostics(world: World) -> None:
    device = world.device("pi-1")
    device.start()
    hooks = {h: "true" for h in HOOKS}
    hooks["AfterInstall"] = "echo 'sensor missing' >&2; exit 3"
    deployment = world.deploy(world.push("proof/bad.zip", revision_zip(hooks)))
    info = world.wait_deployment(deployment)
    assert info["status"] == "Failed"
    events = world.events(deployment, "pi-1")
    failed = events["AfterInstall"]
    assert failed["status"] == "Failed"
    assert failed["diagnostics"]["errorCode"] == "ScriptFailed"
    assert failed["diagnostics"]["scriptName"] == "scripts/AfterInstall.sh"
    assert "failed with exit code 3" in failed["diagnostics"]["message"]
    assert "[stderr]sensor missing" in failed["diagnostics"]["logTail"]
    assert events["ApplicationStart"]["status"] == "Skipped"


def test_sigkill_during_a_hook_is_reported_after_restart(world: World) -> None:
    device = world.device("pi-1")
    device.start()
    marker = device.root / "hook.pid"
    hooks = {h: "true" for h in HOOKS}
    hooks["ApplicationStart"] = f"echo $$ > {marker}; sleep 300"
    deployment = world.deploy(world.push("proof/hang.zip", revision_zip(hooks)))
    wait_for(marker.exists, 60, "ApplicationStart to begin")
    device.stop(signal.SIGKILL)
    hook_pid = int(marker.read_text())
    os.killpg(hook_pid, signal.SIGKILL)  # the hook outlives the agent: its own session
    device.start()
    info = world.wait_deployment(deployment)
    assert info["status"] == "Failed"
    failed = world.events(deployment, "pi-1")["ApplicationStart"]
    assert failed["diagnostics"]["message"] == ("Failed: Failing in-progress lifecycle event "
                                                "after an agent restart.")
    ongoing = device.root / "deployment-root" / "ongoing-deployment"
    assert not any(ongoing.iterdir())
    # The next deployment succeeds.
    good = world.deploy(world.push("proof/v2.zip", revision_zip({h: "true" for h in HOOKS},
                                                                 {"version.txt": "2"})))
    assert world.wait_deployment(good)["status"] == "Succeeded", device.output()[-3000:]


def test_a_spec_signed_by_an_untrusted_key_is_refused(world: World, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(SigningIdentity.generate("someone else").certificate_pem)
    device = world.device("pi-1", spec_trust_anchors=str(other))
    device.start()
    deployment = world.deploy(world.push("proof/v1.zip", revision_zip({h: "true"
                                                                       for h in HOOKS})))
    info = world.wait_deployment(deployment)
    assert info["status"] == "Failed"
    first = world.events(deployment, "pi-1")["ApplicationStop"]
    assert "signature does not verify" in first["diagnostics"]["message"]
    assert not (device.root / "proof.txt").exists()  # nothing ran


def test_bad_configuration_stops_with_a_clear_message(world: World) -> None:
    device = world.device("pi-1")
    (device.root / "secrets" / "credentials").chmod(0o644)
    device.start()
    assert device.process is not None
    assert device.process.wait(timeout=30) == 1
    assert "chmod 600" in device.output()
    assert "Traceback" not in device.output()


def test_iot_certificate_identity_deploys_without_long_lived_keys(world: World) -> None:
    device = world.iot_device("pi-cert")
    device.start()
    deployment = world.deploy(world.push("proof/v1.zip", revision_zip({h: "true"
                                                                       for h in HOOKS})))
    info = world.wait_deployment(deployment)
    assert info["status"] == "Succeeded", device.output()[-3000:]
    status = json.loads((device.root / "status.json").read_text())
    assert status["identity"] == {"mode": "iot-cert", "host_identifier": device.arn}
    assert "secrets" not in (device.root / "agent.toml").read_text().split("[aws]")[1]


def test_iot_identity_mismatch_is_refused_at_start(world: World) -> None:
    device = world.iot_device(
        "pi-cert", host_identifier="arn:aws:sts::123456789012:assumed-role/pifleet-device/x")
    device.start()
    assert device.process is not None
    assert device.process.wait(timeout=30) == 1
    assert "re-register the device" in device.output()


def test_iam_session_credentials_are_reread_when_rotated(world: World) -> None:
    device = world.session_device("pi-session")
    device.start()
    hooks = {h: "true" for h in HOOKS}
    first = world.deploy(world.push("proof/v1.zip", revision_zip(hooks)))
    assert world.wait_deployment(first)["status"] == "Succeeded", device.output()[-3000:]
    # Something else (a timer) rotates the session: same ARN, new keys.
    fresh = world.client("sts").assume_role(RoleArn=device.env["ROLE_ARN"],
                                            RoleSessionName="pi-session")["Credentials"]
    world.write_session(device.root / "secrets" / "session", fresh)
    second = world.deploy(world.push("proof/v2.zip", revision_zip(hooks, {"v": "2"})))
    assert world.wait_deployment(second)["status"] == "Succeeded", device.output()[-3000:]


def test_sigterm_lets_the_running_hook_finish(world: World) -> None:
    device = world.device("pi-1")
    device.start()
    started = device.root / "started"
    hooks = {h: "true" for h in HOOKS}
    hooks["AfterInstall"] = f"touch {started}; sleep 2"
    deployment = world.deploy(world.push("proof/slow.zip", revision_zip(hooks)))
    wait_for(started.exists, 60, "AfterInstall to start")
    assert device.stop(signal.SIGTERM, timeout_s=60) == 0
    after = world.events(deployment, "pi-1")["AfterInstall"]
    assert after["status"] == "Succeeded"  # finished and reported before the agent exited
    device.start()
    assert world.wait_deployment(deployment)["status"] == "Succeeded"


def test_sighup_reloads_the_configuration(world: World) -> None:
    device = world.device("pi-1")
    device.start()
    status = device.root / "status.json"
    wait_for(lambda: status.exists() and json.loads(status.read_text())["state"] == "polling",
             30, "the agent to poll")
    assert device.process is not None
    device.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloading the configuration" in device.output(), 30, "the reload")
    deployment = world.deploy(world.push("proof/v1.zip", revision_zip({h: "true"
                                                                       for h in HOOKS})))
    assert world.wait_deployment(deployment)["status"] == "Succeeded"
    assert device.stop() == 0


def test_telemetry_survives_an_offline_spell_and_a_sigkill(world: World) -> None:
    world.client("iot").create_thing(thingName="pi-1")
    with Mosquitto() as broker:
        responder = ShadowResponder(world.sandbox.state, broker.host, broker.port)
        responder.start()
        link = Link(broker.port)
        try:
            _offline_spell(world, link)
        finally:
            link.down()
            responder.stop()


def _offline_spell(world: World, link: Link) -> None:
    device = world.device("pi-1")
    outbox = device.root / "outbox.db"
    with device.config.open("a") as config:
        config.write(f'\n[telemetry]\nenabled = true\nendpoint = "127.0.0.1"\nport = {link.port}\n'
                     f'tls = false\nthing_name = "pi-1"\noutbox = "{outbox}"\n'
                     'heartbeat_s = 0.0\nstatus_interval_s = 0.5\n\n[[sensors]]\n'
                     'name = "climate"\nkind = "simulated-dht11"\ninterval_s = 0.2\n')
    device.start()
    data = world.client("iot-data")

    def reported(shadow: str | None = None) -> dict[str, Any]:
        try:
            kwargs = {"shadowName": shadow} if shadow else {}
            raw = data.get_thing_shadow(thingName="pi-1", **kwargs)["payload"].read()
        except data.exceptions.ResourceNotFoundException:
            return {}
        return dict(json.loads(raw)["state"].get("reported", {}))

    wait_for(lambda: "climate" in reported(), 30, "the first reading in the shadow")
    agent = wait_for(lambda: reported("agent"), 30, "the agent status shadow")
    assert agent["identity"]["host_identifier"] == device.arn
    assert agent["telemetry"]["sensors"]["climate"]

    def pending() -> int:
        with sqlite3.connect(outbox) as db:
            return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    link.down()
    wait_for(lambda: pending() >= 10, 30, "readings queued while offline")
    device.stop(signal.SIGKILL)
    queued = pending()
    link.up()
    device.start()
    wait_for(lambda: pending() == 0, 60, "the queued readings to be delivered after restart")
    last = reported()["climate"]["timestamp"]
    assert last >= time.time() - 30
    assert queued >= 10
    assert device.stop() == 0
