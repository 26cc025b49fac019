"""Which revision's scripts a hook event runs (``MAPPING_BETWEEN_HOOKS_AND_DEPLOYMENTS``).

ApplicationStop runs the scripts of the last revision whose Install succeeded, because the
running application is that one; the traffic hooks switch revisions on a blue/green rollback.
"""

from __future__ import annotations

from enum import Enum

from appspec import LifecycleEvent

from .errors import DeployError
from .layout import DeploymentDir, DeploymentRoot
from .spec import DeploymentSpec


class Which(Enum):
    CURRENT = "current"
    LAST_SUCCESSFUL = "last successful"
    MOST_RECENT = "most recent"


_NORMAL: dict[str, Which] = {
    LifecycleEvent.BeforeBlockTraffic: Which.LAST_SUCCESSFUL,
    LifecycleEvent.AfterBlockTraffic: Which.LAST_SUCCESSFUL,
    LifecycleEvent.ApplicationStop: Which.LAST_SUCCESSFUL,
}
_BLUE_GREEN_ROLLBACK: dict[str, Which] = {
    LifecycleEvent.BeforeBlockTraffic: Which.MOST_RECENT,
    LifecycleEvent.AfterBlockTraffic: Which.MOST_RECENT,
    LifecycleEvent.ApplicationStop: Which.LAST_SUCCESSFUL,
    LifecycleEvent.BeforeAllowTraffic: Which.LAST_SUCCESSFUL,
    LifecycleEvent.AfterAllowTraffic: Which.LAST_SUCCESSFUL,
}


def which_revision(event: str, spec: DeploymentSpec) -> Which:
    table = _BLUE_GREEN_ROLLBACK if spec.blue_green_rollback else _NORMAL
    return table.get(event, Which.CURRENT)


def select_revision(event: str, spec: DeploymentSpec,
                    layout: DeploymentRoot) -> DeploymentDir | None:
    """The deployment folder whose archive holds the event's scripts; None means a no-op.

    As upstream, a previous revision is used only while the current deployment has no archive
    yet; a missing previous revision (first deployment) makes the event a no-op.
    """
    current = layout.deployment(spec.deployment_group_id, spec.deployment_id)
    if current.archive.is_dir():
        return current
    which = which_revision(event, spec)
    if which is Which.CURRENT:
        raise DeployError(f"{event} needs the revision of this deployment, but it has not been "
                          f"downloaded ({current.archive} is missing); DownloadBundle must run "
                          "before it")
    previous = (layout.last_successful(spec.deployment_group_id) if which is Which.LAST_SUCCESSFUL
                else layout.most_recent(spec.deployment_group_id))
    if previous is None or not previous.archive.is_dir():
        return None
    return previous
