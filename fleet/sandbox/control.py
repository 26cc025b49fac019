"""Running a sandbox in the foreground and finding or stopping one from another shell.

The running sandbox writes its endpoint and pid to a state file (atomically, removed on exit);
``fleetctl sandbox down`` reads it and sends SIGTERM.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .server import Sandbox
    from .state import Timeouts


class SandboxError(Exception):
    """A sandbox could not be started or stopped; the message says why and what to do."""


def state_file() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(Path.home(), ".cache")
    return Path(base) / "pifleet" / "sandbox.json"


def read_state(path: Path | None = None) -> dict[str, Any] | None:
    path = path or state_file()
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(data, dict) or not _alive(int(data.get("pid", 0))):
        return None  # a file left by a sandbox that died without cleaning up
    return data


def write_credentials_ca(sandbox: Sandbox, *, directory: Path | None = None) -> Path:
    """Write the credentials provider's CA next to the state file, for the agent's
    ``credentials_ca_bundle``.  The pid in the name keeps a second ``up`` (which will refuse to
    run) from overwriting the CA of the sandbox already running; the caller removes the file."""
    directory = directory or state_file().parent
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"credentials-ca-{os.getpid()}.pem"
    path.write_bytes(sandbox.credentials_ca_pem)
    return path


def start(*, host: str, port: int, region: str, timeouts: Timeouts) -> Sandbox:
    from .server import Sandbox  # noqa: PLC0415  (moto is heavy: only when one is started)

    try:
        return Sandbox(host=host, port=port, region=region, timeouts=timeouts).start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise SandboxError(f"port {port} on {host} is already in use; stop what uses it, "
                               "or pass --port 0 to take any free port") from exc
        raise SandboxError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


class Broker:
    """The sandbox's MQTT side: a mosquitto on loopback and the shadow service answering on it."""

    def __init__(self, sandbox: Sandbox) -> None:
        from .broker import Mosquitto  # noqa: PLC0415
        from .shadows import ShadowResponder  # noqa: PLC0415

        self.mosquitto = Mosquitto().start()
        self.responder = ShadowResponder(sandbox.state, self.mosquitto.host,
                                         self.mosquitto.port)
        try:
            self.responder.start()
        except BaseException:
            self.mosquitto.close()
            raise

    @property
    def host(self) -> str:
        return self.mosquitto.host

    @property
    def port(self) -> int:
        return self.mosquitto.port

    def stop(self) -> None:
        self.responder.stop()
        self.mosquitto.close()


def start_broker(sandbox: Sandbox) -> Broker | None:
    """A broker with the shadow service, or None when mosquitto is not installed."""
    from .broker import BrokerError  # noqa: PLC0415

    try:
        return Broker(sandbox)
    except BrokerError as exc:
        log.warning("no MQTT broker for device shadows: %s", exc)
        return None


def run_foreground(sandbox: Sandbox, info: dict[str, Any], *, path: Path | None = None) -> None:
    """Publish ``info`` in the state file and serve until SIGINT or SIGTERM."""
    path = path or state_file()
    existing = read_state(path)
    if existing is not None:
        sandbox.stop()
        raise SandboxError(f"a sandbox is already running at {existing.get('endpoint_url')} "
                           f"(pid {existing.get('pid')}); stop it with `fleetctl sandbox down`")
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT,
                                                                     signal.SIGTERM)}
    _write(path, info)
    try:
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sandbox.stop()


def stop_running(*, path: Path | None = None, timeout_s: float = 10.0) -> dict[str, Any]:
    path = path or state_file()
    info = read_state(path)
    if info is None:
        raise SandboxError(f"no sandbox is running (nothing alive in {path})")
    pid = int(info["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            raise SandboxError(f"the sandbox (pid {pid}) did not stop within {timeout_s:g} s; "
                               f"kill it with `kill -9 {pid}`")
        time.sleep(0.05)
    return info


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; only its parent has not collected it yet.
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _write(path: Path, info: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".sandbox.")
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh)
    os.replace(tmp, path)
