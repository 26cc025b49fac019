"""AWS Signature Version 4 verification for the sandbox's HTTP endpoints.

The sandbox authenticates agents the way AWS does: it recomputes the SigV4 signature of each
request from the secret it knows for the access key and compares it with the one sent, using the
agent's own canonicalisation (:mod:`agent.aws.sigv4`), so signer and verifier cannot drift.  Secrets
come from a :class:`CredentialStore` (credentials the sandbox issued itself, plus the IAM access
keys and STS AssumeRole sessions held by moto in the same process).

Failures raise :class:`~fleet.sandbox.errors.ServiceError` with the codes and messages AWS JSON
services return, so agents see the same errors as against the real control plane.  Nothing here
logs or echoes a secret, a session token or the signature we expected.

Only the ``Authorization`` header form of SigV4 (``AWS4-HMAC-SHA256``) with an ``X-Amz-Date``
header is supported; presigned query-string auth, SigV4A and chunked (``STREAMING-*``) payloads
are not, as no sandbox client uses them.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.aws.sigv4 import (
    ALGORITHM,
    AMZ_DATE_FORMAT,
    TERMINATOR,
    UNSIGNED_PAYLOAD,
    canonical_request,
    signature,
    string_to_sign,
)
from fleet.sandbox.errors import ServiceError

__all__ = ["Credential", "CredentialStore", "verify_sigv4"]

log = logging.getLogger(__name__)

# AWS wording, verbatim: agents and SDKs match on these.
MISSING_AUTH_MESSAGE = "Missing Authentication Token"
INVALID_CLIENT_MESSAGE = "The security token included in the request is invalid."
EXPIRED_MESSAGE = "The security token included in the request is expired"
BAD_SIGNATURE_MESSAGE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)


@dataclass(frozen=True)
class Credential:
    """One access key as the sandbox knows it, with the principal it authenticates as."""

    access_key_id: str
    secret_access_key: str
    # arn:aws:iam::<acct>:user/<path><name>  or  arn:aws:sts::<acct>:assumed-role/<role>/<session>
    principal_arn: str
    session_token: str | None = None
    expires_at: float | None = None  # epoch seconds; None = never

    def __repr__(self) -> str:
        # The generated repr would print the secret and the token into logs and tracebacks.
        return (
            f"Credential(access_key_id={self.access_key_id!r}, "
            f"principal_arn={self.principal_arn!r}, "
            f"session={self.session_token is not None}, expires_at={self.expires_at!r})"
        )


class CredentialStore:
    """Where secrets come from: sandbox-issued credentials (add/remove), plus moto's IAM access
    keys and STS AssumeRole sessions of the same process."""

    def __init__(self, *, account_id: str = "123456789012", use_moto: bool = True) -> None:
        self.account_id = account_id
        self.use_moto = use_moto
        self._issued: dict[str, Credential] = {}
        # The sandbox serves requests from several threads while it issues and revokes keys.
        self._lock = threading.Lock()

    def add(self, credential: Credential) -> None:
        with self._lock:
            self._issued[credential.access_key_id] = credential

    def remove(self, access_key_id: str) -> None:
        with self._lock:
            self._issued.pop(access_key_id, None)

    def lookup(self, access_key_id: str) -> Credential | None:
        """The credential for ``access_key_id``, or None if unknown or inactive.

        Sandbox-issued credentials win over moto's, so a test can shadow a moto key.
        """
        with self._lock:
            issued = self._issued.get(access_key_id)
        if issued is not None or not self.use_moto:
            return issued
        return _moto_iam_key(self.account_id, access_key_id) or _moto_sts_session(
            self.account_id, access_key_id
        )


# -- moto lookups -------------------------------------------------------------------------
#
# Both functions rely on moto 5.2 internals (pyproject pins moto>=5.2,<5.3): the backend dicts,
# the attribute names below, and the partition key "aws" (moto 5 keys its global services by
# partition; "global" is a legacy alias for it).  moto is imported lazily because it
# is an optional extra and slow to import; objects are handled as Any as moto is untyped.


def _moto_iam_key(account_id: str, access_key_id: str) -> Credential | None:
    """An IAM user's access key from moto's IAM backend; inactive keys count as unknown."""
    try:
        from moto.iam.models import iam_backends  # noqa: PLC0415 - optional, slow to import
    except ImportError:
        return None
    backend: Any = iam_backends[account_id]["aws"]
    for user in list(backend.users.values()):
        for key in list(user.access_keys):
            if key.access_key_id == access_key_id:
                if key.status != "Active":
                    return None
                return Credential(
                    access_key_id=key.access_key_id,
                    secret_access_key=key.secret_access_key,
                    principal_arn=user.arn,
                )
    return None


def _moto_sts_session(account_id: str, access_key_id: str) -> Credential | None:
    """An STS AssumeRole session from moto's STS backend."""
    try:
        from moto.sts.models import sts_backends  # noqa: PLC0415 - optional, slow to import
    except ImportError:
        return None
    backend: Any = sts_backends[account_id]["aws"]
    for role in list(backend.assumed_roles):
        if role.access_key_id == access_key_id:
            # moto stores expiration as a naive UTC datetime.
            expiration: datetime = role.expiration
            return Credential(
                access_key_id=role.access_key_id,
                secret_access_key=role.secret_access_key,
                principal_arn=role.arn,
                session_token=role.session_token,
                expires_at=calendar.timegm(expiration.utctimetuple())
                + expiration.microsecond / 1e6,
            )
    return None


# -- verification -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Authorization:
    access_key_id: str
    date: str
    region: str
    service: str
    terminator: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/{self.terminator}"


def verify_sigv4(
    method: str,
    path_and_query: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    store: CredentialStore,
    service: str,
    now: float | None = None,
    max_skew_s: float = 300.0,
) -> Credential:
    """Authenticate one request signed with SigV4; return the credential that signed it.

    ``path_and_query`` is the request target as it came over the wire (still percent-encoded),
    ``headers`` the request headers (any case), ``body`` the raw body.  Raises ServiceError.
    """
    now = time.time() if now is None else now
    values = _header_values(headers.items())

    auth = _parse_authorization(_single(values, "authorization"))
    amz_date = _single(values, "x-amz-date")
    if amz_date is None:
        raise _incomplete("Authorization header requires existence of a 'X-Amz-Date' header.")
    signed_at = _parse_amz_date(amz_date)

    # The credential scope must name this service, the request's day and the v4 terminator.
    if auth.service != service:
        raise _invalid_signature(f"Credential should be scoped to correct service: '{service}'. ")
    if auth.terminator != TERMINATOR:
        raise _invalid_signature(
            f"Credential should be scoped with a valid terminator: '{TERMINATOR}', "
            f"not '{auth.terminator}'."
        )
    if auth.date != amz_date[:8]:
        raise _invalid_signature(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{auth.date}' != '{amz_date[:8]}', from '{amz_date}'."
        )
    _check_skew(signed_at, now, max_skew_s)

    credential = store.lookup(auth.access_key_id)
    if credential is None:
        raise ServiceError("UnrecognizedClientException", INVALID_CLIENT_MESSAGE)
    token = _single(values, "x-amz-security-token")
    if credential.session_token is None:
        # A long-term key carries no token; sending one is presenting an invalid token.
        if token:
            raise ServiceError("UnrecognizedClientException", INVALID_CLIENT_MESSAGE)
    elif token is None or not hmac.compare_digest(
        token.encode(), credential.session_token.encode()
    ):
        raise ServiceError("UnrecognizedClientException", INVALID_CLIENT_MESSAGE)
    if credential.expires_at is not None and now >= credential.expires_at:
        raise ServiceError("ExpiredTokenException", EXPIRED_MESSAGE)

    for name in auth.signed_headers:
        if name not in values:
            raise _incomplete(f"Signed header '{name}' is missing from the request.")

    body_hash = hashlib.sha256(body).hexdigest()
    declared_hash = _single(values, "x-amz-content-sha256")
    if declared_hash is None:
        payload_hash = body_hash
    elif declared_hash == UNSIGNED_PAYLOAD or declared_hash.lower() == body_hash:
        payload_hash = declared_hash  # signed as sent, as botocore does
    else:
        raise _invalid_signature(
            "The provided 'x-amz-content-sha256' header does not match what was computed."
        )

    path, _, query = path_and_query.partition("?")
    # Repeated headers are trimmed one by one, then joined, as the client canonicalised them.
    signed_values = {
        name: ",".join(" ".join(v.split()) for v in values[name]) for name in auth.signed_headers
    }
    canonical = canonical_request(
        method, path, query, signed_values, auth.signed_headers, payload_hash
    )
    expected = signature(
        credential.secret_access_key,
        auth.date,
        auth.region,
        auth.service,
        string_to_sign(amz_date, auth.scope, canonical),
    )
    # surrogateescape: a garbled (non-ASCII) signature must compare unequal, not crash.
    if not hmac.compare_digest(
        expected.encode(), auth.signature.encode("utf-8", "surrogateescape")
    ):
        # The canonical request holds no secret except the session token; redact it so the
        # debug log still shows what we signed, which is what one needs to find a mismatch.
        log.debug(
            "SigV4 mismatch for %s; canonical request:\n%s",
            auth.access_key_id,
            _redact(canonical, credential.session_token),
        )
        raise _invalid_signature(BAD_SIGNATURE_MESSAGE)
    return credential


def _incomplete(message: str) -> ServiceError:
    return ServiceError("IncompleteSignatureException", message)


def _invalid_signature(message: str) -> ServiceError:
    return ServiceError("InvalidSignatureException", message)


def _header_values(items: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Header values by lowercased name, in arrival order (repeated headers keep all values)."""
    values: dict[str, list[str]] = {}
    for name, value in items:
        values.setdefault(name.strip().lower(), []).append(value)
    return values


def _single(values: Mapping[str, list[str]], name: str) -> str | None:
    found = values.get(name)
    return None if not found else ",".join(v.strip() for v in found)


def _parse_authorization(header: str | None) -> _Authorization:
    if not header:
        raise ServiceError("MissingAuthenticationTokenException", MISSING_AUTH_MESSAGE)
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        # Cut the echo short: the header may be arbitrary garbage.
        raise _incomplete(f"Unsupported AWS 'algorithm': '{algorithm[:64]}'")
    params: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, value = part.strip().partition("=")
        if sep:
            params[key.strip()] = value.strip()
    missing = [p for p in ("Credential", "Signature", "SignedHeaders") if not params.get(p)]
    if missing:
        raise _incomplete(
            " ".join(f"Authorization header requires '{p}' parameter." for p in missing)
        )
    credential = params["Credential"]
    parts = credential.split("/")
    if len(parts) != 5 or not all(parts):
        raise _incomplete(
            "Credential must have exactly 5 slash-delimited elements, "
            f"e.g. keyid/date/region/service/term, got '{credential[:256]}'"
        )
    access_key_id, date, region, scope_service, terminator = parts
    signed = tuple(h.strip().lower() for h in params["SignedHeaders"].split(";"))
    if "host" not in signed:
        raise _incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
        )
    if "x-amz-date" not in signed:
        # Without it the date, and so the skew check, could be changed by anyone in the path.
        raise _incomplete("'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization.")
    return _Authorization(
        access_key_id=access_key_id,
        date=date,
        region=region,
        service=scope_service,
        terminator=terminator,
        signed_headers=signed,
        signature=params["Signature"],
    )


def _parse_amz_date(amz_date: str) -> datetime:
    try:
        return datetime.strptime(amz_date, AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise _incomplete(
            f"Date must be in ISO-8601 'basic format'. Got '{amz_date[:64]}'. "
            "See http://en.wikipedia.org/wiki/ISO_8601"
        ) from None


def _check_skew(signed_at: datetime, now: float, max_skew_s: float) -> None:
    current = datetime.fromtimestamp(now, UTC)
    skew = timedelta(seconds=max_skew_s)
    window = f"{max_skew_s / 60:g} min."
    if signed_at < current - skew:
        raise _invalid_signature(
            f"Signature expired: {_fmt(signed_at)} is now earlier than "
            f"{_fmt(current - skew)} ({_fmt(current)} - {window})"
        )
    if signed_at > current + skew:
        raise _invalid_signature(
            f"Signature not yet current: {_fmt(signed_at)} is still later than "
            f"{_fmt(current + skew)} ({_fmt(current)} + {window})"
        )


def _fmt(moment: datetime) -> str:
    return moment.strftime(AMZ_DATE_FORMAT)


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "<redacted>") if token else text
