"""Crash recovery beyond the official agent: hook groups a killed agent left running, and the
half-unpacked archive of an interrupted DownloadBundle. Real processes, real SIGKILLs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.deploy.layout import DeploymentRoot
from agent.deploy.tracking import CommandTracker, HookGroup, hook_group
from tests.support.waiting import wait_for

# A stand-in for the agent: tracks a command and runs a hook script that blocks, in a process
# the test can SIGKILL. The script starts a daemon in a session of its own first.
AGENT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from agent.deploy.hooks import ScriptLog, run_event
    from agent.deploy.tracking import CommandTracker
    from appspec.model import HookScript
    root, archive = Path(sys.argv[1]), Path(sys.argv[2])
    tracker = CommandTracker(root / "ongoing-deployment")
    tracker.begin("d-KILLED", "hc-killed")
    run_event("ApplicationStart", [HookScript("start.sh", 300)], archive_dir=archive,
              environment=dict(os.environ), log=ScriptLog(root / "scripts.log"))
""")


def _live(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rindex(")") + 2] not in "ZX"


def _group(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _live(int(entry)):
            with contextlib.suppress(OSError, ValueError):
                raw = Path(f"/proc/{entry}/stat").read_text()
                if int(raw[raw.rindex(")") + 2:].split()[2]) == pgid:
                    members.append(int(entry))
    return members


@pytest.fixture
def pids(tmp_path: Path) -> Iterator[Path]:
    """Where scripts write the pids they start; whatever is left is killed afterwards."""
    folder = tmp_path / "pids"
    folder.mkdir()
    yield folder
    for file in folder.iterdir():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(file.read_text()), signal.SIGKILL)


def _killed_agent(tmp_path: Path, pids: Path) -> tuple[Path, int, int]:
    """Run AGENT until its hook blocks, SIGKILL it; the root, the hook's pgid, the daemon."""
    archive = tmp_path / "archive"
    archive.mkdir()
    script = archive / "start.sh"
    script.write_text(f"#!/bin/sh\nsetsid sh -c 'echo $$ > {pids}/daemon.tmp; "
                      f"mv {pids}/daemon.tmp {pids}/daemon; exec sleep 600' "
                      "</dev/null >/dev/null 2>&1 &\n"
                      f"echo $$ > {pids}/hook.tmp; mv {pids}/hook.tmp {pids}/hook\nsleep 600\n")
    script.chmod(0o755)
    root = tmp_path / "root"
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(root), str(archive)],
                             cwd=Path(__file__).parents[3])
    try:
        wait_for(lambda: (pids / "hook").exists() and (pids / "daemon").exists()
                 and (root / "ongoing-hooks" / "d-KILLED").exists(), 30,
                 "the hook and its daemon to start, and the hook to be recorded")
    finally:
        agent.kill()
        agent.wait()
    return root, int((pids / "hook").read_text()), int((pids / "daemon").read_text())


def test_a_hook_left_running_by_a_killed_agent_is_ended_at_restart(tmp_path: Path,
                                                                   pids: Path) -> None:
    root, hook, daemon = _killed_agent(tmp_path, pids)
    assert len(_group(hook)) == 2  # sh and its sleep outlived the agent
    assert json.loads((root / "ongoing-hooks" / "d-KILLED").read_text())["pgid"] == hook
    found = CommandTracker(root / "ongoing-deployment").recover(grace_s=30)
    assert found is not None and found.host_command_identifier == "hc-killed"
    assert _group(hook) == []
    assert _live(daemon)  # its own session: deliberately started, deliberately kept
    assert list((root / "ongoing-hooks").iterdir()) == []


def test_a_group_whose_leader_is_not_ours_any_more_is_left_alone(tmp_path: Path,
                                                                  pids: Path) -> None:
    tracker = CommandTracker(tmp_path / "ongoing-deployment")
    stranger = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        group = HookGroup.of(stranger.pid)
        assert group is not None
        records = tmp_path / "ongoing-hooks"
        records.mkdir()
        for name, record in {"reused": {**group.__dict__, "start_ticks": group.start_ticks - 1},
                             "other-boot": {**group.__dict__, "boot_id": "another boot"},
                             "torn": '{"pgid": 1'}.items():
            (records / name).write_text(record if isinstance(record, str)
                                        else json.dumps(record))
        tracker.recover()
        assert stranger.poll() is None
        assert list(records.iterdir()) == []
    finally:
        stranger.kill()
        stranger.wait()


def test_a_group_whose_leader_exited_keeps_what_it_started(tmp_path: Path, pids: Path) -> None:
    # `app &` then exit: the app is in the script's group, but the script ended on its own.
    leader = subprocess.Popen(["sh", "-c", f"sleep 600 & echo $! > {pids}/app"],
                              start_new_session=True)
    group = HookGroup.of(leader.pid)
    leader.wait()
    assert group is not None
    records = tmp_path / "ongoing-hooks"
    records.mkdir()
    (records / "d-1").write_text(json.dumps(group.__dict__))
    CommandTracker(tmp_path / "ongoing-deployment").recover()
    assert _live(int((pids / "app").read_text()))


def test_hook_groups_are_recorded_only_inside_a_tracked_command(tmp_path: Path) -> None:
    tracker = CommandTracker(tmp_path / "ongoing-deployment")
    records = tmp_path / "ongoing-hooks"
    with hook_group(os.getpid()):
        assert not records.exists()  # deploy-local: nothing to recover from
    tracker.begin("d-1", "hc")
    try:
        with hook_group(os.getpid()):
            assert json.loads((records / "d-1").read_text())["pgid"] == os.getpid()
        assert not (records / "d-1").exists()
    finally:
        tracker.end("d-1")
    with hook_group(os.getpid()):
        assert not (records / "d-1").exists()


def test_the_half_unpacked_archive_of_the_interrupted_command_is_removed(
        tmp_path: Path) -> None:
    layout = DeploymentRoot(tmp_path)
    interrupted = layout.deployment("dg", "d-CUT").path
    done = layout.deployment("dg", "d-DONE").path
    for folder in (interrupted, done):
        (folder / ".deployment-archive.partial-x1y2" / "app").mkdir(parents=True)
        (folder / "deployment-archive").mkdir()
    tracker = CommandTracker(layout.ongoing)
    tracker.begin("d-CUT", "hc")
    tracker.recover()
    assert sorted(p.name for p in interrupted.iterdir()) == ["deployment-archive"]
    # Another deployment's folder is not this crash's business.
    assert (done / ".deployment-archive.partial-x1y2").is_dir()
