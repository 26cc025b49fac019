"""`systemd-analyze security --offline=true` on pifleet-agent.service: the exposure score stays
at or under the recorded threshold, and each hardening option the unit chose stays on.

Threshold 9.2 (of 10, "UNSAFE"), the unit's score today, as a ratchet rather than a goal: the
agent is a root hook runner by design (appspec hooks install software with apt/dpkg/pip into
/usr, /etc, /opt, /home, use sudo/su, setuid helpers, GPIO/I2C/serial devices and modprobe), so
NoNewPrivileges, ProtectSystem/Home, PrivateTmp/Devices, capability bounding and system call
filters stay off (packaging/README.md). The official CodeDeploy and SSM agents score 9.6.
Dropping ProtectKernelLogs= raises the score to 9.5, RestrictRealtime= to 9.3; the options
whose removal does not move the rounded score (LockPersonality=) are checked one by one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "debian" / "pifleet-agent.service"
THRESHOLD = 9.2
HARDENING_ON = ("ProtectKernelLogs=", "LockPersonality=", "RestrictRealtime=")


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return subprocess.run([tool, "security", "--offline=true", *args, str(UNIT)],
                          capture_output=True, text=True, check=False)


def test_exposure_stays_at_or_under_the_threshold() -> None:
    result = analyze(f"--threshold={round(THRESHOLD * 10)}")
    found = re.search(r"Overall exposure level for pifleet-agent\.service: (\d+\.\d)",
                      result.stdout)
    assert found, result.stdout + result.stderr
    score = float(found.group(1))
    assert score <= THRESHOLD, (
        f"exposure {score} > {THRESHOLD}: an option was relaxed; see packaging/README.md")
    # systemd's own check agrees (its scale is 0-100).
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_each_chosen_hardening_option_is_on() -> None:
    result = analyze("--json=short")
    assert result.returncode == 0, result.stderr
    checks = {check["name"]: check["set"] for check in json.loads(result.stdout)}
    assert {name: checks.get(name) for name in HARDENING_ON} == dict.fromkeys(HARDENING_ON, True)
