"""The aqi-app sample revision: its AQI formula, its web app and its hook scripts.

The app and the scripts run for real, as subprocesses on free loopback ports, with every path they
write pointed into tmp_path; nothing needs a Raspberry Pi, systemd or root.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

REVISION = Path(__file__).resolve().parents[3] / "examples" / "aqi-app"
APP = REVISION / "app" / "aqi_web.py"
SCRIPTS = REVISION / "scripts"
HOOK_SCRIPTS = (
    "stop_app.sh",
    "check_gpio.sh",
    "check_sensors.sh",
    "start_app.sh",
    "validate_app.sh",
)

READINGS = {
    "timestamp": "2024-06-01T12:00:00Z",
    "temperature_c": 21.5,
    "humidity_pct": 40,
    "pm25_ugm3": 7.2,
    "pm10_ugm3": 12.0,
}


@pytest.fixture(scope="module")
def aqi_web() -> Iterator[ModuleType]:
    """aqi_web.py imported from its path: the revision's app/ is not a package."""
    spec = importlib.util.spec_from_file_location("aqi_web_under_test", APP)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the defining module up in sys.modules while building the class.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def free_port() -> int:
    # Racy in theory (someone could take the port before the app binds it), fine on loopback.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str, str]:
    """GET path from the app; returns status, Content-Type and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read().decode("utf-8")
        return response.status, response.getheader("Content-Type", ""), body
    finally:
        conn.close()


def wait_until(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def answers_health(port: int) -> bool:
    try:
        return get(port, "/healthz")[0] == 200
    except OSError:
        return False


def is_running(pid: int) -> bool:
    """True if pid is alive and not a zombie (PID 1 here need not reap the orphans we make)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ---------------------------------------------------------------------------------------------
# The AQI formula


@pytest.mark.parametrize(
    ("pm25", "aqi", "category"),
    [
        (0.0, 0, "Good"),
        (7.2, 40, "Good"),
        (9.0, 50, "Good"),
        (9.09, 50, "Good"),  # truncated to 9.0, not lost in the gap before 9.1
        (9.1, 51, "Moderate"),
        (12.0, 56, "Moderate"),  # Good before the 2024 revision
        (35.4, 100, "Moderate"),
        (35.5, 101, "Unhealthy for Sensitive Groups"),
        (55.4, 150, "Unhealthy for Sensitive Groups"),
        (55.5, 151, "Unhealthy"),
        (125.4, 200, "Unhealthy"),
        (125.5, 201, "Very Unhealthy"),
        (225.4, 300, "Very Unhealthy"),
        (225.5, 301, "Hazardous"),
        (325.4, 500, "Hazardous"),
        (500.0, 848, "Hazardous"),  # over the table: extrapolated along the last row
    ],
)
def test_pm25_aqi_matches_epa_breakpoints(
    aqi_web: ModuleType, pm25: float, aqi: int, category: str
) -> None:
    assert aqi_web.pm25_aqi(pm25) == (aqi, category)


def test_pm25_aqi_of_absurd_concentration_does_not_overflow(aqi_web: ModuleType) -> None:
    value, category = aqi_web.pm25_aqi(1e300)
    assert value > 10**300
    assert category == "Hazardous"


@pytest.mark.parametrize("pm25", [-0.1, float("nan"), float("inf")])
def test_pm25_aqi_refuses_impossible_concentrations(aqi_web: ModuleType, pm25: float) -> None:
    with pytest.raises(ValueError, match=r"PM2\.5"):
        aqi_web.pm25_aqi(pm25)


# ---------------------------------------------------------------------------------------------
# The web app, as a subprocess


@dataclass
class RunningApp:
    port: int
    readings_file: Path
    process: subprocess.Popen[bytes]

    def write_readings(self, content: str | bytes) -> None:
        data = content.encode() if isinstance(content, str) else content
        self.readings_file.write_bytes(data)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[RunningApp]:
    # The "<b>" in the directory name reaches the page through error messages: escaping test.
    readings_file = tmp_path / "<b>readings" / "latest.json"
    readings_file.parent.mkdir()
    port = free_port()
    env = {**os.environ, "AQI_READINGS_FILE": str(readings_file), "AQI_PORT": "not-a-port"}
    with (tmp_path / "app.log").open("wb") as log:
        # --port and --bind must win over the environment (AQI_PORT here would be a usage error).
        process = subprocess.Popen(
            [sys.executable, str(APP), "--bind", "127.0.0.1", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        wait_until(
            lambda: answers_health(port) or process.poll() is not None,
            timeout_s=10,
            what="the app to answer /healthz",
        )
        assert process.poll() is None, (tmp_path / "app.log").read_text()
        yield RunningApp(port, readings_file, process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=5)


@pytest.mark.integration
def test_healthz_answers_ok(app: RunningApp) -> None:
    status, content_type, body = get(app.port, "/healthz")
    assert (status, body) == (200, "ok\n")
    assert content_type.startswith("text/plain")


@pytest.mark.integration
def test_readings_json_serves_the_file_with_its_aqi(app: RunningApp) -> None:
    app.write_readings(json.dumps(READINGS))
    status, content_type, body = get(app.port, "/readings.json")
    assert status == 200
    assert content_type == "application/json"
    assert json.loads(body) == {
        "readings": READINGS,
        "aqi": {"value": 40, "category": "Good", "pollutant": "pm25"},
        "problems": [],
    }


@pytest.mark.integration
def test_page_shows_readings_and_aqi_category(app: RunningApp) -> None:
    app.write_readings(json.dumps(READINGS))
    status, content_type, body = get(app.port, "/")
    assert status == 200
    assert content_type == "text/html; charset=utf-8"
    for text in ("2024-06-01T12:00:00Z", "21.5 °C", "40 %", "7.2 µg/m³", "12.0 µg/m³", "Good"):
        assert text in body


@pytest.mark.integration
def test_missing_file_means_no_readings_yet(app: RunningApp) -> None:
    assert "no readings yet" in get(app.port, "/")[2].lower()
    assert json.loads(get(app.port, "/readings.json")[2]) == {
        "readings": None,
        "aqi": None,
        "problems": [],
    }


@pytest.mark.integration
@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"pm25_ugm3": 7', "cannot read"),
        (b"\xff\xfe not text", "cannot read"),
        (b"[1, 2]", "holds a JSON list"),
    ],
    ids=["truncated", "not-utf8", "not-an-object"],
)
def test_corrupt_file_is_reported_and_the_app_keeps_serving(
    app: RunningApp, content: bytes, problem: str
) -> None:
    app.write_readings(content)
    status, _, page = get(app.port, "/")
    assert status == 200
    assert "no readings yet" in page.lower()
    assert problem in page
    # The file path in the message carries "<b>", which must arrive escaped.
    assert "&lt;b&gt;readings" in page
    assert "<b>" not in page
    doc = json.loads(get(app.port, "/readings.json")[2])
    assert doc["readings"] is None
    assert problem in doc["problems"][0]

    app.write_readings(json.dumps(READINGS))
    assert json.loads(get(app.port, "/readings.json")[2])["readings"] == READINGS


@pytest.mark.integration
def test_invalid_values_are_dropped_and_reported(app: RunningApp) -> None:
    app.write_readings('{"pm25_ugm3": -3, "pm10_ugm3": true, "temperature_c": -5, "timestamp": 7}')
    doc = json.loads(get(app.port, "/readings.json")[2])
    assert doc["readings"] == {"temperature_c": -5}
    assert doc["aqi"] is None
    assert len(doc["problems"]) == 3


@pytest.mark.integration
def test_page_escapes_html_in_readings(app: RunningApp) -> None:
    app.write_readings(json.dumps({"timestamp": "<script>alert('x')</script>", "pm25_ugm3": 1}))
    page = get(app.port, "/")[2]
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page


@pytest.mark.integration
def test_unknown_path_is_404(app: RunningApp) -> None:
    assert get(app.port, "/nope")[0] == 404


@pytest.mark.integration
def test_sigterm_stops_the_app_cleanly(app: RunningApp) -> None:
    app.process.send_signal(signal.SIGTERM)
    assert app.process.wait(timeout=5) == 0


# ---------------------------------------------------------------------------------------------
# The hook scripts, in simulated mode


def run_hook(
    name: str, env: dict[str, str], timeout_s: float = 20
) -> subprocess.CompletedProcess[str]:
    # capture_output plus a timeout also proves the hook closes its stdout and stderr: a background
    # child still holding them would make run() wait for the child, and time out.
    return subprocess.run(
        [str(SCRIPTS / name)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.fixture
def hook_env(tmp_path: Path) -> dict[str, str]:
    """The hooks' environment: every path in tmp_path, no systemd, no AQI_* from outside."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AQI_")}
    install_dir = tmp_path / "opt-aqi"
    install_dir.mkdir()
    return env | {
        "AQI_NO_SYSTEMD": "1",
        "AQI_INSTALL_DIR": str(install_dir),
        "AQI_GPIO_DEVICE": str(tmp_path / "gpiochip0"),
        "AQI_SDS011_PORT": str(tmp_path / "ttyUSB0"),
        "AQI_PID_FILE": str(tmp_path / "run" / "aqi-web.pid"),
        "AQI_LOG_FILE": str(tmp_path / "log" / "aqi-web.log"),
        "AQI_READINGS_FILE": str(tmp_path / "latest.json"),
        "AQI_BIND": "127.0.0.1",
        "AQI_PORT": str(free_port()),
        "AQI_VALIDATE_TIMEOUT_S": "10",
    }


def install_app(env: dict[str, str]) -> None:
    """Do what the appspec's files section does: copy app/ to the install directory."""
    shutil.copytree(REVISION / "app", env["AQI_INSTALL_DIR"], dirs_exist_ok=True)


@pytest.mark.integration
@pytest.mark.parametrize("name", HOOK_SCRIPTS)
def test_hook_script_is_executable_bash_that_parses(name: str) -> None:
    script = SCRIPTS / name
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=10)


def test_appspec_names_every_hook_script() -> None:
    appspec = (REVISION / "appspec.yml").read_text()
    for name in HOOK_SCRIPTS:
        assert f"location: scripts/{name}" in appspec
    assert "mode: 644" in appspec
    assert "mode: 0" not in appspec  # YAML 1.1 would read 0644 as the integer 420


@pytest.mark.integration
def test_check_gpio_fails_without_the_device(hook_env: dict[str, str]) -> None:
    result = run_hook("check_gpio.sh", hook_env)
    assert result.returncode == 1
    assert f"{hook_env['AQI_GPIO_DEVICE']} not found" in result.stderr


@pytest.mark.integration
def test_check_gpio_refuses_a_regular_file(hook_env: dict[str, str]) -> None:
    Path(hook_env["AQI_GPIO_DEVICE"]).touch()
    assert run_hook("check_gpio.sh", hook_env).returncode == 1


@pytest.mark.integration
def test_check_gpio_accepts_a_character_device(hook_env: dict[str, str]) -> None:
    # /dev/null stands in for /dev/gpiochip0: both are character devices.
    result = run_hook("check_gpio.sh", hook_env | {"AQI_GPIO_DEVICE": "/dev/null"})
    assert result.returncode == 0, result.stderr
    assert "board:" in result.stdout


@pytest.mark.integration
def test_check_gpio_passes_when_simulated(hook_env: dict[str, str]) -> None:
    result = run_hook("check_gpio.sh", hook_env | {"AQI_SIMULATED": "1"})
    assert result.returncode == 0, result.stderr
    assert "simulated" in result.stdout


@pytest.mark.integration
def test_check_sensors_checks_the_install_even_when_simulated(hook_env: dict[str, str]) -> None:
    env = hook_env | {"AQI_SIMULATED": "1"}
    result = run_hook("check_sensors.sh", env)
    assert result.returncode == 1
    assert "aqi_web.py was not installed" in result.stderr

    install_app(env)
    result = run_hook("check_sensors.sh", env)
    assert result.returncode == 0, result.stderr
    assert "simulated" in result.stdout


@pytest.mark.integration
def test_check_sensors_fails_without_the_serial_port(hook_env: dict[str, str]) -> None:
    install_app(hook_env)
    result = run_hook("check_sensors.sh", hook_env)
    assert result.returncode == 1
    assert f"{hook_env['AQI_SDS011_PORT']} not found" in result.stderr
    assert run_hook("check_sensors.sh", hook_env | {"AQI_SDS011_PORT": "/dev/null"}).returncode == 0


@pytest.mark.integration
def test_start_validate_stop_cycle(hook_env: dict[str, str]) -> None:
    install_app(hook_env)
    Path(hook_env["AQI_READINGS_FILE"]).write_text(json.dumps(READINGS), encoding="utf-8")
    pid_file = Path(hook_env["AQI_PID_FILE"])
    pid = None
    try:
        result = run_hook("start_app.sh", hook_env)
        assert result.returncode == 0, result.stderr
        pid = int(pid_file.read_text())
        assert is_running(pid)

        result = run_hook("validate_app.sh", hook_env)
        assert result.returncode == 0, result.stderr + Path(hook_env["AQI_LOG_FILE"]).read_text()
        # The background app got its settings from the hook's environment.
        doc = json.loads(get(int(hook_env["AQI_PORT"]), "/readings.json")[2])
        assert doc["readings"] == READINGS

        result = run_hook("stop_app.sh", hook_env)
        assert result.returncode == 0, result.stderr
        assert "SIGTERM" in result.stdout
        assert not is_running(pid)
        assert not pid_file.exists()
        # The next deployment's ApplicationStop finds nothing to stop, and that is fine.
        assert run_hook("stop_app.sh", hook_env).returncode == 0
    finally:
        # Never leave a server behind, even when start_app.sh timed out before pid was read.
        if pid is None and pid_file.exists():
            pid = int(pid_file.read_text())
        if pid is not None and is_running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.integration
def test_validate_fails_at_the_deadline_when_nothing_answers(hook_env: dict[str, str]) -> None:
    started = time.monotonic()
    result = run_hook("validate_app.sh", hook_env | {"AQI_VALIDATE_TIMEOUT_S": "1"})
    assert result.returncode == 1
    assert "did not answer 200 within 1s" in result.stderr
    assert 1 <= time.monotonic() - started < 8


@pytest.mark.integration
def test_stop_app_leaves_an_unrelated_process_alone(hook_env: dict[str, str]) -> None:
    # A stale pid file whose PID now belongs to something else.
    with subprocess.Popen(["sleep", "30"]) as other:
        try:
            pid_file = Path(hook_env["AQI_PID_FILE"])
            pid_file.parent.mkdir()
            pid_file.write_text(f"{other.pid}\n")
            result = run_hook("stop_app.sh", hook_env)
            assert result.returncode == 0, result.stderr
            assert other.poll() is None
            assert not pid_file.exists()
        finally:
            other.kill()


@pytest.mark.integration
def test_stop_app_kills_an_app_that_ignores_sigterm(
    hook_env: dict[str, str], tmp_path: Path
) -> None:
    stubborn = tmp_path / "aqi_web.py"  # the name stop_app.sh looks for in the command line
    stubborn.write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    with subprocess.Popen([sys.executable, str(stubborn)], stdout=subprocess.PIPE) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline() == b"ready\n"
            pid_file = Path(hook_env["AQI_PID_FILE"])
            pid_file.parent.mkdir()
            pid_file.write_text(f"{process.pid}\n")
            result = run_hook("stop_app.sh", hook_env | {"AQI_STOP_TIMEOUT_S": "1"})
            assert result.returncode == 0, result.stderr
            assert "sending SIGKILL" in result.stdout
            assert process.wait(timeout=5) == -signal.SIGKILL
        finally:
            process.kill()
