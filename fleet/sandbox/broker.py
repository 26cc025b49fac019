"""``Mosquitto``: a real MQTT broker on free loopback ports, for the sandbox and the tests.

A plain listener always; with ``tls`` also a TLS listener that, like AWS IoT, requires a client
certificate signed by the given CA (the certificate's CN becomes the MQTT username). ``stop()``
and ``start()`` again reuse the same ports, which is what the offline tests need; ``freeze()``
and ``thaw()`` (SIGSTOP/SIGCONT) give a broker that holds connections open but answers nothing.

Example::

    with Mosquitto() as broker:
        transport = PahoTransport(broker.host, broker.port, client_id="pi-1", tls=False)
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

INSTALL_HINT = "mosquitto is not installed (apt-get install mosquitto)"
_SEARCH = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin", "/usr/local/opt/mosquitto/sbin")


class BrokerError(RuntimeError):
    """mosquitto is missing, or did not start (the message carries its log)."""


@dataclass(frozen=True)
class BrokerTls:
    """The TLS listener's server certificate, and the CA its clients' certificates must have."""

    ca_file: str
    cert_file: str
    key_file: str
    require_certificate: bool = True


def find_mosquitto() -> str:
    path = shutil.which("mosquitto") or shutil.which(
        "mosquitto", path=os.pathsep.join(_SEARCH))
    if path is None:
        raise BrokerError(INSTALL_HINT)
    return path


def free_ports(count: int = 1, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free on ``host`` right now.

    They are taken below the kernel's ephemeral range when it can be read, so that no client
    socket (whose local port comes from that range) can occupy a broker's port while the
    broker is stopped and keep it from starting again on the same port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low = _ephemeral_low()
    rng = random.Random()  # noqa: S311  (picking a port)
    ports: list[int] = []
    for _ in range(200 if low > 12000 else 0):
        if len(ports) == count:
            return ports
        candidate = rng.randrange(10000, low)
        if candidate not in ports and _bindable(family, host, candidate):
            ports.append(candidate)
    probes = [socket.socket(family) for _ in range(count - len(ports))]
    try:
        for probe in probes:
            probe.bind((host, 0))
        return ports + [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _bindable(family: socket.AddressFamily, host: str, port: int) -> bool:
    with socket.socket(family) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


class Mosquitto:
    def __init__(self, *, host: str = "127.0.0.1", tls: BrokerTls | None = None,
                 allow_anonymous: bool = True, executable: str | None = None,
                 startup_timeout_s: float = 10.0) -> None:
        self.executable = executable or find_mosquitto()
        self.host = host
        self.tls = tls
        self.allow_anonymous = allow_anonymous  # False: plain clients get CONNACK "not authorized"
        self.startup_timeout_s = startup_timeout_s
        self.port = 0  # chosen at the first start, kept across restarts
        self.tls_port = 0
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._frozen = False

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_text(self) -> str:
        """What the broker logged so far (every start appends)."""
        if self._dir is None:
            return ""
        text = ""
        for name in ("mosquitto.out", "mosquitto.log"):  # start-up errors, then the log
            path = Path(self._dir.name) / name
            text += path.read_text(errors="replace") if path.exists() else ""
        return text

    def start(self) -> Mosquitto:
        """Start (again, on the same ports after ``stop``) and return once it accepts
        connections. Chosen ports that something took meanwhile are chosen again on the first
        start; on a restart a port still held (by a client socket) is retried until the
        deadline."""
        if self.running:
            return self
        first = self._dir is None
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="pifleet-mosquitto-")
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if first:
                ports = free_ports(2 if self.tls else 1, self.host)
                self.port, self.tls_port = ports[0], ports[1] if self.tls else 0
            try:
                self._launch(deadline)
                return self
            except BrokerError as exc:
                if "Address already in use" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _launch(self, deadline: float) -> None:
        if self._dir is None:
            raise BrokerError("closed")
        directory = Path(self._dir.name)
        (directory / "mosquitto.out").write_bytes(b"")  # this attempt's start-up messages
        config = directory / "mosquitto.conf"
        config.write_text(self._config(directory / "mosquitto.log"))
        self._log = (directory / "mosquitto.out").open("ab")
        self._process = subprocess.Popen([self.executable, "-c", str(config)],
                                         stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT)
        self._frozen = False
        try:
            self._wait_until_listening(deadline)
        except BaseException:
            self._terminate()
            raise

    def stop(self, *, kill: bool = False) -> None:
        """Stop the broker (its clients see the connection drop); ``start()`` brings it back
        on the same ports. ``kill``: SIGKILL, like a power cut (nothing more is answered)."""
        self._terminate(kill=kill)

    def restart(self) -> Mosquitto:
        self.stop()
        return self.start()

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered (no CONNACK, no PUBACK)."""
        if self._process is not None and self.running:
            self._process.send_signal(signal.SIGSTOP)
            self._frozen = True

    def thaw(self) -> None:
        if self._process is not None and self._frozen:
            self._process.send_signal(signal.SIGCONT)
            self._frozen = False

    def close(self) -> None:
        self._terminate()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _config(self, log_file: Path) -> str:
        lines = ["persistence false", f"allow_anonymous {str(self.allow_anonymous).lower()}",
                 "set_tcp_nodelay true",
                 f"log_dest file {log_file}", "log_type error", "log_type warning",
                 "log_type notice", "log_type information", "log_timestamp_format %H:%M:%S"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to 'mosquitto', who cannot read our files
        lines += ["", f"listener {self.port} {self.host}"]
        if self.tls is not None:
            lines += ["", f"listener {self.tls_port} {self.host}",
                      f"cafile {self.tls.ca_file}", f"certfile {self.tls.cert_file}",
                      f"keyfile {self.tls.key_file}",
                      f"require_certificate {str(self.tls.require_certificate).lower()}",
                      "use_identity_as_username true"]
        return "\n".join(lines) + "\n"

    def _wait_until_listening(self, deadline: float) -> None:
        ports = [port for port in (self.port, self.tls_port) if port]
        process = self._process
        while ports and process is not None:
            if process.poll() is not None:
                raise BrokerError(f"mosquitto exited with {process.returncode}:\n"
                                  f"{self.log_text[-2000:]}")
            try:
                with socket.create_connection((self.host, ports[0]), timeout=0.5):
                    ports.pop(0)
                    continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BrokerError(f"mosquitto did not listen on {self.host}:{ports[0]} within "
                                  f"{self.startup_timeout_s:g} s:\n{self.log_text[-2000:]}")
            time.sleep(0.02)

    def _terminate(self, *, kill: bool = False) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                if kill:
                    process.kill()
                else:
                    process.terminate()
                if self._frozen:
                    process.send_signal(signal.SIGCONT)
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
            self._frozen = False
        if self._log is not None:
            self._log.close()
            self._log = None
