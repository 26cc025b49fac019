"""Deployment specifications as the sandbox's command endpoint hands them to agents.

The real service wraps the spec JSON in a PEM PKCS#7 SignedData with the signer certificate
embedded; agents verify the signature but not the chain (reference §3.2), so a self-signed
identity is enough for the sandbox to exercise exactly the code path agents use in production.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

SIGNED_FORMAT = "PKCS7/JSON"
# Real agents accept this only when running as codedeploy-local.
UNSIGNED_FORMAT = "TEXT/JSON"

_VALIDITY = dt.timedelta(days=3650)
# Tolerates hosts whose clocks run a little behind the sandbox's.
_BACKDATE = dt.timedelta(days=1)


@dataclass(frozen=True)
class SigningIdentity:
    """A signer certificate and its private key, both PEM."""

    certificate_pem: bytes
    private_key_pem: bytes

    @classmethod
    def generate(cls, common_name: str = "pifleet sandbox deployment signer") -> SigningIdentity:
        """A fresh self-signed RSA-2048 signer, valid for ten years."""
        # RSA rather than EC: agents that check the signature by hand may only handle RSA.
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
            private_key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )


def deployment_spec_payload(
    *,
    deployment_id: str,
    deployment_group_id: str,
    deployment_group_name: str,
    application_name: str,
    revision: Mapping[str, Any],
    file_exists_behavior: str = "DISALLOW",
    deployment_creator: str = "user",
    deployment_type: str = "IN_PLACE",
    appspec_filename: str | None = None,
    all_possible_lifecycle_events: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The spec JSON object (reference §3.3); ``revision`` is the already-shaped ``Revision``."""
    payload: dict[str, Any] = {
        "DeploymentId": deployment_id,
        "DeploymentGroupId": deployment_group_id,
        "DeploymentGroupName": deployment_group_name,
        "ApplicationName": application_name,
        "DeploymentCreator": deployment_creator,
        "DeploymentType": deployment_type,
        "AgentActionOverrides": {"AgentOverrides": {"FileExistsBehavior": file_exists_behavior}},
        "Revision": _plain(revision),
    }
    # Optional fields are left out rather than sent as null: agents treat a present key as set.
    if appspec_filename is not None:
        payload["AppSpecFilename"] = appspec_filename
    if all_possible_lifecycle_events is not None:
        payload["AllPossibleLifecycleEvents"] = list(all_possible_lifecycle_events)
    return payload


def _plain(value: Any) -> Any:
    # Mappings other than dict (e.g. MappingProxyType) would not JSON-serialise.
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def spec_json(payload: Mapping[str, Any]) -> str:
    """The compact JSON text that is signed and that agents parse."""
    return json.dumps(_plain(payload), separators=(",", ":"), ensure_ascii=False)


@functools.lru_cache(maxsize=8)
def _loaded(certificate_pem: bytes, private_key_pem: bytes) -> tuple[
        x509.Certificate, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey]:
    """Parsed once: loading an RSA key checks it, which costs tens of milliseconds."""
    cert = x509.load_pem_x509_certificate(certificate_pem)
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise TypeError("the signing key must be RSA or EC")
    return cert, key


def sign_spec(payload: Mapping[str, Any], identity: SigningIdentity) -> dict[str, str]:
    """A ``PKCS7/JSON`` envelope: PEM SignedData embedding the JSON and the signer certificate."""
    cert, key = _loaded(identity.certificate_pem, identity.private_key_pem)
    signed = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(spec_json(payload).encode("utf-8"))
        .add_signer(cert, key, hashes.SHA256())
        # Binary keeps the JSON byte-exact (no CRLF canonicalisation); not detached, because
        # agents read the content out of the SignedData itself.
        .sign(serialization.Encoding.PEM, [pkcs7.PKCS7Options.Binary])
    )
    return {"Format": SIGNED_FORMAT, "Payload": signed.decode("ascii")}


def unsigned_spec(payload: Mapping[str, Any]) -> dict[str, str]:
    """A ``TEXT/JSON`` envelope, as codedeploy-local uses."""
    return {"Format": UNSIGNED_FORMAT, "Payload": spec_json(payload)}
