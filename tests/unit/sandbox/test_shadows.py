"""The shadow responder on a real mosquitto: devices talk MQTT, the documents are moto's."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.telemetry.mqtt_paho import PahoTransport
from agent.telemetry.transport import Backoff
from fleet.sandbox.broker import BrokerTls, Mosquitto
from fleet.sandbox.server import Sandbox, wait_until
from fleet.sandbox.shadows import ShadowResponder, parse_topic

from ..aws.loopback import Pki, make_pki
from .conftest import Fleet

REPLIES = ["update/accepted", "update/rejected", "update/delta", "update/documents",
           "get/accepted", "get/rejected", "delete/accepted", "delete/rejected"]
_names = itertools.count(1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(pki: Pki) -> Iterator[Mosquitto]:
    with Mosquitto(tls=BrokerTls(pki.ca, pki.server_cert, pki.server_key)) as running:
        yield running


@pytest.fixture(scope="module")
def responder(sandbox: Sandbox, broker: Mosquitto, pki: Pki) -> Iterator[ShadowResponder]:
    # The service is a privileged client on the TLS listener; the devices use the plain one.
    with ShadowResponder(sandbox.state, broker.host, broker.tls_port, ca_file=pki.ca,
                         cert_file=pki.client_cert, key_file=pki.client_key) as running:
        yield running


class Device:
    """A thing's MQTT client that records the service's replies."""

    def __init__(self, broker: Mosquitto, thing: str, shadow: str | None = None) -> None:
        self.prefix = f"$aws/things/{thing}/shadow" + (f"/name/{shadow}" if shadow else "")
        self.replies: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        # One client id per connection: the broker drops the older of two (so does AWS).
        client_id = f"{thing}-{shadow or 'classic'}"
        self.transport = PahoTransport(broker.host, broker.port, client_id=client_id, tls=False,
                                       backoff=Backoff(initial_s=0.05, cap_s=0.2))
        for suffix in REPLIES:
            self.transport.subscribe(f"{self.prefix}/{suffix}", self._record)
        ready = threading.Event()
        self.transport.subscribe(f"test/{client_id}/ready", lambda _t, _p: ready.set())
        self.transport.start()
        deadline = time.monotonic() + 5
        while not ready.is_set() and time.monotonic() < deadline:
            if self.transport.connected:
                self.transport.publish(f"test/{client_id}/ready", b"", qos=0)
            ready.wait(0.05)
        assert ready.is_set()

    def _record(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.replies.append((topic.removeprefix(self.prefix + "/"), json.loads(payload)))

    def send(self, operation: str, body: dict[str, Any] | bytes | None = None) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
        self.transport.publish(f"{self.prefix}/{operation}", payload).result(timeout=5)

    def reply(self, suffix: str, nth: int = 1) -> dict[str, Any]:
        """The ``nth`` reply on ``suffix`` (waits for it)."""
        def found() -> list[dict[str, Any]]:
            with self._lock:
                return [body for topic, body in self.replies if topic == suffix]
        assert wait_until(lambda: len(found()) >= nth, 5), (suffix, self.replies)
        return found()[nth - 1]

    def topics(self) -> list[str]:
        with self._lock:
            return [topic for topic, _ in self.replies]

    def request(self, operation: str, body: dict[str, Any] | bytes | None = None,
                ) -> tuple[str, dict[str, Any]]:
        """Send and wait for the accepted or rejected answer; returns (kind, body)."""
        before = len(self.topics())
        self.send(operation, body)
        answers = (f"{operation}/accepted", f"{operation}/rejected")
        assert wait_until(lambda: any(t in answers for t in self.topics()[before:]), 5)
        with self._lock:
            topic, reply = next((t, b) for t, b in self.replies[before:] if t in answers)
        return topic.split("/")[1], reply


@pytest.fixture
def device(fleet: Fleet, broker: Mosquitto, responder: ShadowResponder,
           ) -> Iterator[Callable[..., Device]]:
    made: list[Device] = []

    def make(thing: str | None = None, shadow: str | None = None, *,
             register: bool = True) -> Device:
        name = thing or f"pi-{next(_names)}"
        if register and thing is None:
            fleet.client("iot").create_thing(thingName=name)
        made.append(Device(broker, name, shadow))
        return made[-1]

    yield make
    for each in made:
        each.transport.stop()


def shadow_via_boto3(fleet: Fleet, thing: str, shadow: str | None = None) -> dict[str, Any]:
    extra = {"shadowName": shadow} if shadow else {}
    reply = fleet.client("iot-data").get_thing_shadow(thingName=thing, **extra)
    return dict(json.loads(reply["payload"].read()))


def test_reported_update_is_accepted_with_token_version_and_documents(
        device: Callable[..., Device], fleet: Fleet) -> None:
    pi = device()
    kind, accepted = pi.request("update", {"state": {"reported": {"t": 21.5, "rh": 40}},
                                           "clientToken": "pi-1-000001"})
    assert kind == "accepted"
    assert accepted["clientToken"] == "pi-1-000001"
    assert accepted["version"] == 1
    assert accepted["state"] == {"reported": {"t": 21.5, "rh": 40}}
    assert isinstance(accepted["metadata"]["reported"]["t"]["timestamp"], int)
    documents = pi.reply("update/documents")
    assert documents["previous"] is None
    assert documents["current"]["state"] == {"reported": {"t": 21.5, "rh": 40}}
    assert documents["current"]["version"] == 1
    assert documents["clientToken"] == "pi-1-000001"
    assert "update/delta" not in pi.topics()  # nothing desired, nothing to do

    _, second = pi.request("update", {"state": {"reported": {"t": 22.0}}, "clientToken": "b"})
    assert second["version"] == 2
    documents = pi.reply("update/documents", 2)
    assert documents["previous"]["version"] == 1
    assert documents["current"]["state"]["reported"] == {"t": 22.0, "rh": 40}

    # The same document through boto3 against the sandbox endpoint.
    thing = pi.prefix.split("/")[2]
    stored = shadow_via_boto3(fleet, thing)
    assert stored["state"]["reported"] == {"t": 22.0, "rh": 40}
    assert stored["version"] == 2


def test_desired_change_publishes_delta_until_reported_matches(
        device: Callable[..., Device], fleet: Fleet) -> None:
    pi = device()
    pi.request("update", {"state": {"reported": {"interval_s": 60, "led": "off"}}})
    _, accepted = pi.request("update", {"state": {"desired": {"interval_s": 30, "led": "off"}},
                                        "clientToken": "app-1"})
    assert accepted["version"] == 2
    delta = pi.reply("update/delta")
    assert delta["state"] == {"interval_s": 30}  # led already matches
    assert delta["clientToken"] == "app-1"
    assert delta["version"] == 2
    assert set(delta["metadata"]) == {"interval_s"}

    _, got = pi.request("get", {"clientToken": "g1"})
    assert got["state"]["delta"] == {"interval_s": 30}
    assert got["clientToken"] == "g1"

    pi.request("update", {"state": {"reported": {"interval_s": 30}}})
    _, got = pi.request("get")
    assert "delta" not in got["state"]
    assert len([t for t in pi.topics() if t == "update/delta"]) == 1

    # An app writing desired through boto3 is seen by the device on /get.
    thing = pi.prefix.split("/")[2]
    fleet.client("iot-data").update_thing_shadow(
        thingName=thing, payload=json.dumps({"state": {"desired": {"led": "on"}}}))
    _, got = pi.request("get")
    assert got["state"]["delta"] == {"led": "on"}
    assert got["version"] == 4

    # "desired": null removes the whole section (moto ignores it; the responder does not).
    pi.request("update", {"state": {"desired": None}})
    _, got = pi.request("get")
    assert "desired" not in got["state"] and "delta" not in got["state"]
    assert "desired" not in got["metadata"]


def test_get_and_delete(device: Callable[..., Device]) -> None:
    pi = device()
    kind, rejected = pi.request("get", {"clientToken": "g0"})
    assert kind == "rejected"
    assert rejected["code"] == 404 and "No shadow exists" in rejected["message"]
    assert rejected["clientToken"] == "g0"
    kind, _ = pi.request("delete")
    assert kind == "rejected"

    pi.request("update", {"state": {"reported": {"t": 20}}})
    pi.request("update", {"state": {"reported": {"t": 21}}})
    kind, got = pi.request("get")
    assert (kind, got["version"], got["state"]) == ("accepted", 2, {"reported": {"t": 21}})
    kind, deleted = pi.request("delete", {"clientToken": "d1"})
    assert kind == "accepted"
    assert deleted["clientToken"] == "d1"
    assert deleted["version"] == 3
    assert pi.request("get")[0] == "rejected"
    assert pi.request("delete")[1]["code"] == 404

    # A shadow made again continues the version count (AWS, within 48 h of the delete).
    _, accepted = pi.request("update", {"state": {"reported": {"t": 19}}})
    assert accepted["version"] == 4
    assert pi.reply("update/documents", 3)["previous"] is None


def test_version_conflict_is_409(device: Callable[..., Device]) -> None:
    pi = device()
    # moto crashes on a version for a shadow that does not exist yet; AWS accepts it.
    kind, accepted = pi.request("update", {"state": {"reported": {"t": 1}}, "version": 7})
    assert (kind, accepted["version"]) == ("accepted", 1)
    kind, rejected = pi.request("update", {"state": {"reported": {"t": 2}}, "version": 5,
                                           "clientToken": "stale"})
    assert kind == "rejected"
    assert rejected == {"code": 409, "message": "Version conflict",
                        "timestamp": rejected["timestamp"], "clientToken": "stale"}
    kind, accepted = pi.request("update", {"state": {"reported": {"t": 2}}, "version": 1})
    assert (kind, accepted["version"]) == ("accepted", 2)


def test_document_over_8_kb_is_413_and_leaves_the_shadow_alone(
        device: Callable[..., Device], fleet: Fleet) -> None:
    pi = device()
    pi.request("update", {"state": {"reported": {"a": "x" * 5000}}})
    kind, rejected = pi.request("update", {"state": {"reported": {"b": "y" * 5000}},
                                           "clientToken": "big"})
    # Each request is small; the merged document is what is too big.
    assert kind == "rejected"
    assert rejected["code"] == 413
    assert rejected["clientToken"] == "big"
    kind, got = pi.request("get")
    assert got["state"]["reported"] == {"a": "x" * 5000}
    assert got["version"] == 1
    kind, rejected = pi.request("update", {"state": {"reported": {"c": "z" * 9000}}})
    assert (kind, rejected["code"]) == ("rejected", 413)
    # Deleting the stale key makes room, as the reference's 413 advice says.
    kind, accepted = pi.request("update", {"state": {"reported": {"a": None, "b": "y" * 5000}}})
    assert (kind, accepted["version"]) == ("accepted", 2)
    thing = pi.prefix.split("/")[2]
    assert shadow_via_boto3(fleet, thing)["state"]["reported"] == {"b": "y" * 5000}


@pytest.mark.parametrize(("payload", "code", "message"), [
    (b"{not json", 400, "Invalid JSON"),
    (b"[1, 2]", 400, "Invalid JSON"),
    (b"", 400, "Invalid JSON"),
    (b'{"clientToken": "t"}', 400, "Missing required node: state"),
    (b'{"state": 5}', 400, "State node must be an object"),
    (b'{"state": {"reported": [1]}}', 400, "Reported node must be an object"),
    (b'{"state": {"other": {}}}', 400, "State contains an invalid node"),
    (b'{"state": {"reported": {}}, "version": "3"}', 400, "Invalid version"),
    (json.dumps({"state": {}, "clientToken": "x" * 65}).encode(), 400, "Invalid clientToken"),
    (json.dumps({"state": {"reported": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}})
     .encode(), 400, "too many levels of nesting"),
    (b'{"state": {"reported": {"t": "\xff"}}}', 415, "UTF-8"),
])
def test_malformed_requests_are_rejected(device: Callable[..., Device], payload: bytes,
                                         code: int, message: str) -> None:
    pi = device()
    kind, rejected = pi.request("update", payload)
    assert kind == "rejected"
    assert rejected["code"] == code
    assert message in rejected["message"]
    assert pi.request("get")[1]["code"] == 404  # nothing was stored


def test_named_shadow(device: Callable[..., Device], fleet: Fleet) -> None:
    agent = device(shadow="agent")
    thing = agent.prefix.split("/")[2]
    classic = device(thing, register=False)
    kind, accepted = agent.request("update", {"state": {"reported": {"version": "1.4.0"}},
                                              "clientToken": "n1"})
    assert (kind, accepted["version"], accepted["clientToken"]) == ("accepted", 1, "n1")
    assert agent.reply("update/documents")["current"]["state"] == {
        "reported": {"version": "1.4.0"}}
    assert shadow_via_boto3(fleet, thing, "agent")["state"]["reported"] == {"version": "1.4.0"}
    assert fleet.client("iot-data").list_named_shadows_for_thing(thingName=thing)[
        "results"] == ["agent"]
    # The classic shadow is another document, and got no replies meant for the named one.
    assert classic.request("get")[1]["code"] == 404
    assert classic.topics() == ["get/rejected"]


def test_unknown_thing_is_404(device: Callable[..., Device]) -> None:
    stranger = device("not-registered", register=False)
    kind, rejected = stranger.request("update", {"state": {"reported": {"t": 1}}})
    assert (kind, rejected["code"], rejected["message"]) == ("rejected", 404, "Thing not found")


def test_metadata_keeps_the_time_of_fields_not_updated(
        device: Callable[..., Device], sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch,
        ) -> None:
    pi = device()
    monkeypatch.setattr(sandbox.state, "clock", lambda: 1_000.0)
    pi.request("update", {"state": {"reported": {"t": 20, "pm": {"p25": 3, "p10": 7}}}})
    monkeypatch.setattr(sandbox.state, "clock", lambda: 2_000.0)
    _, accepted = pi.request("update", {"state": {"reported": {"pm": {"p25": 4}}}})
    assert accepted["metadata"] == {"reported": {"pm": {"p25": {"timestamp": 2000}}}}
    _, got = pi.request("get")
    assert got["metadata"]["reported"] == {"t": {"timestamp": 1000},
                                           "pm": {"p25": {"timestamp": 2000},
                                                  "p10": {"timestamp": 1000}}}
    assert got["timestamp"] == 2000


def test_topic_parsing() -> None:
    assert parse_topic("$aws/things/pi-1/shadow/update") is not None
    named = parse_topic("$aws/things/pi-1/shadow/name/agent/get")
    assert named is not None
    assert (named.thing, named.shadow, named.operation) == ("pi-1", "agent", "get")
    assert named.prefix == "$aws/things/pi-1/shadow/name/agent"
    for topic in ("$aws/things/pi-1/shadow/update/accepted", "$aws/things/pi-1/shadow/list",
                  "dt/pi-1/shadow/update", "$aws/things/pi-1/shadow/name//get"):
        assert parse_topic(topic) is None
