"""Real loopback servers for the HTTP client tests: an HTTP(S) origin that records what it got,
a CONNECT/forwarding proxy, and a throwaway CA with server and client certificates."""

from __future__ import annotations

import datetime
import ipaddress
import select
import socket
import socketserver
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# -- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pifleet test CA")])
    ca = (_builder(ca_name, ca_name, ca_key)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    paths = {"ca": _write(directory / "ca.pem", ca)}
    for role, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH),
                        ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"pifleet test {role}")])
        builder = _builder(name, ca_name, key).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False)
        if role == "server":
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
        paths[f"{role}_cert"] = _write(directory / f"{role}.pem",
                                       builder.sign(ca_key, hashes.SHA256()))
        key_path = directory / f"{role}.key"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        paths[f"{role}_key"] = str(key_path)
    return Pki(**paths)


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey,
             ) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1)))


def _write(path: Path, cert: x509.Certificate) -> str:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


# -- the origin server ---------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer_cert: dict[str, Any] | None = None


@dataclass
class Origin:
    """What the test wants answered, and what the server saw."""

    status: int = 200
    body: bytes = b"hello"
    close_after_response: bool = False  # drop the connection without saying so (stale keep-alive)
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    timeout = 10
    server: _OriginServer

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(5)
            try:
                self.request.do_handshake()
            except (OSError, ssl.SSLError):
                self.request.close()
                raise
        with self.server.origin.lock:
            self.server.origin.connections += 1
        super().setup()

    def _serve(self) -> None:
        origin = self.server.origin
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        peer = self.request.getpeercert() if isinstance(self.request, ssl.SSLSocket) else None
        with origin.lock:
            origin.requests.append(Seen(self.command, self.path, dict(self.headers.items()),
                                        body, peer or None))
            # Read once: with an empty body the client is done after the headers, and a test
            # may set the next answer before this thread writes the body.
            status, answer = origin.status, origin.body
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.send_header("X-Multi", "a")
        self.send_header("X-Multi", "b")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer)
        if origin.close_after_response:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_HEAD = _serve

    def log_message(self, *args: Any) -> None:
        pass


class _OriginServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, origin: Origin, tls: ssl.SSLContext | None, host: str) -> None:
        super().__init__((host, 0), _Handler)
        self.origin = origin
        if tls is not None:
            # The handshake happens in the handler thread, so a failing client cannot stall
            # the accept loop.
            self.socket = tls.wrap_socket(self.socket, server_side=True,
                                          do_handshake_on_connect=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # failed handshakes are what some tests are about


class Running:
    """A server running in a thread; stop() shuts it down and closes its socket."""

    def __init__(self, server: socketserver.BaseServer) -> None:
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def start_origin(origin: Origin, tls: ssl.SSLContext | None = None,
                 host: str = "127.0.0.1") -> Running:
    return Running(_OriginServer(origin, tls, host))


def server_tls(pki: Pki, *, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


# -- the proxy -----------------------------------------------------------------------------


@dataclass
class ProxyLog:
    heads: list[str] = field(default_factory=list)  # request line and headers, as received
    lock: threading.Lock = field(default_factory=threading.Lock)


class _ProxyHandler(socketserver.BaseRequestHandler):
    """CONNECT tunnels; any other method is forwarded as is to the host in its absolute URI."""

    server: _ProxyServer

    def handle(self) -> None:
        client: socket.socket = self.request
        client.settimeout(10)
        head = _read_head(client)
        with self.server.log.lock:
            self.server.log.heads.append(head.decode("latin-1"))
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            with socket.create_connection((host, int(port)), timeout=10) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                _relay(client, upstream)
        else:
            netloc = target.split("/")[2]
            host, _, port = netloc.rpartition(":")
            with socket.create_connection((host, int(port)), timeout=10) as upstream:
                upstream.sendall(head)
                _relay(client, upstream)


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, log: ProxyLog) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.log = log

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def start_proxy(log: ProxyLog) -> Running:
    return Running(_ProxyServer(log))


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _relay(a: socket.socket, b: socket.socket) -> None:
    while True:
        readable, _, _ = select.select([a, b], [], [], 10)
        if not readable:
            return
        for sock in readable:
            data = sock.recv(65536)
            if not data:
                return
            (b if sock is a else a).sendall(data)
