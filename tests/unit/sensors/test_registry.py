"""``sensors.registry`` (SensorSpec, open_sensor, hardware_status) and the ``[[sensors]]``
entries of agent.toml (``agent.config``)."""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from agent.config import SENSOR_KEYS, ConfigError, load_config, parse_config, read_config
from sensors import SIMULATED, SensorError
from sensors.registry import SensorSpec, hardware_status, open_sensor
from sensors.simulated import SimulatedDHT11, SimulatedSDS011

REQUIRED = ('[identity]\nmode = "iam-user"\nhost_identifier = "arn:aws:iam::1:user/pi"\n'
            '[aws]\nregion = "eu-west-1"\n')


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "agent.toml")
    return str(caught.value)


# -- agent.toml ------------------------------------------------------------------------------


def test_sensors_are_read_from_sensors_entries(tmp_path: Path) -> None:
    path = write(tmp_path, REQUIRED + """
[[sensors]]
name = "climate"
kind = "dht11"
pin = 17
interval_s = 30

[[sensors]]
name = "air"
kind = "sds011"
port = "/dev/serial0"

[[sensors]]
name = "sim"
kind = "simulated-sds011"
seed = 3
fail_every = 5
unplugged = false
stuck_value = 7
spike_every = 11
""")
    config = load_config(path)
    assert config.sensors == (
        SensorSpec("climate", "dht11", pin=17, interval_s=30.0),
        SensorSpec("air", "sds011", port="/dev/serial0"),
        SensorSpec("sim", "simulated-sds011", seed=3, fail_every=5, stuck_value=7.0,
                   spike_every=11))
    assert isinstance(config.sensors[0].interval_s, float)
    assert isinstance(config.sensors[2].stuck_value, float)
    assert config.aws.region == "eu-west-1"


def test_no_sensors_by_default(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, REQUIRED)).sensors == ()


def test_read_config_needs_no_region_for_sensors(tmp_path: Path) -> None:
    path = write(tmp_path, '[[sensors]]\nname = "a"\nkind = "simulated-dht11"\n')
    assert read_config(path).sensors == (SensorSpec("a", "simulated-dht11"),)
    with pytest.raises(ConfigError, match="region is required"):
        load_config(path)


def test_the_config_keys_are_the_spec_fields() -> None:
    assert list(SENSOR_KEYS) == [f.name for f in fields(SensorSpec)]


@pytest.mark.parametrize(("entries", "expected"), [
    ([{"name": "a", "kind": "dht11", "pins": 4}],
     "agent.toml sensors[0]: unknown key 'pins'; the keys are name, kind, pin, port, "
     "interval_s, seed, fail_every, unplugged, stuck_value, spike_every"),
    ([{"name": "a", "kind": "dht11"}, {"name": "b", "kind": "dht11", "pin": "4"}],
     "agent.toml sensors[1]: pin must be a int, not '4'"),
    ([{"name": "a", "kind": "dht11", "interval_s": True}],
     "agent.toml sensors[0]: interval_s must be a float, not True"),
    ([{"name": "a", "kind": "simulated-dht11", "unplugged": 1}],
     "agent.toml sensors[0]: unplugged must be a bool, not 1"),
    ([{"name": 5, "kind": "dht11"}], "agent.toml sensors[0]: name must be a str, not 5"),
    ([{"kind": "dht11"}],
     'agent.toml sensors[0]: name is required (for example name = "climate", kind = "dht11")'),
    ([{}], "agent.toml sensors[0]: name and kind are required (for example name = "
           '"climate", kind = "dht11")'),
    ([{"name": "a", "kind": "dht22"}],
     "agent.toml sensors[0]: kind must be one of dht11, sds011, simulated-dht11, "
     "simulated-sds011, not 'dht22'"),
    ([{"name": "", "kind": "dht11"}], "agent.toml sensors[0]: name must not be empty"),
    ([{"name": "a", "kind": "dht11", "pin": 40}],
     "agent.toml sensors[0]: pin must be a BCM GPIO number 0-27, not 40"),
    ([{"name": "a", "kind": "sds011", "interval_s": 0}],
     "agent.toml sensors[0]: interval_s must be > 0, not 0.0"),
    ([{"name": "a", "kind": "dht11", "fail_every": 2, "unplugged": True}],
     "agent.toml sensors[0]: fail_every, unplugged: only simulated sensors take faults"),
    ([{"name": "a", "kind": "dht11"}, {"name": "a", "kind": "sds011"}],
     "agent.toml sensors[1]: another sensor is already named 'a'; names must be unique (they "
     "key the shadow document)"),
], ids=["unknown-key", "wrong-type-second-entry", "bool-for-float", "int-for-bool",
        "int-for-str", "no-name", "no-name-no-kind", "unknown-kind", "empty-name", "pin-40",
        "zero-interval", "faults-on-hardware", "duplicate-name"])
def test_a_bad_entry_is_an_error_naming_its_index(entries: list[dict[str, Any]],
                                                   expected: str) -> None:
    assert error({"sensors": entries}) == expected


@pytest.mark.parametrize("raw", [{"sensors": {"name": "a"}}, {"sensors": 5},
                                 {"sensors": [{"name": "a", "kind": "dht11"}, 3]}],
                         ids=["table", "number", "not-all-tables"])
def test_sensors_must_be_an_array_of_tables(raw: dict[str, Any]) -> None:
    assert error(raw) == ("agent.toml: sensors must be an array of tables, one [[sensors]] "
                          "entry per sensor")


def test_a_table_instead_of_entries_is_refused_in_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, REQUIRED + '[sensors]\nname = "a"\nkind = "dht11"\n')
    with pytest.raises(ConfigError, match=r"sensors must be an array of tables"):
        load_config(path)


# -- open_sensor -----------------------------------------------------------------------------


def test_simulated_kinds_open_simulated_sensors_with_the_spec() -> None:
    spec = SensorSpec("room", "simulated-dht11", seed=9, fail_every=4, spike_every=6)
    sensor = open_sensor(spec, clock=lambda: 1_750_000_000.0)
    assert isinstance(sensor, SimulatedDHT11)
    assert (sensor.name, sensor.seed, sensor.fail_every, sensor.spike_every) == \
        ("room", 9, 4, 6)
    reading = sensor.read()
    assert reading.sensor == "room"
    assert SIMULATED in reading.flags
    air = open_sensor(SensorSpec("air", "simulated-sds011", stuck_value=3.0, unplugged=True))
    assert isinstance(air, SimulatedSDS011)
    assert (air.stuck_value, air.unplugged) == (3.0, True)


def test_a_dht11_without_its_library_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "adafruit_dht", None)
    with pytest.raises(SensorError, match=r"^climate \(DHT11 on GPIO17\): .*install the pi"):
        open_sensor(SensorSpec("climate", "dht11", pin=17))


def test_an_sds011_opens_through_the_sds011_module(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []

    class SDS011:
        @classmethod
        def open(cls, port: str, *, name: str = "sds011") -> SimulatedSDS011:
            opened.append(port)
            return SimulatedSDS011(name)

    module = types.ModuleType("sensors.sds011")
    module.SDS011 = SDS011  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sensors.sds011", module)
    sensor = open_sensor(SensorSpec("air", "sds011", port="/dev/serial0"))
    assert opened == ["/dev/serial0"]
    assert sensor.name == "air"


def test_an_sds011_on_a_missing_port_is_a_sensor_error(tmp_path: Path) -> None:
    # The real driver (sensors/sds011.py) when it is part of the build.
    pytest.importorskip("sensors.sds011")
    pytest.importorskip("serial")
    with pytest.raises(SensorError):
        open_sensor(SensorSpec("air", "sds011", port=str(tmp_path / "ttyUSB9")))


def test_an_sds011_without_its_driver_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sensors.sds011", None)
    with pytest.raises(SensorError, match=r"^air: this build has no SDS011 driver"):
        open_sensor(SensorSpec("air", "sds011"))


# -- hardware_status -------------------------------------------------------------------------


def test_simulated_sensors_need_no_hardware() -> None:
    assert hardware_status(SensorSpec("s", "simulated-dht11")).present


def test_an_sds011_needs_its_serial_port(tmp_path: Path) -> None:
    port = tmp_path / "ttyUSB0"
    missing = hardware_status(SensorSpec("air", "sds011", port=str(port)))
    assert not missing.present
    assert missing.detail.startswith(f"{port} does not exist")
    port.touch()
    assert hardware_status(SensorSpec("air", "sds011", port=str(port))).present


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_an_sds011_port_this_user_cannot_open(tmp_path: Path) -> None:
    port = tmp_path / "ttyUSB0"
    port.touch(mode=0o600)
    port.chmod(0)
    status = hardware_status(SensorSpec("air", "sds011", port=str(port)))
    assert not status.present
    assert "dialout" in status.detail


def test_a_dht11_needs_its_library_and_a_gpio_chip(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SensorSpec("climate", "dht11")
    # Absent even where it is installed: not imported, and nowhere on the path.
    monkeypatch.delitem(sys.modules, "adafruit_dht", raising=False)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "nothing")])
    status = hardware_status(spec, dev=tmp_path)
    assert not status.present
    assert "adafruit_dht is not installed" in status.detail
    assert f"no {tmp_path}/gpiochip*" in status.detail
    library = types.ModuleType("adafruit_dht")
    library.__spec__ = importlib.machinery.ModuleSpec("adafruit_dht", None)
    monkeypatch.setitem(sys.modules, "adafruit_dht", library)
    (tmp_path / "gpiochip0").touch()
    (tmp_path / "gpiochip4").touch()
    status = hardware_status(spec, dev=tmp_path)
    assert status.present
    assert status.detail == "adafruit_dht installed; gpiochip0, gpiochip4"
