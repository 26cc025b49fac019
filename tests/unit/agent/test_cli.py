"""``pifleet-agent status`` and ``pifleet-agent doctor`` as real processes; ``doctor`` against a
real sandbox (moto IAM and STS, the IoT credentials provider)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent import __version__
from agent.poller import Activity
from agent.service import AgentService

from .conftest import ALIAS, World

AGENT = str(Path(sys.executable).parent / "pifleet-agent")


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "INVOCATION_ID", "WATCHDOG_USEC", "WATCHDOG_PID")}
    return subprocess.run([AGENT, *args], capture_output=True, text=True, timeout=60,
                          check=False, env=env)


def toml(sections: dict[str, dict[str, Any]]) -> str:
    return "".join(f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
                   + "\n" for name, keys in sections.items())


# -- status ----------------------------------------------------------------------------------


def status_config(tmp_path: Path) -> tuple[Path, Path]:
    status = tmp_path / "status.json"
    config = tmp_path / "agent.toml"
    config.write_text(toml({
        "identity": {"mode": "iam-user", "host_identifier": "arn:aws:iam::123456789012:user/pi-1",
                     "credentials_file": str(tmp_path / "credentials")},
        "aws": {"region": "eu-west-1"},
        "agent": {"status_file": str(status)}}))
    return config, status


def write_status_as_the_daemon_does(config: Path, status: Path) -> dict[str, Any]:
    """The daemon's own writer: AgentService._write_status with an Activity snapshot."""
    activity = Activity(state="polling", running={"d-RUNNING01": "AfterInstall"},
                        last_poll=time.time(), last_error="polling failed: timed out",
                        consecutive_errors=1)
    for n in range(7):
        activity.last_results.append({"deployment_id": f"d-{n:08d}", "event": "Install",
                                      "time": time.time(), "error_code": 0 if n else 3,
                                      "message": "ok" if n else "script failed"})
    service = AgentService(config)
    service._status_path = status
    service._identity = {"mode": "iam-user",
                         "host_identifier": "arn:aws:iam::123456789012:user/pi-1"}
    service._write_status(activity.snapshot())
    document: dict[str, Any] = json.loads(status.read_text())
    return document


def test_status_shows_what_the_daemon_wrote(tmp_path: Path) -> None:
    config, status = status_config(tmp_path)
    write_status_as_the_daemon_does(config, status)
    result = agent("status", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        f"state: polling (pid {os.getpid()}, version {__version__})",
        "identity: arn:aws:iam::123456789012:user/pi-1 (iam-user)",
        "running: d-RUNNING01 AfterInstall",
        "last error: polling failed: timed out",
        # the last five results only
        "  d-00000002 Install: code 0 ok",
        "  d-00000003 Install: code 0 ok",
        "  d-00000004 Install: code 0 ok",
        "  d-00000005 Install: code 0 ok",
        "  d-00000006 Install: code 0 ok",
    ]


def test_status_as_json_is_the_document(tmp_path: Path) -> None:
    config, status = status_config(tmp_path)
    document = write_status_as_the_daemon_does(config, status)
    result = agent("status", "--config", str(config), "--output", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == document
    assert document["state"] == "polling"
    assert len(document["last_results"]) == 7


def test_status_of_a_daemon_waiting_for_the_clock(tmp_path: Path) -> None:
    config, status = status_config(tmp_path)
    status.write_text(json.dumps({"version": __version__, "pid": 4242, "updated": time.time(),
                                  "identity": {}, "state": "waiting for clock sync"}))
    result = agent("status", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"state: waiting for clock sync (pid 4242, version {__version__})", "identity: ? (?)"]


@pytest.mark.parametrize("content", [None, "{not json"])
def test_status_without_a_status_file_says_how_to_check_the_daemon(
        tmp_path: Path, content: str | None) -> None:
    config, status = status_config(tmp_path)
    if content is not None:
        status.write_text(content)
    result = agent("status", "--config", str(config))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (f"pifleet-agent status: no status in {status}; is the daemon "
                             "running? (systemctl status pifleet-agent)\n")


def test_status_with_a_broken_configuration(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\nstatus = 1\n")
    result = agent("status", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr.startswith(f"pifleet-agent status: {config} [agent]: unknown key "
                                    "'status'")


# -- doctor ----------------------------------------------------------------------------------


def doctor_config(world: World, tmp_path: Path, *, host_identifier: str | None = None,
                  mode: int = 0o600, extra: dict[str, Any] | None = None) -> tuple[Path, str]:
    user = world.iam_user("pi-doctor")
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[default]\naws_access_key_id = {user.access_key_id}\n"
                           f"aws_secret_access_key = {user.secret_access_key}\n")
    credentials.chmod(mode)
    e = world.sandbox.endpoint
    config = tmp_path / "agent.toml"
    config.write_text(toml({
        "identity": {"mode": "iam-user", "host_identifier": host_identifier or user.arn,
                     "credentials_file": str(credentials)},
        "aws": {"region": e.region, "commands_endpoint": e.url, "sts_endpoint": e.url},
        "agent": {"wait_for_clock_sync": False,
                  "deployment_root": str(tmp_path / "deployment-root"), **(extra or {})}}))
    return config, user.arn


def lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """check name -> its line (and its fix line, if any)."""
    found: dict[str, str] = {}
    last = ""
    for line in result.stdout.splitlines():
        if line.startswith("     fix: "):
            found[last] += "\n" + line
            continue
        status, rest = line.split(" ", 1)
        last = rest.strip().split(":", 1)[0]
        found[last] = f"{status} {rest.strip()}"
    return found


def test_doctor_passes_a_working_device(world: World, tmp_path: Path) -> None:
    config, arn = doctor_config(world, tmp_path)
    result = agent("doctor", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    checks = lines(result)
    e = world.sandbox.endpoint
    assert checks["configuration"] == f"PASS configuration: {config} (iam-user)"
    assert checks["secret file"] == (f"PASS secret file: {tmp_path / 'credentials'} is 0600 "
                                     "and owned by root")
    assert checks["command endpoint"].startswith(f"PASS command endpoint: {e.url} answers "
                                                 "(HTTP ")
    assert checks["credentials"] == "PASS credentials: obtained (iam-user)"
    assert checks["identity"] == f"PASS identity: {arn}"
    assert checks["disk"].startswith("PASS disk: ")
    assert checks["disk"].endswith(f"MB free under {tmp_path}")  # the nearest existing parent
    assert checks["clock"].split()[0] in ("PASS", "WARN")
    assert "FAIL" not in result.stdout
    assert result.stderr == ""


def test_doctor_fails_a_secret_readable_by_others(world: World, tmp_path: Path) -> None:
    config, _ = doctor_config(world, tmp_path, mode=0o644)
    result = agent("doctor", "--config", str(config))
    assert result.returncode == 1
    secret = tmp_path / "credentials"
    assert lines(result)["secret file"] == (
        f"FAIL secret file: {secret} holds secrets but has mode 0644; run `chmod 600 {secret}`"
        "\n     fix: see the message")
    # The other checks still run and pass.
    assert lines(result)["identity"].startswith("PASS identity: ")


def test_doctor_fails_an_identity_that_is_not_the_registered_one(world: World,
                                                                 tmp_path: Path) -> None:
    other = world.iam_user("pi-other").arn
    config, arn = doctor_config(world, tmp_path, host_identifier=other)
    result = agent("doctor", "--config", str(config))
    assert result.returncode == 1
    checks = lines(result)
    assert checks["credentials"] == "PASS credentials: obtained (iam-user)"
    assert checks["identity"] == (
        f"FAIL identity: the credentials are {arn}, the device is registered as {other}"
        "\n     fix: re-register the device or fix host_identifier")


def test_doctor_fails_keys_sts_does_not_know(world: World, tmp_path: Path) -> None:
    config, _ = doctor_config(world, tmp_path)
    (tmp_path / "credentials").write_text("[default]\naws_access_key_id = AKIAUNKNOWN0000000\n"
                                          "aws_secret_access_key = nope\n")
    result = agent("doctor", "--config", str(config))
    assert result.returncode == 1
    assert lines(result)["credentials"] == "PASS credentials: obtained (iam-user)"
    # AWS refuses an unknown key (InvalidClientTokenId); moto's STS answers its default
    # identity instead. Either way the device is not who it is registered as.
    assert lines(result)["identity"].startswith("FAIL identity: ")


def test_doctor_fails_an_unknown_key_without_a_traceback(world: World, tmp_path: Path) -> None:
    config, _ = doctor_config(world, tmp_path, extra={"poll_intervall_s": 2})
    result = agent("doctor", "--config", str(config))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"FAIL configuration: {config} [agent]: unknown key 'poll_intervall_s'; the keys are "
        "poll_interval_s, deployment_root, status_file, install_root, max_revisions, "
        "shutdown_grace_s, wait_for_clock_sync, spec_trust_anchors, max_parallel_groups, "
        "agent_version, max_backoff_s",
        f"     fix: edit {config}"]
    assert "Traceback" not in result.stdout + result.stderr


def test_doctor_of_an_iot_device(world: World, tmp_path: Path) -> None:
    device = world.iot_device("pi-kitchen", tmp_path)
    e = world.sandbox.endpoint
    config = tmp_path / "agent.toml"
    config.write_text(toml({
        "identity": {"mode": "iot-cert", "certificate": str(device.cert_file),
                     "private_key": str(device.key_file),
                     "credentials_endpoint": world.sandbox.credentials_endpoint,
                     "credentials_ca_bundle": world.sandbox.credentials_ca_file,
                     "role_alias": ALIAS, "thing_name": device.thing},
        "aws": {"region": e.region, "commands_endpoint": e.url, "sts_endpoint": e.url},
        "agent": {"deployment_root": str(tmp_path / "deployment-root")}}))
    result = agent("doctor", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    checks = lines(result)
    assert checks["secret file"].startswith(f"PASS secret file: {device.key_file} ")
    assert checks["credentials"] == "PASS credentials: obtained (iot-cert)"
    assert checks["identity"] == ("PASS identity: arn:aws:sts::123456789012:assumed-role/"
                                  f"pifleet-device/{device.certificate_id}")


def test_doctor_without_a_configuration(tmp_path: Path) -> None:
    missing = tmp_path / "agent.toml"
    result = agent("doctor", "--config", str(missing))
    assert result.returncode == 1
    assert result.stdout.startswith(f"FAIL configuration: {missing} does not exist")


# -- what the daemon imports -----------------------------------------------------------------


def test_the_daemon_does_not_import_boto3() -> None:
    code = ("import agent.cli, agent.service, sys; "
            "found = [m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore')]; "
            "assert not found, found; print('clean')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "clean\n"
