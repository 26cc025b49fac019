"""Secrets: refused when exposed on disk, and never found in anything the system writes or says.

Secret files with the wrong mode, owner or kind stop `pifleet-agent run` before it touches the
network (unit cases: tests/unit/agent/test_config.py). Then one device runs with distinctive
secrets everywhere (its credentials file, and AWS_* variables in the agent's own environment),
deploys a revision whose hooks print their environment, fails on purpose so diagnostics carry
the log tail, and is given a broken key so error paths run too; every byte captured is grepped.
fleetctl is run the same way for the commands that make or use credentials.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support.waiting import wait_for

from .conftest import AGENT, World, revision_zip

pytestmark = pytest.mark.integration
FLEETCTL = str(Path(sys.executable).parent / "fleetctl")
# What a careless service file or shell might leave in the agent's environment.
CANARY_ENV = {"AWS_ACCESS_KEY_ID": "AKIACANARYENVKEY0001",
              "AWS_SECRET_ACCESS_KEY": "canaryEnvSecretAccessKey/pifleet+0001",
              "AWS_SESSION_TOKEN": "canaryEnvSessionToken//pifleet0001==",
              "AWS_SECURITY_TOKEN": "canaryEnvSecurityToken//pifleet0001=="}


# -- secret files on disk -------------------------------------------------------------------------

def agent_config(tmp: Path, identity: str) -> Path:
    config = tmp / "agent.toml"
    config.write_text(
        f"[identity]\n{identity}\n[aws]\nregion = \"eu-west-1\"\n"
        "commands_endpoint = \"http://127.0.0.1:9\"\nsts_endpoint = \"http://127.0.0.1:9\"\n"
        f"[agent]\ndeployment_root = \"{tmp / 'dr'}\"\nstatus_file = \"{tmp / 'status.json'}\"\n"
        "wait_for_clock_sync = false\n")
    return config


def iam_user(tmp: Path, secret: Path) -> Path:
    return agent_config(tmp, "mode = \"iam-user\"\nhost_identifier = \"arn:aws:iam::"
                             f"123456789012:user/pi\"\ncredentials_file = \"{secret}\"")


def iot_cert(tmp: Path, secret: Path) -> Path:
    return agent_config(tmp, f"mode = \"iot-cert\"\nprivate_key = \"{secret}\"\n"
                             f"certificate = \"{tmp / 'cert.pem'}\"\ncredentials_endpoint = "
                             "\"https://127.0.0.1:9\"\nrole_alias = \"a\"\nthing_name = \"pi\"")


def onpremises(tmp: Path, secret: Path) -> Path:
    return agent_config(tmp, f"mode = \"iam-user\"\nonpremises_config = \"{secret}\"")


SECRET_TEXT = {
    "credentials": "[default]\naws_access_key_id = AKIAFILEKEY\n"
                   "aws_secret_access_key = fileSecretNeverShown0001\n",
    "private.pem.key": "-----BEGIN PRIVATE KEY-----\nfileSecretNeverShown0001\n"
                       "-----END PRIVATE KEY-----\n",
    "codedeploy.onpremises.yml": "aws_access_key_id: AKIAFILEKEY\naws_secret_access_key: "
                                 "fileSecretNeverShown0001\niam_user_arn: "
                                 "arn:aws:iam::123456789012:user/pi\nregion: eu-west-1\n",
}


def start_refused(config: Path) -> str:
    done = subprocess.run([AGENT, "run", "--config", str(config)], capture_output=True,
                          text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    assert "fileSecretNeverShown0001" not in output
    return output


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
@pytest.mark.parametrize(("name", "configure"), [
    ("credentials", iam_user), ("private.pem.key", iot_cert),
    ("codedeploy.onpremises.yml", onpremises),
], ids=["iam-user", "iot-cert", "official-yml"])
def test_a_group_or_world_readable_secret_stops_the_agent(tmp_path: Path, name: str,
                                                          configure: type, mode: int) -> None:
    secret = tmp_path / name
    secret.write_text(SECRET_TEXT[name])
    secret.chmod(mode)
    output = start_refused(configure(tmp_path, secret))
    assert f"{secret} holds secrets but has mode {mode:04o}; run `chmod 600 {secret}`" in output


def test_a_symlinked_secret_stops_the_agent(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.write_text(SECRET_TEXT["credentials"])
    real.chmod(0o600)
    secret = tmp_path / "credentials"
    secret.symlink_to(real)
    output = start_refused(iam_user(tmp_path, secret))
    assert f"{secret} holds secrets but is a symbolic link (to {real})" in output
    assert f"`chmod 600 {secret}`" in output


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_secret_owned_by_another_user_stops_the_agent(tmp_path: Path) -> None:
    secret = tmp_path / "credentials"
    secret.write_text(SECRET_TEXT["credentials"])
    secret.chmod(0o600)
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(secret, nobody, -1)
    output = start_refused(iam_user(tmp_path, secret))
    assert f"{secret} holds secrets but is owned by uid {nobody}; run `chown root: {secret}`" \
        in output


def test_a_secret_that_is_a_directory_stops_the_agent(tmp_path: Path) -> None:
    secret = tmp_path / "credentials"
    secret.mkdir(mode=0o700)
    assert f"{secret} is not a regular file" in start_refused(iam_user(tmp_path, secret))


# -- secrets never shown --------------------------------------------------------------------------

def leaks(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in text]


def captured_files(top: Path, *, skip: set[Path]) -> str:
    """Every file under ``top`` the system wrote (logs, state, archives), as text."""
    chunks = []
    for directory, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if Path(directory, d) not in skip]
        for name in files:
            path = Path(directory, name)
            if path not in skip and not path.is_symlink():
                chunks.append(f"--- {path}\n" + path.read_bytes().decode(errors="replace"))
    return "\n".join(chunks)


def test_secrets_never_reach_logs_hooks_or_the_control_plane(world: World) -> None:
    device = world.session_device("pi-1")
    session = (device.root / "secrets" / "session").read_text()
    secret = session.split("aws_secret_access_key = ")[1].split("\n")[0]
    token = session.split("aws_session_token = ")[1].split("\n")[0]
    secrets = [secret, token, *CANARY_ENV.values()]
    device.env.update(CANARY_ENV)
    dump = 'env; echo "--- environment of $LIFECYCLE_EVENT" >&2; env >&2'
    hooks = {"BeforeInstall": dump, "AfterInstall": dump,
             "ValidateService": f"{dump}; exit 1"}  # fails: diagnostics carry the log tail
    device.start()
    deployment = world.deploy(world.push("proof/env.zip", revision_zip(hooks)))
    assert world.wait_deployment(deployment)["status"] == "Failed"
    events = world.events(deployment, "pi-1")
    tail = events["ValidateService"]["diagnostics"]["logTail"]
    assert "LIFECYCLE_EVENT=ValidateService" in tail  # the dump did reach the control plane
    scripts = "\n".join(p.read_text(errors="replace")
                        for p in (device.root / "deployment-root").rglob("scripts.log"))
    assert "LIFECYCLE_EVENT=AfterInstall" in scripts
    for name in CANARY_ENV:
        assert f"\n{name}=" not in scripts, f"{name} reached a hook"

    # An error path: the key is replaced by a wrong one (a signature error on every call).
    bad_secret, bad_token = "wrongSecretNeverShown/0002", "wrongTokenNeverShown//0002=="
    secrets += [bad_secret, bad_token]
    key_id = session.split("aws_access_key_id = ")[1].split("\n")[0]
    world.write_session(device.root / "secrets" / "session",  # the real key id: a bad signature
                        {"AccessKeyId": key_id, "SecretAccessKey": bad_secret,
                         "SessionToken": bad_token})
    wait_for(lambda: "polling failed" in device.output(), 60, "the agent to fail a poll")
    assert device.stop() == 0

    for command in (["doctor"], ["status"], ["status", "--output", "json"]):
        done = subprocess.run([AGENT, *command, "--config", str(device.config)],
                              capture_output=True, text=True, timeout=120, check=False,
                              env=device.env)
        assert done.stdout, (command, done.stderr)
        assert leaks(done.stdout + done.stderr, secrets) == [], f"secret in {command}"
    assert leaks(device.output(), secrets) == [], "secret in the agent's stdout/stderr"
    written = captured_files(device.root, skip={device.root / "secrets", device.config})
    assert "LIFECYCLE_EVENT=BeforeInstall" in written  # the logs were read
    assert leaks(written, secrets) == [], "secret in a file the agent or a hook wrote"
    plane = json.dumps(events, default=str) + json.dumps(
        world.client("codedeploy").get_deployment(deploymentId=deployment), default=str)
    assert leaks(plane, secrets) == [], "secret sent to the control plane"


def fleetctl(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([FLEETCTL, *args], env=env, capture_output=True, text=True,
                          timeout=180, check=False)
    return f"{done.returncode}\n{done.stdout}\n{done.stderr}"


def test_fleetctl_never_prints_the_keys_it_makes_or_uses(world: World, tmp_path: Path) -> None:
    own_secret = "fleetctlOwnSecretNeverShown/0003"  # noqa: S105  (a canary, not a password)
    env = {**os.environ, **world.sandbox.endpoint.env(), "AWS_SECRET_ACCESS_KEY": own_secret,
           "COLUMNS": "160"}
    env.pop("AWS_SESSION_TOKEN", None)
    outputs = [fleetctl(env, "init", "--group", "roof", "--tag", "ring=roof")]
    bundle = tmp_path / "pi-9.pifleet.tar"
    outputs.append(fleetctl(env, "register", "pi-9", "--identity", "iam-user", "--tag",
                            "ring=roof", "--bundle", str(bundle)))
    assert outputs[-1].startswith("0\n"), outputs[-1]
    outputs.append(fleetctl(env, "--output", "json", "register", "pi-10", "--identity",
                            "iam-user", "--bundle", str(tmp_path / "pi-10.tar")))
    outputs.append(fleetctl(env, "register", "pi-11", "--bundle",  # iot-cert: a private key
                            str(tmp_path / "pi-11.tar")))
    assert outputs[-1].startswith("0\n"), outputs[-1]
    outputs.append(fleetctl(env, "register", "pi-9", "--identity", "iam-user",  # again: error
                            "--bundle", str(tmp_path / "again.tar")))
    assert not outputs[-1].startswith("0\n"), outputs[-1]
    outputs.append(fleetctl(env, "show", "pi-9"))
    outputs.append(fleetctl(env, "--output", "json", "show", "pi-9"))
    outputs.append(fleetctl({**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "list"))
    secrets = [own_secret, *bundle_secrets(bundle), *bundle_secrets(tmp_path / "pi-10.tar"),
               *bundle_secrets(tmp_path / "pi-11.tar")]
    assert len(secrets) == 4
    assert leaks("\n".join(outputs), secrets) == [], outputs


def bundle_secrets(bundle: Path) -> list[str]:
    """The secret access key, or a line of the private key, inside an enrollment bundle."""
    with tarfile.open(bundle) as archive:
        for member in archive.getmembers():
            data = archive.extractfile(member) if member.isfile() else None
            text = data.read().decode(errors="replace") if data else ""
            lines = list(io.StringIO(text))
            for number, line in enumerate(lines):
                if "aws_secret_access_key" in line:
                    return [line.split("=", 1)[-1].split(":", 1)[-1].strip().strip('"')]
                if "PRIVATE KEY-----" in line and line.startswith("-----BEGIN"):
                    return [lines[number + 1].strip()]
    raise AssertionError(f"no secret key in {bundle}")
