"""`fleetctl sandbox up/status/down` as real processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import boto3

FLEETCTL = str(Path(sys.executable).parent / "fleetctl")


def test_up_status_down(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    with subprocess.Popen([FLEETCTL, "sandbox", "up", "--port", "0", "--output", "json"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env=env) as up:
        _drive(up, env)
    assert not (tmp_path / "pifleet" / "sandbox.json").exists()
    again = subprocess.run([FLEETCTL, "sandbox", "down"], env=env, capture_output=True,
                           text=True, timeout=30, check=False)
    assert again.returncode == 1 and "no sandbox is running" in again.stderr


def _drive(up: subprocess.Popen[str], env: dict[str, str]) -> None:
    try:
        assert up.stdout is not None
        info = json.loads(up.stdout.readline())  # printed once it listens
        assert info["endpoint_url"].startswith("http://127.0.0.1:")
        assert info["region"] == "us-east-1"
        cd = boto3.client("codedeploy", endpoint_url=info["endpoint_url"],
                          region_name=info["region"],
                          aws_access_key_id=info["aws_access_key_id"],
                          aws_secret_access_key=info["aws_secret_access_key"])
        with socket.create_connection(("127.0.0.1", info["mqtt_port"]), timeout=5):
            pass  # the broker for device telemetry listens
        cd.create_application(applicationName="aqi")
        assert cd.list_applications()["applications"] == ["aqi"]
        status = subprocess.run([FLEETCTL, "sandbox", "status", "--output", "json"], env=env,
                                capture_output=True, text=True, check=True, timeout=30)
        assert json.loads(status.stdout)["pid"] == up.pid
        second = subprocess.run([FLEETCTL, "sandbox", "up", "--port", "0"], env=env,
                                capture_output=True, text=True, timeout=30, check=False)
        assert second.returncode == 1
        assert "already running" in second.stderr and "Traceback" not in second.stderr
        down = subprocess.run([FLEETCTL, "sandbox", "down"], env=env, capture_output=True,
                              text=True, timeout=30, check=False)
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=15) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([FLEETCTL, "sandbox", "up", "--port", str(port)],
                              env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)},
                              capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
