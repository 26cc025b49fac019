"""AWS Signature Version 4, in the standard library only (botocore is too heavy for a Pi).

One canonicalisation for the whole repository: the agent signs with :func:`sign`, and the
sandbox's verifier (``fleet.sandbox.auth``) rebuilds the same canonical request from what arrived
on the wire with :func:`canonical_request`, :func:`string_to_sign` and :func:`signature`.

URLs are taken as they go on the wire, i.e. already percent-encoded.  Non-S3 services sign the
path normalised (dot segments and empty segments removed) and encoded a second time; S3 signs the
wire path as it is.  The query is decoded and re-encoded the SigV4 way (RFC 3986 unreserved
characters kept), so a query built with :func:`uri_encode` is signed exactly as it is sent; a raw
``+`` in a query is signed as ``%2B`` (a literal plus), never as a space.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from urllib.parse import quote, unquote_to_bytes, urlsplit

from agent.aws.credentials import Credentials

__all__ = [
    "ALGORITHM",
    "AMZ_DATE_FORMAT",
    "TERMINATOR",
    "UNSIGNED_PAYLOAD",
    "canonical_request",
    "credential_scope",
    "sign",
    "signature",
    "string_to_sign",
    "uri_encode",
]

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

# Never signed: hop-by-hop headers a proxy may drop or rewrite, and headers HTTP stacks add or
# change after signing.  Signing them would make a correct request fail verification.
UNSIGNED_HEADERS = frozenset(
    {
        "authorization",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)
# Headers sign() sets itself; a caller's copies (say from a previous attempt) are replaced.
_SET_BY_SIGNER = frozenset(
    {"authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token"}
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    credentials: Credentials,
    region: str,
    service: str,
    now: datetime | None = None,
    unsigned_payload: bool = False,
) -> dict[str, str]:
    """The complete headers to send ``body`` to ``url``, signed for ``service`` in ``region``.

    Returns ``headers`` plus ``Host`` (unless given), ``X-Amz-Date``, ``X-Amz-Content-Sha256``,
    ``X-Amz-Security-Token`` (session credentials only) and ``Authorization``.  Every header
    except the hop-by-hop ones in :data:`UNSIGNED_HEADERS` is signed.  ``service == "s3"``
    selects S3's path rules.
    """
    parts = urlsplit(url)
    amz_date = _utc(now).strftime(AMZ_DATE_FORMAT)
    payload_hash = UNSIGNED_PAYLOAD if unsigned_payload else hashlib.sha256(body).hexdigest()

    out = {name: value for name, value in headers.items() if name.lower() not in _SET_BY_SIGNER}
    if not any(name.lower() == "host" for name in out):
        out["Host"] = _host_header(url)
    out["X-Amz-Date"] = amz_date
    out["X-Amz-Content-Sha256"] = payload_hash
    if credentials.session_token:
        out["X-Amz-Security-Token"] = credentials.session_token

    signed = sorted({name.strip().lower() for name in out} - UNSIGNED_HEADERS)
    canonical = canonical_request(
        method, parts.path, parts.query, out, signed, payload_hash, s3=service == "s3"
    )
    scope = credential_scope(amz_date[:8], region, service)
    sig = signature(
        credentials.secret_access_key,
        amz_date[:8],
        region,
        service,
        string_to_sign(amz_date, scope, canonical),
    )
    out["Authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
        f"SignedHeaders={';'.join(signed)}, Signature={sig}"
    )
    return out


def canonical_request(  # noqa: PLR0917 - the SigV4 spec's six parts, in its order
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    signed_headers: Sequence[str],
    payload_hash: str,
    *,
    s3: bool = False,
) -> str:
    """The SigV4 canonical request.

    ``path`` and ``query`` are as on the wire (percent-encoded, no ``?``).  ``headers`` may use
    any case; names that differ only in case are joined with commas, as repeated headers are.
    ``signed_headers`` are lower-case names, rendered in the order given (AWS clients sort
    them); each must be in ``headers`` (KeyError otherwise).
    """
    values: dict[str, list[str]] = {}
    for name, value in headers.items():
        values.setdefault(name.strip().lower(), []).append(value)
    canonical_headers = "".join(
        f"{name}:{','.join(_trim(v) for v in values[name])}\n" for name in signed_headers
    )
    return "\n".join(
        [
            method.upper(),
            _canonical_path(path, s3=s3),
            _canonical_query(query),
            canonical_headers,
            ";".join(signed_headers),
            payload_hash,
        ]
    )


def credential_scope(date: str, region: str, service: str) -> str:
    return f"{date}/{region}/{service}/{TERMINATOR}"


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def signature(secret: str, date: str, region: str, service: str, string_to_sign: str) -> str:
    """Hex HMAC of ``string_to_sign`` under the key derived for date/region/service."""
    key = _hmac(f"AWS4{secret}".encode(), date)
    for part in (region, service, TERMINATOR):
        key = _hmac(key, part)
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def uri_encode(text: str | bytes) -> str:
    """Percent-encode everything but RFC 3986 unreserved characters (SigV4's UriEncode)."""
    return quote(text, safe="-_.~")


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def _trim(value: str) -> str:
    """SigV4 Trimall: strip the ends and collapse inner runs of whitespace to one space."""
    return " ".join(value.split())


def _canonical_path(path: str, *, s3: bool) -> str:
    if s3:
        # S3 object keys are significant byte for byte ("a//b", "./x"): signed as sent.
        return path or "/"
    # The wire path is already encoded; AWS signs it encoded once more ('%' becomes '%25').
    return quote(_remove_dot_segments(path), safe="/~")


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 dot-segment removal; AWS also drops empty segments (``//``)."""
    if not path:
        return "/"
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    trailing = "/" if path.endswith("/") and segments else ""
    return "/" + "/".join(segments) + trailing


def _canonical_query(query: str) -> str:
    """Decode then re-encode every name and value, and sort the pairs (name, then value)."""
    pairs = []
    for item in query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        # Via bytes, so that an encoded byte that is not UTF-8 (%FF) survives as itself.
        pairs.append((uri_encode(unquote_to_bytes(name)), uri_encode(unquote_to_bytes(value))))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _host_header(url: str) -> str:
    """Host as HTTP clients send it: lower case, no userinfo, port only when not the default."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    # A naive datetime is taken as UTC: SigV4 dates are always UTC.
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
