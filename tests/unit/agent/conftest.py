"""A real sandbox (moto IAM/IoT, STS, the IoT credentials provider) shared by the agent tests,
reset for each test, and boto3 clients to set it up as an operator would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleet.sandbox.server import Sandbox
from tests.support.sandbox import fresh

ALIAS = "pifleet-device"


@dataclass
class IamUser:
    arn: str
    access_key_id: str
    secret_access_key: str


@dataclass
class IotDevice:
    thing: str
    certificate_id: str
    certificate_arn: str
    cert_file: Path
    key_file: Path


@dataclass
class World:
    sandbox: Sandbox

    def client(self, service: str) -> Any:
        return self.sandbox.endpoint.client(service)

    def iam_user(self, name: str) -> IamUser:
        iam = self.client("iam")
        arn = iam.create_user(UserName=name)["User"]["Arn"]
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return IamUser(arn, key["AccessKeyId"], key["SecretAccessKey"])

    def iot_device(self, thing: str, directory: Path) -> IotDevice:
        """Thing, active certificate attached to it, a policy allowing the role alias, and a role
        trusting the credentials provider -- what the provider checks before it answers."""
        iot, iam = self.client("iot"), self.client("iam")
        iot.create_thing(thingName=thing)
        cert = iot.create_keys_and_certificate(setAsActive=True)
        role = iam.create_role(RoleName="pifleet-device", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "sts:AssumeRole",
                "Principal": {"Service": "credentials.iot.amazonaws.com"}}]}))
        iot.create_role_alias(roleAlias=ALIAS, roleArn=role["Role"]["Arn"],
                              credentialDurationSeconds=3600)
        iot.create_policy(policyName="device", policyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "iot:AssumeRoleWithCertificate",
                "Resource": f"arn:aws:iot:*:*:rolealias/{ALIAS}"}]}))
        iot.attach_policy(policyName="device", target=cert["certificateArn"])
        iot.attach_thing_principal(thingName=thing, principal=cert["certificateArn"])
        cert_file, key_file = directory / "device.pem.crt", directory / "private.pem.key"
        cert_file.write_text(cert["certificatePem"])
        key_file.write_text(cert["keyPair"]["PrivateKey"])
        key_file.chmod(0o600)
        return IotDevice(thing, cert["certificateId"], cert["certificateArn"], cert_file,
                         key_file)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(strict=True) as server:
        yield server


@pytest.fixture
def world(sandbox: Sandbox) -> Iterator[World]:
    with fresh(sandbox):
        yield World(sandbox)
