"""The agent's HTTP client against real loopback servers: plain, TLS, mutual TLS, proxies."""

# ruff: noqa: PLR0917 - pytest passes fixtures positionally

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.aws import http as agent_http
from agent.aws.http import HttpClient, HttpError

from .loopback import (
    Origin,
    Pki,
    ProxyLog,
    Running,
    make_pki,
    server_tls,
    start_origin,
    start_proxy,
)

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from an environment without proxies (a CI runner may have one)."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy",
                 "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def origin() -> Origin:
    return Origin()


@pytest.fixture
def plain(origin: Origin) -> Iterator[Running]:
    server = start_origin(origin)
    yield server
    server.stop()


@pytest.fixture
def tls(origin: Origin, pki: Pki) -> Iterator[Running]:
    server = start_origin(origin, server_tls(pki))
    yield server
    server.stop()


@pytest.fixture
def proxy_log() -> ProxyLog:
    return ProxyLog()


@pytest.fixture
def proxy(proxy_log: ProxyLog) -> Iterator[Running]:
    server = start_proxy(proxy_log)
    yield server
    server.stop()


@pytest.fixture
def silent() -> Iterator[socket.socket]:
    """Accepts connections (the kernel's backlog does) and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


def client(**kwargs: Any) -> HttpClient:
    kwargs.setdefault("timeout_s", 5.0)
    return HttpClient(**kwargs)


# -- plain HTTP ----------------------------------------------------------------------------


def test_request_sends_and_reads(plain: Running, origin: Origin) -> None:
    with client() as http:
        response = http.request("POST", f"http://127.0.0.1:{plain.port}/a/b?x=1",
                                headers={"X-Test": "yes", "Host": "example.test"},
                                body=b'{"k": 1}')
    assert response.status == 200
    assert response.body == b"hello"
    assert response.headers["content-length"] == "5"
    assert response.headers["x-multi"] == "a, b"
    seen = origin.requests[0]
    assert (seen.method, seen.path, seen.body) == ("POST", "/a/b?x=1", b'{"k": 1}')
    assert seen.headers["X-Test"] == "yes"
    assert seen.headers["Host"] == "example.test"  # the signed Host is sent, not replaced


def test_error_statuses_are_responses(plain: Running, origin: Origin) -> None:
    origin.status, origin.body = 503, b'{"__type": "ServiceUnavailable"}'
    with client() as http:
        response = http.request("GET", f"http://127.0.0.1:{plain.port}/", headers={})
    assert (response.status, response.body) == (503, b'{"__type": "ServiceUnavailable"}')


def test_get_without_body_sends_no_content_length(plain: Running, origin: Origin) -> None:
    with client() as http:
        http.request("GET", f"http://127.0.0.1:{plain.port}/", headers={})
    assert "Content-Length" not in origin.requests[0].headers


def test_keep_alive_connection_is_reused(plain: Running, origin: Origin) -> None:
    with client() as http:
        for _ in range(5):
            assert http.request("GET", f"http://127.0.0.1:{plain.port}/", headers={}).status == 200
    assert len(origin.requests) == 5
    assert origin.connections == 1


def test_connection_closed_by_server_while_idle_is_replaced(plain: Running,
                                                            origin: Origin) -> None:
    origin.close_after_response = True
    with client() as http:
        for _ in range(3):
            assert http.request("GET", f"http://127.0.0.1:{plain.port}/", headers={}).status == 200
    assert origin.connections == 3


def test_stale_connection_failing_on_use_is_retried_once(
    plain: Running, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The close races the send: the idle check passes, then the request meets a closed socket.
    origin.close_after_response = True
    monkeypatch.setattr(agent_http, "_looks_open", lambda conn: True)
    with client() as http:
        http.request("GET", f"http://127.0.0.1:{plain.port}/", headers={})
        time.sleep(0.1)  # let the server's close arrive
        assert http.request("POST", f"http://127.0.0.1:{plain.port}/", headers={},
                            body=b"x").status == 200
    assert [r.method for r in origin.requests] == ["GET", "POST"]
    assert origin.connections == 2


def test_stream_reads_incrementally_and_closes(plain: Running, origin: Origin) -> None:
    origin.body = bytes(range(256)) * 400
    with client() as http:
        url = f"http://127.0.0.1:{plain.port}/bundle.tar"
        with http.stream("GET", url, headers={}) as response:
            assert response.status == 200
            assert response.headers["content-length"] == str(len(origin.body))
            chunks = []
            while chunk := response.read(4096):
                assert len(chunk) <= 4096
                chunks.append(chunk)
        assert b"".join(chunks) == origin.body
        # The streamed connection was closed, not pooled: the next call opens another.
        http.request("GET", url, headers={})
    assert origin.connections == 2


def test_concurrent_requests_each_get_a_connection(plain: Running, origin: Origin) -> None:
    errors: list[BaseException] = []
    with client() as http:
        def worker() -> None:
            try:
                for _ in range(10):
                    http.request("GET", f"http://127.0.0.1:{plain.port}/", headers={})
            except BaseException as exc:  # noqa: BLE001 - reported to the main thread
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert len(origin.requests) == 40
    assert origin.connections <= 4 + agent_http.MAX_IDLE_PER_HOST


# -- failures --------------------------------------------------------------------------------


def test_read_timeout_is_quick_and_clear(silent: socket.socket) -> None:
    port = silent.getsockname()[1]
    started = time.monotonic()
    with client(timeout_s=0.5) as http, pytest.raises(HttpError) as info:
        http.request("GET", f"http://127.0.0.1:{port}/secret-path?X-Amz-Signature=abc",
                     headers={})
    assert time.monotonic() - started < 3
    message = str(info.value)
    assert "timed out after 0.5 s" in message
    assert f"http://127.0.0.1:{port}" in message
    assert "secret-path" not in message
    assert "abc" not in message


def test_tls_handshake_timeout_is_a_connect_timeout(silent: socket.socket) -> None:
    port = silent.getsockname()[1]
    with client(connect_timeout_s=0.3) as http, pytest.raises(HttpError) as info:
        http.request("GET", f"https://127.0.0.1:{port}/", headers={})
    assert f"timed out after 0.3 s connecting to https://127.0.0.1:{port}" in str(info.value)


def test_connection_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    with client() as http, pytest.raises(HttpError, match="connection refused connecting to"):
        http.request("GET", f"http://127.0.0.1:{port}/", headers={})


def test_non_http_url_is_a_value_error() -> None:
    with client() as http, pytest.raises(ValueError, match="not an http"):
        http.request("GET", "ftp://example.com/x", headers={})


# -- TLS -------------------------------------------------------------------------------------


def test_tls_verifies_with_the_ca_bundle(tls: Running, pki: Pki, origin: Origin) -> None:
    with client(ca_bundle=pki.ca) as http:
        for _ in range(3):
            response = http.request("GET", f"https://127.0.0.1:{tls.port}/", headers={})
            assert response.body == b"hello"
    assert origin.connections == 1  # TLS connections are kept alive too
    assert origin.requests[0].peer_cert is None  # no client certificate unless configured


def test_tls_without_the_ca_fails_verification_clearly(tls: Running, origin: Origin) -> None:
    with client() as http, pytest.raises(HttpError) as info:
        http.request("GET", f"https://127.0.0.1:{tls.port}/p?token=abc", headers={})
    message = str(info.value)
    assert "TLS certificate verification failed" in message
    assert f"connecting to https://127.0.0.1:{tls.port}" in message
    assert "abc" not in message
    assert origin.requests == []


def test_tls_hostname_is_checked(pki: Pki, origin: Origin) -> None:
    # The certificate names 127.0.0.1 and localhost; 127.0.0.2 (also loopback) is another host.
    server = start_origin(origin, server_tls(pki), host="127.0.0.2")
    try:
        with client(ca_bundle=pki.ca) as http, pytest.raises(HttpError) as info:
            http.request("GET", f"https://127.0.0.2:{server.port}/", headers={})
    finally:
        server.stop()
    assert "TLS certificate verification failed" in str(info.value)
    assert "127.0.0.2" in str(info.value)


def test_verify_false_skips_verification(tls: Running) -> None:
    with client(verify=False) as http:
        assert http.request("GET", f"https://127.0.0.1:{tls.port}/", headers={}).status == 200


def test_mutual_tls_presents_the_client_certificate(pki: Pki, origin: Origin) -> None:
    server = start_origin(origin, server_tls(pki, require_client_cert=True))
    try:
        with client(ca_bundle=pki.ca, client_cert=(pki.client_cert, pki.client_key)) as http:
            assert http.request("GET", f"https://127.0.0.1:{server.port}/",
                                headers={}).status == 200
        with client(ca_bundle=pki.ca) as http, pytest.raises(HttpError):
            http.request("GET", f"https://127.0.0.1:{server.port}/", headers={})
    finally:
        server.stop()
    peer = origin.requests[0].peer_cert
    assert peer is not None
    assert dict(pair[0] for pair in peer["subject"])["commonName"] == "pifleet test client"
    assert len(origin.requests) == 1


# -- proxies ---------------------------------------------------------------------------------


def test_https_goes_through_a_connect_tunnel(tls: Running, proxy: Running, pki: Pki,
                                             proxy_log: ProxyLog, origin: Origin) -> None:
    proxy_url = f"http://agent%40pi:p%3Ass@127.0.0.1:{proxy.port}"
    with client(ca_bundle=pki.ca, proxy=proxy_url) as http:
        for _ in range(2):
            response = http.request("GET", f"https://127.0.0.1:{tls.port}/x", headers={})
            assert response.body == b"hello"
    assert len(proxy_log.heads) == 1  # one tunnel, kept alive
    head = proxy_log.heads[0]
    assert head.startswith(f"CONNECT 127.0.0.1:{tls.port} HTTP/")
    # base64("agent@pi:p:ss")
    assert "Proxy-Authorization: Basic YWdlbnRAcGk6cDpzcw==" in head
    assert all("Proxy-Authorization" not in r.headers for r in origin.requests)


def test_http_goes_to_the_proxy_as_an_absolute_uri(plain: Running, proxy: Running,
                                                   proxy_log: ProxyLog, origin: Origin,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"127.0.0.1:{proxy.port}")
    with client() as http:
        response = http.request("GET", f"http://127.0.0.1:{plain.port}/y?z=1", headers={})
    assert response.status == 200
    assert proxy_log.heads[0].startswith(f"GET http://127.0.0.1:{plain.port}/y?z=1 HTTP/1.1")
    assert origin.requests[0].path == f"http://127.0.0.1:{plain.port}/y?z=1"


def test_https_proxy_from_environment(tls: Running, proxy: Running, pki: Pki,
                                      proxy_log: ProxyLog, monkeypatch: pytest.MonkeyPatch,
                                      ) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    with client(ca_bundle=pki.ca) as http:
        assert http.request("GET", f"https://127.0.0.1:{tls.port}/", headers={}).status == 200
    assert proxy_log.heads[0].startswith("CONNECT ")


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "*", " example.com, "
                                      "127.0.0.1"])
def test_no_proxy_bypasses_the_proxy(tls: Running, proxy: Running, pki: Pki,
                                     proxy_log: ProxyLog, monkeypatch: pytest.MonkeyPatch,
                                     no_proxy: str) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    with client(ca_bundle=pki.ca) as http:
        assert http.request("GET", f"https://127.0.0.1:{tls.port}/", headers={}).status == 200
    assert proxy_log.heads == []


def test_unreachable_proxy_is_named_without_credentials() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    with client(proxy=f"http://user:hunter2@127.0.0.1:{port}") as http, \
            pytest.raises(HttpError) as info:
        http.request("GET", "https://example.com/", headers={})
    message = str(info.value)
    assert f"via proxy 127.0.0.1:{port}" in message
    assert "hunter2" not in message


def test_unsupported_proxy_scheme_is_refused_without_credentials() -> None:
    with pytest.raises(ValueError, match="unsupported proxy socks5://proxy") as info:
        HttpClient(proxy="socks5://user:hunter2@proxy:1080")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypass"),
    [
        ("example.com", "example.com", 443, True),
        ("example.com", "s3.example.com", 443, True),
        (".example.com", "example.com", 443, True),
        ("*.example.com", "a.b.example.com", 443, True),
        ("example.com", "badexample.com", 443, False),
        ("example.com:8443", "example.com", 443, False),
        ("example.com:8443", "example.com", 8443, True),
        ("*", "anything", 1, True),
        ("::1", "::1", 443, True),
        ("[::1]:443", "::1", 443, True),
        ("10.0.0.1", "10.0.0.10", 443, False),
        ("", "example.com", 443, False),
    ],
)
def test_no_proxy_matching(no_proxy: str, host: str, port: int, bypass: bool) -> None:
    entries = agent_http._no_proxy_entries({"NO_PROXY": no_proxy})
    assert agent_http._bypasses(host, port, entries) is bypass


def test_proxy_environment_precedence() -> None:
    env = {"HTTP_PROXY": "http://h:1", "https_proxy": "http://s:2"}
    proxies = agent_http._proxies_from(None, env)
    assert (proxies["http"].host, proxies["https"].host) == ("h", "s")
    # https falls back to the http proxy; an explicit proxy wins over the environment.
    assert agent_http._proxies_from(None, {"HTTP_PROXY": "h:1"})["https"].port == 1
    assert agent_http._proxies_from("http://x:3", env)["https"].host == "x"
    assert agent_http._proxies_from(None, {}) == {}


def test_proxy_repr_hides_credentials() -> None:
    proxy = agent_http._parse_proxy("http://user:hunter2@proxy:3128")
    assert "hunter2" not in repr(proxy)
    assert proxy.authorization is not None


def test_module_has_no_boto_import() -> None:
    source = Path(agent_http.__file__).read_text()
    assert "boto" not in source
