"""Deployments: create one (from a directory or an S3 object), read its status cheaply, list,
stop and roll back.

Reading a deployment's status costs GetDeployment, ListDeploymentTargets (100 IDs a page) and
BatchGetDeploymentTargets (25 targets a call): about 51 calls for 1,000 devices. A
:class:`DeploymentWatcher` keeps what it has read and, on each refresh, re-reads only targets
that are running, plus the pending ones whose count the deployment overview says has changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .aws import Aws, aws_errors
from .errors import FleetError, NotFound
from .names import FleetNames
from .tags import tag_matches

IN_PLACE_EVENTS = ("ApplicationStop", "DownloadBundle", "BeforeInstall", "Install",
                   "AfterInstall", "ApplicationStart", "ValidateService")
ACTIVE = frozenset({"Created", "Queued", "InProgress", "Baking", "Ready"})
FINISHED_TARGET = frozenset({"Succeeded", "Failed", "Skipped"})
FILE_EXISTS = ("DISALLOW", "OVERWRITE", "RETAIN")
BATCH = 25
_BUNDLE_TYPES = ((".tar.gz", "tgz"), (".tgz", "tgz"), (".tar", "tar"), (".zip", "zip"))
LOG_LINES = 5


# -- status --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Diagnostic:
    event: str
    error_code: str
    script: str
    message: str
    log_tail: str

    def last_lines(self, count: int = LOG_LINES) -> list[str]:
        return [line for line in self.log_tail.splitlines() if line.strip()][-count:]

    def as_dict(self) -> dict[str, Any]:
        return {"event": self.event, "errorCode": self.error_code, "scriptName": self.script,
                "message": self.message, "logTail": self.log_tail}


@dataclass(frozen=True)
class TargetStatus:
    device: str
    status: str
    events: dict[str, str]  # lifecycle event name -> Pending|InProgress|Succeeded|Failed|...
    diagnostic: Diagnostic | None = None
    last_updated: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_TARGET

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "status": self.status, "events": dict(self.events),
                "diagnostic": self.diagnostic.as_dict() if self.diagnostic else None,
                "lastUpdated": self.last_updated}


@dataclass(frozen=True)
class DeploymentStatus:
    deployment_id: str
    status: str
    application: str
    group: str
    revision: dict[str, Any]
    overview: dict[str, int]
    targets: list[TargetStatus]
    config: str | None = None
    creator: str | None = None
    description: str | None = None
    error: dict[str, str] | None = None
    rollback: dict[str, str] = field(default_factory=dict)
    create_time: str | None = None
    complete_time: str | None = None

    @property
    def finished(self) -> bool:
        return self.status not in ACTIVE

    @property
    def succeeded(self) -> bool:
        return self.status == "Succeeded"

    @property
    def rollback_deployment_id(self) -> str | None:
        return self.rollback.get("rollbackDeploymentId")

    def as_dict(self) -> dict[str, Any]:
        return {"deploymentId": self.deployment_id, "status": self.status,
                "application": self.application, "group": self.group,
                "config": self.config, "creator": self.creator,
                "description": self.description, "revision": self.revision,
                "overview": dict(self.overview), "error": self.error,
                "rollback": dict(self.rollback), "createTime": self.create_time,
                "completeTime": self.complete_time,
                "targets": [t.as_dict() for t in self.targets]}


def _time(value: Any) -> str | None:
    if value is None:
        return None
    iso = getattr(value, "isoformat", None)
    return str(iso()) if iso else str(value)


def _target(raw: dict[str, Any]) -> TargetStatus:
    instance = raw.get("instanceTarget") or {}
    events: dict[str, str] = {}
    diagnostic: Diagnostic | None = None
    for event in instance.get("lifecycleEvents") or []:
        name = str(event.get("lifecycleEventName", ""))
        events[name] = str(event.get("status", "Unknown"))
        diag = event.get("diagnostics") or {}
        if events[name] == "Failed" and diagnostic is None:
            diagnostic = Diagnostic(name, str(diag.get("errorCode", "")),
                                    str(diag.get("scriptName", "")),
                                    str(diag.get("message", "")), str(diag.get("logTail", "")))
    return TargetStatus(str(instance.get("targetId", "")), str(instance.get("status", "Unknown")),
                        events, diagnostic, _time(instance.get("lastUpdatedAt")))


class DeploymentWatcher:
    """The status of one deployment, re-read cheaply: finished targets are never read again."""

    def __init__(self, aws: Aws, deployment_id: str) -> None:
        self.aws = aws
        self.deployment_id = deployment_id
        self._targets: dict[str, TargetStatus] = {}
        self._listed = False

    @property
    def _codedeploy(self) -> Any:
        return self.aws.client("codedeploy")

    def _list_ids(self, statuses: list[str] | None = None) -> list[str]:
        ids: list[str] = []
        kwargs: dict[str, Any] = {"deploymentId": self.deployment_id}
        if statuses:
            kwargs["targetFilters"] = {"TargetStatus": statuses}
        while True:
            reply = self._codedeploy.list_deployment_targets(**kwargs)
            ids.extend(reply.get("targetIds") or [])
            if not reply.get("nextToken"):
                return ids
            kwargs["nextToken"] = reply["nextToken"]

    def _fetch(self, ids: list[str]) -> None:
        for start in range(0, len(ids), BATCH):
            reply = self._codedeploy.batch_get_deployment_targets(
                deploymentId=self.deployment_id, targetIds=ids[start:start + BATCH])
            for raw in reply.get("deploymentTargets") or []:
                target = _target(raw)
                self._targets[target.device] = target

    def _stale(self, overview: dict[str, int], final: bool) -> list[str]:
        """Targets to re-read: running ones, and pending ones only if some left Pending."""
        pending = [d for d, t in self._targets.items() if t.status == "Pending"]
        other = [d for d, t in self._targets.items()
                 if not t.finished and t.status != "Pending"]
        if "Pending" not in overview or final:
            return other + pending
        if overview["Pending"] >= len(pending):
            return other  # no pending target moved: nothing to see in them
        if overview["Pending"] == 0:
            return other + pending
        still = set(self._list_ids(["Pending"]))
        return other + [d for d in pending if d not in still]

    def refresh(self) -> DeploymentStatus:
        with aws_errors(f"reading deployment {self.deployment_id}"):
            info = self._codedeploy.get_deployment(deploymentId=self.deployment_id)[
                "deploymentInfo"]
            overview = {str(k): int(v) for k, v in (info.get("deploymentOverview") or {}).items()}
            status = str(info.get("status", "Unknown"))
            if not self._listed:
                ids = self._list_ids()
                self._listed = True
                self._fetch(ids)
            else:
                self._fetch(self._stale(overview, status not in ACTIVE))
        error = info.get("errorInformation")
        return DeploymentStatus(
            deployment_id=self.deployment_id, status=status,
            application=str(info.get("applicationName", "")),
            group=str(info.get("deploymentGroupName", "")),
            revision=dict(info.get("revision") or {}), overview=overview,
            targets=[self._targets[d] for d in sorted(self._targets)],
            config=info.get("deploymentConfigName"), creator=info.get("creator"),
            description=info.get("description"),
            error={str(k): str(v) for k, v in error.items()} if error else None,
            rollback={str(k): str(v) for k, v in (info.get("rollbackInfo") or {}).items()},
            create_time=_time(info.get("createTime")),
            complete_time=_time(info.get("completeTime")))


def deployment_status(aws: Aws, deployment_id: str) -> DeploymentStatus:
    """One deployment's status and every target's lifecycle events (about n/25 + n/100 + 1
    calls for n targets)."""
    return DeploymentWatcher(aws, deployment_id).refresh()


def watch(aws: Aws, deployment_id: str, *, timeout_s: float | None = None,
          interval_s: float = 2.0, on_status: Callable[[DeploymentStatus], None] | None = None,
          sleep: Callable[[float], None] | None = None,
          clock: Callable[[], float] | None = None) -> tuple[DeploymentStatus, bool]:
    """Refresh until the deployment ends or ``timeout_s`` passes; returns the last status and
    whether it ended."""
    import time  # noqa: PLC0415

    sleep = sleep or time.sleep
    clock = clock or time.monotonic
    watcher = DeploymentWatcher(aws, deployment_id)
    deadline = None if timeout_s is None else clock() + timeout_s
    while True:
        status = watcher.refresh()
        if on_status:
            on_status(status)
        if status.finished:
            return status, True
        if deadline is not None and clock() >= deadline:
            return status, False
        sleep(interval_s if deadline is None else max(0.0, min(interval_s, deadline - clock())))


# -- revisions -----------------------------------------------------------------------------

def bundle_type(key: str) -> str:
    lower = key.lower()
    for suffix, kind in _BUNDLE_TYPES:
        if lower.endswith(suffix):
            return kind
    raise FleetError(f"cannot tell the bundle type of s3 key {key!r}: name it .zip, .tar or "
                     ".tgz (CodeDeploy needs zip, tar or tgz)")


def s3_revision(aws: Aws, url: str) -> dict[str, Any]:
    """``s3://bucket/key[?versionId=..&etag=..]`` as a CodeDeploy revision; HeadObject fills in
    the ETag and version when the URL does not give them."""
    parts = urlsplit(url)
    key = parts.path.lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or not key:
        raise FleetError(f"{url!r} is not an S3 revision: use s3://bucket/key.zip "
                         "(optionally ?versionId=...&etag=...) or a revision directory")
    query = {k.lower(): v[-1] for k, v in parse_qs(parts.query).items()}
    location: dict[str, Any] = {"bucket": parts.netloc, "key": key, "bundleType": bundle_type(key)}
    etag, version = query.get("etag"), query.get("versionid")
    if not etag or not version:
        try:
            with aws_errors(f"reading s3://{parts.netloc}/{key}"):
                head_args = {"Bucket": parts.netloc, "Key": key}
                if version:
                    head_args["VersionId"] = version
                head = aws.client("s3").head_object(**head_args)
        except FleetError as exc:
            if "404" in exc.message or isinstance(exc, NotFound):
                raise NotFound(f"s3://{parts.netloc}/{key} does not exist (or is not readable): "
                               "upload the bundle first, or deploy a directory") from None
            raise
        etag = etag or str(head.get("ETag", "")).strip('"') or None
        version = version or head.get("VersionId")
        if version == "null":
            version = None
    if etag:
        location["eTag"] = etag.strip('"')
    if version:
        location["version"] = version
    return {"revisionType": "S3", "s3Location": location}


def describe_revision(revision: dict[str, Any]) -> str:
    s3 = revision.get("s3Location")
    if s3:
        text = f"s3://{s3.get('bucket')}/{s3.get('key')}"
        return text + (f" (version {s3['version']})" if s3.get("version") else "")
    return str(revision.get("revisionType", "?"))


# -- groups --------------------------------------------------------------------------------

def _describe_filters(filters: list[dict[str, Any]]) -> str:
    def one(f: dict[str, Any]) -> str:
        kind = f.get("Type") or "KEY_AND_VALUE"
        if kind == "KEY_ONLY":
            return f"{f.get('Key')}=*"
        if kind == "VALUE_ONLY":
            return f"*={f.get('Value')}"
        return f"{f.get('Key')}={f.get('Value')}"
    return " or ".join(one(f) for f in filters)


def group_info(aws: Aws, names: FleetNames, group: str) -> dict[str, Any]:
    with aws_errors(f"reading deployment group {group!r}"):
        codedeploy = aws.client("codedeploy")
        try:
            return dict(codedeploy.get_deployment_group(
                applicationName=names.application, deploymentGroupName=names.group(group),
            )["deploymentGroupInfo"])
        except (codedeploy.exceptions.DeploymentGroupDoesNotExistException,
                codedeploy.exceptions.ApplicationDoesNotExistException):
            raise NotFound(
                f"no deployment group {group!r} in application {names.application!r}: create it "
                "with `fleetctl init` (or pick another with --group / --fleet)") from None


def _listed(aws: Aws, filters: list[dict[str, Any]]) -> Iterator[str]:
    kwargs: dict[str, Any] = {"registrationStatus": "Registered", "tagFilters": filters}
    while True:
        reply = aws.client("codedeploy").list_on_premises_instances(**kwargs)
        yield from reply.get("instanceNames") or []
        if not reply.get("nextToken"):
            return
        kwargs["nextToken"] = reply["nextToken"]


def group_selects_a_device(aws: Aws, info: dict[str, Any]) -> str | None:
    """A registered device the group selects, or None. Tag filters: any tag (one List call);
    a tag set: at least one tag of every group, checked here on the first group's matches."""
    with aws_errors(f"listing the devices of group {info.get('deploymentGroupName')!r}"):
        filters = info.get("onPremisesInstanceTagFilters") or []
        if filters:
            return next(_listed(aws, filters), None)
        tag_sets = (info.get("onPremisesTagSet") or {}).get("onPremisesTagSetList") or []
        tag_sets = [s for s in tag_sets if s]
        if not tag_sets:
            return None
        batch: list[str] = []

        def check(names: list[str]) -> str | None:
            reply = aws.client("codedeploy").batch_get_on_premises_instances(instanceNames=names)
            for instance in reply.get("instanceInfos") or []:
                tags = {str(t.get("Key")): str(t.get("Value", "")) for t in instance.get("tags")
                        or []}
                if all(any(tag_matches(tags, f) for f in group) for group in tag_sets[1:]):
                    return str(instance["instanceName"])
            return None

        for name in _listed(aws, tag_sets[0]):
            batch.append(name)
            if len(batch) == BATCH:
                found = check(batch)
                if found:
                    return found
                batch = []
        return check(batch) if batch else None


def describe_selection(info: dict[str, Any]) -> str:
    filters = info.get("onPremisesInstanceTagFilters") or []
    if filters:
        return _describe_filters(filters)
    tag_sets = (info.get("onPremisesTagSet") or {}).get("onPremisesTagSetList") or []
    if tag_sets:
        return " and ".join(f"({_describe_filters(s)})" for s in tag_sets if s)
    return "none (the group has no on-premises tag filters)"


def require_devices(aws: Aws, info: dict[str, Any]) -> None:
    if group_selects_a_device(aws, info) is None:
        group = info.get("deploymentGroupName")
        raise FleetError(
            f"the group selects no registered device: tags {describe_selection(info)}; register "
            f"a device with those tags (`fleetctl register NAME --tag KEY=VALUE`) or change "
            f"group {group!r}'s tags; nothing was deployed")


# -- create, stop, list, roll back -----------------------------------------------------------

@dataclass(frozen=True)
class Deployed:
    deployment_id: str
    application: str
    group: str
    revision: dict[str, Any]
    pushed: Any = None  # the PushedRevision when fleetctl uploaded a directory

    def as_dict(self) -> dict[str, Any]:
        return {"deploymentId": self.deployment_id, "application": self.application,
                "group": self.group, "revision": self.revision,
                "pushed": self.pushed is not None}


def create_deployment(aws: Aws, names: FleetNames, group: str, revision: dict[str, Any], *,
                      info: dict[str, Any] | None = None, config: str | None = None,
                      description: str | None = None, file_exists_behavior: str | None = None,
                      pushed: Any = None) -> Deployed:
    """Refuse a group that selects no device, then CreateDeployment."""
    if file_exists_behavior is not None and file_exists_behavior.upper() not in FILE_EXISTS:
        raise FleetError(f"--file-exists-behavior {file_exists_behavior!r}: use one of "
                         f"{', '.join(FILE_EXISTS)}")
    info = info if info is not None else group_info(aws, names, group)
    require_devices(aws, info)
    kwargs: dict[str, Any] = {"applicationName": names.application,
                              "deploymentGroupName": names.group(group), "revision": revision}
    if config:
        kwargs["deploymentConfigName"] = config
    if description:
        kwargs["description"] = description
    if file_exists_behavior:
        kwargs["fileExistsBehavior"] = file_exists_behavior.upper()
    codedeploy = aws.client("codedeploy")
    with aws_errors(f"creating a deployment to group {group!r}"):
        try:
            reply = codedeploy.create_deployment(**kwargs)
        except codedeploy.exceptions.DeploymentLimitExceededException:
            raise FleetError(
                f"group {group!r} already has a deployment in progress: wait for it "
                "(`fleetctl deployments --group G --status InProgress`) or stop it "
                "(`fleetctl stop ID`)") from None
        except codedeploy.exceptions.DeploymentConfigDoesNotExistException:
            raise NotFound(f"no deployment configuration {config!r}: use "
                           "CodeDeployDefault.OneAtATime, HalfAtATime, AllAtOnce or one you "
                           "created") from None
    return Deployed(str(reply["deploymentId"]), names.application, names.group(group), revision,
                    pushed)


def deploy(aws: Aws, names: FleetNames, source: str, group: str, *, config: str | None = None,
           description: str | None = None, file_exists_behavior: str | None = None,
           progress: Any = None) -> Deployed:
    """Deploy a revision directory (pushed first) or an ``s3://`` bundle to ``group``."""
    info = group_info(aws, names, group)
    require_devices(aws, info)  # before uploading anything
    pushed = None
    if source.startswith("s3://"):
        revision = s3_revision(aws, source)
    else:
        from pathlib import Path  # noqa: PLC0415

        directory = Path(source)
        if not directory.is_dir():
            raise FleetError(f"{source!r} is neither a revision directory nor an s3:// URL")
        from .push import push_revision  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

        pushed = push_revision(aws, names, directory, description=description,
                               progress=progress)
        revision = dict(pushed.revision)
    return create_deployment(aws, names, group, revision, info=info, config=config,
                             description=description, file_exists_behavior=file_exists_behavior,
                             pushed=pushed)


@dataclass(frozen=True)
class Stopped:
    deployment_id: str
    status: str
    message: str
    rollback_deployment_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"deploymentId": self.deployment_id, "status": self.status,
                "message": self.message, "rollbackDeploymentId": self.rollback_deployment_id}


def stop(aws: Aws, deployment_id: str, *, rollback: bool = False) -> Stopped:
    codedeploy = aws.client("codedeploy")
    with aws_errors(f"stopping deployment {deployment_id}"):
        try:
            reply = codedeploy.stop_deployment(deploymentId=deployment_id,
                                               autoRollbackEnabled=rollback)
        except codedeploy.exceptions.DeploymentAlreadyCompletedException:
            raise FleetError(f"deployment {deployment_id} has already ended; nothing to stop "
                             "(see `fleetctl status ID`)") from None
        except codedeploy.exceptions.DeploymentDoesNotExistException:
            raise NotFound(f"no deployment {deployment_id}: list them with "
                           "`fleetctl deployments`") from None
        info = codedeploy.get_deployment(deploymentId=deployment_id)["deploymentInfo"]
    return Stopped(deployment_id, str(reply.get("status", "")),
                   str(reply.get("statusMessage", "")),
                   (info.get("rollbackInfo") or {}).get("rollbackDeploymentId"))


@dataclass(frozen=True)
class DeploymentSummary:
    deployment_id: str
    group: str
    status: str
    revision: str
    creator: str
    create_time: str | None
    description: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"deploymentId": self.deployment_id, "group": self.group, "status": self.status,
                "revision": self.revision, "creator": self.creator,
                "createTime": self.create_time, "description": self.description}


STATUSES = ("Created", "Queued", "InProgress", "Baking", "Succeeded", "Failed", "Stopped",
            "Ready")


def list_deployments(aws: Aws, names: FleetNames, *, group: str | None = None,
                     statuses: list[str] | None = None, limit: int = 20,
                     ) -> list[DeploymentSummary]:
    """The newest ``limit`` deployments of the fleet's application (ListDeployments pages, then
    BatchGetDeployments by 25)."""
    wanted = []
    for status in statuses or []:
        match = {s.lower(): s for s in STATUSES}.get(status.lower())
        if match is None:
            raise FleetError(f"--status {status!r}: use one of {', '.join(STATUSES)}")
        wanted.append(match)
    codedeploy = aws.client("codedeploy")
    kwargs: dict[str, Any] = {"applicationName": names.application}
    if group:
        kwargs["deploymentGroupName"] = names.group(group)
    if wanted:
        kwargs["includeOnlyStatuses"] = wanted
    ids: list[str] = []
    with aws_errors("listing deployments"):
        try:
            while len(ids) < limit:
                reply = codedeploy.list_deployments(**kwargs)
                ids.extend(reply.get("deployments") or [])
                if not reply.get("nextToken"):
                    break
                kwargs["nextToken"] = reply["nextToken"]
        except (codedeploy.exceptions.ApplicationDoesNotExistException,
                codedeploy.exceptions.DeploymentGroupDoesNotExistException) as exc:
            raise NotFound(f"listing deployments: {exc.response['Error']['Message']} (fleet "
                           f"{names.fleet!r}; run `fleetctl init` or pass --fleet)") from None
        ids = ids[:limit]
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), BATCH):
            reply = codedeploy.batch_get_deployments(deploymentIds=ids[start:start + BATCH])
            for info in reply.get("deploymentsInfo") or []:
                found[str(info["deploymentId"])] = info
    return [DeploymentSummary(i, str(found[i].get("deploymentGroupName", "")),
                              str(found[i].get("status", "")),
                              describe_revision(found[i].get("revision") or {}),
                              str(found[i].get("creator", "")),
                              _time(found[i].get("createTime")), found[i].get("description"))
            for i in ids if i in found]


def rollback(aws: Aws, names: FleetNames, group: str, *, description: str | None = None,
             ) -> Deployed:
    """Redeploy the group's last successful revision."""
    info = group_info(aws, names, group)
    last = (info.get("lastSuccessfulDeployment") or {}).get("deploymentId")
    if not last:
        raise FleetError(f"group {group!r} has no successful deployment to roll back to; "
                         "deploy a known good revision with `fleetctl deploy DIR --group G`")
    with aws_errors(f"reading deployment {last}"):
        previous = aws.client("codedeploy").get_deployment(deploymentId=last)["deploymentInfo"]
    revision = dict(previous.get("revision") or {})
    if not revision:
        raise FleetError(f"deployment {last} has no revision to redeploy")
    return create_deployment(aws, names, group, revision, info=info,
                             description=description or f"fleetctl rollback to {last}")
