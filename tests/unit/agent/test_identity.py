"""``agent.identity``: INI credentials, the re-read session file, and the IoT credentials provider
(the sandbox's real mTLS server, with certificates created in its moto IoT)."""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.aws.http import HttpClient
from agent.identity import (
    REFRESH_BEFORE_S,
    IdentityError,
    IotCertCredentials,
    SessionFileCredentials,
    read_ini_credentials,
)

from .conftest import ALIAS, IotDevice, World

# -- INI files -------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_the_default_profile_is_read(tmp_path: Path) -> None:
    path = write(tmp_path / "credentials",
                 "[default]\naws_access_key_id = AKIADEFAULT\n"
                 "aws_secret_access_key =  s3cr3t/with+chars%  \n"
                 "[pi]\naws_access_key_id = AKIAPI\naws_secret_access_key = pisecret\n")
    credentials = read_ini_credentials(path)
    # no interpolation of %, spaces stripped
    assert (credentials.access_key_id, credentials.secret_access_key) == \
        ("AKIADEFAULT", "s3cr3t/with+chars%")
    assert credentials.session_token is None
    assert credentials.expiration is None
    assert "s3cr3t" not in repr(credentials)
    other = read_ini_credentials(path, "pi")
    assert (other.access_key_id, other.secret_access_key) == ("AKIAPI", "pisecret")


def test_a_session_token_is_read(tmp_path: Path) -> None:
    path = write(tmp_path / "credentials",
                 "[default]\naws_access_key_id = ASIAX\naws_secret_access_key = s\n"
                 "aws_session_token = FwoGZXIvYXdzE\n")
    credentials = read_ini_credentials(path)
    assert (credentials.access_key_id, credentials.session_token) == ("ASIAX", "FwoGZXIvYXdzE")


def test_a_missing_profile_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "credentials", "[default]\naws_access_key_id = A\n"
                                           "aws_secret_access_key = s\n")
    with pytest.raises(IdentityError) as caught:
        read_ini_credentials(path, "pi")
    assert str(caught.value) == f"{path} has no [pi] profile"


@pytest.mark.parametrize("body", ["aws_access_key_id = A\n", "aws_secret_access_key = s\n",
                                  "aws_access_key_id =\naws_secret_access_key = s\n"])
def test_missing_keys_are_named(tmp_path: Path, body: str) -> None:
    path = write(tmp_path / "credentials", "[default]\n" + body)
    with pytest.raises(IdentityError) as caught:
        read_ini_credentials(path)
    assert str(caught.value) == (f"{path} [default] needs aws_access_key_id and "
                                 "aws_secret_access_key")


def test_a_missing_file_gives_the_official_message(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    with pytest.raises(IdentityError) as caught:
        read_ini_credentials(path)
    assert str(caught.value) == f"Failed to load credentials from path {path}"


def test_a_file_that_is_not_ini_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "credentials", "aws_access_key_id = A\n")
    with pytest.raises(IdentityError) as caught:
        read_ini_credentials(path)
    assert str(caught.value) == f"{path} is not a credentials file: MissingSectionHeaderError"


# -- iam-session: the file is rewritten by something else ------------------------------------


def rewrite(path: Path, key: str, mtime_ns: int) -> None:
    """What a credentials helper does: write a new file and rename it over the old one."""
    new = path.with_name(path.name + ".new")
    new.write_text(f"[default]\naws_access_key_id = {key}\naws_secret_access_key = s-{key}\n"
                   f"aws_session_token = t-{key}\n")
    os.utime(new, ns=(mtime_ns, mtime_ns))
    os.replace(new, path)


def test_the_session_file_is_read_again_when_it_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    base = time.time_ns() - 10**12
    rewrite(path, "ASIAONE", base)
    source = SessionFileCredentials(path)
    first = source()
    assert (first.access_key_id, first.secret_access_key, first.session_token) == \
        ("ASIAONE", "s-ASIAONE", "t-ASIAONE")
    assert source() is first  # untouched: not read again

    rewrite(path, "ASIATWO", base + 10**9)
    second = source()
    assert (second.access_key_id, second.session_token) == ("ASIATWO", "t-ASIATWO")
    assert source() is second


def test_the_session_file_with_the_same_mtime_but_another_size_is_read_again(
        tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    stamp = time.time_ns() - 10**12
    rewrite(path, "ASIAONE", stamp)
    source = SessionFileCredentials(path)
    assert source().access_key_id == "ASIAONE"
    rewrite(path, "ASIALONGERKEY", stamp)
    assert source().access_key_id == "ASIALONGERKEY"


def test_a_session_file_that_disappears_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    rewrite(path, "ASIAONE", time.time_ns())
    source = SessionFileCredentials(path, "default")
    source()
    path.unlink()
    with pytest.raises(IdentityError) as caught:
        source()
    assert str(caught.value) == f"Failed to load credentials from path {path}"


def test_a_session_file_rewritten_broken_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    rewrite(path, "ASIAONE", time.time_ns() - 10**12)
    source = SessionFileCredentials(path)
    source()
    path.write_text("[default]\naws_access_key_id = ASIATHREE\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns()))
    with pytest.raises(IdentityError, match="needs aws_access_key_id and aws_secret_access_key"):
        source()


# -- iot-cert: the sandbox's credentials provider --------------------------------------------


@pytest.fixture
def device(world: World, tmp_path: Path) -> IotDevice:
    return world.iot_device("pi-kitchen", tmp_path)


@pytest.fixture
def mtls(world: World, device: IotDevice) -> Iterator[HttpClient]:
    with HttpClient(timeout_s=10, ca_bundle=world.sandbox.credentials_ca_file,
                    client_cert=(str(device.cert_file), str(device.key_file))) as client:
        yield client


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def source(world: World, mtls: HttpClient, thing: str = "pi-kitchen",
           clock: Clock | None = None, endpoint: str | None = None) -> IotCertCredentials:
    return IotCertCredentials(mtls, endpoint=endpoint or world.sandbox.credentials_endpoint,
                              role_alias=ALIAS, thing_name=thing, clock=clock or time.time)


def caller_arn(world: World, access_key_id: str, secret: str, token: str | None) -> str:
    import boto3  # noqa: PLC0415  (only this helper needs a second, independent client)

    e = world.sandbox.endpoint
    sts = boto3.client("sts", endpoint_url=e.url, region_name=e.region,
                       aws_access_key_id=access_key_id, aws_secret_access_key=secret,
                       aws_session_token=token)
    return str(sts.get_caller_identity()["Arn"])


def test_credentials_are_obtained_with_their_expiration(world: World, device: IotDevice,
                                                        mtls: HttpClient) -> None:
    provider = world.sandbox.credentials_provider
    issued = provider.issued
    now = world.sandbox.state.clock()
    credentials = source(world, mtls)()
    assert provider.issued == issued + 1
    assert credentials.access_key_id.startswith("ASIA")
    assert credentials.session_token
    assert credentials.expiration is not None
    # The provider answers an ISO 8601 time with whole seconds, credentialDurationSeconds on.
    assert now + 3600 - 1 <= credentials.expiration <= now + 3600 + 5
    assert credentials.expiration == int(credentials.expiration)
    # They are real: STS knows whose they are.
    assert caller_arn(world, credentials.access_key_id, credentials.secret_access_key,
                      credentials.session_token) == \
        f"arn:aws:sts::123456789012:assumed-role/pifleet-device/{device.certificate_id}"


def test_credentials_are_cached(world: World, device: IotDevice, mtls: HttpClient) -> None:
    provider = world.sandbox.credentials_provider
    get = source(world, mtls)
    first = get()
    issued = provider.issued
    assert get() is first
    assert provider.issued == issued


def test_credentials_are_renewed_shortly_before_they_expire(
        world: World, device: IotDevice, mtls: HttpClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = world.sandbox.credentials_provider
    clock = Clock()
    monkeypatch.setattr(world.sandbox.state, "clock", clock)  # the provider's time is ours
    get = source(world, mtls, clock=clock)
    first = get()
    assert first.expiration is not None
    issued = provider.issued
    clock.now = first.expiration - REFRESH_BEFORE_S - 1
    assert get() is first
    assert provider.issued == issued
    clock.now = first.expiration - REFRESH_BEFORE_S + 1
    second = get()
    assert provider.issued == issued + 1
    assert second.access_key_id != first.access_key_id
    assert second.expiration == int(clock.now) + 3600
    assert get() is second


def test_a_refused_thing_name_names_the_thing_and_the_policy(world: World, device: IotDevice,
                                                             mtls: HttpClient) -> None:
    with pytest.raises(IdentityError) as caught:
        source(world, mtls, thing="pi-garage")()
    message = str(caught.value)
    assert "(403)" in message
    assert "thing 'pi-garage'" in message
    assert "iot:AssumeRoleWithCertificate" in message


def test_an_unknown_role_alias_gives_the_status_and_the_answer(world: World, device: IotDevice,
                                                               mtls: HttpClient) -> None:
    get = IotCertCredentials(mtls, endpoint=world.sandbox.credentials_endpoint,
                             role_alias="no-such-alias", thing_name="pi-kitchen")
    with pytest.raises(IdentityError) as caught:
        get()
    assert str(caught.value).startswith("the IoT credentials provider answered 404: ")
    assert "no-such-alias" in str(caught.value)


def test_an_unreachable_provider_is_an_identity_error(world: World, device: IotDevice,
                                                      mtls: HttpClient) -> None:
    # A bound socket that does not listen: connections to it are refused at once.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        with pytest.raises(IdentityError) as caught:
            source(world, mtls, endpoint=f"https://127.0.0.1:{port}")()
    assert str(caught.value).startswith("cannot reach the IoT credentials provider: ")
    assert str(port) in str(caught.value)


def test_a_failed_renewal_keeps_the_current_credentials_until_they_expire(
        world: World, device: IotDevice, mtls: HttpClient,
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    get = source(world, mtls, clock=clock)
    first = get()
    assert first.expiration is not None
    # The certificate is taken off the thing: every renewal is now refused (403).
    world.client("iot").detach_thing_principal(thingName=device.thing,
                                               principal=device.certificate_arn)
    clock.now = first.expiration - 60
    with caplog.at_level(logging.WARNING, logger="agent.identity"):
        assert get() is first
    assert "could not renew credentials" in caplog.text
    assert first.secret_access_key not in caplog.text
    clock.now = first.expiration + 1
    with pytest.raises(IdentityError, match=r"\(403\)"):
        get()


@contextlib.contextmanager
def _scripted_provider(answers: list[tuple[int, dict[str, object]]],
                       ) -> Iterator[tuple[IotCertCredentials, list[int]]]:
    """A plain HTTP server answering GETs with ``answers`` in turn (the last one repeats):
    only a server of ours can answer 200 without credentials or fail on cue."""
    served: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, payload = answers[min(len(served), len(answers) - 1)]
            served.append(status)
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            return None

    with http.server.HTTPServer(("127.0.0.1", 0), Handler) as server:
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            with HttpClient(timeout_s=10) as client:
                yield IotCertCredentials(client, endpoint=f"http://127.0.0.1:"
                                                          f"{server.server_address[1]}",
                                         role_alias=ALIAS, thing_name="pi",
                                         sleep=lambda _s: None), served
        finally:
            server.shutdown()
            thread.join(timeout=5)


def test_the_answer_without_credentials_is_an_identity_error() -> None:
    with _scripted_provider([(200, {"message": "ok"})]) as (get, _), \
            pytest.raises(IdentityError) as caught:
        get()
    assert str(caught.value) == "the IoT credentials provider's answer has no credentials"


GOOD = {"credentials": {"accessKeyId": "AKIA", "secretAccessKey": "s", "sessionToken": "t",
                        "expiration": "2099-01-01T00:00:00Z"}}


def test_throttling_and_5xx_from_the_provider_are_retried() -> None:
    # At start-up one throttled answer must not stop the daemon.
    with _scripted_provider([(429, {"message": "Rate exceeded"}), (503, {}), (200, GOOD)],
                            ) as (get, served):
        assert get().access_key_id == "AKIA"
    assert served == [429, 503, 200]


def test_a_provider_failing_for_good_is_one_clear_error_after_three_attempts() -> None:
    with _scripted_provider([(503, {"message": "unavailable"})]) as (get, served), \
            pytest.raises(IdentityError, match=r"answered 503.*\(after 3 attempts\)"):
        get()
    assert served == [503, 503, 503]
