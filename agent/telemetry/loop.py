"""The telemetry loop: sensors read on their own schedules, readings worth sending go to the
outbox, and a publisher drains the outbox to the classic shadow in order whenever the broker is
reachable. The agent's own status goes to the named shadow ``agent``.

Nothing is lost between a sensor and the broker: a reading is deleted from the outbox only when
the broker acknowledged it (QoS 1 PUBACK); a retryable rejection from the shadow service
(409, 429, 5xx) queues it again; a final one (400, 413) is dropped and counted.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sensors import Reading, Sensor, SensorError

from .deadband import Deadband
from .outbox import Outbox
from .shadow import DocumentTooLarge, parse_rejection, reported_update, shadow_prefix
from .transport import Transport, TransportError

log = logging.getLogger(__name__)

PUBLISH_WINDOW = 100  # messages per batch (paho keeps 20 in flight): acknowledged in id order
ACK_TIMEOUT_S = 30.0
RECENT_TOKENS = 1000  # payloads kept in memory to re-queue after a retryable rejection


@dataclass
class Counters:
    readings: int = 0
    sent: int = 0
    suppressed: int = 0  # within the deadband
    read_errors: int = 0
    rejected: int = 0
    requeued: int = 0
    dropped_rejected: int = 0
    deltas: int = 0
    errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SensorSchedule:
    sensor: Sensor
    interval_s: float


class Telemetry:
    def __init__(self, *, thing: str, sensors: list[SensorSchedule], outbox: Outbox,
                 transport: Transport, deadband: Deadband | None = None,
                 status: Callable[[], Mapping[str, Any]] | None = None,
                 status_interval_s: float = 60.0, readings_file: Path | None = None) -> None:
        self.thing = thing
        self._schedules = sensors
        self._outbox = outbox
        self._transport = transport
        self._deadband = deadband or Deadband()
        self._status = status
        self._status_interval_s = status_interval_s
        self._readings_file = readings_file
        self._latest: dict[str, Any] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._status_changed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._recent: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._last_token = 0
        self._lock = threading.Lock()
        self.counters = Counters()

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        prefix = shadow_prefix(self.thing)
        self._transport.subscribe(f"{prefix}/update/rejected", self._on_rejected)
        self._transport.subscribe(f"{prefix}/update/delta", self._on_delta)
        self._transport.on_connection_change(lambda up: self._wake.set() if up else None)
        self._transport.start()
        for schedule in self._schedules:
            self._spawn(f"sensor-{schedule.sensor.name}", self._sensor_loop, schedule)
        self._spawn("telemetry-publisher", self._publisher)
        if self._status is not None:
            self._spawn("telemetry-status", self._status_loop)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._status_changed.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._transport.stop()
        for schedule in self._schedules:
            try:
                schedule.sensor.close()
            except Exception:  # closing one sensor must not keep the others open
                log.warning("closing sensor %s failed", schedule.sensor.name, exc_info=True)
        self._outbox.flush()

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- sensors -----------------------------------------------------------------------

    def _sensor_loop(self, schedule: SensorSchedule) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.take_reading(schedule.sensor)
            self._stop.wait(max(0.0, schedule.interval_s - (time.monotonic() - started)))

    def take_reading(self, sensor: Sensor) -> Reading | None:
        try:
            reading = sensor.read()
        except SensorError as exc:
            self.counters.read_errors += 1
            self.counters.errors[sensor.name] = str(exc)
            log.log(logging.INFO if exc.transient else logging.WARNING, "%s: %s",
                    sensor.name, exc)
            return None
        except Exception as exc:  # a driver bug must not stop the loop
            self.counters.read_errors += 1
            self.counters.errors[sensor.name] = f"{type(exc).__name__}: {exc}"
            log.exception("%s: unexpected error", sensor.name)
            return None
        self.counters.readings += 1
        self.counters.errors.pop(sensor.name, None)
        self.submit(reading)
        self._publish_locally(reading)
        return reading

    def _publish_locally(self, reading: Reading) -> None:
        """The latest values of every sensor in one JSON file, for apps on the Pi (the
        aqi-app's page reads it): flat keys, written atomically."""
        if self._readings_file is None:
            return
        with self._lock:
            self._latest.update(reading.values)
            self._latest["timestamp"] = datetime.fromtimestamp(reading.timestamp, UTC).isoformat()
            document = json.dumps(self._latest, sort_keys=True)
        try:
            # Renamed into place, never fsync'd: a reader sees a whole file, and after a power
            # cut the next reading rewrites it; an fsync per reading would wear the SD card.
            self._readings_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._readings_file.with_name(f".{self._readings_file.name}.tmp")
            tmp.write_text(document)
            tmp.replace(self._readings_file)
        except OSError as exc:
            log.warning("cannot write %s: %s", self._readings_file, exc.strerror)

    def submit(self, reading: Reading) -> bool:
        """Queue a reading for the shadow unless it is within the deadband."""
        if not self._deadband.should_send(reading):
            self.counters.suppressed += 1
            return False
        values = {k: v for k, v in reading.as_dict().items() if k != "sensor"}
        token = self._next_token()
        try:
            payload = reported_update({reading.sensor: values}, token)
        except DocumentTooLarge as exc:
            log.error("reading of %s not sent: %s", reading.sensor, exc)
            return False
        topic = f"{shadow_prefix(self.thing)}/update"
        self._outbox.put(topic, payload)
        self._remember(token, topic, payload)
        self._deadband.sent(reading)
        self._wake.set()
        return True

    # -- publishing --------------------------------------------------------------------

    def _publisher(self) -> None:
        while not self._stop.is_set():
            if not self._transport.connected or not self.drain_once():
                self._wake.wait(5.0)
                self._wake.clear()

    def drain_once(self) -> bool:
        """Publish a window of queued messages; True if any were delivered."""
        batch = self._outbox.peek(PUBLISH_WINDOW)
        if not batch:
            return False
        pending: list[tuple[int, Future[None]]] = []
        for message in batch:
            try:
                pending.append((message.id, self._transport.publish(message.topic,
                                                                    message.payload)))
            except TransportError:
                break
        delivered: list[int] = []
        failed: list[int] = []
        for message_id, future in pending:
            # Acknowledged means delivered, even after an earlier failure: sending it again
            # would duplicate it. (A dropped connection fails everything in flight together,
            # since acknowledgements arrive in order, so order is kept in practice.)
            try:
                future.result(timeout=ACK_TIMEOUT_S)
                delivered.append(message_id)
            except (TransportError, TimeoutError):
                failed.append(message_id)
        self._outbox.ack(delivered)
        self._outbox.nack(failed)
        self.counters.sent += len(delivered)
        return bool(delivered)

    def _next_token(self) -> str:
        """Increasing microsecond stamps: unique, and ordered like the readings they carry."""
        with self._lock:
            self._last_token = max(self._last_token + 1, time.time_ns() // 1000)
            return str(self._last_token)

    def _remember(self, token: str, topic: str, payload: bytes) -> None:
        with self._lock:
            self._recent[token] = (topic, payload)
            self._recent.move_to_end(token)
            while len(self._recent) > RECENT_TOKENS:
                self._recent.popitem(last=False)

    def _on_rejected(self, _topic: str, payload: bytes) -> None:
        rejection = parse_rejection(payload)
        self.counters.rejected += 1
        with self._lock:
            original = self._recent.pop(rejection.client_token or "", None)
        if rejection.retryable and original is not None:
            self.counters.requeued += 1
            self._outbox.put(*original)
            self._wake.set()
            log.info("shadow update %s refused (%d %s); queued again", rejection.client_token,
                     rejection.code, rejection.message)
        else:
            self.counters.dropped_rejected += 1
            log.warning("shadow update %s refused (%d %s); dropped", rejection.client_token,
                        rejection.code, rejection.message)

    def _on_delta(self, _topic: str, payload: bytes) -> None:
        # The device reports; it does not take orders through ``desired``. Say so, once per
        # change, so an operator setting desired values learns why nothing happens.
        self.counters.deltas += 1
        log.info("the shadow's desired state differs from what this device reports; "
                 "pifleet-agent only reports and leaves desired to the operator: %s",
                 payload[:200].decode(errors="replace"))

    # -- the agent's own status ---------------------------------------------------------

    def _status_loop(self) -> None:
        last: bytes | None = None
        while not self._stop.is_set():
            if self._transport.connected and self._status is not None:
                document = {**self._status(), "telemetry": self.health()}
                body = json.dumps(document, sort_keys=True, default=str).encode()
                if body != last:
                    try:
                        self._transport.publish(
                            f"{shadow_prefix(self.thing, 'agent')}/update",
                            reported_update(document, f"status-{int(time.time())}"))
                        last = body
                    except (TransportError, DocumentTooLarge) as exc:
                        log.info("agent status not published: %s", exc)
            self._status_changed.wait(self._status_interval_s)
            self._status_changed.clear()

    def status_changed(self) -> None:
        """Publish the agent status now (a deployment started or ended), not at the interval."""
        self._status_changed.set()

    def health(self) -> dict[str, Any]:
        stats = self._outbox.stats()
        c = self.counters
        return {"connected": self._transport.connected, "readings": c.readings, "sent": c.sent,
                "suppressed": c.suppressed, "read_errors": c.read_errors,
                "rejected": c.rejected, "dropped": stats.dropped + c.dropped_rejected,
                "outbox_pending": stats.pending, "outbox_oldest_age_s": stats.oldest_age_s,
                "sensor_errors": dict(c.errors),
                "sensors": {s.sensor.name: s.sensor.health() for s in self._schedules}}
