"""The whole story through fleetctl as real processes: sandbox up, init, three simulated Pis,
a deployment by tag, the shadows. What `make demo` shows, asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
FLEETCTL = str(Path(sys.executable).parent / "fleetctl")


@pytest.fixture
def sandbox_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "COLUMNS": "160"}
    state = tmp_path / "sandbox.json"
    with state.open("w") as out, subprocess.Popen(
            [FLEETCTL, "sandbox", "up", "--port", "0", "--output", "json"], stdout=out,
            stderr=subprocess.DEVNULL, env=env) as sandbox:
        try:
            info = json.loads(wait_for(lambda: state.read_text().strip(), 60, "the sandbox"))
            env.update({"AWS_ENDPOINT_URL": info["endpoint_url"], "AWS_REGION": info["region"],
                        "AWS_ACCESS_KEY_ID": info["aws_access_key_id"],
                        "AWS_SECRET_ACCESS_KEY": info["aws_secret_access_key"]})
            yield env
        finally:
            subprocess.run([FLEETCTL, "sandbox", "devices", "--stop", "--root",
                            str(tmp_path / "devices")], env=env, check=False, timeout=60)
            sandbox.terminate()
            sandbox.wait(timeout=30)


def fleetctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLEETCTL, *args], env=env, capture_output=True, text=True,
                          timeout=180, check=False)


def revision(path: Path) -> Path:
    (path / "scripts").mkdir(parents=True)
    (path / "app").mkdir()
    (path / "app" / "hello.txt").write_text("hello\n")
    script = path / "scripts" / "check.sh"
    script.write_text("#!/bin/sh\ntest -f \"$PIFLEET_INSTALL_ROOT/opt/hello/hello.txt\"\n")
    script.chmod(0o755)
    (path / "appspec.yml").write_text(
        "version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: /opt/hello\n"
        "hooks:\n  ValidateService:\n    - location: scripts/check.sh\n      timeout: 30\n")
    return path


def test_three_simulated_pis_get_a_deployment_and_report(sandbox_env: dict[str, str],
                                                          tmp_path: Path) -> None:
    env = sandbox_env
    init = fleetctl(env, "init", "--group", "roof", "--tag", "ring=roof", "--config",
                    "CodeDeployDefault.AllAtOnce")
    assert init.returncode == 0, init.stderr
    devices = fleetctl(env, "sandbox", "devices", "3", "--tag", "ring=roof", "--root",
                       str(tmp_path / "devices"), "--output", "json")
    assert devices.returncode == 0, devices.stderr
    assert [d["name"] for d in json.loads(devices.stdout)] == ["pi-1", "pi-2", "pi-3"]
    deploy = fleetctl(env, "deploy", str(revision(tmp_path / "hello")), "--group", "roof",
                      "--wait", "--timeout", "120")
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    status = fleetctl(env, "--output", "json", "deployments", "--group", "roof")
    assert status.returncode == 0, status.stderr
    for name in ("pi-1", "pi-2", "pi-3"):
        assert (tmp_path / "devices" / name / "fs" / "opt" / "hello" / "hello.txt").exists()

    def shadow() -> dict[str, object] | None:
        done = fleetctl(env, "--output", "json", "shadow", "pi-2")
        return json.loads(done.stdout) if done.returncode == 0 else None

    reported = wait_for(lambda: (s := shadow()) and "climate" in s["reported"] and s, 30,
                        "pi-2's sensor values in its shadow")["reported"]
    assert {"temperature_c", "humidity_pct"} <= set(reported["climate"])
    assert {"pm25_ugm3", "pm10_ugm3"} <= set(reported["air"])
