"""examples/aqi-app deployed by `pifleet-agent deploy-local` into a throw-away root, twice."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
AGENT = str(Path(sys.executable).parent / "pifleet-agent")
pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "pi"
    yield root
    pid_file = root / "run" / "aqi-web.pid"
    if pid_file.exists():  # the test failed before stopping the app: do not leak it
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def deploy(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENT, "deploy-local", "-l", str(REPO / "examples" / "aqi-app"),
                           "--root", str(root), "-a", "aqi-app"],
                          capture_output=True, text=True, env=env, timeout=180, check=False)


def test_aqi_app_deploys_runs_and_is_stopped_by_the_next_deployment(root: Path,
                                                                    tmp_path: Path) -> None:
    port = free_port()
    readings = tmp_path / "latest.json"
    readings.write_text(json.dumps({"pm25_ugm3": 40.0, "temperature_c": 20.0}))
    env = {**os.environ, "AQI_SIMULATED": "1", "AQI_NO_SYSTEMD": "1", "AQI_PORT": str(port),
           "AQI_BIND": "127.0.0.1", "AQI_READINGS_FILE": str(readings),
           "AQI_VALIDATE_TIMEOUT_S": "30"}
    first = deploy(root, env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "ValidateService      ok" in first.stdout
    assert (root / "opt" / "aqi" / "aqi_web.py").is_file()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/readings.json", timeout=10) as response:
        body = json.load(response)
    assert body["aqi"] == {"value": 112, "category": "Unhealthy for Sensitive Groups",
                           "pollutant": "pm25"}
    old_pid = int((root / "run" / "aqi-web.pid").read_text())

    second = deploy(root, env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "ApplicationStop      ok" in second.stdout  # the installed revision's stop script
    new_pid = int((root / "run" / "aqi-web.pid").read_text())
    assert new_pid != old_pid
    deadline = time.monotonic() + 10
    while _alive(old_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(old_pid), "the first app was not stopped by ApplicationStop"
    os.kill(new_pid, signal.SIGTERM)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; it is not our child, so it is reaped by init.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"
