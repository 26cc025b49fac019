"""SigV4 signing: byte-for-byte the same Authorization as botocore's signers, and AWS's vectors."""

# ruff: noqa: PLR0917 - hypothesis and parametrize pass arguments positionally

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.aws.credentials import Credentials
from agent.aws.sigv4 import (
    canonical_request,
    credential_scope,
    sign,
    signature,
    string_to_sign,
    uri_encode,
)
from fleet.sandbox.auth import Credential, CredentialStore, verify_sigv4

EXAMPLE = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
EXAMPLE_NOW = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)


def botocore_headers(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    *,
    credentials: Credentials,
    region: str,
    service: str,
    now: datetime,
    unsigned_payload: bool = False,
) -> Any:
    """What botocore sends for the same request (the oracle)."""
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    if service == "s3":
        signer: SigV4Auth = S3SigV4Auth(_boto(credentials), service, region)
        if unsigned_payload:
            request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    else:
        signer = SigV4Auth(_boto(credentials), service, region)
        # Our signer always sends the payload hash (as the Ruby agent does); botocore signs a
        # given X-Amz-Content-Sha256 as the payload hash, which is the same thing.
        payload = "UNSIGNED-PAYLOAD" if unsigned_payload else hashlib.sha256(body).hexdigest()
        request.headers["X-Amz-Content-SHA256"] = payload
    with mock.patch("botocore.auth.get_current_datetime", return_value=now):
        signer.add_auth(request)
    return request.headers


def _boto(credentials: Credentials) -> BotoCredentials:
    return BotoCredentials(
        credentials.access_key_id, credentials.secret_access_key, credentials.session_token
    )


def assert_same_as_botocore(method: str, url: str, headers: dict[str, str], body: bytes,
                            **kwargs: Any) -> dict[str, str]:
    ours = sign(method, url, headers, body, **kwargs)
    theirs = botocore_headers(method, url, headers, body, **kwargs)
    assert ours["Authorization"] == theirs["Authorization"]
    assert ours["X-Amz-Date"] == theirs["X-Amz-Date"]
    assert ours["X-Amz-Content-Sha256"] == theirs["X-Amz-Content-SHA256"]
    assert ours.get("X-Amz-Security-Token") == theirs.get("X-Amz-Security-Token")
    return ours


# -- generated requests --------------------------------------------------------------------

# Characters that need care: space, unicode, percent, plus, tilde, reserved delimiters.
_TEXT = st.text(alphabet=st.sampled_from(list("aZ09-_.~ %+=&/?#!$'()*,;:@é€ሴ\u00a0")),
                max_size=8)
_SEGMENT = st.one_of(st.sampled_from(["", ".", ".."]), _TEXT.filter(lambda s: "/" not in s))
# How the caller put each segment on the wire: raw, fully encoded, or leaving sub-delims as is.
_SAFE = st.sampled_from([None, "", "+", "+~!$&'()*,;=:@"])


@st.composite
def wire_paths(draw: st.DrawFn) -> str:
    safe = draw(_SAFE)
    segments = draw(st.lists(_SEGMENT, max_size=5))
    encoded = [s if safe is None else quote(s, safe=safe) for s in segments]
    # A raw '?' or '#' would end the path; those segments are always encoded.
    encoded = [quote(s, safe="") if ("?" in s or "#" in s) else s for s in encoded]
    return "/" + "/".join(encoded) + draw(st.sampled_from(["", "/"]))


@st.composite
def wire_queries(draw: st.DrawFn) -> str:
    # Names are never empty: an empty item ("a=1&&b=2") is skipped, where botocore signs "=".
    names = st.sampled_from(["a", "B", "x-id", "a b", "é"]) | _TEXT.filter(bool)
    pairs = draw(st.lists(st.tuples(names, _TEXT), max_size=5))
    if pairs and draw(st.booleans()):
        pairs.append((pairs[0][0], draw(_TEXT)))  # a repeated key
    parts = []
    for name, value in pairs:
        # "name" alone and "name=" both mean an empty value.
        parts.append(uri_encode(name) if not value and draw(st.booleans())
                     else f"{uri_encode(name)}={uri_encode(value)}")
    return "&".join(parts)


_HEADER_VALUE = st.text(alphabet=st.sampled_from(list("ab Z9 \t,;=\"/:")), max_size=12)
_HEADER_NAME = st.sampled_from(["Content-Type", "x-amz-target", "X-Amz-Meta-Thing",
                                "x-amz-codedeploy-agent-version", "Content-MD5", "Accept",
                                "X-Custom"])


@settings(max_examples=400, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "get"]),
    host=st.sampled_from(["example.amazonaws.com", "127.0.0.1:8080", "Example.COM:443",
                          "s3.eu-west-1.amazonaws.com", "[::1]:9000", "localhost:80"]),
    scheme=st.sampled_from(["https", "http"]),
    path=wire_paths(),
    query=wire_queries(),
    headers=st.dictionaries(_HEADER_NAME, _HEADER_VALUE, max_size=4),
    body=st.binary(max_size=64),
    token=st.none() | st.text(alphabet="abcXYZ019+/=", min_size=1, max_size=40),
    service=st.sampled_from(["codedeploy-commands", "sts", "s3", "service"]),
    region=st.sampled_from(["us-east-1", "eu-west-1", "cn-north-1"]),
    unsigned=st.booleans(),
    seconds=st.integers(0, 2_000_000_000),
)
def test_authorization_matches_botocore(
    method: str, host: str, scheme: str, path: str, query: str, headers: dict[str, str],
    body: bytes, token: str | None, service: str, region: str, unsigned: bool, seconds: int,
) -> None:
    url = f"{scheme}://{host}{path}" + (f"?{query}" if query else "")
    assert_same_as_botocore(
        method, url, headers, body,
        credentials=Credentials("AKIAEXAMPLE0000000", "secret/Key+0", token),
        region=region, service=service,
        now=datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds),
        unsigned_payload=unsigned,
    )


def test_codedeploy_command_request_matches_botocore() -> None:
    body = b'{"HostIdentifier":"arn:aws:iam::123456789012:user/AWS/CodeDeploy/pi-1"}'
    headers = {"Content-Type": "application/x-amz-json-1.1",
               "X-Amz-Target": "CodeDeployCommandService_v20141006.PollHostCommand",
               "x-amz-codedeploy-agent-version": "OFFICIAL_1.8.1-0_deb",
               "User-Agent": "pifleet-agent/0.1"}
    sent = assert_same_as_botocore(
        "POST", "https://codedeploy-commands.eu-west-1.amazonaws.com/", headers, body,
        credentials=Credentials("AKIAEXAMPLE", "secret", "token=="), region="eu-west-1",
        service="codedeploy-commands", now=EXAMPLE_NOW)
    # The header set the reference agent signs (reference §1.4), plus the session token.
    assert (
        "SignedHeaders=content-type;host;x-amz-codedeploy-agent-version;"
        "x-amz-content-sha256;x-amz-date;x-amz-security-token;x-amz-target,"
    ) in sent["Authorization"]
    assert sent["Host"] == "codedeploy-commands.eu-west-1.amazonaws.com"
    assert sent["X-Amz-Security-Token"] == "token=="
    assert sent["User-Agent"] == "pifleet-agent/0.1"  # sent, not signed


def test_signer_replaces_stale_auth_headers_and_keeps_a_given_host() -> None:
    stale = {"Authorization": "old", "x-amz-date": "19700101T000000Z",
             "X-AMZ-SECURITY-TOKEN": "old", "host": "other.example:8443"}
    sent = sign("GET", "https://example.amazonaws.com/", stale, b"", credentials=EXAMPLE,
                region="us-east-1", service="service", now=EXAMPLE_NOW)
    assert sent["host"] == "other.example:8443"
    assert "Host" not in sent
    assert "X-AMZ-SECURITY-TOKEN" not in sent
    assert "x-amz-date" not in sent
    assert sent["X-Amz-Date"] == "20150830T123600Z"
    assert sent["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=")


def test_naive_and_offset_datetimes_are_utc() -> None:
    kwargs: dict[str, Any] = {"credentials": EXAMPLE, "region": "us-east-1", "service": "s"}
    utc = sign("GET", "https://h/", {}, b"", now=EXAMPLE_NOW, **kwargs)
    naive = sign("GET", "https://h/", {}, b"", now=EXAMPLE_NOW.replace(tzinfo=None), **kwargs)
    shifted = EXAMPLE_NOW.astimezone(datetime.now(UTC).astimezone().tzinfo)
    local = sign("GET", "https://h/", {}, b"", now=shifted, **kwargs)
    assert utc == naive == local


def test_credentials_repr_hides_secret_and_token() -> None:
    text = repr(Credentials("AKIAEXAMPLE", "the-secret", "the-token", 1.0))
    assert "AKIAEXAMPLE" in text
    assert "the-secret" not in text
    assert "the-token" not in text


# -- canonicalisation details ----------------------------------------------------------------


def test_non_s3_path_is_normalised_and_encoded_twice() -> None:
    canonical = canonical_request("GET", "/a/./b//c/../d%20e/", "", {"Host": "h"}, ["host"], "x")
    assert canonical.split("\n")[1] == "/a/b/d%2520e/"


def test_s3_path_is_signed_as_sent() -> None:
    canonical = canonical_request("GET", "/a/./b//c/../d%20e/", "", {"Host": "h"}, ["host"], "x",
                                  s3=True)
    assert canonical.split("\n")[1] == "/a/./b//c/../d%20e/"


def test_query_is_sorted_by_encoded_name_then_value() -> None:
    canonical = canonical_request("GET", "/", "b=2&a=z&a=&A=1&a=y&c", {"h": "v"}, ["h"], "x")
    assert canonical.split("\n")[2] == "A=1&a=&a=y&a=z&b=2&c="


def test_query_plus_is_a_literal_plus_and_non_utf8_bytes_survive() -> None:
    canonical = canonical_request("GET", "/", "k=a+b&z=%ff%41", {"h": "v"}, ["h"], "x")
    assert canonical.split("\n")[2] == "k=a%2Bb&z=%FFA"


def test_header_values_trimmed_and_names_case_folded() -> None:
    canonical = canonical_request(
        "POST", "/", "", {"My-Header": "  a   b\t c ", "my-header": "d", "Host": "h"},
        ["host", "my-header"], "x")
    assert canonical.split("\n")[3:5] == ["host:h", "my-header:a b c,d"]


# -- AWS SigV4 test-suite vectors ------------------------------------------------------------
# Request: AKIDEXAMPLE, 20150830T123600Z, us-east-1, service "service", Host
# example.amazonaws.com, SignedHeaders as listed (the suite does not send x-amz-content-sha256).
# get-vanilla ... get-space are the published signatures (botocore agrees); get-header-value-trim
# was derived with botocore.

VECTORS = [
    ("get-vanilla", "GET", "/", "", {}, b"",
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("get-vanilla-query-order-key-case", "GET", "/", "Param2=value2&Param1=value1", {}, b"",
     "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
    ("post-x-www-form-urlencoded", "POST", "/", "",
     {"Content-Type": "application/x-www-form-urlencoded"}, b"Param1=value1",
     "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
    ("get-utf8", "GET", "/ሴ", "", {}, b"",
     "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
    ("get-space", "GET", "/example space/", "", {}, b"",
     "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"),
    ("get-header-value-trim", "GET", "/", "", {"My-Header1": "value1",
                                               "My-Header2": '"a   b   c"'}, b"",
     "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"),
]


@pytest.mark.parametrize(("name", "method", "path", "query", "extra", "body", "expected"),
                         VECTORS, ids=[v[0] for v in VECTORS])
def test_aws_test_suite_vector(name: str, method: str, path: str, query: str,
                               extra: dict[str, str], body: bytes, expected: str) -> None:
    headers = {"Host": "example.amazonaws.com", "X-Amz-Date": "20150830T123600Z", **extra}
    signed = sorted(h.lower() for h in headers)
    canonical = canonical_request(method, path, query, headers, signed,
                                  hashlib.sha256(body).hexdigest())
    scope = credential_scope("20150830", "us-east-1", "service")
    assert scope == "20150830/us-east-1/service/aws4_request"
    found = signature(EXAMPLE.secret_access_key, "20150830", "us-east-1", "service",
                      string_to_sign("20150830T123600Z", scope, canonical))
    assert found == expected, name


def test_get_vanilla_string_to_sign() -> None:
    canonical = canonical_request("GET", "/", "", {"Host": "example.amazonaws.com",
                                                   "X-Amz-Date": "20150830T123600Z"},
                                  ["host", "x-amz-date"], hashlib.sha256(b"").hexdigest())
    assert canonical == (
        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
        "host;x-amz-date\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert string_to_sign("20150830T123600Z", "20150830/us-east-1/service/aws4_request",
                          canonical) == (
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
        "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63")


# -- the sandbox's verifier accepts what the signer sends ------------------------------------


@settings(max_examples=150, deadline=None)
@given(path=wire_paths(), query=wire_queries(),
       headers=st.dictionaries(_HEADER_NAME, _HEADER_VALUE, max_size=4),
       body=st.binary(max_size=64), token=st.none() | st.just("session-token"))
def test_sandbox_verifier_accepts_signed_requests(path: str, query: str,
                                                  headers: dict[str, str], body: bytes,
                                                  token: str | None) -> None:
    store = CredentialStore(use_moto=False)
    store.add(Credential("AKIAEXAMPLE", "secret/+=", "arn:aws:iam::123456789012:user/pi",
                         session_token=token))
    target = path + (f"?{query}" if query else "")
    sent = sign("POST", f"http://127.0.0.1:8080{target}", headers, body,
                credentials=Credentials("AKIAEXAMPLE", "secret/+=", token),
                region="us-east-1", service="codedeploy-commands")
    found = verify_sigv4("POST", target, sent, body, store=store, service="codedeploy-commands")
    assert found.access_key_id == "AKIAEXAMPLE"
