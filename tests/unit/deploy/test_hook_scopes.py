"""Hooks in their own systemd scope: when, and with which systemd-run command line.

systemd is not PID 1 here, so the "under systemd" cases stand a recording systemd-run in
front of the real one: a script that logs its argv and PID, then execs the command as the real
``systemd-run --scope`` does. tests/system/test_boot.py runs the real one under a booted
systemd.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from agent.deploy import hooks
from agent.deploy.errors import ErrorCode, ScriptError
from agent.deploy.hooks import HookRunOptions, ScriptLog, run_event, scope_unit_name
from appspec.model import HookScript

EVENT = "ApplicationStart"
FAST = HookRunOptions(kill_grace_s=5.0, outputs_grace_s=0.5)
RECORDER = """#!/bin/sh
echo "$$ $*" >> "$RECORD"
while [ "$1" != "--" ]; do shift; done
shift
exec "$@"
"""


@pytest.fixture
def fake_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A systemd-run on the PATH that records its calls; the agent looks like a service of a
    booted systemd. Returns the record file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorder = bin_dir / "systemd-run"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    booted = tmp_path / "run-systemd-system"
    booted.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ.get('PATH', os.defpath)}")
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
    monkeypatch.setattr(hooks, "_SYSTEMD_BOOTED", booted)
    return tmp_path / "systemd-run.calls"


def run(tmp_path: Path, body: str, record: Path,
        options: HookRunOptions = FAST) -> list[str]:
    """Runs one script printing ``body``'s output; returns the scripts.log lines."""
    archive = tmp_path / "archive"
    (archive / "scripts").mkdir(parents=True, exist_ok=True)
    path = archive / "scripts" / "start.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "LIFECYCLE_EVENT": EVENT, "DEPLOYMENT_ID": "d-TEST12345",
           "RECORD": str(record), "MARK": "kept"}
    log_path = tmp_path / "scripts.log"
    with ScriptLog(log_path) as log:
        run_event(EVENT, [HookScript("scripts/start.sh")], archive_dir=archive,
                  environment=env, log=log, options=options)
    return log_path.read_text().splitlines()


@pytest.mark.skipif(os.geteuid() != 0, reason="scopes are used only when the agent is root")
def test_under_systemd_each_script_runs_in_its_own_scope(tmp_path: Path,
                                                         fake_systemd: Path) -> None:
    lines = run(tmp_path, 'echo "pid=$$ mark=$MARK"\n', fake_systemd)
    calls = fake_systemd.read_text().splitlines()
    assert len(calls) == 1
    pid, *argv = calls[0].split()
    unit = re.escape("--unit=pifleet-hook-d-TEST12345-ApplicationStart-")
    assert re.fullmatch(
        rf"--scope --quiet --collect {unit}[0-9a-f]{{8}}\.scope --description=pifleet "
        rf"ApplicationStart hook d-TEST12345 -- {re.escape(str(tmp_path))}/archive/scripts/"
        r"start\.sh", " ".join(argv)), argv
    # Executed in place: the script is the process the runner started (its group, its pipes,
    # its environment).
    assert any(line.endswith(f"[stdout]pid={pid} mark=kept") for line in lines), lines


@pytest.mark.skipif(os.geteuid() != 0, reason="scopes are used only when the agent is root")
def test_the_exit_status_passes_through_the_scope(tmp_path: Path, fake_systemd: Path) -> None:
    with pytest.raises(ScriptError) as info:
        run(tmp_path, "exit 3\n", fake_systemd)
    assert info.value.code is ErrorCode.SCRIPT_FAILED
    assert "failed with exit code 3" in str(info.value)
    assert fake_systemd.exists()


def test_scripts_run_directly_when_systemd_is_not_running(
        tmp_path: Path, fake_systemd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hooks, "_SYSTEMD_BOOTED", tmp_path / "absent")
    assert any(line.endswith("[stdout]direct") for line in
               run(tmp_path, "echo direct\n", fake_systemd))
    assert not fake_systemd.exists()


def test_scripts_run_directly_outside_a_systemd_service(
        tmp_path: Path, fake_systemd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INVOCATION_ID")
    run(tmp_path, "true\n", fake_systemd)
    assert not fake_systemd.exists()


def test_own_scope_false_turns_scopes_off(tmp_path: Path, fake_systemd: Path) -> None:
    run(tmp_path, "true\n", fake_systemd, HookRunOptions(own_scope=False))
    assert not fake_systemd.exists()


def test_scope_names_are_valid_unique_and_bounded() -> None:
    env = {"DEPLOYMENT_ID": "d-ÄB C/..\\x", "LIFECYCLE_EVENT": "AfterInstall" * 40}
    first, second = scope_unit_name(env), scope_unit_name(env)
    assert first != second
    for name in (first, second):
        assert re.fullmatch(r"pifleet-hook-d-_B_C_\.\._x-(AfterInstall)+[A-Za-z]*-[0-9a-f]{8}"
                            r"\.scope", name), name
        assert len(name) <= 255
    assert re.fullmatch(r"pifleet-hook-[0-9a-f]{8}\.scope", scope_unit_name({}))
