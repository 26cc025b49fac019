"""The telemetry loop's decisions, with a recording transport and a real SQLite outbox.

The transport stand-in implements our own ``Transport`` interface (the MQTT side is exercised
for real in tests/integration/test_telemetry.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from agent.telemetry.deadband import Deadband
from agent.telemetry.loop import Telemetry
from agent.telemetry.outbox import Outbox
from agent.telemetry.shadow import (
    DocumentTooLarge,
    parse_rejection,
    reported_update,
    update_topic,
)
from agent.telemetry.transport import TransportError
from sensors import JUMP, Reading, SensorError

TOPIC = "$aws/things/pi/shadow/update"


class Recorder:
    def __init__(self) -> None:
        # "Disconnected", so the loop's own publisher thread stays idle and each test drains
        # explicitly with drain_once().
        self.connected = False
        self.published: list[tuple[str, dict[str, object]]] = []
        self.handlers: dict[str, Callable[[str, bytes], None]] = {}
        self.fail_next = 0

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def on_connection_change(self, callback: Callable[[bool], None]) -> None: ...

    def subscribe(self, topic: str, callback: Callable[[str, bytes], None]) -> None:
        self.handlers[topic] = callback

    def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> Future[None]:
        future: Future[None] = Future()
        if self.fail_next:
            self.fail_next -= 1
            future.set_exception(TransportError("connection lost"))
        else:
            self.published.append((topic, json.loads(payload)))
            future.set_result(None)
        return future


def reading(value: float, *, at: float = 0.0, flags: frozenset[str] = frozenset()) -> Reading:
    return Reading("climate", {"temperature_c": value, "humidity_pct": 50.0},
                   {"temperature_c": "°C", "humidity_pct": "%"}, at, flags)


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[tuple[Telemetry, Recorder, Outbox, list[float]]]:
    now = [1000.0]
    transport = Recorder()
    outbox = Outbox(tmp_path / "outbox.db")
    tele = Telemetry(thing="pi", sensors=[], outbox=outbox, transport=transport,
                     deadband=Deadband(heartbeat_s=600, clock=lambda: now[0]))
    tele.start()
    yield tele, transport, outbox, now
    tele.stop()
    outbox.close()


def test_deadband_heartbeat_and_flags(
        loop: tuple[Telemetry, Recorder, Outbox, list[float]]) -> None:
    tele, _, outbox, now = loop
    assert tele.submit(reading(21.0))
    assert not tele.submit(reading(21.3))  # within 0.5 °C
    assert tele.submit(reading(21.6))
    assert tele.submit(reading(21.6, flags=frozenset({JUMP})))  # flags changed
    now[0] += 600
    assert tele.submit(reading(21.6, flags=frozenset({JUMP})))  # heartbeat
    assert outbox.stats().pending == 4 and tele.counters.suppressed == 1


def test_drain_publishes_in_order_and_keeps_what_failed(
        loop: tuple[Telemetry, Recorder, Outbox, list[float]]) -> None:
    tele, transport, outbox, _ = loop
    for value in (20.0, 21.0, 22.0):
        tele.submit(reading(value))
    transport.fail_next = 1
    tele.drain_once()
    assert outbox.stats().pending == 1  # the failed one stays for the next drain
    tele.drain_once()
    assert outbox.stats().pending == 0
    temps = [doc["state"]["reported"]["climate"]["temperature_c"]  # type: ignore[index]
             for _, doc in transport.published]
    assert sorted(temps) == [20.0, 21.0, 22.0] and len(temps) == 3
    tokens = [int(str(doc["clientToken"])) for _, doc in transport.published]
    assert len(set(tokens)) == 3


@pytest.mark.parametrize(("code", "requeued"), [(409, True), (429, True), (500, True),
                                                (400, False), (413, False)])
def test_rejections_are_requeued_or_dropped_and_counted(
        loop: tuple[Telemetry, Recorder, Outbox, list[float]], code: int,
        requeued: bool) -> None:
    tele, transport, outbox, _ = loop
    tele.submit(reading(20.0))
    tele.drain_once()
    token = transport.published[0][1]["clientToken"]
    transport.handlers[f"{TOPIC}/rejected"](
        f"{TOPIC}/rejected", json.dumps({"code": code, "message": "no",
                                         "clientToken": token}).encode())
    assert outbox.stats().pending == (1 if requeued else 0)
    assert tele.counters.rejected == 1
    assert tele.counters.dropped_rejected == (0 if requeued else 1)
    assert tele.health()["dropped"] == (0 if requeued else 1)


def test_a_failing_sensor_is_counted_not_fatal(
        loop: tuple[Telemetry, Recorder, Outbox, list[float]]) -> None:
    tele, _, _, _ = loop

    class Broken:
        name = "air"

        def read(self) -> Reading:
            raise SensorError("no reply from the SDS011 on /dev/ttyUSB0", transient=True)

        def health(self) -> dict[str, float | int | str]:
            return {}

        def close(self) -> None: ...

    assert tele.take_reading(Broken()) is None
    assert tele.counters.read_errors == 1
    assert "no reply" in tele.counters.errors["air"]


def test_delta_is_acknowledged_in_the_log(
        loop: tuple[Telemetry, Recorder, Outbox, list[float]]) -> None:
    tele, transport, _, _ = loop
    transport.handlers[f"{TOPIC}/delta"](f"{TOPIC}/delta", b'{"state": {"led": "on"}}')
    assert tele.counters.deltas == 1


def test_documents_are_reported_only_and_bounded() -> None:
    doc = json.loads(reported_update({"climate": {"temperature_c": 20.5}}, "42"))
    assert doc == {"state": {"reported": {"climate": {"temperature_c": 20.5}}},
                   "clientToken": "42"}
    with pytest.raises(DocumentTooLarge, match="at most 8192"):
        reported_update({"blob": "x" * 9000}, "1")
    assert update_topic("pi", "agent") == "$aws/things/pi/shadow/name/agent/update"
    assert parse_rejection(b"garbage").code == 0
    assert parse_rejection(b'{"code": 409, "clientToken": "7"}').retryable


def test_latest_readings_are_published_for_local_apps(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    tele = Telemetry(thing="pi", sensors=[], outbox=outbox, transport=Recorder(),
                     readings_file=tmp_path / "readings" / "latest.json")

    class Air:
        name = "air"

        def read(self) -> Reading:
            return Reading("air", {"pm25_ugm3": 12.0, "pm10_ugm3": 20.0}, {}, 1_800_000_000.0)

        def health(self) -> dict[str, float | int | str]:
            return {}

        def close(self) -> None: ...

    tele.take_reading(Air())
    latest = json.loads((tmp_path / "readings" / "latest.json").read_text())
    assert latest == {"pm25_ugm3": 12.0, "pm10_ugm3": 20.0,
                      "timestamp": "2027-01-15T08:00:00+00:00"}
    outbox.close()
