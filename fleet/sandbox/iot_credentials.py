"""The AWS IoT credentials provider: device certificate in (mutual TLS), temporary STS credentials
out (reference: iot-shadows-sensors.md §3.1).  pifleet-agent's ``iot-cert`` identity mode calls it.

A TLS server on its own loopback port, started and stopped with the sandbox.  Its server
certificate (127.0.0.1, localhost) is issued by a CA generated when the sandbox starts; agents
trust that CA through ``credentials_ca_bundle``.  Client certificates are those created in moto's
IoT backend (``CreateKeysAndCertificate``, ``RegisterCertificate*``); they are not chained to any CA
we control, so every connection gets a fresh SSL context trusting exactly the certificates that are
ACTIVE at that moment (a revoked or deactivated certificate fails the handshake, as in AWS).

``GET /role-aliases/<alias>/credentials`` (optional header ``x-amzn-iot-thingname``) answers
``{"credentials": {accessKeyId, secretAccessKey, sessionToken, expiration}}`` and registers the
credentials with the sandbox's :class:`~fleet.sandbox.auth.CredentialStore` as the session
``arn:aws:sts::<account>:assumed-role/<role name>/<certificate id>``, so the CodeDeployCommand
endpoint and STS GetCallerIdentity (:mod:`fleet.sandbox.sts_identity`) accept them.

Checks, in this order: the certificate is still ACTIVE (else 403); the role alias exists (else
404); when the thing-name header is given, the thing exists and the certificate is attached to it
(else 403); an IoT policy attached to the certificate allows ``iot:AssumeRoleWithCertificate`` on
the role alias ARN (else 403); the role exists in moto IAM and trusts
``credentials.iot.amazonaws.com`` (else 403).  The session name is the certificate id, which is
moto's id (by default a hash of the PEM text, where AWS hashes the DER) -- the one boto3 returns.

Limits (deliberate, this is a test double): policy evaluation looks only at ``Allow`` statements'
``Action``/``Resource`` with ``*``/``?`` wildcards -- ``Deny``, ``NotAction``/``NotResource``,
``Condition`` and policy variables (``${iot:...}``) are not evaluated, and policies attached to
thing groups are ignored.  The role's permission policies and MaxSessionDuration are not looked at.
``credentialDurationSeconds`` is used as moto stored it; expiry follows the sandbox clock
(``State.clock``), so tests move that clock rather than wait.  Only the sandbox's region is served.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import re
import secrets
import shutil
import socket
import socketserver
import ssl
import string
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .auth import Credential, CredentialStore

__all__ = ["CredentialsProvider", "SandboxCA", "assumed_role_arn"]

log = logging.getLogger(__name__)

ACTION = "iot:AssumeRoleWithCertificate"
THING_HEADER = "x-amzn-iot-thingname"
TRUSTED_SERVICE = "credentials.iot.amazonaws.com"
# A client that connects and says nothing must not hold a handler thread (and stop()) forever.
HANDSHAKE_TIMEOUT_S = 5.0
_PATH = re.compile(r"/role-aliases/([^/]+)/credentials")
# Real STS temporary keys: "ASIA" + 16 base32 characters.
_KEY_ALPHABET = string.ascii_uppercase + "234567"
_VALIDITY = dt.timedelta(days=3650)
_BACKDATE = dt.timedelta(days=1)  # tolerate clients whose clocks run a little behind


class Denied(Exception):
    """An AWS-style refusal: HTTP ``status`` and the ``message`` of the JSON body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- the sandbox CA ------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxCA:
    """A CA and the credentials server's certificate it issued, all PEM."""

    ca_pem: bytes
    server_cert_pem: bytes
    server_key_pem: bytes

    @classmethod
    def generate(cls, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> SandboxCA:
        # EC P-256: generating two RSA keys would add ~0.1 s to every sandbox start.
        ca_key = ec.generate_private_key(ec.SECP256R1())
        server_key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pifleet sandbox"),
                             x509.NameAttribute(NameOID.COMMON_NAME,
                                                "pifleet sandbox credentials CA")])
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name).issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE).not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(ca_ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        server = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE).not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cls(
            ca_pem=ca.public_bytes(serialization.Encoding.PEM),
            server_cert_pem=server.public_bytes(serialization.Encoding.PEM),
            server_key_pem=server_key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()),
        )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not cert_sign, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False,
                         decipher_only=False)


# -- moto IoT/IAM reads ---------------------------------------------------------------------
#
# These functions rely on moto 5.2 internals (pyproject pins moto>=5.2,<5.3): IoTBackend's
# ``certificates`` (id -> FakeCertificate: certificate_id, arn, certificate_pem, status),
# ``role_aliases`` (name -> FakeRoleAlias: arn, role_arn, credential_duration_seconds),
# ``things`` (arn -> FakeThing: thing_name), ``principal_things`` and ``principal_policies``
# ((principal arn, thing/policy name) -> (principal, FakeThing/FakePolicy: document)), and IAM's
# ``roles`` (id -> Role: id, name, arn, assume_role_policy_document).  The dicts are copied before
# iterating because moto mutates them from the sandbox's request threads.


@dataclass(frozen=True)
class MotoCertificate:
    certificate_id: str
    arn: str
    der: bytes
    active: bool


def _iot(account_id: str, region: str) -> Any:
    from moto.iot.models import iot_backends  # noqa: PLC0415 - slow to import

    return iot_backends[account_id][region]


def moto_certificates(account_id: str, region: str) -> list[MotoCertificate]:
    """Every parseable IoT certificate; ``certificateId`` is moto's (a hash of the PEM by default,
    not of the DER as in AWS), which is why peers are matched on DER, not on a computed id."""
    found = []
    for cert in list(_iot(account_id, region).certificates.values()):
        try:
            der = x509.load_pem_x509_certificate(str(cert.certificate_pem).encode()).public_bytes(
                serialization.Encoding.DER)
        except ValueError:
            continue  # RegisterCertificate accepts any text in moto; no client can present it
        found.append(MotoCertificate(str(cert.certificate_id), str(cert.arn), der,
                                     cert.status == "ACTIVE"))
    return found


def moto_role_alias(account_id: str, region: str, alias: str) -> tuple[str, str, int] | None:
    """(role alias ARN, role ARN, credential duration seconds), or None if it does not exist."""
    found = _iot(account_id, region).role_aliases.get(alias)
    if found is None:
        return None
    return str(found.arn), str(found.role_arn), int(found.credential_duration_seconds)


def moto_thing_principals(account_id: str, region: str, thing_name: str) -> set[str] | None:
    """ARNs of the principals attached to the thing, or None if there is no such thing."""
    backend = _iot(account_id, region)
    if not any(t.thing_name == thing_name for t in list(backend.things.values())):
        return None
    return {principal for principal, thing in list(backend.principal_things) if
            thing == thing_name}


def moto_principal_policies(account_id: str, region: str, principal_arn: str) -> list[Any]:
    """The (default-version) documents of the IoT policies attached to ``principal_arn``."""
    return [policy.document for (target, _), (_, policy)
            in list(_iot(account_id, region).principal_policies.items())
            if target == principal_arn]


def moto_role(account_id: str, role_arn: str) -> tuple[str, str, Any] | None:
    """(role id, role name, trust policy document) of an IAM role, or None if it does not exist."""
    from moto.iam.models import iam_backends  # noqa: PLC0415 - slow to import

    for role in list(iam_backends[account_id]["aws"].roles.values()):
        if role.arn == role_arn:
            return str(role.id), str(role.name), role.assume_role_policy_document
    return None


# -- policy evaluation ------------------------------------------------------------------------


def _as_document(value: Any) -> dict[str, Any]:
    """A policy document as moto stored it (the JSON text the client sent, usually)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _statements(document: Any) -> list[dict[str, Any]]:
    statements = _as_document(document).get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    return [s for s in statements if isinstance(s, dict)]


def _listed(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _wildcard(pattern: str, value: str, *, ignore_case: bool) -> bool:
    """IAM-style matching: ``*`` any run of characters, ``?`` one; nothing else is special."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


def allows(documents: list[Any], action: str, resource: str) -> bool:
    """Whether some Allow statement covers ``action`` on ``resource``.

    Deny, NotAction, NotResource, Condition and policy variables are NOT evaluated: the sandbox
    answers "could this ever be allowed", which is what a device's setup gets wrong in practice.
    """
    for document in documents:
        for statement in _statements(document):
            if statement.get("Effect") != "Allow":
                continue
            # Action names are case-insensitive in AWS policies; ARNs are not.
            if any(_wildcard(a, action, ignore_case=True) for a in _listed(
                    statement.get("Action"))) and any(
                    _wildcard(r, resource, ignore_case=False) for r in _listed(
                    statement.get("Resource"))):
                return True
    return False


def _trusts_credentials_provider(document: Any) -> bool:
    for statement in _statements(document):
        if statement.get("Effect") != "Allow":
            continue
        principal = statement.get("Principal")
        services = _listed(principal.get("Service")) if isinstance(principal, dict) else []
        if principal == "*" or TRUSTED_SERVICE in services:
            return True
    return False


# -- issuing ------------------------------------------------------------------------------------


def assumed_role_arn(account_id: str, role_name: str, session_name: str) -> str:
    return f"arn:aws:sts::{account_id}:assumed-role/{role_name}/{session_name}"


def _new_credential(principal_arn: str, expires_at: float) -> Credential:
    return Credential(
        access_key_id="ASIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16)),
        secret_access_key=base64.b64encode(secrets.token_bytes(30)).decode(),
        principal_arn=principal_arn,
        # Real tokens are long opaque base64 blobs; agents must not assume a length.
        session_token=base64.b64encode(secrets.token_bytes(300)).decode(),
        expires_at=expires_at,
    )


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(int(epoch), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CredentialsProvider:
    """The credentials provider: a threaded TLS server; ``start``/``stop`` as the sandbox does."""

    def __init__(self, store: CredentialStore, *, account_id: str, region: str,
                 clock: Callable[[], float], host: str = "127.0.0.1", port: int = 0) -> None:
        self.store = store
        self.account_id = account_id
        self.region = region
        # The sandbox's clock, read on every request (State.clock can be replaced by tests).
        self.clock = clock
        hosts = ("127.0.0.1", "localhost") + ((host,) if host not in ("127.0.0.1",
                                                                        "localhost") else ())
        self.ca = SandboxCA.generate(hosts)
        # ssl loads certificate chains from files only; the directory lives as long as we do.
        self._dir = Path(tempfile.mkdtemp(prefix="pifleet-iot-credentials-"))
        self.ca_file = self._dir / "credentials-ca.pem"
        self.ca_file.write_bytes(self.ca.ca_pem)
        self._cert_file = self._dir / "server.pem"
        self._cert_file.write_bytes(self.ca.server_cert_pem + self.ca.ca_pem)
        self._key_file = self._dir / "server.key"
        self._key_file.write_bytes(self.ca.server_key_pem)
        self._key_file.chmod(0o600)
        # Counters for tests: a refusal at the handshake leaves no other trace a client can see.
        self.issued = 0
        self.handshake_failures = 0
        self._count_lock = threading.Lock()
        try:
            self._server = _TLSServer((host, port), _Handler, self)
        except OSError:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        if ":" in host_text:
            host_text = f"[{host_text}]"
        return f"https://{host_text}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="pifleet-iot-credentials")
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def ssl_context(self) -> ssl.SSLContext:
        """A context for one connection, trusting the IoT certificates ACTIVE right now."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._cert_file, self._key_file)
        context.verify_mode = ssl.CERT_REQUIRED
        # moto's certificates name an issuer ("Moto") that does not exist: trust each leaf as
        # its own anchor instead of building a chain.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        for cert in moto_certificates(self.account_id, self.region):
            if cert.active:
                with contextlib.suppress(ssl.SSLError):  # e.g. a key type OpenSSL rejects
                    context.load_verify_locations(cadata=cert.der)
        return context

    def credentials(self, peer_der: bytes, alias: str, thing_name: str | None,
                    ) -> dict[str, str]:
        """The exchange itself (without TLS), raising :class:`Denied` for 403/404."""
        certificate = next((c for c in moto_certificates(self.account_id, self.region)
                            if c.der == peer_der), None)
        # The handshake only admitted ACTIVE certificates, but one may have been deactivated or
        # deleted since.
        if certificate is None or not certificate.active:
            raise Denied(403, "The certificate is not registered or not ACTIVE.")
        found = moto_role_alias(self.account_id, self.region, alias)
        if found is None:
            raise Denied(404, f"Role alias {alias} does not exist.")
        alias_arn, role_arn, duration_s = found
        if thing_name:
            principals = moto_thing_principals(self.account_id, self.region, thing_name)
            if principals is None or certificate.arn not in principals:
                raise Denied(403, f"The certificate is not attached to thing {thing_name} (or "
                                  "there is no such thing).")
        policies = moto_principal_policies(self.account_id, self.region, certificate.arn)
        if not allows(policies, ACTION, alias_arn):
            raise Denied(403, f"No IoT policy attached to the certificate allows {ACTION} on "
                              f"{alias_arn}.")
        role = moto_role(self.account_id, role_arn)
        if role is None:
            raise Denied(403, f"Unable to assume role {role_arn}: the role does not exist.")
        _, role_name, trust = role
        if not _trusts_credentials_provider(trust):
            raise Denied(403, f"Unable to assume role {role_arn}: its trust policy does not "
                              f"allow {TRUSTED_SERVICE}.")
        now = self.clock()
        # The real service names the session after the certificate id (reference §3.1), so the
        # session ARN is stable for the life of a certificate -- what CodeDeploy registration needs.
        credential = _new_credential(
            assumed_role_arn(self.account_id, role_name, certificate.certificate_id),
            now + duration_s)
        self.store.add(credential)
        with self._count_lock:
            self.issued += 1
        return {"accessKeyId": credential.access_key_id,
                "secretAccessKey": credential.secret_access_key,
                "sessionToken": credential.session_token or "",
                "expiration": _iso(now + duration_s)}


class _TLSServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = False  # stop() waits for requests in flight (bounded by the timeout)

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 provider: CredentialsProvider) -> None:
        self.provider = provider
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake runs here, in the connection's own thread, so a slow or silent client
        # never blocks accept().  wrap_socket detaches the plain socket: the TLS one is ours to
        # close.
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            tls = self.provider.ssl_context().wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            # No, unknown or inactive client certificate: AWS also fails these at the handshake.
            log.debug("credentials provider: TLS handshake with %s failed: %s",
                      client_address, exc)
            with self.provider._count_lock:
                self.provider.handshake_failures += 1
            return
        with tls:
            super().finish_request(tls, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("credentials provider: connection from %s failed", client_address,
                  exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _TLSServer
    connection: ssl.SSLSocket
    protocol_version = "HTTP/1.1"
    server_version = "pifleet-sandbox"
    sys_version = ""

    def do_GET(self) -> None:
        match = _PATH.fullmatch(urlsplit(self.path).path)
        if match is None:
            self._send(404, {"message": f"No such resource: {urlsplit(self.path).path}"})
            return
        peer = self.connection.getpeercert(binary_form=True)
        if not peer:  # CERT_REQUIRED makes this unreachable; keep the refusal explicit anyway
            self._send(403, {"message": "A client certificate is required."})
            return
        try:
            credentials = self.server.provider.credentials(
                peer, unquote(match.group(1)), self.headers.get(THING_HEADER) or None)
        except Denied as exc:
            self._send(exc.status, {"message": exc.message})
            return
        self._send(200, {"credentials": credentials})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        # One exchange per connection: an idle keep-alive connection would hold its thread, and
        # stop(), until the timeout; a device asks about once an hour, reuse buys nothing.
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("credentials provider: " + format, *args)
