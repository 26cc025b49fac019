"""The seam between the telemetry loop and an MQTT client library.

A ``Transport`` owns one MQTT connection to AWS IoT Core (or a local broker): it connects in
the background, reconnects forever with jittered exponential back-off, re-subscribes after every
reconnect, and turns each publish into a ``Future`` that resolves on the broker's PUBACK.
It never stores messages: a publish that cannot be acknowledged fails, and the caller's outbox
keeps the message for a later attempt.

Implementations: ``mqtt_paho.PahoTransport`` (the default, pure Python) and
``mqtt_crt.AwsCrtTransport`` (awsiotsdk/awscrt MQTT5, the optional ``crt`` extra).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

MessageCallback = Callable[[str, bytes], None]
ConnectionCallback = Callable[[bool], None]


class TransportError(Exception):
    """No usable connection: not connected, the connection dropped before the broker
    acknowledged, the library is missing, or the broker refused the publish."""


class Transport(Protocol):
    def start(self) -> None:
        """Connect in the background; reconnect with jittered exponential back-off
        (1 s .. 120 s) until ``stop``. Returns at once."""

    def stop(self) -> None:
        """Disconnect, fail pending publishes and stop the background threads (idempotent)."""

    @property
    def connected(self) -> bool:
        """True between the broker's CONNACK and the loss of that connection."""

    def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> Future[None]:
        """Send one message without blocking. The future resolves when the broker acknowledged
        it (PUBACK for QoS 1; written to the socket for QoS 0) and fails with
        ``TransportError`` when not connected or when the connection drops first."""

    def subscribe(self, topic: str, callback: MessageCallback) -> None:
        """Deliver messages matching ``topic`` (a filter) to ``callback(topic, payload)``, on
        the transport's thread; subscribed again after every reconnect."""

    def on_connection_change(self, callback: ConnectionCallback) -> None:
        """Call ``callback(True)`` on each connect and ``callback(False)`` on each loss."""


class Backoff:
    """Exponential back-off with jitter: the n-th consecutive failure (from 0) waits between
    ``max(initial, c/2)`` and ``c``, where ``c = min(cap, initial * 2**(n+1))``. With the
    defaults: 1-2 s, 2-4 s, 4-8 s ... and at most 120 s. The jitter keeps a fleet that lost its
    broker at the same moment from reconnecting in step.
    """

    def __init__(self, *, initial_s: float = 1.0, cap_s: float = 120.0,
                 rng: random.Random | None = None) -> None:
        if not 0 < initial_s <= cap_s:
            raise ValueError("need 0 < initial_s <= cap_s")
        self.initial_s = initial_s
        self.cap_s = cap_s
        self._rng = rng or random.Random()  # noqa: S311  (jitter, not cryptography)
        self._failures = 0
        self._lock = threading.Lock()

    @property
    def failures(self) -> int:
        return self._failures

    def ceiling_s(self, failures: int) -> float:
        """The longest wait after ``failures`` earlier consecutive failures."""
        exponent = min(failures + 1, 64)  # 2**64 s is past any cap; avoids float overflow
        return min(self.cap_s, self.initial_s * 2.0**exponent)

    def next_delay(self) -> float:
        """The wait before the next attempt; each call counts one more failure."""
        with self._lock:
            ceiling = self.ceiling_s(self._failures)
            self._failures += 1
            return self._rng.uniform(max(self.initial_s, ceiling / 2), ceiling)

    def reset(self) -> None:
        """A connection held long enough: start again from ``initial_s``."""
        with self._lock:
            self._failures = 0
