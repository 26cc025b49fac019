"""fleetctl shadow: a thing's shadow written with boto3 iot-data, read back through the CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fleet.aws import Aws
from fleet.errors import NotFound
from fleet.shadow import get_shadow, parse_document

from .conftest import Fleetctl


def _thing(aws: Aws, name: str = "pi-kitchen") -> None:
    aws.client("iot").create_thing(thingName=name)


def _update(aws: Aws, state: dict[str, Any], shadow: str | None = None,
            thing: str = "pi-kitchen") -> None:
    extra = {"shadowName": shadow} if shadow else {}
    aws.client("iot-data").update_thing_shadow(
        thingName=thing, payload=json.dumps({"state": state}).encode(), **extra)


def test_cli_prints_reported_values_and_delta(aws: Aws, fleetctl: Fleetctl) -> None:
    _thing(aws)
    _update(aws, {"reported": {"pm25": 12.5, "dht22": {"temperature": 21.3}, "interval": 30},
                  "desired": {"interval": 60}})
    run = fleetctl("shadow", "pi-kitchen")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "pi-kitchen: classic shadow, version 1" in run.stdout
    assert any("pm25" in line and "12.5" in line for line in lines)
    assert any("dht22.temperature" in line and "21.3" in line for line in lines)
    interval = next(line for line in lines if "interval" in line)
    assert "30" in interval and "60" in interval  # reported, desired and delta
    assert "desired" in run.stdout and "delta" in run.stdout and "age" in run.stdout


def test_cli_json_schema(aws: Aws, fleetctl: Fleetctl) -> None:
    _thing(aws)
    _update(aws, {"reported": {"pm25": 12.5, "pm10": 20}})
    run = fleetctl("shadow", "pi-kitchen", "--output", "json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert set(doc) == {"thing", "shadow", "version", "timestamp", "reported", "desired",
                        "delta", "values"}
    assert doc["thing"] == "pi-kitchen" and doc["shadow"] is None and doc["version"] == 1
    assert doc["reported"] == {"pm25": 12.5, "pm10": 20}
    assert doc["desired"] is None and doc["delta"] is None
    assert [v["key"] for v in doc["values"]] == ["pm10", "pm25"]
    for value in doc["values"]:
        assert set(value) == {"key", "reported", "desired", "delta", "updated", "age_s"}
        assert isinstance(value["updated"], int) and 0 <= value["age_s"] < 60
    # the global --output json works too
    again = fleetctl("--output", "json", "shadow", "pi-kitchen")
    assert json.loads(again.stdout)["reported"] == doc["reported"]


def test_cli_named_shadow(aws: Aws, fleetctl: Fleetctl) -> None:
    _thing(aws)
    _update(aws, {"reported": {"revision": "abc123", "status": "Succeeded"}}, shadow="agent")
    run = fleetctl("shadow", "pi-kitchen", "--name", "agent")
    assert run.returncode == 0, run.stderr
    assert "shadow 'agent'" in run.stdout and "abc123" in run.stdout
    classic = fleetctl("shadow", "pi-kitchen")
    assert classic.returncode == 1
    assert "has no classic shadow (named shadows: agent)" in classic.stderr
    assert "Traceback" not in classic.stderr


def test_cli_missing_thing_and_shadow(aws: Aws, fleetctl: Fleetctl) -> None:
    _thing(aws)
    missing_thing = fleetctl("shadow", "pi-nowhere")
    assert missing_thing.returncode == 1
    assert "no IoT thing named 'pi-nowhere'" in missing_thing.stderr
    assert "Traceback" not in missing_thing.stderr
    missing_shadow = fleetctl("shadow", "pi-kitchen", "--name", "agent")
    assert missing_shadow.returncode == 1
    assert "has no named shadow 'agent'" in missing_shadow.stderr


def test_library_errors_are_not_found(aws: Aws) -> None:
    with pytest.raises(NotFound, match="no IoT thing"):
        get_shadow(aws, "pi-nowhere")
    _thing(aws)
    with pytest.raises(NotFound, match="has not reported yet"):
        get_shadow(aws, "pi-kitchen")


def test_parse_document_ages_and_nesting() -> None:
    document = {
        "state": {"reported": {"pm25": 4, "gps": {"lat": 1.5, "fix": [1, 2]}},
                  "desired": {"led": "on"}, "delta": {"led": "on"}},
        "metadata": {"reported": {"pm25": {"timestamp": 1000},
                                  "gps": {"lat": {"timestamp": 900},
                                          "fix": [{"timestamp": 800}, {"timestamp": 850}]}},
                     "desired": {"led": {"timestamp": 990}}},
        "version": 7, "timestamp": 1000}
    shadow = parse_document("pi", None, document, now=1010.0)
    values = {v.key: v for v in shadow.values}
    assert set(values) == {"pm25", "gps.lat", "gps.fix", "led"}
    assert values["pm25"].age_s == 10.0 and values["gps.lat"].age_s == 110.0
    assert values["gps.fix"].reported == [1, 2] and values["gps.fix"].updated == 850
    assert values["led"].desired == "on" and values["led"].delta == "on"
    assert values["led"].updated == 990 and values["led"].reported is None
    assert shadow.version == 7
