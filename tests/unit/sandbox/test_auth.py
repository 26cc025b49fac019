"""SigV4 verification, with botocore's own signer as the oracle for what a client sends."""

# Every key, secret and token here is a made-up test value.
# ruff: noqa: S105, S106

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto import mock_aws

from fleet.sandbox.auth import Credential, CredentialStore, verify_sigv4
from fleet.sandbox.errors import ServiceError

AKID = "AKIASANDBOXEXAMPLE01"
SECRET = "sandbox/secret+key/0123456789abcdefghijklm"
USER_ARN = "arn:aws:iam::123456789012:user/pi/agent-1"
SERVICE = "codedeploy-commands"
ENDPOINT = "https://codedeploy-commands.us-east-1.amazonaws.com"
TARGET = "CodeDeployCommandService_v20141006.PollHostCommand"


class Signed:
    """A request as it arrives at the server after botocore signed it."""

    def __init__(self, method: str, path_and_query: str, headers: dict[str, str], body: bytes):
        self.method = method
        self.path_and_query = path_and_query
        self.headers = headers
        self.body = body

    def verify(self, store: CredentialStore, **kwargs: Any) -> Credential:
        kwargs.setdefault("service", SERVICE)
        return verify_sigv4(
            self.method, self.path_and_query, self.headers, self.body, store=store, **kwargs
        )


def sign(
    method: str = "POST",
    url: str = ENDPOINT + "/",
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    key: str = AKID,
    secret: str = SECRET,
    token: str | None = None,
    service: str = SERVICE,
    region: str = "us-east-1",
) -> Signed:
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    SigV4Auth(Credentials(key, secret, token), service, region).add_auth(request)
    prepared = request.prepare()
    wire = urlsplit(prepared.url)
    sent = dict(prepared.headers.items())
    # botocore signs the host from the URL; the HTTP client is what sends the header.
    sent.setdefault("Host", wire.netloc)
    target = wire.path + (f"?{wire.query}" if wire.query else "")
    return Signed(method, target, sent, body)


def poll_host_command(**kwargs: Any) -> Signed:
    body = json.dumps({"HostIdentifier": "arn:aws:iam::123456789012:user/pi/agent-1"}).encode()
    headers = {"X-Amz-Target": TARGET, "Content-Type": "application/x-amz-json-1.1"}
    return sign("POST", ENDPOINT + "/", body=body, headers=headers, **kwargs)


def error_of(signed: Signed, store: CredentialStore, **kwargs: Any) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        signed.verify(store, **kwargs)
    return info.value


@pytest.fixture
def store() -> CredentialStore:
    store = CredentialStore(use_moto=False)
    store.add(Credential(AKID, SECRET, USER_ARN))
    return store


# -- requests that verify -----------------------------------------------------------------


def test_post_json_with_target_verifies(store: CredentialStore) -> None:
    assert poll_host_command().verify(store) == Credential(AKID, SECRET, USER_ARN)


def test_get_with_query_string_verifies(store: CredentialStore) -> None:
    url = ENDPOINT + "/things?b=2&a=1&a=0&empty=&name=hello%20world&tilde=~x"
    assert sign("GET", url).verify(store).access_key_id == AKID


def test_path_needing_encoding_verifies(store: CredentialStore) -> None:
    # As botocore's serializers put it on the wire: each segment percent-encoded once.
    url = ENDPOINT + "/things/thing%20name%2Fwith%3Aodd%20chars/%E2%82%AC/shadow"
    signed = sign("GET", url)
    assert "%20" in signed.path_and_query
    assert signed.verify(store).access_key_id == AKID


def test_dot_segments_and_double_slashes_are_normalized(store: CredentialStore) -> None:
    signed = sign("GET", ENDPOINT + "/things//a/./b/../c/")
    assert signed.path_and_query == "/things//a/./b/../c/"
    assert signed.verify(store).access_key_id == AKID


def test_signed_header_whitespace_is_collapsed(store: CredentialStore) -> None:
    signed = sign(body=b"{}", headers={"X-Pifleet-Note": "two   spaces\tand a tab"})
    assert signed.headers["X-Pifleet-Note"] == "two   spaces\tand a tab"
    assert signed.verify(store).access_key_id == AKID


def test_session_credentials_with_token_verify() -> None:
    store = CredentialStore(use_moto=False)
    session = Credential(
        "ASIASANDBOXSESSION01",
        SECRET,
        "arn:aws:sts::123456789012:assumed-role/PiAgent/agent-1",
        session_token="FwoGZXIvYXdzEXAMPLETOKEN",
        expires_at=time.time() + 3600,
    )
    store.add(session)
    signed = poll_host_command(key=session.access_key_id, token=session.session_token)
    assert signed.headers["X-Amz-Security-Token"] == session.session_token
    assert signed.verify(store) is session


def test_extra_unsigned_headers_are_tolerated(store: CredentialStore) -> None:
    signed = poll_host_command()
    signed.headers["User-Agent"] = "pifleet-agent/0.1"
    signed.headers["X-Forwarded-For"] = "10.0.0.7"
    assert signed.verify(store).access_key_id == AKID


def test_header_name_case_does_not_matter(store: CredentialStore) -> None:
    signed = poll_host_command()
    signed.headers = {name.lower(): value for name, value in signed.headers.items()}
    assert signed.verify(store).access_key_id == AKID


def test_content_sha256_header_is_used_and_checked(store: CredentialStore) -> None:
    body = b'{"a": 1}'
    declared = {"X-Amz-Content-Sha256": hashlib.sha256(body).hexdigest()}
    assert sign(body=body, headers=declared).verify(store).access_key_id == AKID

    unsigned = sign(body=body, headers={"X-Amz-Content-Sha256": "UNSIGNED-PAYLOAD"})
    unsigned.body = b"anything at all"
    assert unsigned.verify(store).access_key_id == AKID

    lying = sign(body=body, headers={"X-Amz-Content-Sha256": hashlib.sha256(b"x").hexdigest()})
    error = error_of(lying, store)
    assert error.code == "InvalidSignatureException"
    assert "x-amz-content-sha256" in error.message


# -- AWS's published test-suite vectors ----------------------------------------------------

EXAMPLE_KEY = Credential(
    "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "arn:aws:iam::123456789012:user/x"
)
EXAMPLE_NOW = 1440938160.0  # 2015-08-30T12:36:00Z


@pytest.mark.parametrize(
    ("name", "target", "signature"),
    [
        ("get-vanilla", "/", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        (
            "get-vanilla-query-order-key-case",
            "/?Param2=value2&Param1=value1",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        ),
    ],
)
def test_aws_sigv4_test_suite_vector(name: str, target: str, signature: str) -> None:
    store = CredentialStore(use_moto=False)
    store.add(EXAMPLE_KEY)
    headers = {
        "Host": "example.amazonaws.com",
        "X-Amz-Date": "20150830T123600Z",
        "Authorization": (
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
            f"SignedHeaders=host;x-amz-date, Signature={signature}"
        ),
    }
    found = verify_sigv4(
        "GET", target, headers, b"", store=store, service="service", now=EXAMPLE_NOW
    )
    assert found is EXAMPLE_KEY

    headers["Authorization"] = headers["Authorization"][:-1] + (
        "0" if signature[-1] != "0" else "1"
    )
    with pytest.raises(ServiceError) as info:
        verify_sigv4("GET", target, headers, b"", store=store, service="service", now=EXAMPLE_NOW)
    assert info.value.code == "InvalidSignatureException", name


# -- malformed or missing authorization ----------------------------------------------------


def test_missing_authorization(store: CredentialStore) -> None:
    signed = poll_host_command()
    del signed.headers["Authorization"]
    error = error_of(signed, store)
    assert (error.code, error.message, error.status) == (
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
        400,
    )
    assert json.loads(error.body())["__type"] == "MissingAuthenticationTokenException"


@pytest.mark.parametrize(
    ("authorization", "fragment"),
    [
        ("AWS AKIDEXAMPLE:c2lnbmF0dXJl", "Unsupported AWS 'algorithm'"),
        ("AWS4-HMAC-SHA256", "requires 'Credential' parameter"),
        (
            f"AWS4-HMAC-SHA256 Credential={AKID}/20150830/us-east-1/{SERVICE}/aws4_request",
            "requires 'Signature' parameter",
        ),
        (
            f"AWS4-HMAC-SHA256 Credential={AKID}/us-east-1/{SERVICE}/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=00",
            "Credential must have exactly 5 slash-delimited elements",
        ),
        (
            f"AWS4-HMAC-SHA256 Credential={AKID}/20150830/us-east-1/{SERVICE}/aws4_request, "
            "SignedHeaders=x-amz-date, Signature=00",
            "'Host' or ':authority' must be a 'SignedHeader'",
        ),
    ],
)
def test_garbled_authorization(store: CredentialStore, authorization: str, fragment: str) -> None:
    signed = poll_host_command()
    signed.headers["Authorization"] = authorization
    error = error_of(signed, store)
    assert error.code == "IncompleteSignatureException"
    assert error.status == 400
    assert fragment in error.message


def test_garbled_date(store: CredentialStore) -> None:
    signed = poll_host_command()
    signed.headers["X-Amz-Date"] = "yesterday"
    error = error_of(signed, store)
    assert error.code == "IncompleteSignatureException"
    assert "ISO-8601" in error.message


def test_signed_header_missing_from_request(store: CredentialStore) -> None:
    signed = poll_host_command()
    del signed.headers["X-Amz-Target"]
    error = error_of(signed, store)
    assert error.code == "IncompleteSignatureException"
    assert "x-amz-target" in error.message


def test_non_ascii_signature_is_a_mismatch_not_a_crash(store: CredentialStore) -> None:
    signed = poll_host_command()
    auth = signed.headers["Authorization"]
    signed.headers["Authorization"] = auth[: auth.index("Signature=") + 10] + "é" * 64
    assert error_of(signed, store).code == "InvalidSignatureException"


# -- credentials ---------------------------------------------------------------------------


def test_unknown_key(store: CredentialStore) -> None:
    error = error_of(poll_host_command(key="AKIANOBODYKNOWSTHIS1"), store)
    assert (error.code, error.message, error.status) == (
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
        400,
    )


def test_wrong_secret(store: CredentialStore) -> None:
    error = error_of(poll_host_command(secret="not-the-secret"), store)
    assert (error.code, error.status) == ("InvalidSignatureException", 400)
    assert error.message.startswith("The request signature we calculated does not match")
    assert SECRET not in str(error)
    assert "not-the-secret" not in str(error)


def test_removed_key_is_unknown(store: CredentialStore) -> None:
    store.remove(AKID)
    assert store.lookup(AKID) is None
    assert error_of(poll_host_command(), store).code == "UnrecognizedClientException"


def test_credential_repr_hides_secret_and_token() -> None:
    text = repr(Credential(AKID, SECRET, USER_ARN, session_token="TOKEN123"))
    assert AKID in text
    assert SECRET not in text
    assert "TOKEN123" not in text


@pytest.fixture
def session_store() -> tuple[CredentialStore, Credential]:
    store = CredentialStore(use_moto=False)
    session = Credential(
        "ASIASANDBOXSESSION02",
        SECRET,
        "arn:aws:sts::123456789012:assumed-role/PiAgent/agent-2",
        session_token="session-token-value",
        expires_at=time.time() + 60,
    )
    store.add(session)
    return store, session


@pytest.mark.parametrize("token", [None, "some-other-token"])
def test_session_token_missing_or_wrong(
    session_store: tuple[CredentialStore, Credential], token: str | None
) -> None:
    store, session = session_store
    error = error_of(poll_host_command(key=session.access_key_id, token=token), store)
    assert (error.code, error.message) == (
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    )


def test_token_sent_with_long_term_key(store: CredentialStore) -> None:
    error = error_of(poll_host_command(token="unexpected"), store)
    assert error.code == "UnrecognizedClientException"


def test_expired_session(session_store: tuple[CredentialStore, Credential]) -> None:
    store, session = session_store
    signed = poll_host_command(key=session.access_key_id, token=session.session_token)
    assert session.expires_at is not None
    # Still inside the skew window, so only the session's expiry can fail it.
    error = error_of(signed, store, now=session.expires_at + 1)
    assert (error.code, error.message, error.status) == (
        "ExpiredTokenException",
        "The security token included in the request is expired",
        400,
    )


# -- tampering and scope -------------------------------------------------------------------


def test_tampered_body(store: CredentialStore) -> None:
    signed = poll_host_command()
    signed.body = signed.body.replace(b"agent-1", b"agent-2")
    error = error_of(signed, store)
    assert error.code == "InvalidSignatureException"
    assert "does not match the signature you provided" in error.message


def test_tampered_signed_header(store: CredentialStore) -> None:
    signed = poll_host_command()
    signed.headers["X-Amz-Target"] = "CodeDeployCommandService_v20141006.PutHostCommandComplete"
    assert error_of(signed, store).code == "InvalidSignatureException"


def test_tampered_path_and_query(store: CredentialStore) -> None:
    signed = sign("GET", ENDPOINT + "/things?a=1")
    signed.path_and_query = "/things?a=2"
    assert error_of(signed, store).code == "InvalidSignatureException"


def test_wrong_service_in_scope(store: CredentialStore) -> None:
    error = error_of(poll_host_command(service="codedeploy"), store)
    assert error.code == "InvalidSignatureException"
    assert (
        error.message == "Credential should be scoped to correct service: 'codedeploy-commands'. "
    )


def test_wrong_terminator(store: CredentialStore) -> None:
    signed = poll_host_command()
    signed.headers["Authorization"] = signed.headers["Authorization"].replace(
        "/aws4_request", "/aws5_request"
    )
    error = error_of(signed, store)
    assert error.code == "InvalidSignatureException"
    assert "valid terminator: 'aws4_request', not 'aws5_request'" in error.message


def test_scope_date_differs_from_request_date(store: CredentialStore) -> None:
    signed = poll_host_command()
    signed.headers["X-Amz-Date"] = "20150830T235959Z"
    error = error_of(signed, store, now=1440979199.0)
    assert error.code == "InvalidSignatureException"
    assert "Date in Credential scope does not match" in error.message


# -- clock skew ----------------------------------------------------------------------------

SKEW_NOW = EXAMPLE_NOW + 301  # 20150830T124101Z


def vanilla_headers() -> dict[str, str]:
    return {
        "Host": "example.amazonaws.com",
        "X-Amz-Date": "20150830T123600Z",
        "Authorization": (
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
            "SignedHeaders=host;x-amz-date, "
            "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        ),
    }


def test_signature_expired() -> None:
    store = CredentialStore(use_moto=False)
    store.add(EXAMPLE_KEY)
    with pytest.raises(ServiceError) as info:
        verify_sigv4(
            "GET", "/", vanilla_headers(), b"", store=store, service="service", now=SKEW_NOW
        )
    assert (info.value.code, info.value.status) == ("InvalidSignatureException", 400)
    assert info.value.message == (
        "Signature expired: 20150830T123600Z is now earlier than 20150830T123601Z "
        "(20150830T124101Z - 5 min.)"
    )
    # Exactly at the edge of the window is still fine.
    found = verify_sigv4(
        "GET", "/", vanilla_headers(), b"", store=store, service="service", now=EXAMPLE_NOW + 300
    )
    assert found is EXAMPLE_KEY


def test_signature_not_yet_current() -> None:
    store = CredentialStore(use_moto=False)
    store.add(EXAMPLE_KEY)
    with pytest.raises(ServiceError) as info:
        verify_sigv4(
            "GET",
            "/",
            vanilla_headers(),
            b"",
            store=store,
            service="service",
            now=EXAMPLE_NOW - 301,
        )
    assert info.value.code == "InvalidSignatureException"
    assert info.value.message.startswith("Signature not yet current: 20150830T123600Z")


def test_skew_window_is_configurable(store: CredentialStore) -> None:
    signed = poll_host_command()
    error = error_of(signed, store, now=time.time() + 61, max_skew_s=60)
    assert "- 1 min.)" in error.message


# -- moto's IAM and STS --------------------------------------------------------------------


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


def client(service: str) -> Any:
    return boto3.client(
        service,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_moto_iam_access_key_is_found(aws: None) -> None:
    iam = client("iam")
    iam.create_user(UserName="agent-7", Path="/pi/")
    key = iam.create_access_key(UserName="agent-7")["AccessKey"]
    store = CredentialStore()
    signed = poll_host_command(key=key["AccessKeyId"], secret=key["SecretAccessKey"])
    found = signed.verify(store)
    assert found.principal_arn == "arn:aws:iam::123456789012:user/pi/agent-7"
    assert found.secret_access_key == key["SecretAccessKey"]
    assert found.session_token is None


def test_moto_inactive_key_is_refused(aws: None) -> None:
    iam = client("iam")
    iam.create_user(UserName="agent-8")
    key = iam.create_access_key(UserName="agent-8")["AccessKey"]
    iam.update_access_key(UserName="agent-8", AccessKeyId=key["AccessKeyId"], Status="Inactive")
    store = CredentialStore()
    assert store.lookup(key["AccessKeyId"]) is None
    signed = poll_host_command(key=key["AccessKeyId"], secret=key["SecretAccessKey"])
    assert error_of(signed, store).code == "UnrecognizedClientException"


def test_moto_assumed_role_session_is_found(aws: None) -> None:
    sts = client("sts")
    creds = sts.assume_role(
        RoleArn="arn:aws:iam::123456789012:role/PiAgent",
        RoleSessionName="agent-9",
        DurationSeconds=900,
    )["Credentials"]
    store = CredentialStore()
    signed = poll_host_command(
        key=creds["AccessKeyId"], secret=creds["SecretAccessKey"], token=creds["SessionToken"]
    )
    found = signed.verify(store)
    assert found.principal_arn == "arn:aws:sts::123456789012:assumed-role/PiAgent/agent-9"
    assert found.session_token == creds["SessionToken"]
    assert found.expires_at == pytest.approx(creds["Expiration"].timestamp(), abs=1)

    # A wide skew window, so only the session's expiry can fail it.
    expired = error_of(signed, store, now=creds["Expiration"].timestamp() + 1, max_skew_s=3600)
    assert expired.code == "ExpiredTokenException"
    without_token = poll_host_command(key=creds["AccessKeyId"], secret=creds["SecretAccessKey"])
    assert error_of(without_token, store).code == "UnrecognizedClientException"


def test_moto_is_not_consulted_when_disabled(aws: None) -> None:
    iam = client("iam")
    iam.create_user(UserName="agent-10")
    key = iam.create_access_key(UserName="agent-10")["AccessKey"]
    assert CredentialStore().lookup(key["AccessKeyId"]) is not None
    assert CredentialStore(use_moto=False).lookup(key["AccessKeyId"]) is None
    assert CredentialStore(account_id="210987654321").lookup(key["AccessKeyId"]) is None
