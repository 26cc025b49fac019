"""Outbox drain to a local mosquitto against a bare paho publish loop, in the same run.

Run: ``python -m bench.bench_telemetry [--messages 5000] [--json]``. Both publish the same
~200-byte shadow updates with QoS 1 and count a message once its PUBACK arrived; the drain also
reads each message from the SQLite outbox and deletes it after the acknowledgement.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.telemetry.loop import Telemetry
from agent.telemetry.mqtt_paho import PahoTransport
from agent.telemetry.outbox import Outbox
from agent.telemetry.shadow import reported_update
from fleet.sandbox.broker import Mosquitto

from .timing import Figure

TITLE = "Telemetry: outbox drain to a local broker"
ISSUE = 6
RUNS = {"full": [["--messages", "5000", "--rounds", "3"]],
        "quick": [["--messages", "1000", "--rounds", "1"]]}

TOPIC = "$aws/things/bench/shadow/update"


def payload(i: int) -> bytes:
    return reported_update({"climate": {"temperature_c": 20 + i % 10 / 10, "humidity_pct": 48,
                                        "timestamp": 1_800_000_000 + i}}, "pending")


def bare_paho(broker: Mosquitto, count: int) -> float:
    """Messages per second for a plain paho loop publishing as fast as PUBACKs allow."""
    done = threading.Event()
    acked = [0]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare")
    client.max_inflight_messages_set(20)  # the same window as the outbox drain

    def on_publish(*_: Any) -> None:
        acked[0] += 1
        if acked[0] == count:
            done.set()

    client.on_publish = on_publish
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        start = time.perf_counter()
        for i in range(count):
            client.publish(TOPIC, payload(i), qos=1)
        if not done.wait(120):
            raise SystemExit("bare paho: not every PUBACK arrived")
        return count / (time.perf_counter() - start)
    finally:
        client.loop_stop()
        client.disconnect()


def outbox_drain(broker: Mosquitto, count: int, work: Path) -> float:
    outbox = Outbox(work / f"outbox-{time.monotonic_ns()}.db", max_messages=count + 10)
    for i in range(count):
        outbox.put(TOPIC, payload(i))
    outbox.flush()
    transport = PahoTransport(broker.host, broker.port, client_id="bench-outbox", tls=False)
    telemetry = Telemetry(thing="bench", sensors=[], outbox=outbox, transport=transport)
    start = time.perf_counter()
    telemetry.start()
    try:
        deadline = time.monotonic() + 120
        while outbox.stats().pending:
            if time.monotonic() > deadline:
                raise SystemExit("the outbox did not drain")
            time.sleep(0.01)
        return count / (time.perf_counter() - start)
    finally:
        telemetry.stop()
        outbox.close()


def run(count: int, rounds: int) -> dict[str, Any]:
    bare, drain = [], []
    with tempfile.TemporaryDirectory() as tmp, Mosquitto() as broker:
        for _ in range(rounds):  # interleaved: drift on a noisy machine hits both alike
            bare.append(bare_paho(broker, count))
            drain.append(outbox_drain(broker, count, Path(tmp)))
    b, d = statistics.median(bare), statistics.median(drain)
    return {"messages": count, "rounds": rounds, "bare_paho_per_s": b, "outbox_drain_per_s": d,
            "ratio": d / b}


def skip_reason() -> str | None:
    return None if shutil.which("mosquitto") else "mosquitto is not installed (make deps)"


def figures(result: dict[str, Any], argv: list[str]) -> list[Figure]:
    ratio = result["ratio"]
    return [
        Figure(f"bare paho QoS 1 publish loop, {result['messages']:,} messages (baseline)",
               f"{result['bare_paho_per_s']:,.0f} msg/s"),
        Figure("outbox drain through Telemetry (PahoTransport)",
               f"{result['outbox_drain_per_s']:,.0f} msg/s", "at least 0.5x the baseline",
               ratio >= 0.5, ratio, "bare paho loop to the same broker, interleaved"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.messages, args.rounds)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"  bare paho QoS 1 publish loop: {result['bare_paho_per_s']:.0f} msg/s")
    print(f"  outbox drain through Telemetry: {result['outbox_drain_per_s']:.0f} msg/s "
          f"({result['ratio']:.2f}x; target at least 0.5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
