"""Lifecycle event names of EC2/On-Premises deployments, in the order CodeDeploy runs them."""

from __future__ import annotations

from enum import StrEnum


class LifecycleEvent(StrEnum):
    """An event an AppSpec may attach scripts to (the nine scriptable events)."""

    BeforeBlockTraffic = "BeforeBlockTraffic"
    AfterBlockTraffic = "AfterBlockTraffic"
    ApplicationStop = "ApplicationStop"
    BeforeInstall = "BeforeInstall"
    AfterInstall = "AfterInstall"
    ApplicationStart = "ApplicationStart"
    ValidateService = "ValidateService"
    BeforeAllowTraffic = "BeforeAllowTraffic"
    AfterAllowTraffic = "AfterAllowTraffic"


# Events the agent performs itself; an AppSpec cannot attach scripts to them.
AGENT_EVENTS: tuple[str, ...] = ("DownloadBundle", "Install")

# Events the service performs (load balancer traffic, bookkeeping); never scripted.
SERVICE_EVENTS: tuple[str, ...] = ("Start", "End", "BlockTraffic", "AllowTraffic")

# In-place deployment order, agent events included.
IN_PLACE_ORDER: tuple[str, ...] = (
    "BeforeBlockTraffic",
    "AfterBlockTraffic",
    "ApplicationStop",
    "DownloadBundle",
    "BeforeInstall",
    "Install",
    "AfterInstall",
    "ApplicationStart",
    "ValidateService",
    "BeforeAllowTraffic",
    "AfterAllowTraffic",
)

# Which revision's scripts an event runs: the previous successful one for events that happen
# before the new bundle is on disk, otherwise the one being deployed.
RUNS_PREVIOUS_REVISION: frozenset[str] = frozenset(
    {"BeforeBlockTraffic", "AfterBlockTraffic", "ApplicationStop"}
)

# CodeDeploy's limit for all scripts of one lifecycle event.
EVENT_TIME_LIMIT_S = 3600
