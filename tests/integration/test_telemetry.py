"""Telemetry end to end on a real mosquitto: sensors -> outbox -> MQTT -> shadow service ->
the sandbox's iot-data, with the broker going away and coming back."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.telemetry.deadband import Deadband
from agent.telemetry.loop import SensorSchedule, Telemetry
from agent.telemetry.mqtt_paho import PahoTransport
from agent.telemetry.outbox import Outbox
from agent.telemetry.transport import Backoff
from fleet.sandbox.broker import Mosquitto
from fleet.sandbox.server import Sandbox
from fleet.sandbox.shadows import ShadowResponder
from sensors.simulated import SimulatedDHT11
from tests.support.link import Link
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
THING = "pi-telemetry"




class Observer:
    """A second MQTT client recording every accepted shadow update (the shadow's history)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.tokens: list[str] = []
        self.documents: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.transport = PahoTransport(broker.host, broker.port, client_id="observer",
                                       tls=False)
        self.transport.subscribe(f"$aws/things/{THING}/shadow/update/accepted", self._accepted)
        self.transport.start()

    def _accepted(self, _topic: str, payload: bytes) -> None:
        document = json.loads(payload)
        with self._lock:
            self.tokens.append(document.get("clientToken", ""))
            self.documents.append(document)

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.tokens)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with shadow_stack(tmp_path) as parts:
        yield parts


@contextlib.contextmanager
def shadow_stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The sandbox's shadow service on a real mosquitto, with a second client (the observer)
    recording every accepted shadow update."""
    with Sandbox() as sandbox, Mosquitto() as broker:
        sandbox.app.reset()
        sandbox.endpoint.client("iot").create_thing(thingName=THING)
        responder = ShadowResponder(sandbox.state, broker.host, broker.port)
        responder.start()
        observer = Observer(broker)
        wait_for(lambda: observer.transport.connected, 10, "the observer")
        try:
            yield {"sandbox": sandbox, "broker": broker, "observer": observer,
                   "tmp": tmp_path}
        finally:
            observer.transport.stop()
            responder.stop()


def telemetry(stack: dict[str, Any], *, interval_s: float = 0.1,
              port: int | None = None) -> Telemetry:
    broker: Mosquitto = stack["broker"]
    transport = PahoTransport(broker.host, port or broker.port, client_id=THING, tls=False,
                              backoff=Backoff(initial_s=0.1, cap_s=0.5))
    sensor = SimulatedDHT11("climate", seed=7)
    # Heartbeat 0: every reading is sent, so the test can count them.
    return Telemetry(thing=THING, sensors=[SensorSchedule(sensor, interval_s)],
                     outbox=Outbox(stack["tmp"] / "outbox.db"), transport=transport,
                     deadband=Deadband(heartbeat_s=0.0))


def test_readings_reach_the_shadow(stack: dict[str, Any]) -> None:
    tele = telemetry(stack)
    tele.start()
    try:
        data = stack["sandbox"].endpoint.client("iot-data")

        def reported() -> dict[str, Any] | None:
            try:
                shadow = json.loads(data.get_thing_shadow(thingName=THING)["payload"].read())
            except data.exceptions.ResourceNotFoundException:
                return None
            return shadow.get("state", {}).get("reported", {}).get("climate")

        climate = wait_for(reported, 20, "the reported reading")
        assert 5 <= climate["temperature_c"] <= 35
        assert "humidity_pct" in climate and "timestamp" in climate
        assert climate["flags"] == ["simulated"]
    finally:
        tele.stop()


def test_an_outage_loses_nothing_and_keeps_order(stack: dict[str, Any]) -> None:
    broker: Mosquitto = stack["broker"]
    observer: Observer = stack["observer"]
    link = Link(broker.port)
    tele = telemetry(stack, port=link.port)
    tele.start()
    try:
        wait_for(lambda: len(observer.snapshot()) >= 3, 20, "the first readings")
        link.down()
        wait_for(lambda: not tele._transport.connected, 10, "the disconnection")
        queued_before = tele.health()["outbox_pending"]
        wait_for(lambda: tele.health()["outbox_pending"] >= queued_before + 20, 20,
                 "readings to pile up while the device is offline")
        link.up()
        wait_for(lambda: tele.health()["outbox_pending"] == 0 and tele.counters.sent
                 == len(observer.snapshot()), 30, "the outbox to drain into the shadow")
    finally:
        tele.stop()
        link.down()
    tokens = [int(t) for t in observer.snapshot()]
    assert tokens == sorted(tokens), "shadow updates arrived out of order"
    assert len(tokens) == len(set(tokens)), "a reading reached the shadow twice"
    assert len(tokens) == tele.counters.sent > 20
    assert tele.health()["dropped"] == 0


def test_readings_queued_before_a_crash_are_delivered_after_it(stack: dict[str, Any]) -> None:
    broker: Mosquitto = stack["broker"]
    observer: Observer = stack["observer"]
    broker.stop()
    offline = telemetry(stack)
    offline.start()
    wait_for(lambda: offline.health()["outbox_pending"] >= 10, 20, "readings queued offline")
    offline._stop.set()  # a crash: no flush, no stop of the transport
    queued = offline.health()["outbox_pending"]
    broker.start()
    wait_for(lambda: observer.transport.connected, 30, "the observer to reconnect")
    after = telemetry(stack, interval_s=3600)
    after.start()
    try:
        wait_for(lambda: after.health()["outbox_pending"] == 0, 30, "the outbox to drain")
        assert after.counters.sent >= queued
    finally:
        after.stop()
        offline._transport.stop()
