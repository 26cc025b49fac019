"""The daemon: wires configuration, identity, the command client, the engine and the poller, and
speaks to systemd (READY once credentials work and the first poll succeeded, WATCHDOG from the
poll loop, STATUS with what it is doing). SIGTERM stops polling and lets a running hook finish
(up to ``shutdown_grace_s``); SIGHUP re-reads the configuration.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .aws.commands import CommandClient, default_endpoint
from .aws.credentials import Credentials
from .aws.http import HttpClient
from .aws.s3 import DownloadError, download
from .aws.sts import get_caller_identity
from .clock import clock_synchronized
from .config import Config, check_secret_file, load_config, secret_files
from .deploy.atomic import write_atomic
from .deploy.bundle import UnpackLimits
from .deploy.errors import BundleError
from .deploy.executor import CommandExecutor, EngineConfig
from .deploy.hooks import HookRunOptions
from .deploy.layout import DeploymentRoot
from .deploy.spec import Revision, RevisionSource
from .deploy.specification import TrustPolicy
from .identity import IdentityError, credential_source, iot_http_client
from .poller import Activity, Poller
from .systemd import notify, watchdog_interval_s

if TYPE_CHECKING:
    from .telemetry.loop import Telemetry

log = logging.getLogger(__name__)
CLOCK_CHECK_S = 2.0


class StartupError(Exception):
    """The agent cannot start; the message says why and what to do."""


@dataclass
class Wiring:
    """Everything built from one configuration (rebuilt on SIGHUP)."""

    config: Config
    credentials: Callable[[], Credentials]
    host_identifier: str
    poller: Poller


def build(config: Config, *, on_change: Callable[[Activity], None]) -> Wiring:
    for path in secret_files(config):
        check_secret_file(path)
    http = HttpClient(timeout_s=config.aws.read_timeout_s, ca_bundle=config.aws.ca_bundle or None,
                      proxy=config.aws.proxy or None)
    credentials = credential_source(
        config, iot_http_client(config) if config.identity.mode == "iot-cert" else http)
    host = resolve_host_identifier(config, http, credentials)
    region = config.aws.region
    client = CommandClient(endpoint_url=config.aws.commands_endpoint or default_endpoint(region),
                           region=region, credentials=credentials, http=http,
                           agent_version=config.agent.agent_version
                           or f"PIFLEET_{__version__}")

    def fetch(revision: Revision, destination: Path) -> None:
        if revision.source is not RevisionSource.S3 or not revision.bucket or not revision.key:
            raise BundleError(f"{revision.source} revisions are not supported by pifleet-agent; "
                              "push the revision to S3 (fleetctl push)")
        try:
            download(http=http, credentials=credentials, region=region, bucket=revision.bucket,
                     key=revision.key, version=revision.version, etag=revision.etag,
                     destination=destination, endpoint_url=config.aws.s3_endpoint or None)
        except DownloadError as exc:  # its message says what to check: no traceback needed
            raise BundleError(str(exc)) from None

    deploy = config.deploy
    engine = EngineConfig(
        root=DeploymentRoot(Path(config.agent.deployment_root)),
        install_root=Path(config.agent.install_root),
        max_revisions=config.agent.max_revisions,
        limits=UnpackLimits(deploy.max_bundle_bytes, deploy.max_bundle_entries),
        hooks=HookRunOptions(kill_grace_s=deploy.kill_grace_s,
                             outputs_grace_s=deploy.outputs_grace_s))
    trust = TrustPolicy(anchors=Path(config.agent.spec_trust_anchors)
                        if config.agent.spec_trust_anchors else None)
    poller = Poller(client, CommandExecutor(engine, fetch=fetch), host_identifier=lambda: host,
                    trust=trust, poll_interval_s=config.agent.poll_interval_s,
                    max_backoff_s=config.agent.max_backoff_s,
                    max_parallel_groups=config.agent.max_parallel_groups, on_change=on_change)
    return Wiring(config, credentials, host, poller)


def resolve_host_identifier(config: Config, http: HttpClient,
                            credentials: Callable[[], Credentials]) -> str:
    ident = config.identity
    if ident.mode != "iot-cert":
        return ident.host_identifier
    try:
        arn = get_caller_identity(http, credentials, config.aws.region,
                                  config.aws.sts_endpoint or None)
    except Exception as exc:  # noqa: BLE001  (any failure here stops start-up with its reason)
        raise StartupError(f"cannot learn this device's identity: {exc}") from None
    if ident.host_identifier and ident.host_identifier != arn:
        raise StartupError(
            f"the device certificate yields the session ARN {arn}, but the configuration says "
            f"the device is registered as {ident.host_identifier}; re-register the device with "
            "the new ARN (fleetctl register) or fix host_identifier in agent.toml")
    return arn


class AgentService:
    def __init__(self, config_path: Path) -> None:
        self._config_path = config_path
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._ready = False
        self._status_path: Path | None = None
        self._identity: dict[str, str] = {}
        self._last_watchdog = 0.0
        self._telemetry: Telemetry | None = None

    def run(self) -> int:
        self._install_signals()
        while True:
            config = load_config(self._config_path)
            self._status_path = Path(config.agent.status_file)
            if config.agent.wait_for_clock_sync and not self._wait_for_clock():
                return 0
            try:
                wiring = build(config, on_change=self._publish)
            except (IdentityError, StartupError) as exc:
                raise StartupError(str(exc)) from None
            self._identity = {"mode": config.identity.mode,
                              "host_identifier": wiring.host_identifier}
            log.info("pifleet-agent %s polling as %s (%s)", __version__,
                     wiring.host_identifier, config.identity.mode)
            wiring.poller.recover()
            telemetry = self._telemetry = self._start_telemetry(config, wiring)
            loop_stop = threading.Event()
            watcher = threading.Thread(target=self._relay_stop,
                                       args=(loop_stop, wiring.poller), daemon=True)
            watcher.start()
            wiring.poller.run(loop_stop, heartbeat=self._heartbeat)
            reloading = self._reload.is_set() and not self._stop.is_set()
            self._finish(wiring.poller, config, reloading=reloading)
            if telemetry is not None:
                telemetry.stop()
                self._telemetry = None
            if not reloading:
                return 0
            self._reload.clear()
            notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            log.info("reloading the configuration")

    def _start_telemetry(self, config: Config, wiring: Wiring) -> Telemetry | None:
        if not config.telemetry.enabled:
            return None
        # Imported only when enabled: MQTT, SQLite and the sensor stack cost memory.
        from .telemetry.setup import build_telemetry, pi_health  # noqa: PLC0415

        poller = wiring.poller

        def status() -> dict[str, Any]:
            return {"version": __version__, "identity": self._identity,
                    **poller.activity.snapshot(),
                    "pi": pi_health(config.agent.deployment_root)}

        telemetry = build_telemetry(config, status=status)
        telemetry.start()
        log.info("telemetry to %s as thing %s with %d sensor(s)", config.telemetry.endpoint,
                 telemetry.thing, len(config.sensors))
        return telemetry

    def _relay_stop(self, loop_stop: threading.Event, poller: Poller) -> None:
        while not (self._stop.is_set() or self._reload.is_set()):
            self._stop.wait(0.2)
        loop_stop.set()
        poller.wake()  # out of a back-off sleep at once

    def _finish(self, poller: Poller, config: Config, *, reloading: bool) -> None:
        if not reloading:
            notify("STOPPING=1", "STATUS=stopping: waiting for running hooks")
        if not poller.wait_idle(config.agent.shutdown_grace_s):
            log.warning("a command was still running after %.0f s; leaving it (its event "
                        "will be reported failed after the restart)", config.agent.shutdown_grace_s)
        poller.shutdown()

    def _wait_for_clock(self) -> bool:
        said = False
        while not self._stop.is_set():
            synced = clock_synchronized()
            if synced is None or synced:
                return True
            if not said:
                message = ("waiting for the system clock to be synchronised (NTP) before "
                           "signing requests: a Raspberry Pi has no real-time clock")
                log.warning(message)
                notify(f"STATUS={message}")
                self._write_status({"state": "waiting for clock sync"})
                said = True
            self._heartbeat()
            self._stop.wait(CLOCK_CHECK_S)
        return False

    def _heartbeat(self) -> None:
        interval = watchdog_interval_s()
        now = time.monotonic()
        if interval is not None and now - self._last_watchdog >= interval:
            notify("WATCHDOG=1")
            self._last_watchdog = now

    def _publish(self, activity: Activity) -> None:
        snapshot = activity.snapshot()
        if activity.state == "polling" and not self._ready:
            self._ready = True
            notify("READY=1")
        if self._telemetry is not None:
            self._telemetry.status_changed()
        running = ", ".join(f"{d} {e}" for d, e in activity.running.items())
        notify(f"STATUS={activity.state}{': ' + running if running else ''}")
        self._write_status(snapshot)

    def _write_status(self, snapshot: dict[str, Any]) -> None:
        if self._status_path is None:
            return
        document = {"version": __version__, "pid": os.getpid(), "updated": time.time(),
                    "identity": self._identity, **snapshot}
        try:
            write_atomic(self._status_path, json.dumps(document, indent=1))
        except OSError as exc:
            log.warning("cannot write %s: %s", self._status_path, exc.strerror)

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
