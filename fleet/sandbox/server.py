"""Runs the sandbox: one threaded HTTP server on a loopback port, plus the orchestrator's ticker.

``Sandbox`` is what ``fleetctl sandbox up`` and the test fixtures start; ``env()`` gives the
variables that point boto3, the AWS CLI and pifleet-agent at it.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import BaseWSGIServer, ThreadedWSGIServer, WSGIRequestHandler

from .app import SandboxApp
from .auth import CredentialStore
from .iot_credentials import CredentialsProvider
from .orchestrator import tick
from .specs import SigningIdentity
from .state import ACCOUNT_ID, DEFAULT_REGION, State, Timeouts

TICK_S = 0.2
# The credentials fleetctl and tests use against the sandbox; moto accepts any, these are
# the conventional ones (never real keys).
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"  # noqa: S105  (a placeholder, not a secret)


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass  # one line per poll of 100 agents would drown everything else


class _Server(ThreadedWSGIServer):
    # A fleet of agents connects at once; the default backlog would refuse or reset some.
    request_queue_size = 1024


@dataclass(frozen=True)
class Endpoint:
    url: str
    region: str
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = SECRET_ACCESS_KEY
    account_id: str = ACCOUNT_ID

    def env(self) -> dict[str, str]:
        """Environment for boto3/AWS CLI clients (every service at the sandbox)."""
        return {"AWS_ENDPOINT_URL": self.url, "AWS_DEFAULT_REGION": self.region,
                "AWS_REGION": self.region, "AWS_ACCESS_KEY_ID": self.access_key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret_access_key}

    def client(self, service: str, *, retries: int = 1) -> Any:
        """A boto3 client for ``service`` at the sandbox (one attempt: tests see errors)."""
        return boto3.client(service, endpoint_url=self.url, region_name=self.region,
                            aws_access_key_id=self.access_key_id,
                            aws_secret_access_key=self.secret_access_key,
                            config=Config(retries={"total_max_attempts": retries}))

    def as_dict(self) -> dict[str, str]:
        return {"endpoint_url": self.url, "region": self.region,
                "aws_access_key_id": self.access_key_id,
                "aws_secret_access_key": self.secret_access_key, "account_id": self.account_id}


class Sandbox:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, region: str = DEFAULT_REGION,
                 strict: bool = False, timeouts: Timeouts | None = None) -> None:
        self.state = State(region=region, timeouts=timeouts)
        self.credentials = CredentialStore(account_id=self.state.account_id)
        self.app = SandboxApp(self.state, credentials=self.credentials,
                              signer=SigningIdentity.generate(),
                              moto_app=DomainDispatcherApplication(create_backend_app),
                              strict=strict)
        if port:
            _check_free(host, port)
        try:
            self._server: BaseWSGIServer = _Server(host, port, self.app,
                                                   handler=_QuietHandler)
        except SystemExit as exc:
            # werkzeug prints its own message and exits on EADDRINUSE; we want the error.
            raise OSError(errno.EADDRINUSE, f"port {port} is in use") from exc
        try:
            # The IoT credentials provider (mutual TLS) on a port of its own, as in AWS.
            self.credentials_provider = CredentialsProvider(
                self.credentials, account_id=self.state.account_id, region=region,
                # Late-bound: tests replace state.clock after the sandbox starts.
                clock=lambda: self.state.clock(), host=host)  # noqa: PLW0108
        except BaseException:
            self._server.server_close()
            raise
        self.app.credentials_ca_pem = self.credentials_provider.ca.ca_pem
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    @property
    def endpoint(self) -> Endpoint:
        host, port = self._server.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        return Endpoint(f"http://{host_text}:{port}", self.state.region)

    @property
    def credentials_endpoint(self) -> str:
        """``https://127.0.0.1:<port>``: the agent's ``credentials_endpoint`` (iot-cert mode)."""
        return self.credentials_provider.url

    @property
    def credentials_ca_pem(self) -> bytes:
        """The CA that issued the credentials endpoint's server certificate."""
        return self.credentials_provider.ca.ca_pem

    @property
    def credentials_ca_file(self) -> str:
        """A file holding ``credentials_ca_pem`` (the agent's ``credentials_ca_bundle``); it is
        removed when the sandbox stops."""
        return str(self.credentials_provider.ca_file)

    def start(self) -> Sandbox:
        for target in (self._server.serve_forever, self._ticker):
            thread = threading.Thread(target=target, daemon=True, name="pifleet-sandbox")
            thread.start()
            self._threads.append(thread)
        self.credentials_provider.start()
        return self

    def serve_forever(self) -> None:
        """Foreground mode (``fleetctl sandbox up``): returns when ``stop`` is called."""
        ticker = threading.Thread(target=self._ticker, daemon=True)
        ticker.start()
        self.credentials_provider.start()
        self._server.serve_forever()

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self.credentials_provider.stop()
        for thread in self._threads:
            thread.join(timeout=5)

    def _ticker(self) -> None:
        """Event timeouts and queued targets advance even when nobody calls the API."""
        while not self._stopping.wait(TICK_S):
            with self.state.lock:
                tick(self.state)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def _check_free(host: str, port: int) -> None:
    """Fail with OSError(EADDRINUSE) before werkzeug would print to stderr and exit."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or the deadline passes (for tests and the demo)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
