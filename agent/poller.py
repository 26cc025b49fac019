"""The command loop: poll CodeDeploy for host commands, run them on the engine, report back.

Per command, as the official agent does it (with its bugs fixed): get and verify the signed
deployment specification, work out whether the command is a no-op, acknowledge, honour a
``Succeeded``/``Failed`` answer, run it inside the ongoing-deployment tracking file, and send
exactly one completion. Commands of different deployment groups run at the same time; commands
of one group never do. Errors back off on the official schedule (10 s ... 90 s).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from .deploy.diagnostics import Diagnostics
from .deploy.errors import DeployError
from .deploy.executor import CommandExecutor
from .deploy.specification import TrustPolicy, read_deployment_specification
from .deploy.tracking import InFlight

log = logging.getLogger(__name__)

MAX_ERROR_COUNT = 10
OFFICIAL_MAX_BACKOFF_S = 90.0


def backoff_s(errors: int, max_backoff_s: float = OFFICIAL_MAX_BACKOFF_S) -> float:
    """The official agent's sleep after ``errors`` consecutive failed polls: 10, 13, ... 90 s,
    scaled so that it ends at ``max_backoff_s``."""
    n = min(max(errors, 1), MAX_ERROR_COUNT)
    official = math.floor(1.2675**n * OFFICIAL_MAX_BACKOFF_S / 1.2675**MAX_ERROR_COUNT)
    return official * max_backoff_s / OFFICIAL_MAX_BACKOFF_S


def _names_this_host(target: str, host: str) -> bool:
    """The official agent accepts any substring of its identifier (AWS may send a shorter
    form). We keep that, but only where the match ends at the end of an ARN component, so that
    a command for ``user/pi-1`` is never run by ``user/pi-10``."""
    start = host.find(target)
    while start != -1:
        end = start + len(target)
        if end == len(host) or host[end] in "/:":
            return True
        start = host.find(target, start + 1)
    return False


def _error_kind(exc: Exception) -> str:
    """What stays the same across attempts of one failure (messages carry times and ids)."""
    return str(getattr(exc, "code", "") or type(exc).__name__)


class CommandService(Protocol):
    def poll_host_command(self, host_identifier: str) -> dict[str, Any] | None: ...

    def get_deployment_specification(self, execution_id: str,
                                     host_identifier: str) -> dict[str, Any]: ...

    def put_host_command_acknowledgement(self, command_id: str,
                                         diagnostics: dict[str, str] | None) -> str | None: ...

    def put_host_command_complete(self, command_id: str, status: str,
                                  diagnostics: dict[str, str] | None) -> None: ...


@dataclass
class Activity:
    """What the agent is doing, for ``pifleet-agent status``, systemd STATUS and the shadow."""

    state: str = "starting"
    running: dict[str, str] = field(default_factory=dict)  # deployment id -> event
    last_results: list[dict[str, Any]] = field(default_factory=list)
    last_poll: float | None = None
    last_error: str | None = None
    consecutive_errors: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {"state": self.state, "running": dict(self.running),
                "last_results": list(self.last_results[-20:]), "last_poll": self.last_poll,
                "last_error": self.last_error, "consecutive_errors": self.consecutive_errors}


def _json_envelope(payload: str) -> dict[str, str]:
    return {"Format": "JSON", "Payload": payload}


class Poller:
    def __init__(self, service: CommandService, executor: CommandExecutor, *,
                 host_identifier: Callable[[], str], trust: TrustPolicy,
                 poll_interval_s: float = 1.0, max_parallel_groups: int = 4,
                 max_backoff_s: float = OFFICIAL_MAX_BACKOFF_S,
                 on_change: Callable[[Activity], None] | None = None) -> None:
        self._service = service
        self._executor = executor
        self._host_identifier = host_identifier
        self._trust = trust
        self._interval = poll_interval_s
        self._max_backoff_s = max_backoff_s
        # The kind of the failure being backed off from, and when it began; None when polling.
        self._failing: tuple[str, float] | None = None
        self._failed_polls = 0  # in this outage (consecutive_errors stops at the cap)
        self._pool = ThreadPoolExecutor(max_workers=max_parallel_groups,
                                        thread_name_prefix="pifleet-command")
        self._group_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._futures: set[Future[None]] = set()
        self.activity = Activity()
        self._on_change = on_change or (lambda _: None)
        # Set when a command finishes (its next event is usually waiting) or on shutdown.
        self._wake = threading.Event()
        # The command a previous run died in, while the service has not acknowledged it failed.
        self._unreported: tuple[InFlight, Diagnostics] | None = None

    def wake(self) -> None:
        """Poll now instead of after the interval (or the back-off)."""
        self._wake.set()

    # -- start-up ----------------------------------------------------------------------

    def recover(self) -> str | None:
        """Report the command a previous run died in as failed (code 7); its deployment id."""
        found = self._executor.recover()
        if found is None:
            return None
        in_flight, diagnostics = found
        log.warning("deployment %s was interrupted by an agent restart; reporting its command "
                    "failed", in_flight.deployment_id)
        # Until the service has heard it, the tracking file stays: otherwise an unreachable
        # endpoint at start-up (a Pi booting after a power cut, Wi-Fi not up yet) would lose the
        # report, and the deployment would hang until the service's timeout (up to an hour).
        self._executor.tracker.keep(in_flight)
        self._unreported = (in_flight, diagnostics)
        try:
            self._report_interrupted()
        except Exception as exc:  # noqa: BLE001  (retried before every poll, with back-off)
            log.warning("cannot report the interrupted command of %s yet, will retry: %s",
                        in_flight.deployment_id, exc)
        return in_flight.deployment_id

    def _report_interrupted(self) -> None:
        if self._unreported is None:
            return
        in_flight, diagnostics = self._unreported
        self._service.put_host_command_complete(
            in_flight.host_command_identifier, "Failed", _json_envelope(diagnostics.payload()))
        self._executor.tracker.end(in_flight.deployment_id)
        self._unreported = None

    # -- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event, *, heartbeat: Callable[[], None] = lambda: None) -> None:
        while not stop.is_set():
            heartbeat()
            wait = self._interval
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001  (a daemon's loop: every failure backs off)
                self.activity.consecutive_errors = min(self.activity.consecutive_errors + 1,
                                                       MAX_ERROR_COUNT)
                self.activity.last_error = str(exc)
                wait += backoff_s(self.activity.consecutive_errors, self._max_backoff_s)
                self._log_failure(exc, wait)
                self._changed("backing off")
            self._wake.wait(wait)
            self._wake.clear()

    def _log_failure(self, exc: Exception, wait: float) -> None:
        """A warning when polling starts failing or fails differently, not per attempt: an
        outage of hours must not fill the journal (each attempt is still logged at DEBUG)."""
        kind = _error_kind(exc)
        self._failed_polls += 1
        if self._failing is None or self._failing[0] != kind:
            started = self._failing[1] if self._failing else time.monotonic()
            self._failing = (kind, started)
            log.warning("polling failed, backing off (up to %g s between attempts) until it "
                        "works again: %s", self._max_backoff_s, exc)
        log.debug("polling failed (%d in a row), next try in %.1f s: %s",
                  self.activity.consecutive_errors, wait, exc)

    def poll_once(self) -> bool:
        """One PollHostCommand; a command is handed to a worker. True when one came."""
        self._report_interrupted()  # before any new command: its deployment is waiting on it
        host = self._host_identifier()
        command = self._service.poll_host_command(host)
        self.activity.last_poll = time.time()
        if self._failing is not None:
            log.info("polling works again after %d failed polls over %.0f s",
                     self._failed_polls, time.monotonic() - self._failing[1])
            self._failing, self._failed_polls = None, 0
        if self.activity.consecutive_errors or self.activity.state != "polling":
            self.activity.consecutive_errors = 0
            self.activity.last_error = None
            self._changed("polling")
        if not command:
            return False
        self._check_command(command, host)
        future = self._pool.submit(self._process, command, host)
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return True

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait for running commands (graceful shutdown); False if some still run."""
        deadline = time.monotonic() + timeout_s
        for future in list(self._futures):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                future.result(timeout=remaining)
            except TimeoutError:
                return False
            except Exception:  # noqa: BLE001, S112  (already logged by the worker)
                continue
        return True

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- one command -------------------------------------------------------------------

    @staticmethod
    def _check_command(command: dict[str, Any], host: str) -> None:
        target = str(command.get("HostIdentifier") or "")
        if not target or not _names_this_host(target, host):
            raise DeployError(f"received a command for host {target!r}, but this agent is "
                              f"{host!r}; refusing it")
        if not command.get("CommandName"):
            raise DeployError("received a command without a CommandName; refusing it")

    def _process(self, command: dict[str, Any], host: str) -> None:
        command_id = str(command["HostCommandIdentifier"])
        name = str(command["CommandName"])
        try:
            response = self._service.get_deployment_specification(
                str(command["DeploymentExecutionId"]), host)
            spec = read_deployment_specification(response, self._trust)
        except Exception as exc:  # noqa: BLE001  (reported to the service, never executed)
            log.error("refusing %s: %s", name, exc)
            self._complete(command_id, Diagnostics.failure(
                exc if isinstance(exc, DeployError) else DeployError(str(exc))))
            return
        noop = self._executor.is_noop(name, spec)
        status = self._service.put_host_command_acknowledgement(
            command_id, _json_envelope(json.dumps({"IsCommandNoop": noop},
                                                  separators=(",", ":"))))
        if status == "Succeeded":
            return
        if status == "Failed":
            if noop:  # completing a no-op the service gave up on unblocks the deployment
                self._complete(command_id, Diagnostics.success(noop=True))
            return
        with self._group_lock(spec.deployment_group_id):
            self.activity.running[spec.deployment_id] = name
            self._changed("running")
            # One line per event at INFO: `journalctl -u pifleet-agent` tells what happened.
            log.info("deployment %s: %s started", spec.deployment_id, name)
            started = time.monotonic()
            try:
                diagnostics = self._executor.run_command(name, spec,
                                                         host_command_identifier=command_id)
            finally:
                self.activity.running.pop(spec.deployment_id, None)
        took = time.monotonic() - started
        if diagnostics.succeeded:
            log.info("deployment %s: %s succeeded in %.1f s", spec.deployment_id, name, took)
        else:
            log.warning("deployment %s: %s failed in %.1f s (error code %d): %s",
                        spec.deployment_id, name, took, int(diagnostics.error_code),
                        diagnostics.message[:200])
        self.activity.last_results.append({
            "deployment_id": spec.deployment_id, "event": name, "time": time.time(),
            "error_code": int(diagnostics.error_code), "message": diagnostics.message[:200]})
        del self.activity.last_results[:-20]
        self._complete(command_id, diagnostics)
        self._changed("polling")
        self.wake()

    def _complete(self, command_id: str, diagnostics: Diagnostics) -> None:
        status = "Succeeded" if diagnostics.succeeded else "Failed"
        self._service.put_host_command_complete(command_id, status,
                                                _json_envelope(diagnostics.payload()))

    def _group_lock(self, group_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._group_locks.setdefault(group_id, threading.Lock())

    def _changed(self, state: str) -> None:
        self.activity.state = "running" if self.activity.running else state
        self._on_change(self.activity)
