"""``pifleet-agent sensors list|read`` as real processes, on a configuration of simulated sensors
(and real ones whose hardware this machine lacks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

AGENT = str(Path(sys.executable).parent / "pifleet-agent")


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENT, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def config(tmp_path: Path, *entries: str) -> str:
    path = tmp_path / "agent.toml"
    # Only [[sensors]]: the sensors commands need no identity or region.
    path.write_text("".join(f"[[sensors]]\n{entry}\n" for entry in entries))
    return str(path)


ROOM = 'name = "room"\nkind = "simulated-dht11"\nseed = 1\ninterval_s = 30\n'
AIR = 'name = "air"\nkind = "simulated-sds011"\nseed = 2\n'
BROKEN = 'name = "broken"\nkind = "simulated-sds011"\nunplugged = true\n'


def test_list_shows_each_sensor_and_whether_its_hardware_is_there(tmp_path: Path) -> None:
    port = tmp_path / "ttyUSB0"
    path = config(tmp_path, ROOM, f'name = "pm"\nkind = "sds011"\nport = "{port}"\n')
    result = agent("sensors", "list", "--config", path)
    assert result.returncode == 0, result.stderr
    width = len(str(port))  # columns are as wide as their longest cell
    assert result.stdout.splitlines() == [
        f"room  simulated-dht11  {'seed 1':{width}}  every 30 s  ok: simulated: no hardware "
        "needed",
        f"pm    sds011           {port}  every 60 s  MISSING: {port} does not exist: is the "
        "USB-serial adapter plugged in (see dmesg)?",
    ]
    port.touch()
    document = json.loads(agent("sensors", "list", "--config", path, "--json").stdout)
    assert document["sensors"][1] == {"name": "pm", "kind": "sds011", "where": str(port),
                                      "interval_s": 60.0, "present": True,
                                      "detail": f"{port} is readable"}


def test_list_of_a_dht11_on_a_machine_without_the_library(tmp_path: Path) -> None:
    path = config(tmp_path, 'name = "climate"\nkind = "dht11"\n')
    document = json.loads(agent("sensors", "list", "--config", path, "--json").stdout)
    (entry,) = document["sensors"]
    assert entry["where"] == "GPIO4"
    assert entry["present"] is False
    assert "adafruit_dht is not installed" in entry["detail"]


def test_read_json_gives_a_reading_with_flags_and_health_per_sensor(tmp_path: Path) -> None:
    result = agent("sensors", "read", "--json", "--config", config(tmp_path, ROOM, AIR))
    assert result.returncode == 0, result.stderr
    room, air = json.loads(result.stdout)["sensors"]
    assert room["name"] == "room" and room["kind"] == "simulated-dht11" and room["ok"]
    assert set(room["reading"]) == {"sensor", "timestamp", "temperature_c", "humidity_pct",
                                    "flags"}
    assert 10.0 <= room["reading"]["temperature_c"] <= 30.0
    assert room["reading"]["flags"] == ["simulated"]
    assert room["units"] == {"temperature_c": "°C", "humidity_pct": "%"}
    assert room["health"]["consecutive_failures"] == 0
    assert set(air["reading"]) >= {"pm25_ugm3", "pm10_ugm3"}


def test_read_one_sensor_by_name_as_text(tmp_path: Path) -> None:
    result = agent("sensors", "read", "air", "--config", config(tmp_path, ROOM, AIR))
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith("air: pm25_ugm3=")
    assert "µg/m³" in line
    assert "[simulated]" in line
    assert "read_success_ratio=1.0" in line


def test_a_failing_sensor_exits_1_with_the_reason(tmp_path: Path) -> None:
    path = config(tmp_path, ROOM, BROKEN)
    result = agent("sensors", "read", "--config", path)
    assert result.returncode == 1
    assert result.stdout.startswith("room: temperature_c=")
    assert result.stderr == ("pifleet-agent sensors read: broken: no answer from the SDS011 "
                             "on its serial port (simulated)\n")
    result = agent("sensors", "read", "--json", "--config", path)
    assert result.returncode == 1
    broken = json.loads(result.stdout)["sensors"][1]
    assert broken["ok"] is False
    assert broken["transient"] is False
    assert "no answer" in broken["error"]
    assert broken["health"]["consecutive_failures"] == 1


def test_a_dht11_that_cannot_open_exits_1(tmp_path: Path) -> None:
    result = agent("sensors", "read", "--config",
                   config(tmp_path, 'name = "climate"\nkind = "dht11"\n'))
    assert result.returncode == 1
    assert result.stderr.startswith("pifleet-agent sensors read: climate (DHT11 on GPIO4): ")
    assert "install the pi extra" in result.stderr


def test_usage_and_configuration_errors(tmp_path: Path) -> None:
    path = config(tmp_path, ROOM)
    unknown = agent("sensors", "read", "nope", "--config", path)
    assert unknown.returncode == 2
    assert "no sensor named 'nope'" in unknown.stderr
    assert agent("sensors").returncode == 2
    bad = config(tmp_path, 'name = "x"\nkind = "dht22"\n')
    result = agent("sensors", "list", "--config", bad)
    assert result.returncode == 1
    assert "sensors[0]: kind must be one of" in result.stderr


def test_the_cli_loads_no_driver_until_a_sensors_command_runs() -> None:
    # The daemon's memory budget: importing the CLI and its configuration must not pull drivers.
    code = ("import sys, agent.cli, agent.config; "
            "print(sorted(m for m in sys.modules if m.startswith('sensors.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "['sensors.base', 'sensors.registry']"
