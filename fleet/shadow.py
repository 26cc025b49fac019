"""Read a device's IoT shadow (classic or named): the sensor values it reported, what is desired,
the delta, and how old each value is (from the shadow's metadata timestamps)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from .aws import Aws, aws_errors
from .errors import NotFound


@dataclass
class ShadowValue:
    key: str                       # dotted path: "pm25" or "sds011.pm25"
    reported: Any = None
    desired: Any = None
    delta: Any = None
    updated: int | None = None     # epoch seconds of the reported (else desired) value
    age_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "reported": self.reported, "desired": self.desired,
                "delta": self.delta, "updated": self.updated, "age_s": self.age_s}


@dataclass
class Shadow:
    thing: str
    shadow: str | None             # None: the classic shadow
    version: int | None
    timestamp: int | None
    state: dict[str, Any] = field(default_factory=dict)
    values: list[ShadowValue] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"thing": self.thing, "shadow": self.shadow, "version": self.version,
                "timestamp": self.timestamp,
                "reported": self.state.get("reported"), "desired": self.state.get("desired"),
                "delta": self.state.get("delta"),
                "values": [v.as_dict() for v in self.values]}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value} if prefix else {}


def _timestamps(meta: Any, prefix: str = "") -> dict[str, int]:
    """Metadata mirrors the state with {"timestamp": N} at each leaf (lists: a list of those)."""
    if isinstance(meta, dict):
        if set(meta) == {"timestamp"} and isinstance(meta["timestamp"], int | float):
            return {prefix: int(meta["timestamp"])} if prefix else {}
        out: dict[str, int] = {}
        for key, sub in meta.items():
            out.update(_timestamps(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(meta, list) and prefix:
        stamps = [s for m in meta for s in _timestamps(m, prefix).values()]
        return {prefix: max(stamps)} if stamps else {}
    return {}


def parse_document(thing: str, shadow: str | None, document: dict[str, Any],
                   now: float | None = None) -> Shadow:
    now = time.time() if now is None else now
    state = document.get("state") or {}
    meta = document.get("metadata") or {}
    flat = {part: _flatten(state.get(part)) for part in ("reported", "desired", "delta")}
    stamps = {part: _timestamps(meta.get(part), "") for part in ("reported", "desired")}
    keys = sorted(set(flat["reported"]) | set(flat["desired"]) | set(flat["delta"]))
    values = []
    for key in keys:
        updated = stamps["reported"].get(key, stamps["desired"].get(key))
        values.append(ShadowValue(key, flat["reported"].get(key), flat["desired"].get(key),
                                  flat["delta"].get(key), updated,
                                  None if updated is None else round(max(0.0, now - updated), 1)))
    return Shadow(thing, shadow, document.get("version"), document.get("timestamp"),
                  state, values)


def _data_client(aws: Aws) -> Any:
    """iot-data at the account's ATS endpoint (the sandbox when --endpoint-url is given)."""
    if aws.options.endpoint_url:
        return aws.client("iot-data")
    key = "iot-data@ats"
    if key not in aws._clients:
        with aws_errors("finding the IoT data endpoint (iot:DescribeEndpoint)"):
            host = aws.client("iot").describe_endpoint(
                endpointType="iot:Data-ATS")["endpointAddress"]
        aws._clients[key] = aws.session.client("iot-data", region_name=aws.region,
                                               endpoint_url=f"https://{host}")
    return aws._clients[key]


def get_shadow(aws: Aws, thing: str, shadow: str | None = None) -> Shadow:
    """GetThingShadow; NotFound says whether the thing or just its shadow is missing."""
    client = _data_client(aws)
    label = f"named shadow {shadow!r}" if shadow else "classic shadow"
    args = {"thingName": thing, **({"shadowName": shadow} if shadow else {})}
    with aws_errors(f"reading the {label} of {thing}"):
        try:
            payload = client.get_thing_shadow(**args)["payload"].read()
        except client.exceptions.ResourceNotFoundException:
            raise _missing(aws, thing, shadow, label) from None
    return parse_document(thing, shadow, json.loads(payload))


def _missing(aws: Aws, thing: str, shadow: str | None, label: str) -> NotFound:
    iot = aws.client("iot")
    with aws_errors(f"checking that thing {thing} exists"):
        try:
            iot.describe_thing(thingName=thing)
        except iot.exceptions.ResourceNotFoundException:
            return NotFound(f"no IoT thing named {thing!r} in {aws.region}; check the device "
                            "name (`fleetctl devices`) and --region")
    others: list[str] = []
    with aws_errors(f"listing the named shadows of {thing}"):
        try:
            others = list(_data_client(aws).list_named_shadows_for_thing(
                thingName=thing).get("results", []))
        except Exception:  # noqa: BLE001  (only a hint; the NotFound below is the answer)
            others = []
    hint = f" (named shadows: {', '.join(others)})" if others else ""
    return NotFound(f"thing {thing!r} has no {label}{hint}: the device has not reported yet, "
                    "or reports to another shadow; pass --name for a named shadow")
