"""The AWS IoT Device Shadow service's MQTT side, for a local broker.

``ShadowResponder`` connects to the broker as a privileged client, takes the requests devices
publish on ``$aws/things/<thing>/shadow[/name/<shadow>]/{update,get,delete}`` and answers on
``/accepted``, ``/rejected``, ``/update/delta`` and ``/update/documents`` as AWS IoT does.
The documents live in moto's iot-data backend of the sandbox's process, so
``boto3.client("iot-data").get_thing_shadow`` against the sandbox sees what a device reported,
and an ``update_thing_shadow`` there is what the next ``/get`` returns.

moto keeps the versions, merges partial updates (``null`` deletes a key), computes the delta
and raises 409 on a version mismatch. Worked around here (moto 5.2.5):

- ``version`` in an update of a shadow that does not exist yet crashes moto
  (``AttributeError``): the version is dropped and the update accepted, as AWS does;
- ``clientToken`` is not echoed: added to every response here;
- validation moto lacks or gets wrong: invalid JSON/UTF-8, ``desired``/``reported`` not an
  object, ``version`` not an integer, ``clientToken`` over 64 bytes, nesting over 6 levels,
  and documents over 8 KB (413; the previous document is put back, since moto merges in place);
- ``"desired": null`` / ``"reported": null`` (remove the whole section) are ignored by moto;
- every metadata timestamp is reset on each update by moto; here only the updated leaves get
  the new time;
- delete of an already deleted shadow would bump the version: 404 as in AWS.

The thing must exist in moto's IoT registry (as moto's REST API requires); a request for an
unknown thing is rejected with 404 "Thing not found".
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from moto.iot.exceptions import ResourceNotFoundException
from moto.iotdata.exceptions import ConflictException
from moto.iotdata.models import FakeShadow, iotdata_backends

from agent.telemetry.mqtt_paho import PahoTransport
from agent.telemetry.transport import Backoff

from .state import ACCOUNT_ID, State

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 8192  # desired + reported, metadata excluded
MAX_CLIENT_TOKEN_BYTES = 64
MAX_DEPTH = 6
OPERATIONS = ("update", "get", "delete")
REQUEST_TOPICS = [f"$aws/things/+/shadow/{op}" for op in OPERATIONS] + [
    f"$aws/things/+/shadow/name/+/{op}" for op in OPERATIONS]
_UNTOUCHED = object()


class ShadowRejected(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Request:
    thing: str
    shadow: str | None  # None: the classic (unnamed) shadow
    operation: str
    prefix: str  # $aws/things/<thing>/shadow[/name/<shadow>]


def parse_topic(topic: str) -> Request | None:
    parts = topic.split("/")
    if len(parts) == 5 and parts[:2] == ["$aws", "things"] and parts[3] == "shadow":
        thing, shadow, operation = parts[2], None, parts[4]
    elif (len(parts) == 7 and parts[:2] == ["$aws", "things"] and parts[3] == "shadow"
          and parts[4] == "name"):
        thing, shadow, operation = parts[2], parts[5], parts[6]
    else:
        return None
    if operation not in OPERATIONS or not thing or shadow == "":
        return None
    return Request(thing, shadow, operation, topic.rsplit("/", 1)[0])


class ShadowResponder:
    """Answers shadow requests on a broker; the documents are moto's.

    ``state_or_region`` is the sandbox ``State`` (its region, account and clock are used) or a
    region name (then ``account_id`` and ``clock``, default ``time.time``).
    ``ca_file``/``cert_file``/``key_file`` connect over TLS (e.g. to the ``Mosquitto`` TLS
    listener); without them the plain listener is used.
    """

    def __init__(self, state_or_region: State | str, broker_host: str, broker_port: int, *,
                 account_id: str = ACCOUNT_ID, client_id: str | None = None,
                 ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None,
                 max_document_bytes: int = MAX_DOCUMENT_BYTES,
                 clock: Callable[[], float] | None = None) -> None:
        self._state = state_or_region if isinstance(state_or_region, State) else None
        if isinstance(state_or_region, State):
            self.region = state_or_region.region
            self.account_id = state_or_region.account_id
        else:
            self.region = state_or_region
            self.account_id = account_id
        self._clock = clock
        self.max_document_bytes = max_document_bytes
        self._lock = threading.Lock()
        self.handled = 0
        self._transport = PahoTransport(
            broker_host, broker_port, client_id=client_id or "pifleet-shadow-service",
            tls=cert_file is not None, ca_file=ca_file, cert_file=cert_file,
            key_file=key_file, clean_session=True,
            backoff=Backoff(initial_s=0.1, cap_s=2.0))
        for topic in REQUEST_TOPICS:
            self._transport.subscribe(topic, self._on_request)

    def clock(self) -> float:
        """The sandbox's clock (late-bound: tests replace ``state.clock``), else ``clock``."""
        if self._clock is not None:
            return self._clock()
        return self._state.clock() if self._state is not None else time.time()

    @property
    def backend(self) -> Any:
        return iotdata_backends[self.account_id][self.region]

    @property
    def connected(self) -> bool:
        return self._transport.connected

    def start(self, timeout_s: float = 10.0) -> ShadowResponder:
        """Connect, and return once the broker has the subscriptions (a message to ourselves
        arrives after the SUBSCRIBEs before it were processed)."""
        ready = threading.Event()
        probe = f"pifleet/shadow-service/ready/{uuid.uuid4().hex}"
        self._transport.subscribe(probe, lambda _topic, _payload: ready.set())
        self._transport.start()
        deadline = time.monotonic() + timeout_s
        while not ready.is_set() and time.monotonic() < deadline:
            if self._transport.connected:
                self._transport.publish(probe, b"", qos=0)
            ready.wait(0.05)
        if not ready.is_set():
            self._transport.stop()
            raise TimeoutError(f"shadow responder: no broker within {timeout_s:g} s "
                               f"({self._transport.last_error})")
        return self

    def stop(self) -> None:
        self._transport.stop()

    def __enter__(self) -> ShadowResponder:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- requests ----------------------------------------------------------------------------

    def _on_request(self, topic: str, payload: bytes) -> None:
        request = parse_topic(topic)
        if request is None:
            return
        token: str | None = None
        try:
            document = _decode(payload, required=request.operation == "update")
            token = _client_token(document)
            with self._lock:
                self.handled += 1
                handler = {"update": self._update, "get": self._get,
                           "delete": self._delete}[request.operation]
                replies = handler(request, document, token)
        except ShadowRejected as exc:
            replies = [(f"{request.prefix}/{request.operation}/rejected",
                        _with_token({"code": exc.code, "message": exc.message,
                                     "timestamp": int(self.clock())}, token))]
        except Exception:
            log.exception("shadow %s of %s failed", request.operation, request.thing)
            replies = [(f"{request.prefix}/{request.operation}/rejected",
                        _with_token({"code": 500, "message": "Internal service failure",
                                     "timestamp": int(self.clock())}, token))]
        for reply_topic, body in replies:
            future = self._transport.publish(reply_topic, json.dumps(body).encode())
            future.add_done_callback(_log_failure)

    def _shadows(self, request: Request) -> dict[str | None, FakeShadow]:
        try:
            thing = self.backend.iot_backend.describe_thing(request.thing)
        except ResourceNotFoundException:
            raise ShadowRejected(404, "Thing not found") from None
        shadows: dict[str | None, FakeShadow] = thing.thing_shadows
        return shadows

    def _current(self, request: Request) -> FakeShadow:
        shadow = self._shadows(request).get(request.shadow)
        if shadow is None or shadow.deleted:
            raise ShadowRejected(404, f"No shadow exists with name: "
                                      f"'{request.shadow or request.thing}'")
        return shadow

    def _get(self, request: Request, _document: Any,
             token: str | None) -> list[tuple[str, dict[str, Any]]]:
        reply = copy.deepcopy(self._current(request).to_dict())
        reply["timestamp"] = int(self.clock())
        return [(f"{request.prefix}/get/accepted", _with_token(reply, token))]

    def _delete(self, request: Request, _document: Any,
                token: str | None) -> list[tuple[str, dict[str, Any]]]:
        self._current(request)
        deleted = self.backend.delete_thing_shadow(request.thing, request.shadow)
        deleted.timestamp = int(self.clock())
        reply = {"version": deleted.version, "timestamp": deleted.timestamp}
        return [(f"{request.prefix}/delete/accepted", _with_token(reply, token))]

    def _update(self, request: Request, document: Any,
                token: str | None) -> list[tuple[str, dict[str, Any]]]:
        _validate_update(document)
        shadows = self._shadows(request)
        current = shadows.get(request.shadow)
        previous = copy.deepcopy(current)  # moto merges into the current dicts in place
        body = {key: value for key, value in document.items() if key != "clientToken"}
        if current is None:
            body.pop("version", None)  # moto crashes; AWS accepts
        try:
            new = self.backend.update_thing_shadow(request.thing, json.dumps(body),
                                                   request.shadow)
        except ConflictException:
            raise ShadowRejected(409, "Version conflict") from None
        state = document["state"]
        if isinstance(state, dict):
            if "desired" in state and state["desired"] is None:
                new.desired = None
            if "reported" in state and state["reported"] is None:
                new.reported = None
        size = len(json.dumps({k: v for k, v in (("desired", new.desired),
                                                  ("reported", new.reported)) if v},
                              separators=(",", ":")).encode())
        if size > self.max_document_bytes:
            if previous is None:
                del shadows[request.shadow]
            else:
                shadows[request.shadow] = previous
            raise ShadowRejected(413, "The payload exceeds the maximum size allowed")
        now = int(self.clock())
        new.timestamp = now
        old_desired, old_reported = _old_metadata(previous)
        touched = state if isinstance(state, dict) else {}
        new.metadata_desired = _metadata(new.desired, old_desired,
                                         touched.get("desired", _UNTOUCHED), now)
        new.metadata_reported = _metadata(new.reported, old_reported,
                                          touched.get("reported", _UNTOUCHED), now)

        accepted = new.to_response_dict()
        replies = [(f"{request.prefix}/update/accepted", _with_token(accepted, token))]
        delta = _restrict(FakeShadow.parse_payload(new.desired, new.reported),
                          touched.get("desired"))
        if delta:
            replies.append((f"{request.prefix}/update/delta", _with_token({
                "version": new.version, "timestamp": now, "state": delta,
                "metadata": _restrict(new.metadata_desired, delta)}, token)))
        previous_doc = None
        if previous is not None and not previous.deleted:
            previous_doc = _document(previous)
        replies.append((f"{request.prefix}/update/documents", _with_token({
            "previous": previous_doc, "current": _document(new), "timestamp": now}, token)))
        return copy.deepcopy(replies)


# -- documents -------------------------------------------------------------------------------


def _decode(payload: bytes, *, required: bool) -> Any:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ShadowRejected(415, "Unsupported documented encoding; supported encoding "
                                  "is UTF-8") from None
    if not text.strip():
        if required:
            raise ShadowRejected(400, "Invalid JSON")
        return {}
    try:
        document = json.loads(text)
    except ValueError:
        raise ShadowRejected(400, "Invalid JSON") from None
    if not isinstance(document, dict):
        if required:
            raise ShadowRejected(400, "Invalid JSON")
        return {}
    return document


def _client_token(document: Any) -> str | None:
    token = document.get("clientToken") if isinstance(document, dict) else None
    if token is None:
        return None
    if not isinstance(token, str) or len(token.encode()) > MAX_CLIENT_TOKEN_BYTES:
        raise ShadowRejected(400, "Invalid clientToken")
    return token


def _validate_update(document: dict[str, Any]) -> None:
    if "state" not in document:
        raise ShadowRejected(400, "Missing required node: state")
    version = document.get("version")
    if "version" in document and (not isinstance(version, int) or isinstance(version, bool)):
        raise ShadowRejected(400, "Invalid version")
    state = document["state"]
    if state is None:
        return
    if not isinstance(state, dict):
        raise ShadowRejected(400, "State node must be an object")
    for key, value in state.items():
        if key not in ("desired", "reported"):
            raise ShadowRejected(400, "State contains an invalid node")
        if value is not None and not isinstance(value, dict):
            raise ShadowRejected(400, f"{key.capitalize()} node must be an object")
        if _depth(value) > MAX_DEPTH:
            raise ShadowRejected(400, "JSON contains too many levels of nesting; "
                                      f"maximum is {MAX_DEPTH}")


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _with_token(body: dict[str, Any], token: str | None) -> dict[str, Any]:
    if token is not None:
        body["clientToken"] = token
    return body


def _document(shadow: FakeShadow) -> dict[str, Any]:
    """The state (desired and reported, no delta), metadata and version, as in /documents."""
    document = shadow.to_dict(include_delta=False)
    return {"state": document["state"], "metadata": document["metadata"],
            "version": document["version"]}


def _old_metadata(previous: FakeShadow | None) -> tuple[Any, Any]:
    if previous is None or previous.deleted:
        return None, None
    return previous.metadata_desired, previous.metadata_reported


def _metadata(value: Any, previous: Any, touched: Any, now: int) -> Any:
    """Metadata for ``value``: leaves named in the request get ``now``, the others keep the
    timestamp they had."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {key: _metadata(item, previous.get(key) if isinstance(previous, dict) else None,
                               touched.get(key, _UNTOUCHED) if isinstance(touched, dict)
                               else touched, now)
                for key, item in value.items()}
    if touched is _UNTOUCHED and previous is not None:
        return previous
    if isinstance(value, list):
        return [_metadata(item, None, touched, now) for item in value]
    return {"timestamp": now}


def _restrict(value: Any, keys: Any) -> Any:
    """The part of ``value`` (a delta or its metadata) whose keys the request's desired named."""
    if not isinstance(value, dict) or not isinstance(keys, dict):
        return value if keys is not None else None
    restricted = {}
    for key, item in value.items():
        if key in keys and keys[key] is not None:
            part = _restrict(item, keys[key])
            if part not in (None, {}):
                restricted[key] = part
    return restricted


def _log_failure(future: Future[None]) -> None:
    if future.exception() is not None:
        log.warning("shadow response not delivered: %s", future.exception())
