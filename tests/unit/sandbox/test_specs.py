"""Signed deployment specifications verify with the real openssl, as agents check them."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import shutil
import subprocess
from types import MappingProxyType
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fleet.sandbox.specs import (
    SigningIdentity,
    deployment_spec_payload,
    sign_spec,
    spec_json,
    unsigned_spec,
)

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")

REVISION = {
    "RevisionType": "S3",
    "S3Revision": {
        "Bucket": "pifleet-bundles",
        "Key": "aqi/app-1.2.0.zip",
        "BundleType": "zip",
        "Version": "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY",
        "ETag": "9b2cf535f27731c974343645a3985328",
    },
}
PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)


@pytest.fixture(scope="module")
def identity() -> SigningIdentity:
    # RSA key generation dominates the runtime; one key serves every test.
    return SigningIdentity.generate()


def _payload(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "deployment_id": "d-ABCDEFGHI",
        "deployment_group_id": "1b2c3d4e-0000-4000-8000-00000000abcd",
        "deployment_group_name": "pi",
        "application_name": "aqi",
        "revision": REVISION,
    } | overrides
    return deployment_spec_payload(**args)


def _openssl(*args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    assert OPENSSL is not None
    return subprocess.run(
        [OPENSSL, *args], input=data, capture_output=True, check=False, timeout=30
    )


def _verify(pem: str, command: str = "smime") -> subprocess.CompletedProcess[bytes]:
    return _openssl(command, "-verify", "-noverify", "-binary", "-inform", "PEM", data=pem.encode())


def _tampered(pem: str, needle: bytes) -> str:
    """The same SignedData with one byte of the embedded content changed, lengths intact."""
    der = base64.b64decode("".join(pem.strip().splitlines()[1:-1]))
    at = der.index(needle)
    flipped = der[:at] + bytes([der[at] ^ 0x01]) + der[at + 1 :]
    body = base64.encodebytes(flipped).decode("ascii")
    return f"-----BEGIN PKCS7-----\n{body}-----END PKCS7-----\n"


def test_payload_required_fields_and_defaults() -> None:
    payload = _payload()
    assert payload == {
        "DeploymentId": "d-ABCDEFGHI",
        "DeploymentGroupId": "1b2c3d4e-0000-4000-8000-00000000abcd",
        "DeploymentGroupName": "pi",
        "ApplicationName": "aqi",
        "DeploymentCreator": "user",
        "DeploymentType": "IN_PLACE",
        "AgentActionOverrides": {"AgentOverrides": {"FileExistsBehavior": "DISALLOW"}},
        "Revision": REVISION,
    }
    assert "AppSpecFilename" not in payload
    assert "AllPossibleLifecycleEvents" not in payload


def test_payload_optional_fields() -> None:
    events = ("BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService")
    payload = _payload(
        file_exists_behavior="OVERWRITE",
        deployment_creator="codeDeployRollback",
        deployment_type="BLUE_GREEN",
        appspec_filename="deploy/appspec.yaml",
        all_possible_lifecycle_events=events,
    )
    assert payload["AgentActionOverrides"]["AgentOverrides"]["FileExistsBehavior"] == "OVERWRITE"
    assert payload["DeploymentCreator"] == "codeDeployRollback"
    assert payload["DeploymentType"] == "BLUE_GREEN"
    assert payload["AppSpecFilename"] == "deploy/appspec.yaml"
    assert payload["AllPossibleLifecycleEvents"] == list(events)
    json.dumps(payload)


def test_payload_copies_read_only_revision() -> None:
    revision = MappingProxyType(
        {
            "RevisionType": "S3",
            "S3Revision": MappingProxyType({"Bucket": "b", "Key": "k", "BundleType": "tar"}),
        }
    )
    payload = _payload(revision=revision)
    assert payload["Revision"] == {
        "RevisionType": "S3",
        "S3Revision": {"Bucket": "b", "Key": "k", "BundleType": "tar"},
    }
    assert json.loads(spec_json(payload)) == payload


def test_unsigned_spec() -> None:
    payload = _payload()
    envelope = unsigned_spec(payload)
    assert envelope["Format"] == "TEXT/JSON"
    assert json.loads(envelope["Payload"]) == payload
    assert envelope["Payload"] == json.dumps(payload, separators=(",", ":"))


def test_identity_certificate(identity: SigningIdentity) -> None:
    cert = x509.load_pem_x509_certificate(identity.certificate_pem)
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == "CN=pifleet sandbox deployment signer"
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime >= dt.timedelta(days=3650)
    assert cert.not_valid_before_utc <= dt.datetime.now(dt.UTC) <= cert.not_valid_after_utc
    key = serialization.load_pem_private_key(identity.private_key_pem, password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]


def test_signed_envelope_shape(identity: SigningIdentity) -> None:
    envelope = sign_spec(_payload(), identity)
    assert set(envelope) == {"Format", "Payload"}
    assert envelope["Format"] == "PKCS7/JSON"
    assert envelope["Payload"].startswith("-----BEGIN PKCS7-----\n")
    assert envelope["Payload"].rstrip().endswith("-----END PKCS7-----")


@needs_openssl
@pytest.mark.parametrize("command", ["smime", "cms"])
def test_openssl_verifies_and_returns_the_exact_json(
    identity: SigningIdentity, command: str
) -> None:
    payload = _payload(all_possible_lifecycle_events=["BeforeInstall"])
    result = _verify(sign_spec(payload, identity)["Payload"], command)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == json.dumps(payload, separators=(",", ":")).encode()
    assert result.stdout == spec_json(payload).encode()


@needs_openssl
def test_non_ascii_content_is_signed_byte_exact(identity: SigningIdentity) -> None:
    payload = _payload(application_name="luftqualität\r\n")
    result = _verify(sign_spec(payload, identity)["Payload"])
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout.decode("utf-8")) == payload


@needs_openssl
def test_tampered_content_fails_verification(identity: SigningIdentity) -> None:
    pem = sign_spec(_payload(), identity)["Payload"]
    bad = _tampered(pem, b"d-ABCDEFGHI")
    assert bad != pem
    # The tampered PEM still parses as SignedData, so the failure is the signature, not syntax.
    assert _openssl("pkcs7", "-inform", "PEM", "-noout", data=bad.encode()).returncode == 0
    result = _verify(bad)
    assert result.returncode == 4, result.stderr.decode()
    assert b"digest failure" in result.stderr.lower()


@needs_openssl
def test_embedded_signer_certificate_is_the_identity(identity: SigningIdentity) -> None:
    pem = sign_spec(_payload(), identity)["Payload"]
    result = _openssl("pkcs7", "-inform", "PEM", "-print_certs", data=pem.encode())
    assert result.returncode == 0, result.stderr.decode()
    certs = [m.group(0) for m in PEM_BLOCK.finditer(result.stdout)]
    assert len(certs) == 1
    assert x509.load_pem_x509_certificate(certs[0]) == x509.load_pem_x509_certificate(
        identity.certificate_pem
    )
    assert certs[0].strip() == identity.certificate_pem.strip()


@needs_openssl
def test_ec_identity_also_signs(identity: SigningIdentity) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = x509.load_pem_x509_certificate(identity.certificate_pem)
    ec_cert = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .sign(key, cert.signature_hash_algorithm)  # type: ignore[arg-type]
    )
    ec_identity = SigningIdentity(
        certificate_pem=ec_cert.public_bytes(serialization.Encoding.PEM),
        private_key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    result = _verify(sign_spec(_payload(), ec_identity)["Payload"])
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout) == _payload()


def test_signing_rejects_unsupported_keys(identity: SigningIdentity) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    bad = SigningIdentity(
        certificate_pem=identity.certificate_pem,
        private_key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    with pytest.raises(TypeError, match="RSA or EC"):
        sign_spec(_payload(), bad)
