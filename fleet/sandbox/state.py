"""The sandbox's CodeDeploy state: one lock, one clock, plain records.

Every handler runs under ``State.lock``, so 100 agents polling at once see a consistent store.
The clock is injectable so tests can move time (event timeouts) without sleeping.
"""

from __future__ import annotations

import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .faults import Faults

ACCOUNT_ID = "123456789012"
DEFAULT_REGION = "us-east-1"
_ALNUM = string.ascii_uppercase + string.digits


def new_deployment_id() -> str:
    return "d-" + "".join(secrets.choice(_ALNUM) for _ in range(9))


def new_uuid() -> str:
    return str(uuid.uuid4())


@dataclass
class Instance:
    name: str
    iam_user_arn: str | None
    iam_session_arn: str | None
    arn: str
    register_time: float
    tags: dict[str, str] = field(default_factory=dict)
    deregister_time: float | None = None

    @property
    def host_identifier(self) -> str:
        return self.iam_user_arn or self.iam_session_arn or ""

    @property
    def registered(self) -> bool:
        return self.deregister_time is None


@dataclass
class Application:
    name: str
    id: str
    create_time: float
    compute_platform: str = "Server"


@dataclass
class DeploymentGroup:
    application: str
    name: str
    id: str
    service_role_arn: str
    deployment_config: str = "CodeDeployDefault.OneAtATime"
    tag_filters: list[dict[str, str]] = field(default_factory=list)
    tag_set: list[list[dict[str, str]]] = field(default_factory=list)
    auto_rollback: dict[str, Any] | None = None
    target_revision: dict[str, Any] | None = None
    last_successful: dict[str, Any] | None = None  # {deploymentId, status, endTime, createTime}
    last_attempted: dict[str, Any] | None = None
    last_good_revision: dict[str, Any] | None = None
    deployment_style: dict[str, str] = field(default_factory=lambda: {
        "deploymentType": "IN_PLACE", "deploymentOption": "WITHOUT_TRAFFIC_CONTROL"})


@dataclass
class RegisteredRevision:
    application: str
    revision: dict[str, Any]
    description: str | None
    register_time: float
    first_used: float | None = None
    last_used: float | None = None
    groups: list[str] = field(default_factory=list)


@dataclass
class DeploymentConfig:
    name: str
    id: str
    min_type: str
    min_value: int
    create_time: float


@dataclass
class Event:
    name: str
    status: str = "Pending"
    start: float | None = None
    end: float | None = None
    diagnostics: dict[str, str] | None = None


@dataclass
class Target:
    instance: str
    arn: str
    events: list[Event]
    status: str = "Pending"
    updated: float = 0.0
    command: str | None = None  # the id of the host command in flight

    def current(self) -> Event | None:
        return next((e for e in self.events if e.status in ("Pending", "InProgress")), None)


@dataclass
class Deployment:
    id: str
    application: str
    group: str
    group_id: str
    revision: dict[str, Any]
    config: str
    create_time: float
    creator: str = "user"
    description: str | None = None
    file_exists_behavior: str = "DISALLOW"
    ignore_stop_failures: bool = False
    auto_rollback: dict[str, Any] | None = None
    status: str = "Created"
    start_time: float | None = None
    complete_time: float | None = None
    error: dict[str, str] | None = None
    rollback_info: dict[str, str] | None = None
    targets: dict[str, Target] = field(default_factory=dict)
    min_healthy: int = 0
    concurrency: int = 1
    one_at_a_time: bool = False
    stop_requested: bool = False
    status_messages: list[str] = field(default_factory=list)


@dataclass
class HostCommand:
    id: str
    host_identifier: str
    execution_id: str
    deployment_id: str
    instance: str
    event: str
    nonce: int
    created: float
    visible_at: float
    status: str = "Pending"  # Pending -> Dispatched -> InProgress -> Succeeded | Failed
    dispatched: float | None = None
    noop: bool | None = None


@dataclass
class Timeouts:
    """How long the service waits: an event must start within ``start_s`` of being issued
    (CodeDeploy: 5 minutes) and finish within ``event_s`` (3,600 s)."""

    start_s: float = 300.0
    event_s: float = 3600.0


class State:
    def __init__(self, *, region: str = DEFAULT_REGION, account_id: str = ACCOUNT_ID,
                 clock: Callable[[], float] = time.time, timeouts: Timeouts | None = None,
                 ) -> None:
        self.lock = threading.RLock()
        self.region = region
        self.account_id = account_id
        self.clock = clock
        self.timeouts = timeouts or Timeouts()
        self.faults = Faults(clock=clock)
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.instances: dict[str, Instance] = {}
            self.applications: dict[str, Application] = {}
            self.groups: dict[tuple[str, str], DeploymentGroup] = {}
            self.revisions: dict[tuple[str, str], RegisteredRevision] = {}
            self.configs: dict[str, DeploymentConfig] = {}
            self.deployments: dict[str, Deployment] = {}
            self.commands: dict[str, HostCommand] = {}
            self.signed_specs: dict[str, dict[str, str]] = {}  # deployment id -> envelope
            self.nonce = 0
            self.faults.clear()
            now = self.clock()
            # OneAtATime is special-cased by the orchestrator (all must succeed but the last);
            # 99 % is how it reads as a minimum-healthy-hosts figure.
            for name, kind, value in (("CodeDeployDefault.OneAtATime", "FLEET_PERCENT", 99),
                                      ("CodeDeployDefault.HalfAtATime", "FLEET_PERCENT", 50),
                                      ("CodeDeployDefault.AllAtOnce", "HOST_COUNT", 0)):
                self.configs[name] = DeploymentConfig(name, new_uuid(), kind, value, now)

    def arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self.region}:{self.account_id}:{resource}"
