"""``AwsCrtTransport``: the same interface over the AWS CRT MQTT5 client (awscrt, installed by
the optional ``crt`` extra with awsiotsdk).

awscrt is imported when a transport is built, never at module import, so the agent runs without
it. The CRT client reconnects by itself (1 s .. 120 s, full jitter, the CRT defaults made
explicit here); this class adds what the ``Transport`` contract asks on top: publishes fail at
once while offline and fail when the connection drops before their PUBACK (the CRT would keep
QoS 1 publishes in memory; the outbox is our queue), and subscriptions are renewed after every
connect.
"""

from __future__ import annotations

import importlib
import logging
import threading
from concurrent.futures import Future
from typing import Any

from paho.mqtt.client import topic_matches_sub

from .transport import ConnectionCallback, MessageCallback, TransportError

log = logging.getLogger(__name__)

CRT_MISSING = ("the AWS CRT transport needs awscrt: install the crt extra "
               "(pip install 'pifleet[crt]')")


def _load_crt() -> tuple[Any, Any]:
    try:
        return importlib.import_module("awscrt.mqtt5"), importlib.import_module("awscrt.io")
    except ImportError as exc:
        raise TransportError(CRT_MISSING) from exc


class AwsCrtTransport:
    """MQTT5 over awscrt; ``tls=False`` for a local plain-TCP broker in tests."""

    def __init__(self, host: str, port: int | None = None, *, client_id: str,
                 ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, alpn: bool = False, tls: bool = True,
                 keepalive_s: int = 60, min_reconnect_s: float = 1.0,
                 max_reconnect_s: float = 120.0) -> None:
        mqtt5, io = _load_crt()
        self._mqtt5 = mqtt5
        self.host = host
        self.port = port if port is not None else (443 if alpn else 8883 if tls else 1883)
        self.client_id = client_id
        self._lock = threading.Lock()
        self._connected = False
        self._pending: set[Future[None]] = set()
        self._subscriptions: dict[str, MessageCallback] = {}
        self._listeners: list[ConnectionCallback] = []
        tls_ctx = None
        if tls:
            if cert_file is None or key_file is None:
                raise ValueError("TLS needs cert_file and key_file")
            options = io.TlsContextOptions.create_client_with_mtls_from_path(cert_file, key_file)
            if ca_file:
                options.override_default_trust_store_from_path(None, ca_file)
            if alpn:
                options.alpn_list = ["x-amzn-mqtt-ca"]
            tls_ctx = io.ClientTlsContext(options)
        self._client = mqtt5.Client(mqtt5.ClientOptions(
            host_name=host, port=self.port, tls_ctx=tls_ctx,
            connect_options=mqtt5.ConnectPacket(client_id=client_id,
                                                keep_alive_interval_sec=keepalive_s),
            session_behavior=mqtt5.ClientSessionBehaviorType.CLEAN,
            offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_ALL_ON_DISCONNECT,
            retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.FULL,
            min_reconnect_delay_ms=int(min_reconnect_s * 1000),
            max_reconnect_delay_ms=int(max_reconnect_s * 1000),
            on_publish_callback_fn=self._on_message,
            on_lifecycle_event_connection_success_fn=self._on_connected,
            on_lifecycle_event_disconnection_fn=self._on_disconnected,
            on_lifecycle_event_stopped_fn=self._on_disconnected))

    def start(self) -> None:
        self._client.start()

    def stop(self) -> None:
        self._client.stop()
        self._on_disconnected(None)

    @property
    def connected(self) -> bool:
        return self._connected

    def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> Future[None]:
        if qos not in (0, 1):
            raise ValueError("AWS IoT supports QoS 0 and 1 only")
        future: Future[None] = Future()
        if not self._connected:
            future.set_exception(TransportError("not connected"))
            return future
        with self._lock:
            self._pending.add(future)
        packet = self._mqtt5.PublishPacket(topic=topic, payload=payload, qos=self._mqtt5.QoS(qos))
        self._client.publish(packet).add_done_callback(
            lambda done: self._publish_done(future, done))
        return future

    def subscribe(self, topic: str, callback: MessageCallback) -> None:
        with self._lock:
            self._subscriptions[topic] = callback
        if self._connected:
            self._subscribe([topic])

    def on_connection_change(self, callback: ConnectionCallback) -> None:
        with self._lock:
            self._listeners.append(callback)

    # -- CRT callbacks (on CRT event-loop threads) -----------------------------------------

    def _subscribe(self, topics: list[str]) -> None:
        mqtt5 = self._mqtt5
        for start in range(0, len(topics), 8):  # AWS IoT: at most 8 filters per SUBSCRIBE
            self._client.subscribe(mqtt5.SubscribePacket(subscriptions=[
                mqtt5.Subscription(topic_filter=topic, qos=mqtt5.QoS.AT_LEAST_ONCE)
                for topic in topics[start:start + 8]]))

    def _publish_done(self, future: Future[None], done: Future[Any]) -> None:
        with self._lock:
            if future not in self._pending:
                return  # already failed by a disconnect
            self._pending.discard(future)
        error = done.exception()
        puback = None if error else getattr(done.result(), "puback", None)
        if error is not None:
            future.set_exception(TransportError(f"publish failed: {error}"))
        elif puback is not None and int(puback.reason_code) >= 0x80:
            future.set_exception(TransportError(f"the broker refused the publish: "
                                                f"{puback.reason_code!r}"))
        else:
            future.set_result(None)

    def _on_connected(self, _data: Any) -> None:
        with self._lock:
            self._connected = True
            topics = list(self._subscriptions)
            listeners = list(self._listeners)
        if topics:
            self._subscribe(topics)
        for listener in listeners:
            _call(listener, True)

    def _on_disconnected(self, _data: Any) -> None:
        with self._lock:
            was_connected, self._connected = self._connected, False
            pending, self._pending = self._pending, set()
            listeners = list(self._listeners)
        for future in pending:
            future.set_exception(TransportError("connection lost before the broker acknowledged"))
        if was_connected:
            for listener in listeners:
                _call(listener, False)

    def _on_message(self, data: Any) -> None:
        packet = data.publish_packet
        with self._lock:
            callbacks = [callback for pattern, callback in self._subscriptions.items()
                         if topic_matches_sub(pattern, packet.topic)]
        for callback in callbacks:
            try:
                callback(packet.topic, bytes(packet.payload))
            except Exception:
                log.exception("MQTT message handler for %s failed", packet.topic)


def _call(listener: ConnectionCallback, up: bool) -> None:
    try:
        listener(up)
    except Exception:
        log.exception("MQTT connection listener failed")
