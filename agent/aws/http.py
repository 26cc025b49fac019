"""A small HTTP(S) client on ``http.client`` and ``ssl``, for the agent's AWS calls.

What the agent needs and nothing more: kept-alive connections reused across calls (a poll every
second should not cost a TLS handshake each time), separate connect and read timeouts,
certificate verification with an optional CA bundle, a client certificate for mutual TLS (the
IoT credentials provider), and an HTTP proxy (CONNECT tunnels for https, absolute-URI requests for
http) chosen from the arguments or the usual environment variables.

Network failures raise :class:`HttpError`, whose message says what failed and where (scheme,
host, port, proxy host) but never the path or query (presigned URLs carry credentials), headers,
or proxy credentials.  HTTP error statuses are not exceptions: callers read ``status``.
"""

from __future__ import annotations

import base64
import http.client
import logging
import os
import select
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

__all__ = ["HttpClient", "HttpError", "Response", "StreamResponse"]

log = logging.getLogger(__name__)

# Idle connections kept per (scheme, host, port); more concurrent callers simply open more.
MAX_IDLE_PER_HOST = 4
_DEFAULT_PORTS = {"http": 80, "https": 443}
# What a server's silent close of an idle kept-alive connection looks like when we next use it.
_STALE_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
_NETWORK_ERRORS = (OSError, http.client.HTTPException)


class HttpError(Exception):
    """The request did not get an HTTP response: timeout, refused, reset, DNS or TLS failure."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes


@dataclass(frozen=True)
class _Proxy:
    host: str
    port: int
    # "Basic ..." when the proxy URL had user:pass; kept out of repr.
    authorization: str | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return f" via proxy {_netloc(self.host, self.port)}"


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent to the origin server

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{_netloc(self.host, self.port)}"


_Connection = http.client.HTTPConnection


class StreamResponse:
    """A response whose body is read incrementally with :meth:`read`."""

    def __init__(self, response: http.client.HTTPResponse, describe: str, timeout_s: float):
        self._response = response
        self._describe = describe
        self._timeout_s = timeout_s
        self.status = response.status
        self.headers = _headers(response)

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes of the body (all the rest when ``n < 0``); b"" at the end."""
        try:
            return self._response.read(None if n < 0 else n)
        except _NETWORK_ERRORS as exc:
            raise HttpError(
                f"{_explain(exc, self._timeout_s)} reading the body from {self._describe}"
            ) from exc

    def read_some(self, n: int) -> bytes:
        """Up to ``n`` bytes, whatever has arrived (one socket read); b"" at the end.

        For long bodies: when the connection breaks, the bytes of a ``read(n)`` that was still
        filling up are lost with it, and a resumed download would fetch them again.
        """
        try:
            return self._response.read1(n)
        except _NETWORK_ERRORS as exc:
            raise HttpError(
                f"{_explain(exc, self._timeout_s)} reading the body from {self._describe}"
            ) from exc


class HttpClient:
    """Thread-safe; one instance per process is the intent.  Close it (or use ``with``) to drop
    the idle connections."""

    def __init__(
        self,
        *,
        timeout_s: float = 80.0,
        connect_timeout_s: float = 10.0,
        ca_bundle: str | None = None,
        client_cert: tuple[str, str] | None = None,
        proxy: str | None = None,
        verify: bool = True,
    ) -> None:
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._tls = _tls_context(ca_bundle=ca_bundle, client_cert=client_cert, verify=verify)
        # The environment is read once: a daemon's proxy settings do not change under it.
        self._proxies = _proxies_from(proxy, os.environ)
        self._no_proxy = _no_proxy_entries(os.environ)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._lock = threading.Lock()

    def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes = b""
    ) -> Response:
        """Send one request and read the whole response."""
        target = _parse_url(url)
        conn, response = self._send(method, target, headers, body)
        try:
            data = response.read()
        except _NETWORK_ERRORS as exc:
            conn.close()
            raise HttpError(
                f"{_explain(exc, self._timeout_s)} reading the body from {self._where(target)}"
            ) from exc
        if response.will_close:
            conn.close()
        else:
            self._release(target, conn)
        return Response(response.status, _headers(response), data)

    @contextmanager
    def stream(
        self, method: str, url: str, *, headers: Mapping[str, str]
    ) -> Iterator[StreamResponse]:
        """Send a request and hand over the response unread; the connection is closed on exit
        (an unfinished body cannot be left on a connection that is reused)."""
        target = _parse_url(url)
        conn, response = self._send(method, target, headers, b"")
        try:
            yield StreamResponse(response, self._where(target), self._timeout_s)
        finally:
            # A "Connection: close" response owns the socket: closing only the connection
            # would leave it open until garbage collection when the body was not read.
            response.close()
            conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- sending ----------------------------------------------------------------------------

    def _send(
        self, method: str, target: _Target, headers: Mapping[str, str], body: bytes
    ) -> tuple[_Connection, http.client.HTTPResponse]:
        proxy = self._proxy_for(target)
        send_headers = dict(headers)
        path = target.path
        if proxy is not None and target.scheme == "http":
            # Plain http goes through the proxy as an absolute-URI request, not a tunnel.
            path = target.origin + target.path
            if proxy.authorization:
                send_headers["Proxy-Authorization"] = proxy.authorization
        conn, reused = self._checkout(target, proxy)
        try:
            return conn, self._exchange(conn, method, path, send_headers, body)
        except _STALE_ERRORS as exc:
            conn.close()
            if not reused:
                raise self._failure(exc, "waiting for a response from", target) from exc
            # The server closed the idle connection as we used it: the request never reached
            # it, so one retry on a fresh connection is safe.
            log.debug("kept-alive connection to %s was closed; reconnecting", target.origin)
        except _NETWORK_ERRORS as exc:
            conn.close()
            raise self._failure(exc, "waiting for a response from", target) from exc
        conn = self._connect(target, proxy)
        try:
            return conn, self._exchange(conn, method, path, send_headers, body)
        except _NETWORK_ERRORS as exc:
            conn.close()
            raise self._failure(exc, "waiting for a response from", target) from exc

    @staticmethod
    def _exchange(
        conn: _Connection, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> http.client.HTTPResponse:
        # None rather than b"" so that a GET carries no "Content-Length: 0".
        conn.request(method, path, body=body or None, headers=headers)
        return conn.getresponse()

    def _checkout(self, target: _Target, proxy: _Proxy | None) -> tuple[_Connection, bool]:
        """An idle connection to ``target`` that still looks open, else a new one."""
        while True:
            with self._lock:
                idle = self._idle.get(target.key)
                conn = idle.pop() if idle else None
            if conn is None:
                return self._connect(target, proxy), False
            if _looks_open(conn):
                return conn, True
            conn.close()

    def _release(self, target: _Target, conn: _Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(target.key, [])
            if len(idle) < MAX_IDLE_PER_HOST:
                idle.append(conn)
                return
        conn.close()

    def _connect(self, target: _Target, proxy: _Proxy | None) -> _Connection:
        conn = self._new_connection(target, proxy)
        try:
            conn.connect()  # TCP, the proxy tunnel and the TLS handshake, under connect timeout
        except _NETWORK_ERRORS as exc:
            conn.close()
            raise self._failure(exc, "connecting to", target, self._connect_timeout_s) from exc
        if conn.sock is not None:
            conn.sock.settimeout(self._timeout_s)  # from now on: the read timeout
        return conn

    def _new_connection(self, target: _Target, proxy: _Proxy | None) -> _Connection:
        host, port = (target.host, target.port) if proxy is None else (proxy.host, proxy.port)
        timeout = self._connect_timeout_s
        if target.scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=timeout)
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls)
        if proxy is not None:
            auth = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
            conn.set_tunnel(target.host, target.port, headers=auth)
        return conn

    # -- proxies and errors -----------------------------------------------------------------

    def _proxy_for(self, target: _Target) -> _Proxy | None:
        proxy = self._proxies.get(target.scheme)
        if proxy is None or _bypasses(target.host, target.port, self._no_proxy):
            return None
        return proxy

    def _where(self, target: _Target) -> str:
        proxy = self._proxy_for(target)
        return target.origin + (proxy.where if proxy else "")

    def _failure(
        self, exc: BaseException, phase: str, target: _Target, timeout_s: float | None = None
    ) -> HttpError:
        explained = _explain(exc, self._timeout_s if timeout_s is None else timeout_s)
        return HttpError(f"{explained} {phase} {self._where(target)}")


# -- helpers ------------------------------------------------------------------------------


def _parse_url(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        # A programming or configuration error, not a network failure.
        raise ValueError(f"not an http(s) URL: {parts.scheme}://{parts.hostname or ''}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    return _Target(parts.scheme, parts.hostname, port, path)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _headers(response: http.client.HTTPResponse) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in response.getheaders():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _tls_context(
    *, ca_bundle: str | None, client_cert: tuple[str, str] | None, verify: bool
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_bundle)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_cert is not None:
        context.load_cert_chain(certfile=client_cert[0], keyfile=client_cert[1])
    return context


def _looks_open(conn: _Connection) -> bool:
    """False when the server has closed (or written to) an idle connection.

    An idle kept-alive socket has nothing to read; if it is readable, the server sent EOF
    (or stray bytes), and using it would fail or mix responses.
    """
    sock = conn.sock
    if sock is None:
        return False
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _explain(exc: BaseException, timeout_s: float) -> str:
    """What went wrong, in words, without anything from the request."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or exc})"
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_s:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed without a response"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, http.client.HTTPException):
        return f"invalid HTTP response ({type(exc).__name__})"
    return f"network error ({exc})"


# -- proxy configuration ------------------------------------------------------------------


def _proxies_from(explicit: str | None, env: Mapping[str, str]) -> dict[str, _Proxy]:
    """The proxy for each URL scheme.  An explicit proxy serves both; otherwise https uses
    https_proxy/HTTPS_PROXY and falls back to http_proxy/HTTP_PROXY (many sites set only that,
    for a proxy that does CONNECT), and http uses http_proxy/HTTP_PROXY."""
    if explicit:
        proxy = _parse_proxy(explicit)
        return {"http": proxy, "https": proxy}
    http_value = env.get("http_proxy") or env.get("HTTP_PROXY")
    https_value = env.get("https_proxy") or env.get("HTTPS_PROXY") or http_value
    proxies = {}
    if http_value:
        proxies["http"] = _parse_proxy(http_value)
    if https_value:
        proxies["https"] = _parse_proxy(https_value)
    return proxies


def _parse_proxy(value: str) -> _Proxy:
    parts = urlsplit(value if "://" in value else f"http://{value}")
    if parts.scheme != "http" or not parts.hostname:
        # Name only the scheme and host: the value may hold a password.
        raise ValueError(
            f"unsupported proxy {parts.scheme}://{parts.hostname or ''}: "
            "use http://[user:password@]host:port"
        )
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return _Proxy(parts.hostname, parts.port or 80, authorization)


def _no_proxy_entries(env: Mapping[str, str]) -> tuple[str, ...]:
    value = env.get("no_proxy") or env.get("NO_PROXY") or ""
    entries = []
    for raw in value.replace(" ", ",").split(","):
        entry = raw.strip().lower()
        if entry == "*":
            entries.append(entry)
        elif entry:
            # "*.example.com" and ".example.com" both mean example.com and its subdomains.
            entries.append(entry.removeprefix("*").lstrip("."))
    return tuple(entry for entry in entries if entry)


def _bypasses(host: str, port: int, entries: tuple[str, ...]) -> bool:
    """NO_PROXY matching: ``*`` matches all; ``example.com`` (or ``.example.com``) matches it
    and its subdomains; ``host:port`` matches only that port."""
    host = host.lower()
    for entry in entries:
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if _has_port(entry) else (entry, "", "")
        if entry_port and int(entry_port) != port:
            continue
        name = name.strip("[]")
        if host == name or host.endswith("." + name):
            return True
    return False


def _has_port(entry: str) -> bool:
    head, sep, tail = entry.rpartition(":")
    # "::1" is an address, not "::" port 1; a bracketed IPv6 entry ends in "]:port".
    return bool(sep) and tail.isdigit() and (":" not in head or head.endswith("]"))
