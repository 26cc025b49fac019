"""The sandbox's IoT credentials provider (mTLS, role aliases) and STS GetCallerIdentity for the
credentials it issues, driven as a device would: stdlib ssl/http.client, boto3, botocore."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.sandbox.iot_credentials import allows
from fleet.sandbox.scripted_host import commands_client
from fleet.sandbox.server import Sandbox, wait_until

from .conftest import Fleet

ALIAS = "pifleet-device"
ROLE = "pifleet-device-role"
THING = "pi-kitchen"
TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "credentials.iot.amazonaws.com"},
    "Action": "sts:AssumeRole"}]}


@dataclass
class Device:
    certificate_id: str
    certificate_arn: str
    cert_file: Path
    key_file: Path
    alias_arn: str


def _policy(action: str, resource: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": action, "Resource": resource}]})


def _device(fleet: Fleet, tmp_path: Path, *, active: bool = True, action: str =
            "iot:AssumeRoleWithCertificate", resource: str | None = None,
            trust: dict[str, Any] | None = None, attach_thing: bool = True,
            create_role: bool = True) -> Device:
    """Thing, certificate, role, role alias and policy, set up as the docs say (§3.1)."""
    iot, iam = fleet.client("iot"), fleet.client("iam")
    iot.create_thing(thingName=THING)
    cert = iot.create_keys_and_certificate(setAsActive=active)
    role_arn = f"arn:aws:iam::{fleet.endpoint.account_id}:role/{ROLE}"
    if create_role:
        role_arn = iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(
            trust or TRUST))["Role"]["Arn"]
    alias_arn = iot.create_role_alias(roleAlias=ALIAS, roleArn=role_arn,
                                      credentialDurationSeconds=3600)["roleAliasArn"]
    iot.create_policy(policyName="device", policyDocument=_policy(action, resource or alias_arn))
    iot.attach_policy(policyName="device", target=cert["certificateArn"])
    if attach_thing:
        iot.attach_thing_principal(thingName=THING, principal=cert["certificateArn"])
    cert_file, key_file = tmp_path / "device.pem.crt", tmp_path / "private.pem.key"
    cert_file.write_text(cert["certificatePem"])
    key_file.write_text(cert["keyPair"]["PrivateKey"])
    return Device(cert["certificateId"], cert["certificateArn"], cert_file, key_file, alias_arn)


def _fetch(sandbox: Sandbox, cert: tuple[Path, Path] | None, *, alias: str = ALIAS,
           thing: str | None = THING) -> tuple[int, dict[str, Any]]:
    """GET the credentials as a device does: verify the server with the sandbox CA, present
    the device certificate."""
    context = ssl.create_default_context(cafile=sandbox.credentials_ca_file)
    if cert is not None:
        context.load_cert_chain(*cert)
    url = urlsplit(sandbox.credentials_endpoint)
    assert url.hostname is not None and url.port is not None
    conn = http.client.HTTPSConnection(url.hostname, url.port, context=context, timeout=5)
    try:
        conn.request("GET", f"/role-aliases/{alias}/credentials",
                     headers={"x-amzn-iot-thingname": thing} if thing is not None else {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _files(device: Device) -> tuple[Path, Path]:
    return device.cert_file, device.key_file


def _refused(sandbox: Sandbox, cert: tuple[Path, Path] | None) -> None:
    # With TLS 1.3 the client finishes its side of the handshake before the server has judged
    # the client certificate, so the refusal may surface on the first read instead.
    provider = sandbox.credentials_provider
    failures, issued = provider.handshake_failures, provider.issued
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _fetch(sandbox, cert)
    # The server refused at the handshake (not a crash behind it), and issued nothing.
    assert wait_until(lambda: provider.handshake_failures == failures + 1, 5)
    assert provider.issued == issued


def _sts(fleet: Fleet, credentials: dict[str, str]) -> Any:
    return boto3.client("sts", endpoint_url=fleet.endpoint.url, region_name=fleet.endpoint.region,
                        aws_access_key_id=credentials["accessKeyId"],
                        aws_secret_access_key=credentials["secretAccessKey"],
                        aws_session_token=credentials["sessionToken"])


def _commands(fleet: Fleet, credentials: dict[str, str]) -> Any:
    return commands_client(fleet.endpoint.url, fleet.endpoint.region,
                           credentials["accessKeyId"], credentials["secretAccessKey"],
                           credentials["sessionToken"])


@pytest.fixture
def moved_clock(sandbox: Sandbox) -> Iterator[list[float]]:
    """Offset (seconds) added to the sandbox clock while the test runs."""
    offset = [0.0]
    original = sandbox.state.clock
    sandbox.state.clock = lambda: time.time() + offset[0]
    try:
        yield offset
    finally:
        sandbox.state.clock = original


# -- the happy path ----------------------------------------------------------------------------


def test_certificate_to_credentials_to_identity_to_codedeploy(fleet: Fleet,
                                                              tmp_path: Path) -> None:
    device = _device(fleet, tmp_path)
    status, body = _fetch(fleet.sandbox, _files(device))
    assert status == 200, body
    creds = body["credentials"]
    assert set(creds) == {"accessKeyId", "secretAccessKey", "sessionToken", "expiration"}
    assert re.fullmatch(r"ASIA[A-Z2-7]{16}", creds["accessKeyId"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", creds["expiration"])
    expires = dt.datetime.fromisoformat(creds["expiration"].replace("Z", "+00:00")).timestamp()
    assert abs(expires - (time.time() + 3600)) < 10

    session_arn = f"arn:aws:sts::123456789012:assumed-role/{ROLE}/{device.certificate_id}"
    sts = _sts(fleet, creds)
    identity = sts.get_caller_identity()
    sts.close()
    role_id = fleet.client("iam").get_role(RoleName=ROLE)["Role"]["RoleId"]
    assert identity["Arn"] == session_arn
    assert identity["UserId"] == f"{role_id}:{device.certificate_id}"
    assert identity["Account"] == "123456789012"

    fleet.client("codedeploy").register_on_premises_instance(instanceName="pi-kitchen",
                                                             iamSessionArn=session_arn)
    commands = _commands(fleet, creds)
    try:
        reply = commands.poll_host_command(HostIdentifier=session_arn)
    finally:
        commands.close()
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert not reply.get("HostCommand")


def test_thing_header_is_optional(fleet: Fleet, tmp_path: Path) -> None:
    device = _device(fleet, tmp_path, attach_thing=False)
    status, body = _fetch(fleet.sandbox, _files(device), thing=None)
    assert status == 200, body


def test_wildcard_policy(fleet: Fleet, tmp_path: Path) -> None:
    device = _device(fleet, tmp_path, action="iot:Assume*",
                     resource="arn:aws:iot:*:123456789012:rolealias/pifleet-*")
    assert _fetch(fleet.sandbox, _files(device))[0] == 200


def test_ca_is_published(fleet: Fleet) -> None:
    sandbox = fleet.sandbox
    assert re.fullmatch(r"https://127\.0\.0\.1:\d+", sandbox.credentials_endpoint)
    assert Path(sandbox.credentials_ca_file).read_bytes() == sandbox.credentials_ca_pem
    # http:// of our own sandbox, not a user-supplied URL.
    with urllib.request.urlopen(f"{fleet.endpoint.url}/_pifleet/credentials-ca.pem",  # noqa: S310
                                timeout=5) as served:
        assert served.read() == sandbox.credentials_ca_pem
    ca = x509.load_pem_x509_certificate(sandbox.credentials_ca_pem)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


# -- STS: only sandbox-issued keys are ours -----------------------------------------------------


def test_moto_keys_and_other_sts_actions_still_reach_moto(fleet: Fleet, tmp_path: Path) -> None:
    assert fleet.client("sts").get_caller_identity()["Arn"].endswith(":user/moto")
    device = _device(fleet, tmp_path)
    creds = _fetch(fleet.sandbox, _files(device))[1]["credentials"]
    sts = _sts(fleet, creds)
    try:
        # Not GetCallerIdentity: the body we read must reach moto intact.
        assumed = sts.assume_role(RoleArn=f"arn:aws:iam::123456789012:role/{ROLE}",
                                  RoleSessionName="chained")
    finally:
        sts.close()
    assert assumed["AssumedRoleUser"]["Arn"].endswith(f"assumed-role/{ROLE}/chained")


def test_sts_checks_the_signature(fleet: Fleet, tmp_path: Path) -> None:
    device = _device(fleet, tmp_path)
    creds = _fetch(fleet.sandbox, _files(device))[1]["credentials"]
    sts = _sts(fleet, {**creds, "secretAccessKey": "x" * 40})
    try:
        with pytest.raises(ClientError) as caught:
            sts.get_caller_identity()
    finally:
        sts.close()
    assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_expired_credentials_are_refused(fleet: Fleet, tmp_path: Path,
                                         moved_clock: list[float]) -> None:
    device = _device(fleet, tmp_path)
    moved_clock[0] = -3700.0  # issued "an hour ago": expired now (3600 s role alias)
    creds = _fetch(fleet.sandbox, _files(device))[1]["credentials"]
    moved_clock[0] = 0.0
    session_arn = f"arn:aws:sts::123456789012:assumed-role/{ROLE}/{device.certificate_id}"
    fleet.client("codedeploy").register_on_premises_instance(instanceName="pi-kitchen",
                                                             iamSessionArn=session_arn)
    commands = _commands(fleet, creds)
    sts = _sts(fleet, creds)
    try:
        with pytest.raises(ClientError) as caught:
            commands.poll_host_command(HostIdentifier=session_arn)
        assert caught.value.response["Error"]["Code"] == "ExpiredTokenException"
        with pytest.raises(ClientError) as caught:
            sts.get_caller_identity()
        assert caught.value.response["Error"]["Code"] == "ExpiredToken"
    finally:
        commands.close()
        sts.close()


# -- refusals ------------------------------------------------------------------------------------


def test_no_client_certificate_fails_the_handshake(fleet: Fleet, tmp_path: Path) -> None:
    _device(fleet, tmp_path)
    _refused(fleet.sandbox, None)


def test_unregistered_certificate_fails_the_handshake(fleet: Fleet, tmp_path: Path) -> None:
    _device(fleet, tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AWS IoT Certificate")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "self.pem", tmp_path / "self.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    _refused(fleet.sandbox, (cert_file, key_file))


def test_inactive_certificate_fails_the_handshake(fleet: Fleet, tmp_path: Path) -> None:
    device = _device(fleet, tmp_path, active=False)
    _refused(fleet.sandbox, _files(device))


def test_deactivated_certificate_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    device = _device(fleet, tmp_path)
    assert _fetch(fleet.sandbox, _files(device))[0] == 200
    fleet.client("iot").update_certificate(certificateId=device.certificate_id,
                                           newStatus="INACTIVE")
    _refused(fleet.sandbox, _files(device))


@pytest.mark.parametrize("thing", ["pi-garden", ""])
def test_wrong_or_unknown_thing_is_403(fleet: Fleet, tmp_path: Path, thing: str) -> None:
    device = _device(fleet, tmp_path)
    if thing:
        fleet.client("iot").create_thing(thingName=thing)
    status, body = _fetch(fleet.sandbox, _files(device), thing=thing or "no-such-thing")
    assert status == 403
    assert "not attached to thing" in body["message"]


def test_certificate_not_attached_to_the_thing_is_403(fleet: Fleet, tmp_path: Path) -> None:
    device = _device(fleet, tmp_path, attach_thing=False)
    assert _fetch(fleet.sandbox, _files(device))[0] == 403


def test_policy_without_the_permission_is_403(fleet: Fleet, tmp_path: Path) -> None:
    device = _device(fleet, tmp_path, action="iot:Connect")
    status, body = _fetch(fleet.sandbox, _files(device))
    assert status == 403
    assert "iot:AssumeRoleWithCertificate" in body["message"]


def test_policy_for_another_alias_is_403(fleet: Fleet, tmp_path: Path) -> None:
    device = _device(fleet, tmp_path,
                     resource="arn:aws:iot:us-east-1:123456789012:rolealias/other")
    assert _fetch(fleet.sandbox, _files(device))[0] == 403


def test_unknown_role_alias_is_404(fleet: Fleet, tmp_path: Path) -> None:
    device = _device(fleet, tmp_path, resource="*")
    status, body = _fetch(fleet.sandbox, _files(device), alias="nope")
    assert status == 404
    assert body == {"message": "Role alias nope does not exist."}


def test_role_must_exist_and_trust_the_credentials_provider(fleet: Fleet,
                                                            tmp_path: Path) -> None:
    device = _device(fleet, tmp_path, create_role=False)
    assert _fetch(fleet.sandbox, _files(device))[0] == 403
    untrusting = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}
    fleet.client("iam").create_role(RoleName=ROLE,
                                    AssumeRolePolicyDocument=json.dumps(untrusting))
    status, body = _fetch(fleet.sandbox, _files(device))
    assert status == 403
    assert "credentials.iot.amazonaws.com" in body["message"]


# -- policy matching (documented limits) --------------------------------------------------------


def test_allows_matches_allow_statements_only() -> None:
    arn = "arn:aws:iot:us-east-1:123456789012:rolealias/pi"
    statement = {"Effect": "Allow", "Action": ["iot:Connect", "IOT:assumerolewithcertificate"],
                 "Resource": [arn]}
    assert allows([json.dumps({"Statement": [statement]})], "iot:AssumeRoleWithCertificate", arn)
    assert allows([{"Statement": {**statement, "Resource": "arn:aws:iot:*:*:rolealias/p?"}}],
                  "iot:AssumeRoleWithCertificate", arn)
    # ARNs are case-sensitive; Deny is not evaluated (only the absence of an Allow refuses).
    assert not allows([{"Statement": [{**statement, "Resource": arn.upper()}]}],
                      "iot:AssumeRoleWithCertificate", arn)
    assert not allows([{"Statement": [{**statement, "Effect": "Deny"}]}],
                      "iot:AssumeRoleWithCertificate", arn)
    assert not allows(["not json", {"Statement": "nonsense"}], "iot:AssumeRoleWithCertificate",
                      arn)


# -- fleetctl sandbox up -------------------------------------------------------------------------


def test_fleetctl_up_prints_the_credentials_endpoint_and_ca(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    fleetctl = str(Path(sys.executable).parent / "fleetctl")
    with subprocess.Popen([fleetctl, "sandbox", "up", "--port", "0", "--output", "json"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env=env) as up:
        try:
            assert up.stdout is not None
            info = json.loads(up.stdout.readline())
            assert re.fullmatch(r"https://127\.0\.0\.1:\d+", info["credentials_endpoint"])
            ca_file = Path(info["credentials_ca"])
            assert ca_file.parent == tmp_path / "pifleet"  # next to the state file
            assert info["credentials_ca_url"] == (
                f"{info['endpoint_url']}/_pifleet/credentials-ca.pem")
            with urllib.request.urlopen(info["credentials_ca_url"], timeout=5) as served:  # noqa: S310
                assert served.read() == ca_file.read_bytes()
            up.send_signal(signal.SIGTERM)
            assert up.wait(timeout=15) == 0
        finally:
            if up.poll() is None:
                up.kill()
                up.wait()
    assert not ca_file.exists()
