"""The MQTT transports against a real mosquitto on loopback (plain, and TLS with client
certificates), including a broker that dies and comes back on the same port."""

from __future__ import annotations

import importlib.util
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from agent.telemetry.mqtt_crt import AwsCrtTransport
from agent.telemetry.mqtt_paho import PahoTransport
from agent.telemetry.transport import Backoff, Transport, TransportError
from fleet.sandbox.broker import BrokerTls, Mosquitto
from fleet.sandbox.server import wait_until

from ..aws.loopback import Pki, make_pki


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()

    def __call__(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.messages.append((topic, payload))

    def wait_for(self, payload: bytes, timeout_s: float = 5.0) -> bool:
        return wait_until(lambda: any(p == payload for _, p in list(self.messages)), timeout_s)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(pki: Pki) -> Iterator[Mosquitto]:
    with Mosquitto(tls=BrokerTls(pki.ca, pki.server_cert, pki.server_key)) as running:
        yield running


@pytest.fixture
def transports() -> Iterator[Callable[..., PahoTransport]]:
    made: list[PahoTransport] = []

    def make(host: str, port: int, **options: object) -> PahoTransport:
        options.setdefault("client_id", f"pi-{len(made)}")
        options.setdefault("tls", False)
        options.setdefault("backoff", Backoff(initial_s=0.05, cap_s=0.2))
        transport = PahoTransport(host, port, **options)  # type: ignore[arg-type]
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.stop()


def settle(transport: Transport, timeout_s: float = 5.0) -> None:
    """Wait until the broker has this client's subscriptions: a message to itself came back."""
    back = threading.Event()
    topic = f"test/settle/{id(transport)}/{time.monotonic_ns()}"
    transport.subscribe(topic, lambda _t, _p: back.set())
    deadline = time.monotonic() + timeout_s
    while not back.is_set() and time.monotonic() < deadline:
        if transport.connected:
            transport.publish(topic, b"", qos=0)
        back.wait(0.05)
    assert back.is_set(), "the transport never got its own message back"


def connected_pair(broker: Mosquitto, make: Callable[..., PahoTransport],
                   ) -> tuple[PahoTransport, PahoTransport, Inbox]:
    inbox = Inbox()
    receiver, sender = make(broker.host, broker.port), make(broker.host, broker.port)
    receiver.subscribe("dt/pifleet/+/env", inbox)
    receiver.start()
    sender.start()
    settle(receiver)
    assert wait_until(lambda: sender.connected, 5)
    return receiver, sender, inbox


# -- plain TCP ---------------------------------------------------------------------------------


def test_publish_resolves_on_puback_and_reaches_subscribers(
        broker: Mosquitto, transports: Callable[..., PahoTransport]) -> None:
    _, sender, inbox = connected_pair(broker, transports)
    futures = [sender.publish("dt/pifleet/pi-1/env", f"reading {i}".encode()) for i in range(20)]
    for future in futures:
        assert future.result(timeout=5) is None
    assert sender.publish("dt/pifleet/pi-1/env", b"qos0", qos=0).result(timeout=5) is None
    assert inbox.wait_for(b"qos0")
    assert [p for _, p in inbox.messages[:20]] == [f"reading {i}".encode() for i in range(20)]
    assert inbox.messages[0][0] == "dt/pifleet/pi-1/env"
    assert sender.publish("dt/pifleet/pi-1/other", b"x").result(timeout=5) is None  # no match


def test_publish_without_a_connection_fails_at_once_and_qos2_is_refused(
        broker: Mosquitto, transports: Callable[..., PahoTransport]) -> None:
    transport = transports(broker.host, broker.port)
    future = transport.publish("dt/x", b"1")
    assert future.done()
    with pytest.raises(TransportError, match="not connected"):
        future.result()
    with pytest.raises(ValueError, match="QoS 0 and 1"):
        transport.publish("dt/x", b"1", qos=2)


def test_a_failing_message_handler_does_not_stop_delivery(
        broker: Mosquitto, transports: Callable[..., PahoTransport],
        caplog: pytest.LogCaptureFixture) -> None:
    receiver, sender, inbox = connected_pair(broker, transports)

    def broken(_topic: str, _payload: bytes) -> None:
        raise RuntimeError("handler bug")

    receiver.subscribe("dt/broken", broken)
    settle(receiver)
    sender.publish("dt/broken", b"boom").result(timeout=5)
    sender.publish("dt/pifleet/pi-1/env", b"after").result(timeout=5)
    assert inbox.wait_for(b"after")
    assert "handler bug" in caplog.text
    assert receiver.connected


def test_broker_outage_fails_pending_publishes_then_reconnects_and_resubscribes(
        broker: Mosquitto, transports: Callable[..., PahoTransport]) -> None:
    receiver, sender, inbox = connected_pair(broker, transports)
    changes: list[bool] = []
    receiver.on_connection_change(changes.append)
    port = broker.port

    broker.freeze()  # the PUBLISH reaches the socket, the PUBACK never comes
    pending = receiver.publish("dt/pifleet/pi-1/env", b"in flight")
    time.sleep(0.1)
    assert not pending.done()
    broker.stop(kill=True)
    with pytest.raises(TransportError, match="connection lost"):
        pending.result(timeout=5)
    assert wait_until(lambda: not receiver.connected and not sender.connected, 5)
    assert wait_until(lambda: changes == [False], 5)
    with pytest.raises(TransportError):
        receiver.publish("dt/pifleet/pi-1/env", b"offline").result(timeout=1)
    attempts = receiver.attempts
    assert wait_until(lambda: receiver.attempts >= attempts + 2, 5)  # it keeps trying

    broker.start()
    assert broker.port == port
    assert wait_until(lambda: receiver.connected and sender.connected, 5)
    assert wait_until(lambda: changes == [False, True], 5)
    # The new broker knows nothing of the old session: the subscription was made again.
    assert wait_until(lambda: sender.publish("dt/pifleet/pi-1/env", b"back").result(5) is None
                      and inbox.wait_for(b"back", 0.5), 5)


def test_stop_fails_pending_publishes_and_is_idempotent(
        broker: Mosquitto, transports: Callable[..., PahoTransport]) -> None:
    _, sender, _ = connected_pair(broker, transports)
    broker.freeze()
    pending = sender.publish("dt/pifleet/pi-1/env", b"unacknowledged")
    sender.stop()
    with pytest.raises(TransportError, match="stopped"):
        pending.result(timeout=5)
    assert not sender.connected
    sender.stop()
    broker.thaw()


def test_a_refused_connack_is_reported_and_retried(
        transports: Callable[..., PahoTransport]) -> None:
    with Mosquitto(allow_anonymous=False) as closed:
        device = transports(closed.host, closed.port)
        device.start()
        assert wait_until(lambda: device.attempts >= 2, 5)
        device.stop()
    assert "refused the connection: Not authorized" in (device.last_error or "")
    assert not device.connected


def test_stop_from_a_callback_does_not_deadlock(
        broker: Mosquitto, transports: Callable[..., PahoTransport]) -> None:
    receiver, sender, _ = connected_pair(broker, transports)
    receiver.subscribe("cmd/stop", lambda _t, _p: receiver.stop())
    settle(receiver)
    started = time.monotonic()
    sender.publish("cmd/stop", b"").result(timeout=5)
    assert wait_until(lambda: not receiver.connected, 5)
    assert time.monotonic() - started < 3


# -- back-off --------------------------------------------------------------------------------


def test_backoff_grows_with_jitter_and_is_capped_at_120_s(
        transports: Callable[..., PahoTransport]) -> None:
    delays: list[float] = []
    enough = threading.Event()

    def sleep(delay: float) -> None:  # replaces the wait: no wall time passes
        delays.append(delay)
        if len(delays) >= 14:
            enough.set()
            time.sleep(0.01)

    closed_port = _closed_port()
    transport = transports("127.0.0.1", closed_port, backoff=Backoff(rng=random.Random(7)),
                           sleep=sleep)
    transport.start()
    assert enough.wait(5)
    transport.stop()
    assert "connect failed" in (transport.last_error or "")
    assert not transport.connected
    first = delays[:14]
    for n, delay in enumerate(first):
        ceiling = min(120.0, 2.0 ** (n + 1))
        assert max(1.0, ceiling / 2) <= delay <= ceiling, (n, delay)
    assert first[0] <= 2 and first[3] >= 8  # grows ...
    assert all(60 <= d <= 120 for d in first[7:])  # ... and stays under the cap
    assert len(set(first[7:])) == len(first[7:])  # jittered, not in step


def test_backoff_reset_and_limits() -> None:
    backoff = Backoff(initial_s=1, cap_s=120, rng=random.Random(1))
    assert [backoff.ceiling_s(n) for n in (0, 1, 5, 6, 7, 1000)] == [2, 4, 64, 120, 120, 120]
    for _ in range(10):
        backoff.next_delay()
    assert backoff.failures == 10
    backoff.reset()
    assert 1 <= backoff.next_delay() <= 2
    with pytest.raises(ValueError):
        Backoff(initial_s=0)
    with pytest.raises(ValueError):
        Backoff(initial_s=10, cap_s=1)


def test_default_ports() -> None:
    assert PahoTransport("h", client_id="c", tls=False).port == 1883
    assert PahoTransport("h", client_id="c").port == 8883
    assert PahoTransport("h", client_id="c", alpn=True).port == 443
    assert PahoTransport("h", 1234, client_id="c").port == 1234
    with pytest.raises(ValueError, match="ALPN"):
        PahoTransport("h", client_id="c", alpn=True, tls=False)
    with pytest.raises(ValueError, match="together"):
        PahoTransport("h", client_id="c", cert_file="c.pem")


# -- TLS with client certificates ----------------------------------------------------------------


def test_tls_with_a_client_certificate(
        broker: Mosquitto, pki: Pki, transports: Callable[..., PahoTransport],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    inbox = Inbox()
    device = transports(broker.host, broker.tls_port, tls=True, client_id="pi-tls",
                        ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    device.subscribe("dt/pifleet/pi-tls/env", inbox)
    device.start()
    settle(device)
    assert device.publish("dt/pifleet/pi-tls/env", b"secure").result(timeout=5) is None
    assert inbox.wait_for(b"secure")
    # The broker took the certificate's CN as the user name, as AWS IoT ties it to the thing.
    assert wait_until(lambda: "u'pifleet test client'" in broker.log_text, 2), broker.log_text
    assert "PRIVATE KEY" not in caplog.text


def test_tls_refuses_a_certificate_from_another_ca(
        broker: Mosquitto, pki: Pki, tmp_path: Path,
        transports: Callable[..., PahoTransport]) -> None:
    stranger = make_pki(tmp_path)
    changes: list[bool] = []
    device = transports(broker.host, broker.tls_port, tls=True, ca_file=pki.ca,
                        cert_file=stranger.client_cert, key_file=stranger.client_key)
    device.on_connection_change(changes.append)
    device.start()
    assert wait_until(lambda: device.attempts >= 3, 5)
    assert changes == []
    assert not device.connected
    assert "before CONNACK" in (device.last_error or "")


def test_tls_refuses_a_broker_the_ca_did_not_sign(
        broker: Mosquitto, pki: Pki, tmp_path: Path,
        transports: Callable[..., PahoTransport]) -> None:
    stranger = make_pki(tmp_path)
    device = transports(broker.host, broker.tls_port, tls=True, ca_file=stranger.ca,
                        cert_file=pki.client_cert, key_file=pki.client_key)
    device.start()
    assert wait_until(lambda: device.attempts >= 2, 5)
    assert "CERTIFICATE_VERIFY_FAILED" in (device.last_error or "")
    assert not device.connected


# -- the optional CRT transport ------------------------------------------------------------------

HAVE_CRT = importlib.util.find_spec("awscrt") is not None


@pytest.mark.skipif(HAVE_CRT, reason="awscrt is installed")
def test_crt_transport_without_awscrt_says_what_to_install() -> None:
    with pytest.raises(TransportError, match="install the crt extra"):
        AwsCrtTransport("127.0.0.1", 1883, client_id="pi-1", tls=False)


@pytest.mark.skipif(not HAVE_CRT, reason="awscrt is not installed (the optional crt extra)")
def test_crt_transport_round_trip(broker: Mosquitto) -> None:
    transport = AwsCrtTransport(broker.host, broker.port, client_id="pi-crt", tls=False)
    inbox = Inbox()
    transport.subscribe("dt/pifleet/pi-crt/env", inbox)
    transport.start()
    try:
        settle(transport)
        result: Future[None] = transport.publish("dt/pifleet/pi-crt/env", b"crt")
        assert result.result(timeout=5) is None
        assert inbox.wait_for(b"crt")
    finally:
        transport.stop()


def _closed_port() -> int:
    from fleet.sandbox.broker import free_port  # noqa: PLC0415

    return free_port()
