"""Which revision each hook event runs (the official MAPPING_BETWEEN_HOOKS_AND_DEPLOYMENTS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.deploy.bundle import BundleType
from agent.deploy.errors import DeployError
from agent.deploy.layout import DeploymentRoot
from agent.deploy.revisions import Which, select_revision, which_revision
from agent.deploy.spec import DeploymentSpec, Revision, RevisionSource

REV = Revision(RevisionSource.S3, BundleType.ZIP, bucket="b", key="k")


def spec(creator: str = "user", kind: str = "IN_PLACE", deployment: str = "d-3") -> DeploymentSpec:
    return DeploymentSpec(deployment, "app", "dg", "g", REV, deployment_creator=creator,
                          deployment_type=kind)


@pytest.mark.parametrize(("event", "normal", "rollback"), [
    ("BeforeBlockTraffic", Which.LAST_SUCCESSFUL, Which.MOST_RECENT),
    ("AfterBlockTraffic", Which.LAST_SUCCESSFUL, Which.MOST_RECENT),
    ("ApplicationStop", Which.LAST_SUCCESSFUL, Which.LAST_SUCCESSFUL),
    ("BeforeInstall", Which.CURRENT, Which.CURRENT),
    ("AfterInstall", Which.CURRENT, Which.CURRENT),
    ("ApplicationStart", Which.CURRENT, Which.CURRENT),
    ("ValidateService", Which.CURRENT, Which.CURRENT),
    ("BeforeAllowTraffic", Which.CURRENT, Which.LAST_SUCCESSFUL),
    ("AfterAllowTraffic", Which.CURRENT, Which.LAST_SUCCESSFUL),
])
def test_mapping(event: str, normal: Which, rollback: Which) -> None:
    assert which_revision(event, spec()) is normal
    assert which_revision(event, spec("codeDeployRollback", "BLUE_GREEN")) is rollback
    # Only a blue/green rollback switches; an in-place rollback runs the normal mapping.
    assert which_revision(event, spec("codeDeployRollback", "IN_PLACE")) is normal


def _deployment(root: DeploymentRoot, name: str) -> Path:
    d = root.deployment("g", name)
    d.archive.mkdir(parents=True)
    return d.path


def test_first_deployment_pre_download_events_do_nothing(tmp_path: Path) -> None:
    root = DeploymentRoot(tmp_path)
    assert select_revision("ApplicationStop", spec(), root) is None
    assert select_revision("BeforeBlockTraffic", spec(), root) is None


def test_previous_revisions_are_chosen_until_the_current_archive_exists(tmp_path: Path) -> None:
    root = DeploymentRoot(tmp_path)
    _deployment(root, "d-1")
    _deployment(root, "d-2")
    root.set_last_successful("g", root.deployment("g", "d-1"))
    root.set_most_recent("g", root.deployment("g", "d-2"))
    rollback = spec("codeDeployRollback", "BLUE_GREEN")
    assert select_revision("ApplicationStop", spec(), root) == root.deployment("g", "d-1")
    assert select_revision("BeforeBlockTraffic", rollback, root) == root.deployment("g", "d-2")
    assert select_revision("AfterAllowTraffic", rollback, root) == root.deployment("g", "d-1")
    _deployment(root, "d-3")
    assert select_revision("ApplicationStop", spec(), root) == root.deployment("g", "d-3")


def test_a_pointer_to_a_pruned_deployment_is_a_noop(tmp_path: Path) -> None:
    root = DeploymentRoot(tmp_path)
    root.set_last_successful("g", root.deployment("g", "d-gone"))
    assert select_revision("ApplicationStop", spec(), root) is None


def test_current_event_without_archive_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="DownloadBundle must run before it"):
        select_revision("AfterInstall", spec(), DeploymentRoot(tmp_path))
