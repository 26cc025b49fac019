"""The deployment-root layout, pointers, pruning and the ongoing-deployment tracker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.deploy.layout import DeploymentRoot
from agent.deploy.tracking import STALE_AFTER_S, CommandTracker


def test_paths_match_the_official_layout(tmp_path: Path) -> None:
    root = DeploymentRoot(tmp_path)
    d = root.deployment("dg-1", "d-ABC")
    assert d.bundle == tmp_path / "dg-1" / "d-ABC" / "bundle.tar"
    assert d.archive == tmp_path / "dg-1" / "d-ABC" / "deployment-archive"
    assert d.scripts_log == tmp_path / "dg-1" / "d-ABC" / "logs" / "scripts.log"
    assert root.cleanup_file("dg-1") == tmp_path / "deployment-instructions" / "dg-1-cleanup"
    assert root.install_json("dg-1").name == "dg-1-install.json"
    assert root.deployments_log == (
        tmp_path / "deployment-logs" / "codedeploy-agent-deployments.log")
    assert root.ongoing == tmp_path / "ongoing-deployment"


def test_pointers_are_absolute_paths_without_newline(tmp_path: Path) -> None:
    root = DeploymentRoot(tmp_path)
    assert root.last_successful("g") is None
    d = root.deployment("g", "d-1")
    root.set_last_successful("g", d)
    root.set_most_recent("g", d)
    raw = (tmp_path / "deployment-instructions" / "g_last_successful_install").read_text()
    assert raw == str(d.path)
    assert root.last_successful("g") == d
    assert root.most_recent("g") == d
    # A pointer written by the Ruby agent, with a trailing newline, reads the same.
    (tmp_path / "deployment-instructions" / "g_most_recent_install").write_text(
        str(d.path) + "\n")
    assert root.most_recent("g") == d


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "x\0y", "deployment-instructions",
                                 "ongoing-hooks"])
def test_ids_that_would_leave_the_root_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="folder name"):
        DeploymentRoot(tmp_path).deployment("g", bad)
    with pytest.raises(ValueError, match="folder name"):
        DeploymentRoot(tmp_path).cleanup_file(bad)


def _deployments(root: DeploymentRoot, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        d = root.deployment("g", f"d-{i}")
        d.archive.mkdir(parents=True)
        os.utime(d.path, (1000 + i, 1000 + i))
        paths.append(d.path)
    return paths


def test_prune_keeps_max_revisions_counting_the_current(tmp_path: Path) -> None:
    root = DeploymentRoot(tmp_path)
    paths = _deployments(root, 7)
    current = root.deployment("g", "d-new")
    current.path.mkdir()
    removed = root.prune("g", current, 5)
    assert removed == paths[:3]  # 7 old + current - (5 - 1) kept = oldest three go
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == [
        "d-3", "d-4", "d-5", "d-6", "d-new"]


def test_prune_never_removes_the_last_successful(tmp_path: Path) -> None:
    root = DeploymentRoot(tmp_path)
    paths = _deployments(root, 4)
    root.set_last_successful("g", root.deployment("g", "d-0"))  # the oldest
    current = root.deployment("g", "d-new")
    current.path.mkdir()
    removed = root.prune("g", current, 2)
    assert paths[0].is_dir()
    assert removed == paths[1:4][:3]
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["d-0", "d-new"]


def test_prune_refuses_a_max_below_one(tmp_path: Path) -> None:
    root = DeploymentRoot(tmp_path)
    with pytest.raises(ValueError, match="at least 1"):
        root.prune("g", root.deployment("g", "d"), 0)


def test_tracker_reports_the_newest_fresh_command_and_clears(tmp_path: Path) -> None:
    tracker = CommandTracker(tmp_path / "ongoing")
    tracker.begin("d-old", "hc-old")
    tracker.begin("d-new", "hc-new")
    tracker.begin("d-stale", "hc-stale")
    now = 10 * STALE_AFTER_S
    os.utime(tmp_path / "ongoing" / "d-old", (now - 100, now - 100))
    os.utime(tmp_path / "ongoing" / "d-new", (now - 10, now - 10))
    os.utime(tmp_path / "ongoing" / "d-stale", (now - STALE_AFTER_S - 1,) * 2)
    assert tracker.in_flight() == ["d-new", "d-old", "d-stale"]
    found = tracker.recover(now=now)
    assert found is not None
    assert (found.deployment_id, found.host_command_identifier) == ("d-new", "hc-new")
    assert tracker.in_flight() == []
    assert tracker.recover(now=now) is None


def test_tracker_ignores_only_stale_files(tmp_path: Path) -> None:
    tracker = CommandTracker(tmp_path)
    tracker.begin("d-1", "hc")
    assert tracker.recover(now=os.stat(tmp_path / "d-1").st_mtime + STALE_AFTER_S + 1) is None
    assert not (tmp_path / "d-1").exists()


def test_tracker_end_removes_the_file(tmp_path: Path) -> None:
    tracker = CommandTracker(tmp_path)
    tracker.begin("d-1", "hc")
    tracker.end("d-1")
    tracker.end("d-1")  # twice is fine
    assert tracker.recover() is None
