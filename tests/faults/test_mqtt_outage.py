"""The MQTT broker unreachable for 30 minutes of readings (1,800 readings at the 1 s cadence),
on a real mosquitto behind a Link, with the sandbox's shadow service and a second client
recording every accepted shadow update.

The telemetry loop is driven directly: a simulated sensor on a clock that advances one second
per reading gives the half hour of readings in well under a second of wall time, and each one
goes through ``Telemetry.take_reading`` exactly as the sensor thread would send it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.telemetry.deadband import Deadband
from agent.telemetry.loop import Telemetry
from agent.telemetry.mqtt_paho import PahoTransport
from agent.telemetry.outbox import Outbox
from agent.telemetry.transport import Backoff
from sensors.simulated import SimulatedDHT11
from tests.integration.test_telemetry import THING, Observer, shadow_stack
from tests.support.link import Link
from tests.support.waiting import wait_for

READINGS = 1800  # 30 minutes at one reading a second
START = 1_790_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The integration tests' shadow stack, with the device reaching the broker through a Link
    the test cuts."""
    with shadow_stack(tmp_path) as parts:
        link = Link(parts["broker"].port)
        try:
            yield {**parts, "link": link}
        finally:
            link.down()


def offline_half_hour(stack: dict[str, Any], outbox: Outbox) -> tuple[Telemetry, list[float]]:
    """Connect, cut the link, take 1,800 readings a second apart, restore the link; the
    telemetry loop (still running) and the reading timestamps, in order."""
    link: Link = stack["link"]
    clock = FakeClock()
    sensor = SimulatedDHT11("climate", seed=11, clock=clock)
    transport = PahoTransport("127.0.0.1", link.port, client_id=THING, tls=False,
                              backoff=Backoff(initial_s=0.1, cap_s=0.5))
    # No sensor threads: the test is the sensor's schedule. Heartbeat 0: every reading is sent.
    tele = Telemetry(thing=THING, sensors=[], outbox=outbox, transport=transport,
                     deadband=Deadband(heartbeat_s=0.0, clock=clock))
    tele.start()
    wait_for(lambda: transport.connected, 20, "the device to connect")
    link.down()
    wait_for(lambda: not transport.connected, 20, "the device to notice the outage")
    stamps = []
    for _ in range(READINGS):
        reading = tele.take_reading(sensor)
        assert reading is not None
        stamps.append(reading.timestamp)
        clock.now += 1.0
    assert stack["observer"].snapshot() == [], "a reading got through a cut link"
    link.up()
    return tele, stamps


def delivered(observer: Observer) -> list[dict[str, Any]]:
    with observer._lock:
        documents = list(observer.documents)
    return [d["state"]["reported"]["climate"] for d in documents]


def test_half_an_hour_offline_loses_nothing_and_keeps_the_order(
        stack: dict[str, Any]) -> None:
    observer: Observer = stack["observer"]
    outbox = Outbox(stack["tmp"] / "outbox.db")  # the agent's default bounds: 50,000 / 16 MB
    tele, stamps = offline_half_hour(stack, outbox)
    try:
        queued = tele.health()["outbox_pending"]
        wait_for(lambda: tele.health()["outbox_pending"] == 0
                 and len(observer.snapshot()) >= READINGS, 120,
                 "the half hour of readings to reach the shadow")
    finally:
        tele.stop()
    assert queued == READINGS
    readings = delivered(observer)
    assert [r["timestamp"] for r in readings] == stamps, (
        "readings lost, repeated or out of order")
    tokens = [int(t) for t in observer.snapshot()]
    assert tokens == sorted(tokens) and len(set(tokens)) == READINGS
    assert tele.health()["dropped"] == 0


def test_an_outage_longer_than_the_outbox_drops_the_oldest_and_counts_them(
        stack: dict[str, Any]) -> None:
    observer: Observer = stack["observer"]
    bound = 1000
    outbox = Outbox(stack["tmp"] / "outbox.db", max_messages=bound)
    tele, stamps = offline_half_hour(stack, outbox)
    try:
        assert tele.health()["outbox_pending"] == bound, "the outbox grew past its bound"
        wait_for(lambda: tele.health()["outbox_pending"] == 0
                 and len(observer.snapshot()) >= bound, 120, "the kept readings to arrive")
    finally:
        tele.stop()
    # The documented policy: the oldest go, counted; the newest arrive, in order.
    assert tele.health()["dropped"] == READINGS - bound
    readings = delivered(observer)
    assert [r["timestamp"] for r in readings] == stamps[-bound:]
