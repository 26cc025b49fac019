"""A sandbox and real `pifleet-agent run` processes configured against it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fleet.sandbox.server import Sandbox
from fleet.sandbox.state import Timeouts
from tests.support.sandbox import fresh
from tests.support.waiting import wait_for

AGENT = str(Path(sys.executable).parent / "pifleet-agent")
ROLE = "arn:aws:iam::123456789012:role/CodeDeployServiceRole"
BUCKET = "pifleet-artifacts"




def revision_zip(hooks: dict[str, str], files: dict[str, str] | None = None) -> bytes:
    """A bundle whose hooks run the given shell bodies (all appending to $PROOF_FILE first)."""
    lines = ["version: 0.0", "os: linux", "files:", "  - source: app",
             "    destination: /opt/proof", "hooks:"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for event, body in hooks.items():
            script = (f'#!/bin/sh\necho "{event} $DEPLOYMENT_ID" >> "$PROOF_FILE"\n{body}\n')
            info = zipfile.ZipInfo(f"scripts/{event}.sh")
            info.external_attr = 0o100755 << 16
            zf.writestr(info, script)
            lines += [f"  {event}:", f"    - location: scripts/{event}.sh", "      timeout: 60"]
        zf.writestr("appspec.yml", "\n".join(lines) + "\n")
        for name, text in (files or {"version.txt": "1"}).items():
            zf.writestr(f"app/{name}", text)
    return buffer.getvalue()


@dataclass
class Device:
    name: str
    arn: str
    config: Path
    root: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        assert self.log is not None
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([AGENT, "run", "--config", str(self.config),
                                             "--log-level", "DEBUG"],
                                            stdout=out, stderr=out, env=self.env)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout_s)
        self.process = None
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""


@dataclass
class World:
    sandbox: Sandbox
    tmp: Path
    devices: list[Device] = field(default_factory=list)
    _role_alias: bool = False

    def client(self, service: str) -> Any:
        return self.sandbox.endpoint.client(service)

    def setup_fleet(self) -> None:
        self.client("s3").create_bucket(Bucket=BUCKET)
        cd = self.client("codedeploy")
        cd.create_application(applicationName="proof")
        cd.create_deployment_group(
            applicationName="proof", deploymentGroupName="pis", serviceRoleArn=ROLE,
            deploymentConfigName="CodeDeployDefault.AllAtOnce",
            onPremisesInstanceTagFilters=[{"Key": "fleet", "Value": "proof",
                                           "Type": "KEY_AND_VALUE"}])

    def device(self, name: str, *, trust_anchor: bool = True, **agent: Any) -> Device:
        """An IAM-user device: key in a 0600 file, registered and tagged, agent configured."""
        iam = self.client("iam")
        arn = iam.create_user(UserName=name)["User"]["Arn"]
        key = iam.create_access_key(UserName=name)["AccessKey"]
        home = self._register(name, iamUserArn=arn)
        credentials = home / "secrets" / "credentials"
        credentials.write_text(f"[default]\naws_access_key_id = {key['AccessKeyId']}\n"
                               f"aws_secret_access_key = {key['SecretAccessKey']}\n")
        credentials.chmod(0o600)
        identity = {"mode": "iam-user", "host_identifier": arn,
                    "credentials_file": str(credentials)}
        if not trust_anchor:
            agent = {"spec_trust_anchors": "", **agent}
        return self._configure(name, arn, home, identity, **agent)

    def session_device(self, name: str) -> Device:
        """An iam-session device: STS session credentials in a file another program rewrites."""
        iam, sts = self.client("iam"), self.client("sts")
        role = iam.create_role(RoleName=f"{name}-role", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "sts:AssumeRole",
                "Principal": {"AWS": "arn:aws:iam::123456789012:root"}}]}))["Role"]
        session = sts.assume_role(RoleArn=role["Arn"], RoleSessionName=name)
        arn = session["AssumedRoleUser"]["Arn"]
        home = self._register(name, iamSessionArn=arn)
        credentials = home / "secrets" / "session"
        self.write_session(credentials, session["Credentials"])
        identity = {"mode": "iam-session", "host_identifier": arn,
                    "credentials_file": str(credentials)}
        device = self._configure(name, arn, home, identity)
        device.env["ROLE_ARN"] = role["Arn"]
        return device

    @staticmethod
    def write_session(path: Path, creds: dict[str, Any]) -> None:
        tmp = path.with_suffix(".new")
        tmp.write_text(f"[default]\naws_access_key_id = {creds['AccessKeyId']}\n"
                       f"aws_secret_access_key = {creds['SecretAccessKey']}\n"
                       f"aws_session_token = {creds['SessionToken']}\n")
        tmp.chmod(0o600)
        tmp.replace(path)

    def iot_device(self, name: str, *, host_identifier: str | None = None) -> Device:
        """An iot-cert device: thing, certificate, policy and role alias in the sandbox's IoT;
        registered with the session ARN the credentials provider will give it."""
        iot, iam = self.client("iot"), self.client("iam")
        iot.create_thing(thingName=name)
        cert = iot.create_keys_and_certificate(setAsActive=True)
        iot.create_policy(policyName=f"{name}-policy", policyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "iot:AssumeRoleWithCertificate",
                "Resource": "arn:aws:iot:*:*:rolealias/pifleet-device"}]}))
        iot.attach_policy(policyName=f"{name}-policy", target=cert["certificateArn"])
        iot.attach_thing_principal(thingName=name, principal=cert["certificateArn"])
        if not self._role_alias:
            role = iam.create_role(RoleName="pifleet-device", AssumeRolePolicyDocument=json.dumps({
                "Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow", "Action": "sts:AssumeRole",
                    "Principal": {"Service": "credentials.iot.amazonaws.com"}}]}))
            iot.create_role_alias(roleAlias="pifleet-device", roleArn=role["Role"]["Arn"])
            self._role_alias = True
        arn = (f"arn:aws:sts::123456789012:assumed-role/pifleet-device/"
               f"{cert['certificateId']}")
        home = self._register(name, iamSessionArn=arn)
        certificate, key = home / "secrets" / "device.pem.crt", home / "secrets" / "private.key"
        certificate.write_text(cert["certificatePem"])
        key.write_text(cert["keyPair"]["PrivateKey"])
        key.chmod(0o600)
        identity = {"mode": "iot-cert", "certificate": str(certificate),
                    "private_key": str(key),
                    "credentials_endpoint": self.sandbox.credentials_endpoint,
                    "credentials_ca_bundle": str(self.sandbox.credentials_ca_file),
                    "role_alias": "pifleet-device", "thing_name": name}
        if host_identifier is not None:
            identity["host_identifier"] = host_identifier
        return self._configure(name, arn, home, identity)

    def _register(self, name: str, **arn: str) -> Path:
        """Register and tag the instance; its home folder with an empty secrets folder."""
        cd = self.client("codedeploy")
        cd.register_on_premises_instance(instanceName=name, **arn)
        cd.add_tags_to_on_premises_instances(instanceNames=[name],
                                             tags=[{"Key": "fleet", "Value": "proof"}])
        home = self.tmp / name
        (home / "secrets").mkdir(parents=True)
        return home

    def _configure(self, name: str, arn: str, home: Path, identity: dict[str, str],
                   **agent: Any) -> Device:
        anchor = home / "signer.pem"
        with urllib.request.urlopen(f"{self.sandbox.endpoint.url}/_pifleet/signer.pem",  # noqa: S310
                                    timeout=10) as response:
            anchor.write_bytes(response.read())
        settings = {"poll_interval_s": 0.2, "deployment_root": str(home / "deployment-root"),
                    "status_file": str(home / "status.json"), "install_root": str(home / "fs"),
                    "wait_for_clock_sync": False, "spec_trust_anchors": str(anchor), **agent}
        e = self.sandbox.endpoint
        config = home / "agent.toml"
        config.write_text(
            "[identity]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in identity.items())
            + f"\n[aws]\nregion = \"{e.region}\"\ncommands_endpoint = \"{e.url}\"\n"
            f"s3_endpoint = \"{e.url}\"\nsts_endpoint = \"{e.url}\"\n\n[agent]\n"
            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
        device = Device(name, arn, config, home, log=home / "agent.log",
                        env={**os.environ, "PROOF_FILE": str(home / "proof.txt")})
        self.devices.append(device)
        return device

    def push(self, key: str, bundle: bytes) -> dict[str, Any]:
        s3 = self.client("s3")
        etag = s3.put_object(Bucket=BUCKET, Key=key, Body=bundle)["ETag"].strip('"')
        return {"revisionType": "S3", "s3Location": {"bucket": BUCKET, "key": key,
                                                     "bundleType": "zip", "eTag": etag}}

    def deploy(self, revision: dict[str, Any]) -> str:
        return str(self.client("codedeploy").create_deployment(
            applicationName="proof", deploymentGroupName="pis", revision=revision)[
            "deploymentId"])

    def wait_deployment(self, deployment_id: str, timeout_s: float = 60) -> dict[str, Any]:
        cd = self.client("codedeploy")

        def done() -> dict[str, Any] | None:
            info = cd.get_deployment(deploymentId=deployment_id)["deploymentInfo"]
            return None if info["status"] in ("Created", "Queued", "InProgress") else info

        try:
            return dict(wait_for(done, timeout_s, f"deployment {deployment_id}"))
        except AssertionError:
            logs = "\n".join(f"--- {d.name}\n{d.output()[-3000:]}" for d in self.devices)
            raise AssertionError(f"deployment {deployment_id} did not finish:\n{logs}") from None

    def events(self, deployment_id: str, target: str) -> dict[str, Any]:
        found = self.client("codedeploy").batch_get_deployment_targets(
            deploymentId=deployment_id, targetIds=[target])["deploymentTargets"][0]
        return {e["lifecycleEventName"]: e for e in found["instanceTarget"]["lifecycleEvents"]}


@contextlib.contextmanager
def fresh_world(tmp_path: Path, *, event_s: float = 120) -> Iterator[World]:
    """A sandbox on loopback holding the `proof` application and its `pis` group. Every agent
    started through it is killed at the end (a stopped one too), and every response of the
    sandbox must have matched its service model."""
    with Sandbox(strict=True, timeouts=Timeouts(start_s=60, event_s=event_s)) as sandbox, \
            fresh(sandbox):
        w = World(sandbox, tmp_path)
        w.setup_fleet()
        try:
            yield w
        finally:
            for device in w.devices:
                if device.process is not None:
                    if device.process.poll() is None:
                        device.process.send_signal(signal.SIGCONT)
                    device.process.kill()
                    device.process.wait()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with fresh_world(tmp_path) as w:
        yield w
