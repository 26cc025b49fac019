"""fleetctl register: both identities against the sandbox, rollback at every step, inventory,
and the whole path register -> pifleet-agent enroll -> pifleet-agent doctor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from fleet.aws import Aws
from fleet.errors import FleetError
from fleet.names import FleetNames
from fleet.register import (
    RegisterFailed,
    RegisterOptions,
    read_inventory,
    register_device,
    register_inventory,
)
from fleet.sandbox.server import Sandbox
from tests.unit.fleet.conftest import Fleetctl

NAMES = FleetNames()
AGENT = str(Path(sys.executable).parent / "pifleet-agent")


def init_fleet(aws: Aws) -> str:
    """What `fleetctl init` creates for devices: role, role alias, IoT policy."""
    iam, iot = aws.client("iam"), aws.client("iot")
    role = iam.create_role(RoleName=NAMES.device_role, AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRole",
            "Principal": {"Service": "credentials.iot.amazonaws.com"}}]}))["Role"]["Arn"]
    iot.create_role_alias(roleAlias=NAMES.role_alias, roleArn=role,
                          credentialDurationSeconds=3600)
    iot.create_policy(policyName=NAMES.iot_policy, policyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "iot:AssumeRoleWithCertificate",
            "Resource": f"arn:aws:iot:*:*:rolealias/{NAMES.role_alias}"}]}))
    return str(role)


def assert_nothing_left(aws: Aws) -> None:
    iot, iam, cd = aws.client("iot"), aws.client("iam"), aws.client("codedeploy")
    assert iot.list_things()["things"] == []
    assert iot.list_certificates()["certificates"] == []
    assert iam.list_users(PathPrefix=NAMES.iam_path)["Users"] == []
    assert cd.list_on_premises_instances(registrationStatus="Registered")["instanceNames"] == []


def members(bundle: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(bundle) as tar:
        return {m.name: m for m in tar.getmembers()}


def read_member(bundle: Path, name: str) -> str:
    with tarfile.open(bundle) as tar:
        handle = tar.extractfile(name)
        assert handle is not None
        return handle.read().decode()


def test_iot_cert_creates_everything(aws: Aws, tmp_path: Path) -> None:
    init_fleet(aws)
    bundle = tmp_path / "pi-1.pifleet.tar"
    result = register_device(aws, NAMES, "pi-1", {"site": "lab"}, bundle=bundle)
    iot, cd = aws.client("iot"), aws.client("codedeploy")
    cert = iot.describe_certificate(certificateId=result.certificate_id)["certificateDescription"]
    assert cert["status"] == "ACTIVE"
    assert iot.list_thing_principals(thingName="pi-1")["principals"] == [cert["certificateArn"]]
    assert [p["policyName"] for p in iot.list_attached_policies(
        target=cert["certificateArn"])["policies"]] == [NAMES.iot_policy]
    info = cd.get_on_premises_instance(instanceName="pi-1")["instanceInfo"]
    assert info["iamSessionArn"] == (f"arn:aws:sts::123456789012:assumed-role/"
                                     f"{NAMES.device_role}/{result.certificate_id}")
    assert {t["Key"]: t["Value"] for t in info["tags"]} == {"site": "lab",
                                                            "pifleet:fleet": "pifleet"}
    assert bundle.stat().st_mode & 0o777 == 0o600
    found = members(bundle)
    assert found["etc/pifleet/secrets"].isdir() and found["etc/pifleet/secrets"].mode == 0o700
    assert found["etc/pifleet/secrets/private.pem.key"].mode == 0o600
    assert found["etc/pifleet/secrets/device.pem.crt"].mode == 0o600
    config = read_member(bundle, "etc/pifleet/agent.toml")
    assert 'mode = "iot-cert"' in config and 'thing_name = "pi-1"' in config
    assert f'host_identifier = "{info["iamSessionArn"]}"' in config
    assert "-ats.iot." in config and ".credentials.iot." in config
    assert f'commands_endpoint = "{aws.options.endpoint_url}"' in config
    assert "RSA PRIVATE KEY" in read_member(bundle, "etc/pifleet/secrets/private.pem.key")


def test_iam_user_cli_creates_everything_and_prints_no_secret(
        aws: Aws, fleetctl: Fleetctl, tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar"
    run = fleetctl("register", "pi-2", "--identity", "iam-user", "--tag", "room=hall",
                   "--bundle", str(bundle))
    assert run.returncode == 0, run.stderr
    iam, cd = aws.client("iam"), aws.client("codedeploy")
    user = iam.get_user(UserName="pi-2")["User"]
    assert user["Path"] == NAMES.iam_path
    keys = iam.list_access_keys(UserName="pi-2")["AccessKeyMetadata"]
    assert len(keys) == 1
    policy = iam.get_user_policy(UserName="pi-2", PolicyName="pifleet-bundle-read")
    document = policy["PolicyDocument"]
    document = json.loads(document) if isinstance(document, str) else document
    resources = [s["Resource"] for s in document["Statement"]]
    bucket = NAMES.bucket("123456789012", "us-east-1")
    assert resources == [f"arn:aws:s3:::{bucket}/*", f"arn:aws:s3:::{bucket}"]
    info = cd.get_on_premises_instance(instanceName="pi-2")["instanceInfo"]
    assert info["iamUserArn"] == user["Arn"]
    credentials = read_member(bundle, "etc/pifleet/secrets/credentials")
    secret = credentials.split("aws_secret_access_key = ")[1].strip()
    assert keys[0]["AccessKeyId"] in credentials
    assert secret not in run.stdout + run.stderr
    assert members(bundle)["etc/pifleet/secrets/credentials"].mode == 0o600
    assert 'mode = "iam-user"' in read_member(bundle, "etc/pifleet/agent.toml")
    assert bundle.stat().st_mode & 0o777 == 0o600


def _fail_at(aws: Aws, service: str, operation: str, error: BaseException | None = None) -> None:
    def raiser(**_: Any) -> None:
        raise error or ClientError({"Error": {"Code": "InternalFailure",
                                              "Message": "injected"}}, operation)

    aws.client(service).meta.events.register(f"before-call.{service}.{operation}", raiser)


IOT_STEPS = [("iot", "CreateThing"), ("iot", "CreateKeysAndCertificate"), ("iot", "AttachPolicy"),
             ("iot", "AttachThingPrincipal"), ("codedeploy", "RegisterOnPremisesInstance"),
             ("codedeploy", "AddTagsToOnPremisesInstances")]
IAM_STEPS = [("iam", "CreateUser"), ("iam", "CreateAccessKey"), ("iam", "PutUserPolicy"),
             ("codedeploy", "RegisterOnPremisesInstance"),
             ("codedeploy", "AddTagsToOnPremisesInstances")]


@pytest.mark.parametrize(("identity", "step"), [("iot-cert", s) for s in IOT_STEPS]
                         + [("iam-user", s) for s in IAM_STEPS])
def test_failure_at_each_step_rolls_back_everything(
        aws: Aws, tmp_path: Path, identity: str, step: tuple[str, str]) -> None:
    init_fleet(aws)
    _fail_at(aws, *step)
    bundle = tmp_path / "x.tar"
    with pytest.raises(RegisterFailed, match="injected") as failure:
        register_device(aws, NAMES, "pi-3", {"a": "b"}, bundle=bundle,
                        options=RegisterOptions(identity))
    assert failure.value.leftovers == []
    # One undo per step that succeeded before the failing one.
    steps = IOT_STEPS if identity == "iot-cert" else IAM_STEPS
    assert len(failure.value.rolled_back) == steps.index(step)
    assert_nothing_left(aws)
    assert not bundle.exists()


def test_bundle_write_failure_and_ctrl_c_roll_back(aws: Aws, tmp_path: Path) -> None:
    init_fleet(aws)
    # The bundle's temporary file exists already (O_EXCL): writing the bundle fails.
    (tmp_path / f".b.tar.{os.getpid()}.tmp").write_text("in the way")
    with pytest.raises(RegisterFailed, match="enrollment bundle") as failure:
        register_device(aws, NAMES, "pi-4", {}, bundle=tmp_path / "b.tar")
    (tmp_path / f".b.tar.{os.getpid()}.tmp").unlink()
    assert "registration of pi-4" in failure.value.rolled_back
    assert_nothing_left(aws)
    _fail_at(aws, "codedeploy", "AddTagsToOnPremisesInstances", KeyboardInterrupt())
    with pytest.raises(RegisterFailed, match="interrupted") as failure:
        register_device(aws, NAMES, "pi-4", {}, bundle=tmp_path / "b.tar",
                        options=RegisterOptions("iam-user"))
    assert failure.value.interrupted
    assert_nothing_left(aws)


def test_already_registered_name_rolls_back_and_exits_nonzero(
        aws: Aws, fleetctl: Fleetctl, tmp_path: Path) -> None:
    init_fleet(aws)
    cd = aws.client("codedeploy")
    cd.register_on_premises_instance(instanceName="pi-5",
                                     iamUserArn="arn:aws:iam::123456789012:user/other")
    run = fleetctl("register", "pi-5", "--bundle", str(tmp_path / "b.tar"))
    assert run.returncode == 1
    assert "rolled back" in run.stderr and "IoT thing pi-5" in run.stderr
    assert "Traceback" not in run.stderr
    assert aws.client("iot").list_things()["things"] == []
    assert aws.client("iot").list_certificates()["certificates"] == []
    assert not (tmp_path / "b.tar").exists()


@pytest.mark.parametrize(("name", "tags", "identity", "message"), [
    ("i-123", {}, "iot-cert", "i-"), ("bad/name", {}, "iot-cert", "letters"),
    ("a" * 101, {}, "iot-cert", "1-100"), ("pi.dot", {}, "iot-cert", "IoT thing"),
    ("u" * 65, {}, "iam-user", "64"), ("ok", {f"k{i}": "v" for i in range(10)}, "iot-cert",
                                       "at most 9"),
    ("ok", {"k" * 129: "v"}, "iot-cert", "128"), ("ok", {"k": "v" * 257}, "iot-cert", "256"),
    ("ok", {"pifleet:fleet": "x"}, "iot-cert", "set by fleetctl")])
def test_validation_before_any_call(  # noqa: PLR0917  (parametrized)
        aws: Aws, tmp_path: Path, name: str, tags: dict[str, str],
                                    identity: str, message: str) -> None:
    with pytest.raises(FleetError, match=message):
        register_device(aws, NAMES, name, tags, bundle=tmp_path / "b.tar",
                        options=RegisterOptions(identity))
    assert_nothing_left(aws)


def test_iot_cert_without_init_says_run_init(aws: Aws, tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="fleetctl --fleet pifleet init"):
        register_device(aws, NAMES, "pi-6", {}, bundle=tmp_path / "b.tar")
    assert_nothing_left(aws)


def test_inventory_rerun_skips_identical_and_fails_changed(aws: Aws, tmp_path: Path) -> None:
    init_fleet(aws)
    csv_file = tmp_path / "fleet.csv"
    csv_file.write_text("name,tags,identity\npi-a,site=lab;room=1,iot-cert\npi-b,site=lab,"
                        "iam-user\n")
    out = tmp_path / "bundles"
    first = register_inventory(aws, NAMES, read_inventory(csv_file), directory=out)
    assert [r.name for r in first.registered] == ["pi-a", "pi-b"] and not first.failed
    assert sorted(p.name for p in out.iterdir()) == ["pi-a.pifleet.tar", "pi-b.pifleet.tar"]
    again = register_inventory(aws, NAMES, read_inventory(csv_file), directory=out)
    assert again.skipped == ["pi-a", "pi-b"] and not again.registered
    yaml_file = tmp_path / "fleet.yaml"
    yaml_file.write_text("- {name: pi-a, tags: {site: lab, room: 1}}\n"
                         "- {name: pi-b, tags: {site: home}, identity: iam-user}\n")
    changed = register_inventory(aws, NAMES, read_inventory(yaml_file), directory=out)
    assert changed.skipped == ["pi-a"]
    assert "registered differently" in changed.failed["pi-b"]


def test_inventory_cli_summary(fleetctl: Fleetctl, aws: Aws, tmp_path: Path) -> None:
    csv_file = tmp_path / "fleet.csv"
    csv_file.write_text("name,tags,identity\npi-c,site=lab,iam-user\npi-d,,iam-user\n")
    run = fleetctl("register", "--inventory", str(csv_file), "--bundle", str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr
    assert "2 registered, 0 skipped, 0 failed" in run.stdout
    assert "aws_secret_access_key" not in run.stdout


def test_register_enroll_doctor_end_to_end(sandbox: Sandbox, aws: Aws, fleetctl: Fleetctl,
                                           tmp_path: Path) -> None:
    init_fleet(aws)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(sandbox.credentials_ca_pem)
    bundle = tmp_path / "pi-e2e.pifleet.tar"
    run = fleetctl("register", "pi-e2e", "--bundle", str(bundle), "--credentials-endpoint",
                   sandbox.credentials_endpoint, "--credentials-ca", str(ca))
    assert run.returncode == 0, run.stderr
    root = tmp_path / "root"
    enrolled = subprocess.run([AGENT, "enroll", str(bundle), "--root", str(root)],
                              capture_output=True, text=True, check=False, timeout=30)
    assert enrolled.returncode == 0, enrolled.stderr
    assert "systemctl restart pifleet-agent" in enrolled.stdout
    config = root / "etc/pifleet/agent.toml"
    doctor = subprocess.run([AGENT, "doctor", "--config", str(config)], capture_output=True,
                            text=True, check=False, timeout=60)
    lines = doctor.stdout.splitlines()
    assert any(line.startswith("PASS credentials") for line in lines), doctor.stdout
    assert any(line.startswith("PASS identity") and "pi-e2e" not in line and
               "assumed-role/pifleet-device/" in line for line in lines), doctor.stdout
    assert any(line.startswith("PASS secret file") for line in lines), doctor.stdout
