"""``PahoTransport``: the default MQTT transport, on paho-mqtt 2.x (MQTT 3.1.1, as AWS IoT
classic shadows use).

One supervisor thread owns the connection policy. For each attempt it builds a fresh paho
``Client`` (callback API version 2, ``reconnect_on_failure=False``), connects (TCP, TLS with the
device certificate, CONNECT), runs paho's ``loop_start`` network thread until that connection
ends, then waits a jittered back-off before the next attempt. A fresh client per connection
means paho never re-sends, on its own, a QoS 1 message whose future already failed: the caller's
outbox is the only queue.

Publish futures are keyed by paho's message id and resolved in ``on_publish`` (PUBACK for
QoS 1, written for QoS 0); they fail with ``TransportError`` when the connection they were sent
on ends. Nothing here logs key material: only host, port, client id and error texts.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from .transport import Backoff, ConnectionCallback, MessageCallback, TransportError

log = logging.getLogger(__name__)

AWS_IOT_ALPN = "x-amzn-mqtt-ca"  # X.509 client certificates on port 443


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the TLS handshake fails (paho would leave the socket to the GC)."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(*, ca_file: str | None, cert_file: str | None, key_file: str | None,
                alpn: bool = False) -> ssl.SSLContext:
    """Client context: verify the broker against ``ca_file`` (or the system store), present
    the device certificate, TLS 1.2 or later, ALPN ``x-amzn-mqtt-ca`` when asked."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    if alpn:
        context.set_alpn_protocols([AWS_IOT_ALPN])
    context.sslsocket_class = _ClosingSSLSocket
    return context


class PahoTransport:
    """MQTT over paho-mqtt, with mutual TLS for AWS IoT Core (or plain TCP for tests).

    Example::

        transport = PahoTransport("abc-ats.iot.eu-west-1.amazonaws.com", client_id="pi-42",
                                  ca_file="AmazonRootCA1.pem", cert_file="pi-42.pem.crt",
                                  key_file="pi-42.private.key")
        transport.subscribe("$aws/things/pi-42/shadow/update/accepted", on_accepted)
        transport.start()
        transport.publish("$aws/things/pi-42/shadow/update", document).result(timeout=10)

    ``port`` defaults to 443 with ``alpn``, 8883 with TLS and 1883 without. ``clean_session``
    False asks the broker to keep the subscriptions and QoS 1 messages addressed to the device
    while it is away; they are re-subscribed after every connect either way. ``backoff`` and
    ``sleep`` are seams for tests (``sleep`` replaces the interruptible wait between attempts).
    """

    def __init__(self, host: str, port: int | None = None, *, client_id: str,
                 ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, alpn: bool = False, tls: bool = True,
                 keepalive_s: int = 60, clean_session: bool = False,
                 connect_timeout_s: float = 10.0, connack_timeout_s: float = 20.0,
                 stable_after_s: float = 30.0, backoff: Backoff | None = None,
                 sleep: Callable[[float], object] | None = None) -> None:
        if tls and (cert_file is None) != (key_file is None):
            raise ValueError("cert_file and key_file go together")
        if alpn and not tls:
            raise ValueError("ALPN needs TLS")
        self.host = host
        self.port = port if port is not None else (443 if alpn else 8883 if tls else 1883)
        self.client_id = client_id
        self._tls = tls_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                                alpn=alpn) if tls else None
        self.keepalive_s = keepalive_s
        self.clean_session = clean_session
        self.connect_timeout_s = connect_timeout_s
        self.connack_timeout_s = connack_timeout_s
        self.stable_after_s = stable_after_s
        self.backoff = backoff or Backoff()
        self._sleep = sleep

        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None  # the client of the live connection
        self._connected = False
        self._connected_at = 0.0
        self._pending: dict[int, Future[None]] = {}
        self._early: set[int] = set()  # acknowledged before publish() registered the future
        self._subscriptions: dict[str, MessageCallback] = {}
        self._listeners: list[ConnectionCallback] = []
        self._stopping = threading.Event()
        self._wake = threading.Event()  # the current connection ended, or stop() was called
        self._thread: threading.Thread | None = None
        self._refused = False  # this attempt's CONNACK said no
        self.last_error: str | None = None  # why the last attempt or connection failed
        self.attempts = 0  # connection attempts so far

    # -- the Transport interface -----------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._supervise, daemon=True,
                                        name=f"mqtt-{self.client_id}")
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        # From a callback the supervisor cannot be waited for: it is waiting for this thread.
        in_callback = getattr(_callback_thread, "active", False)
        if thread is not None and thread is not threading.current_thread() and not in_callback:
            thread.join(self.connect_timeout_s + 5)

    @property
    def connected(self) -> bool:
        return self._connected

    def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> Future[None]:
        if qos not in (0, 1):
            raise ValueError("AWS IoT supports QoS 0 and 1 only")
        future: Future[None] = Future()
        with self._lock:
            client = self._client if self._connected else None
        if client is None:
            future.set_exception(TransportError("not connected"))
            return future
        # Not under self._lock: paho calls on_publish holding its own message lock.
        info = client.publish(topic, payload, qos=qos)
        with self._lock:
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._client is not client:
                reason = mqtt.error_string(info.rc) if info.rc else "connection lost"
                future.set_exception(TransportError(f"publish failed: {reason}"))
            elif info.mid in self._early:
                self._early.discard(info.mid)
                future.set_result(None)
            else:
                self._pending[info.mid] = future
        return future

    def subscribe(self, topic: str, callback: MessageCallback) -> None:
        with self._lock:
            self._subscriptions[topic] = callback
            client = self._client if self._connected else None
        if client is not None:
            client.subscribe(topic, qos=1)

    def on_connection_change(self, callback: ConnectionCallback) -> None:
        with self._lock:
            self._listeners.append(callback)

    # -- the supervisor ----------------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            self._run_one_connection()
            if self._stopping.is_set():
                break
            delay = self.backoff.next_delay()
            log.info("MQTT %s:%d: reconnecting in %.1f s", self.host, self.port, delay)
            if self._sleep is not None:
                self._sleep(delay)
            else:
                self._stopping.wait(delay)

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=self.clean_session, protocol=mqtt.MQTTv311,
                             reconnect_on_failure=False)
        client.connect_timeout = self.connect_timeout_s
        if self._tls is not None:
            client.tls_set_context(self._tls)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _run_one_connection(self) -> None:
        self.attempts += 1
        self._refused = False
        client = self._new_client()
        self._wake.clear()
        if self._stopping.is_set():
            return
        try:
            client.connect(self.host, self.port, keepalive=self.keepalive_s)
        except (OSError, ValueError) as exc:  # refused, unreachable, TLS, timeout, bad host
            self._note_error(f"connect failed: {exc}")
            return
        with self._lock:
            self._client = client
        client.loop_start()
        try:
            if not self._wake.wait(self.connack_timeout_s) and not self._connected:
                self._note_error(f"no CONNACK within {self.connack_timeout_s:g} s")
            else:
                self._wake.wait()
        finally:
            client.disconnect()  # a no-op on a dead connection; ends the paho thread otherwise
            client.loop_stop()
            self._connection_ended(client)

    def _connection_ended(self, client: mqtt.Client) -> None:
        with self._lock:
            was_connected = self._connected
            self._connected = False
            self._client = None
            pending, self._pending = self._pending, {}
            self._early.clear()
            listeners = list(self._listeners)
        reason = "transport stopped" if self._stopping.is_set() else "connection lost"
        for future in pending.values():
            future.set_exception(TransportError(f"{reason} before the broker acknowledged"))
        if was_connected:
            if time.monotonic() - self._connected_at >= self.stable_after_s:
                self.backoff.reset()
            if self._stopping.is_set():
                log.info("MQTT %s:%d: disconnected (stopped)", self.host, self.port)
            else:
                log.warning("MQTT %s:%d: connection lost", self.host, self.port)
            _notify(listeners, False)

    def _note_error(self, message: str) -> None:
        self.last_error = message
        log.warning("MQTT %s:%d (%s): %s", self.host, self.port, self.client_id, message)

    # -- paho callbacks (on paho's network thread) -----------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, _properties: Any) -> None:
        if reason.is_failure:
            self._refused = True
            self._note_error(f"the broker refused the connection: {reason}")
            return  # paho then ends the connection, and on_disconnect wakes the supervisor
        with self._lock:
            if self._client is not client:
                return
            self._connected = True
            self._connected_at = time.monotonic()
            topics = list(self._subscriptions)
            listeners = list(self._listeners)
        self.last_error = None
        log.info("MQTT %s:%d: connected as %s (session present: %s)", self.host, self.port,
                 self.client_id, flags.session_present)
        if topics:
            client.subscribe([(topic, 1) for topic in topics])
        _notify(listeners, True)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any,
                       reason: ReasonCode, _properties: Any) -> None:
        if self._stopping.is_set() or self._refused:
            pass  # already said why
        elif not self._connected:
            # What a refused client certificate or IoT policy looks like with TLS 1.3.
            self._note_error(f"the broker closed the connection before CONNACK ({reason}): "
                             "certificate, policy or client id refused?")
        elif reason.is_failure:
            self._note_error(f"disconnected: {reason}")
        self._wake.set()

    def _on_publish(self, client: mqtt.Client, _userdata: Any, mid: int, reason: ReasonCode,
                    _properties: Any) -> None:
        with self._lock:
            if self._client is not client:
                return
            future = self._pending.pop(mid, None)
            if future is None:
                self._early.add(mid)
                return
        if reason.is_failure:
            future.set_exception(TransportError(f"the broker refused the publish: {reason}"))
        else:
            future.set_result(None)

    def _on_message(self, _client: mqtt.Client, _userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        with self._lock:
            callbacks = [callback for pattern, callback in self._subscriptions.items()
                         if mqtt.topic_matches_sub(pattern, message.topic)]
        _callback_thread.active = True
        try:
            for callback in callbacks:
                try:
                    callback(message.topic, bytes(message.payload))
                except Exception:
                    log.exception("MQTT message handler for %s failed", message.topic)
        finally:
            _callback_thread.active = False


_callback_thread = threading.local()  # .active: running a user callback on paho's thread


def _notify(listeners: list[ConnectionCallback], up: bool) -> None:
    _callback_thread.active = True
    try:
        for listener in listeners:
            try:
                listener(up)
            except Exception:
                log.exception("MQTT connection listener failed")
    finally:
        _callback_thread.active = False
