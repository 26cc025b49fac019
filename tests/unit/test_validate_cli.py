"""``fleetctl validate`` and ``pifleet-agent validate`` as a user runs them: real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "aqi-app"
BIN = Path(sys.executable).parent
CLIS = [pytest.param([str(BIN / "fleetctl")], id="fleetctl"),
        pytest.param([str(BIN / "pifleet-agent")], id="pifleet-agent")]

BROKEN = """\
version: "0.0"
os: linux
files:
  - source: /app
    destination: opt/aqi
permissions:
  - object: /opt/aqi
    mode: 12345
hooks:
  AfterInstal:
    - location: scripts/check_sensors.sh
  BeforeInstall:
    - location: scripts/check_gpio.sh
      timeout: -5
"""


def run(cli: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([*cli, *args], capture_output=True, text=True, env=env, timeout=60,
                          check=False, stdin=subprocess.DEVNULL)


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(EXAMPLE, copy)
    (copy / "appspec.yml").write_text(BROKEN)
    return copy


@pytest.mark.parametrize("cli", CLIS)
def test_example_is_valid(cli: list[str]) -> None:
    result = run(cli, "validate", str(EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid (0 errors, 0 warnings" in result.stdout


@pytest.mark.parametrize("cli", CLIS)
def test_broken_copy_reports_every_error_with_its_location(cli: list[str], broken: Path) -> None:
    result = run(cli, "validate", str(broken))
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    expected = [
        ":1:10: error [version] version:",
        ":4:13: error [source-absolute] files[0].source:",
        ":5:18: error [destination-relative] files[0].destination:",
        ":8:11: error [mode] permissions[0].mode:",
        ":10:3: error [unknown-key] hooks.AfterInstal:",
        ":14:16: error [timeout] hooks.BeforeInstall[0].timeout:",
    ]
    for fragment in expected:
        assert f"{broken / 'appspec.yml'}{fragment}" in result.stdout
    assert "invalid (6 errors" in result.stdout


@pytest.mark.parametrize("cli", CLIS)
def test_json_output(cli: list[str], broken: Path) -> None:
    result = run(cli, "validate", str(broken), "--output", "json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert report["counts"]["error"] == 6
    first = report["findings"][0]
    assert (first["code"], first["line"], first["column"], first["yaml_path"]) == (
        "version", 1, 10, "version")


@pytest.mark.parametrize("cli", CLIS)
def test_explain(cli: list[str]) -> None:
    result = run(cli, "validate", str(EXAMPLE), "--explain")
    assert result.returncode == 0
    assert "ApplicationStop   runs (scripts of the last successful revision)" in result.stdout
    assert "scripts/check_gpio.sh as root, killed after 60 s" in result.stdout


@pytest.mark.parametrize("cli", CLIS)
def test_strict_fails_on_warnings(cli: list[str], tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "rev")
    (tmp_path / "rev" / "scripts" / "check_gpio.sh").chmod(0o644)
    assert run(cli, "validate", str(tmp_path / "rev")).returncode == 0
    assert run(cli, "validate", str(tmp_path / "rev"), "--strict").returncode == 1


@pytest.mark.parametrize("cli", CLIS)
@pytest.mark.parametrize("args", [["validate"], ["validate", ".", "--output", "yaml"],
                                  ["frobnicate"]], ids=["no-dir", "bad-output", "no-command"])
def test_usage_errors_exit_2(cli: list[str], args: list[str]) -> None:
    result = run(cli, *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("cli", CLIS)
def test_missing_revision_is_a_clear_error(cli: list[str], tmp_path: Path) -> None:
    result = run(cli, "validate", str(tmp_path / "nope"))
    assert result.returncode == 1
    assert "is not a directory" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("cli", CLIS)
def test_help_has_an_example(cli: list[str]) -> None:
    result = run(cli, "validate", "--help")
    assert result.returncode == 0
    assert "Example:" in result.stdout
