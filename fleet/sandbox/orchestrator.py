"""Deployments: targets from the group's tags, the in-place lifecycle driven by host commands,
the deployment config's health rules, timeouts, stop and automatic rollback.

State changes happen in three places, all under ``State.lock``: CreateDeployment, the agent's
PutHostCommandComplete (``complete``), and ``tick`` (start targets, time out events, settle the
deployment), which the server calls on every request and from a background thread.
"""

from __future__ import annotations

import secrets
from typing import Any

from .apps import (
    application,
    check_auto_rollback,
    check_revision,
    deployment_config,
    deployment_group,
    minimum_healthy,
    note_revision_used,
)
from .common import check_batch, error, page, tag_matches
from .state import (
    Deployment,
    DeploymentGroup,
    Event,
    HostCommand,
    Instance,
    State,
    Target,
    new_deployment_id,
)

IN_PLACE_EVENTS = ("ApplicationStop", "DownloadBundle", "BeforeInstall", "Install",
                   "AfterInstall", "ApplicationStart", "ValidateService")
ACTIVE = ("Created", "Queued", "InProgress")
# The agent's diagnostics error_code -> the API's LifecycleErrorCode.
ERROR_CODES = {0: "Success", 1: "ScriptMissing", 2: "ScriptNotExecutable", 3: "ScriptTimedOut",
               4: "ScriptFailed"}
LOG_TAIL_CHARS = 4096


# -- selecting targets --------------------------------------------------------------------


def group_members(state: State, group: DeploymentGroup) -> list[Instance]:
    """Registered instances the group selects: any tag filter, or each tag group of the set."""
    members = []
    for instance in state.instances.values():
        if not instance.registered:
            continue
        if group.tag_set:
            chosen = all(any(tag_matches(instance.tags, f) for f in g) for g in group.tag_set)
        else:
            chosen = any(tag_matches(instance.tags, f) for f in group.tag_filters)
        if chosen:
            members.append(instance)
    return sorted(members, key=lambda i: i.name)


# -- creating deployments -----------------------------------------------------------------


def create_deployment(state: State, p: dict[str, Any]) -> dict[str, Any]:
    app = application(state, p.get("applicationName"))
    if not p.get("deploymentGroupName"):
        raise error("DeploymentGroupNameRequired", "The deployment group name was not "
                                                   "specified.")
    group = deployment_group(state, app.name, p["deploymentGroupName"])
    raw_revision = p.get("revision") or group.target_revision
    if raw_revision is None:
        raise error("RevisionRequired", "The revision ID was not specified.")
    revision = check_revision(raw_revision)
    config = deployment_config(state, p.get("deploymentConfigName") or group.deployment_config)
    rollback = (check_auto_rollback(p["autoRollbackConfiguration"])
                if p.get("autoRollbackConfiguration") is not None else group.auto_rollback)
    behavior = p.get("fileExistsBehavior") or "DISALLOW"
    if behavior not in ("DISALLOW", "OVERWRITE", "RETAIN"):
        raise error("InvalidFileExistsBehavior", f"fileExistsBehavior {behavior} is not valid.")
    deployment = start_deployment(
        state, group, revision, config_name=config.name, creator="user",
        description=p.get("description"), file_exists_behavior=behavior,
        ignore_stop_failures=bool(p.get("ignoreApplicationStopFailures")),
        auto_rollback=rollback)
    return {"deploymentId": deployment.id}


def start_deployment(state: State, group: DeploymentGroup, revision: dict[str, Any], *,
                     config_name: str, creator: str, description: str | None = None,
                     file_exists_behavior: str = "DISALLOW", ignore_stop_failures: bool = False,
                     auto_rollback: dict[str, Any] | None = None) -> Deployment:
    if any(d.group_id == group.id and d.status in ACTIVE for d in state.deployments.values()):
        raise error("DeploymentLimitExceeded", f"The deployment group {group.name} already has "
                    "an active deployment; wait for it to finish or stop it.")
    now = state.clock()
    deployment = Deployment(
        new_deployment_id(), group.application, group.name, group.id, revision, config_name,
        now, creator=creator, description=description,
        file_exists_behavior=file_exists_behavior, ignore_stop_failures=ignore_stop_failures,
        auto_rollback=auto_rollback)
    members = group_members(state, group)
    for instance in members:
        deployment.targets[instance.name] = Target(
            instance.name, instance.arn, [Event(e) for e in IN_PLACE_EVENTS], updated=now)
    config = deployment_config(state, config_name)
    count = len(members)
    deployment.one_at_a_time = config.name == "CodeDeployDefault.OneAtATime"
    deployment.min_healthy = count - 1 if deployment.one_at_a_time else minimum_healthy(config,
                                                                                        count)
    deployment.concurrency = max(1, count - deployment.min_healthy)
    state.deployments[deployment.id] = deployment
    group.last_attempted = _summary(deployment)
    note_revision_used(state, group.application, revision, group.name)
    if count == 0:
        _finish(state, deployment, "Failed", ("NO_INSTANCES", "The deployment failed because no "
                "instances were found for your deployment group. Check your deployment group "
                "settings to make sure the tags for your on-premises instances match the tags "
                "of registered instances."))
    elif not deployment.one_at_a_time and count - deployment.min_healthy < 1:
        _finish(state, deployment, "Failed", ("HEALTH_CONSTRAINTS_INVALID", f"The deployment "
                f"needs {deployment.min_healthy} healthy instances but the group has only "
                f"{count}; lower the deployment config's minimum healthy hosts."))
    else:
        deployment.status = "InProgress"
        deployment.start_time = now
        tick(state)
    return deployment


# -- the state machine --------------------------------------------------------------------


def tick(state: State) -> None:
    """Advance every active deployment: time out events, start targets, settle."""
    now = state.clock()
    for deployment in list(state.deployments.values()):
        if deployment.status != "InProgress":
            continue
        for target in deployment.targets.values():
            if target.status == "InProgress":
                _check_timeouts(state, deployment, target, now)
        _start_targets(state, deployment, now)
        _settle(state, deployment)


def _start_targets(state: State, deployment: Deployment, now: float) -> None:
    if deployment.stop_requested or _health_broken(deployment):
        return
    running = sum(t.status == "InProgress" for t in deployment.targets.values())
    for target in deployment.targets.values():
        if running >= deployment.concurrency:
            break
        if target.status == "Pending":
            target.status = "InProgress"
            target.updated = now
            running += 1
            _issue(state, deployment, target, now)


def _issue(state: State, deployment: Deployment, target: Target, now: float) -> None:
    """Send the target's next event to its host as a command."""
    event = target.current()
    instance = state.instances.get(target.instance)
    if event is None or instance is None:
        return
    event.status = "InProgress"
    event.start = now
    state.nonce += 1
    command = HostCommand(
        id=secrets.token_urlsafe(24), host_identifier=instance.host_identifier,
        execution_id=f"{state.account_id}/{deployment.id}/{len(state.commands)}/{event.name}",
        deployment_id=deployment.id, instance=target.instance, event=event.name,
        nonce=state.nonce, created=now, visible_at=now + state.faults.command_delay_s)
    state.commands[command.id] = command
    target.command = command.id
    injected = state.faults.injected_failure(target.instance, event.name)
    if injected is not None:
        complete(state, command, "Failed", {"error_code": 5, "script_name": "",
                                            "message": injected, "log": ""})


def complete(state: State, command: HostCommand, status: str,
             diagnostics: dict[str, Any] | None) -> None:
    """The host finished a command (or the service gave up on it)."""
    if command.status in ("Succeeded", "Failed"):
        return  # a second completion (the Ruby agent sends one on failures) changes nothing
    command.status = status
    deployment = state.deployments.get(command.deployment_id)
    if deployment is None:
        return
    target = deployment.targets.get(command.instance)
    if target is None or target.command != command.id:
        return
    event = next(e for e in target.events if e.name == command.event)
    now = state.clock()
    event.end = now
    event.diagnostics = _api_diagnostics(diagnostics, status)
    target.updated = now
    target.command = None
    ignore = event.name == "ApplicationStop" and deployment.ignore_stop_failures
    if status == "Succeeded" or ignore:
        event.status = "Succeeded" if status == "Succeeded" else "Failed"
        if target.current() is None:
            target.status = "Succeeded"
        elif deployment.stop_requested:
            _fail_target(target, now, skip_rest=True, status="Skipped")
        else:
            _issue(state, deployment, target, now)
    else:
        event.status = "Failed"
        _fail_target(target, now, skip_rest=True)
    tick(state)


def _fail_target(target: Target, now: float, *, skip_rest: bool, status: str = "Failed") -> None:
    for event in target.events:
        if event.status == "Pending" and skip_rest:
            event.status = "Skipped"
        elif event.status == "InProgress":
            event.status = "Failed"
            event.end = now
    target.status = status
    target.updated = now
    target.command = None


def _check_timeouts(state: State, deployment: Deployment, target: Target, now: float) -> None:
    command = state.commands.get(target.command or "")
    if command is None or command.status in ("Succeeded", "Failed"):
        return
    if command.status == "Pending" and now - command.visible_at > state.timeouts.start_s:
        message = (f"The {command.event} lifecycle event did not start within "
                   f"{state.timeouts.start_s:g} seconds: the agent on {target.instance} is not "
                   "polling. Check that pifleet-agent is running and can reach the endpoint.")
    elif command.status != "Pending" and now - (command.dispatched or now) > state.timeouts.event_s:
        message = (f"The {command.event} lifecycle event did not finish within "
                   f"{state.timeouts.event_s:g} seconds.")
    else:
        return
    complete(state, command, "Failed", {"error_code": 5, "script_name": "", "message": message,
                                        "log": "", "timeout": True})


def _health_broken(deployment: Deployment) -> bool:
    targets = list(deployment.targets.values())
    failed = sum(t.status == "Failed" for t in targets)
    if deployment.one_at_a_time:
        done = sum(t.status in ("Succeeded", "Failed") for t in targets)
        # Every instance must succeed, except that the last one may fail.
        return failed > 1 or (failed == 1 and done < len(targets))
    return len(targets) - failed < deployment.min_healthy


def _settle(state: State, deployment: Deployment) -> None:
    targets = list(deployment.targets.values())
    if any(t.status == "InProgress" for t in targets):
        return
    pending = [t for t in targets if t.status == "Pending"]
    if deployment.stop_requested:
        for t in pending:
            _fail_target(t, state.clock(), skip_rest=True, status="Skipped")
        _finish(state, deployment, "Stopped",
                ("MANUAL_STOP", "The deployment was stopped by request."))
        return
    if pending and not _health_broken(deployment):
        return
    for t in pending:
        _fail_target(t, state.clock(), skip_rest=True, status="Skipped")
    succeeded = sum(t.status == "Succeeded" for t in targets)
    timed_out = any(e.diagnostics and e.diagnostics.get("_timeout") for t in targets
                    for e in t.events)
    if not _health_broken(deployment) and succeeded >= max(1, deployment.min_healthy):
        _finish(state, deployment, "Succeeded", None)
    elif timed_out:
        _finish(state, deployment, "Failed", ("TIMEOUT", "The deployment failed because a "
                "lifecycle event timed out on at least one instance."))
    else:
        _finish(state, deployment, "Failed", ("HEALTH_CONSTRAINTS", "The overall deployment "
                "failed because too many individual instances failed deployment, too few "
                "healthy instances are available for deployment, or some instances in your "
                "deployment group are experiencing problems."))


def _finish(state: State, deployment: Deployment, status: str,
            problem: tuple[str, str] | None) -> None:
    deployment.status = status
    deployment.complete_time = state.clock()
    if problem is not None:
        deployment.error = {"code": problem[0], "message": problem[1]}
    group = state.groups.get((deployment.application, deployment.group))
    if group is None:
        return
    group.last_attempted = _summary(deployment)
    if status == "Succeeded":
        group.last_successful = _summary(deployment)
        group.last_good_revision = deployment.revision
    _maybe_roll_back(state, deployment, group)


def _maybe_roll_back(state: State, deployment: Deployment, group: DeploymentGroup) -> None:
    config = deployment.auto_rollback or {}
    trigger = {"Failed": "DEPLOYMENT_FAILURE",
               "Stopped": "DEPLOYMENT_STOP_ON_REQUEST"}.get(deployment.status)
    wanted = config.get("enabled") and trigger in config.get("events", [])
    if deployment.status == "Stopped":
        wanted = deployment.rollback_info is not None  # StopDeployment(autoRollbackEnabled)
    if not wanted or deployment.creator == "codeDeployRollback":
        return
    good = group.last_good_revision
    if good is None:
        deployment.rollback_info = {"rollbackMessage": "Automatic rollback was not performed: "
                                    "the deployment group has no earlier successful revision."}
        return
    rollback = start_deployment(state, group, good, config_name=deployment.config,
                                creator="codeDeployRollback",
                                file_exists_behavior=deployment.file_exists_behavior,
                                auto_rollback=deployment.auto_rollback)
    deployment.rollback_info = {"rollbackDeploymentId": rollback.id,
                                "rollbackMessage": f"Rolled back by deployment {rollback.id}."}
    rollback.rollback_info = {"rollbackTriggeringDeploymentId": deployment.id,
                              "rollbackMessage": f"Rollback of deployment {deployment.id}."}


def _api_diagnostics(diagnostics: dict[str, Any] | None, status: str) -> dict[str, Any]:
    d = diagnostics or {}
    code = d.get("error_code", 0 if status == "Succeeded" else 5)
    result: dict[str, Any] = {
        "errorCode": ERROR_CODES.get(code, "UnknownError") if isinstance(code, int)
        else "UnknownError",
        "scriptName": str(d.get("script_name", "")),
        "message": str(d.get("message", "")),
        "logTail": str(d.get("log", ""))[-LOG_TAIL_CHARS:],
    }
    if d.get("timeout"):
        result["_timeout"] = True
    return result


def _summary(deployment: Deployment) -> dict[str, Any]:
    result: dict[str, Any] = {"deploymentId": deployment.id, "status": deployment.status,
                              "createTime": deployment.create_time}
    if deployment.complete_time is not None:
        result["endTime"] = deployment.complete_time
    return result


# -- reading and stopping deployments -------------------------------------------------------


def deployment_by_id(state: State, deployment_id: str | None) -> Deployment:
    if not deployment_id:
        raise error("DeploymentIdRequired", "At least one deployment ID must be specified.")
    deployment = state.deployments.get(deployment_id)
    if deployment is None:
        raise error("DeploymentDoesNotExist", f"The deployment {deployment_id} could not be "
                                              "found.")
    return deployment


def deployment_info(deployment: Deployment) -> dict[str, Any]:
    counts = dict.fromkeys(("Pending", "InProgress", "Succeeded", "Failed", "Skipped",
                            "Ready"), 0)
    for target in deployment.targets.values():
        if target.status in counts:
            counts[target.status] += 1
    info: dict[str, Any] = {
        "applicationName": deployment.application,
        "deploymentGroupName": deployment.group,
        "deploymentConfigName": deployment.config,
        "deploymentId": deployment.id,
        "revision": deployment.revision,
        "status": deployment.status,
        "createTime": deployment.create_time,
        "deploymentOverview": counts,
        "creator": deployment.creator,
        "ignoreApplicationStopFailures": deployment.ignore_stop_failures,
        "updateOutdatedInstancesOnly": False,
        "deploymentStyle": {"deploymentType": "IN_PLACE",
                            "deploymentOption": "WITHOUT_TRAFFIC_CONTROL"},
        "fileExistsBehavior": deployment.file_exists_behavior,
        "computePlatform": "Server",
        "deploymentStatusMessages": list(deployment.status_messages),
    }
    optional = {"description": deployment.description, "startTime": deployment.start_time,
                "completeTime": deployment.complete_time, "errorInformation": deployment.error,
                "rollbackInfo": deployment.rollback_info,
                "autoRollbackConfiguration": deployment.auto_rollback}
    info.update({k: v for k, v in optional.items() if v is not None})
    return info


def get_deployment(state: State, p: dict[str, Any]) -> dict[str, Any]:
    return {"deploymentInfo": deployment_info(deployment_by_id(state, p.get("deploymentId")))}


def batch_get_deployments(state: State, p: dict[str, Any]) -> dict[str, Any]:
    ids = check_batch(p.get("deploymentIds"), "DeploymentId")
    return {"deploymentsInfo": [deployment_info(state.deployments[i]) for i in ids
                                if i in state.deployments]}


def list_deployments(state: State, p: dict[str, Any]) -> dict[str, Any]:
    chosen = sorted(state.deployments.values(), key=lambda d: d.create_time, reverse=True)
    if p.get("applicationName"):
        application(state, p["applicationName"])
        chosen = [d for d in chosen if d.application == p["applicationName"]]
        if p.get("deploymentGroupName"):
            deployment_group(state, p["applicationName"], p["deploymentGroupName"])
            chosen = [d for d in chosen if d.group == p["deploymentGroupName"]]
    elif p.get("deploymentGroupName"):
        raise error("ApplicationNameRequired", "The minimum number of required application "
                                               "names was not specified.")
    statuses = p.get("includeOnlyStatuses")
    if statuses:
        chosen = [d for d in chosen if d.status in statuses]
    window = p.get("createTimeRange") or {}
    if window.get("start") is not None:
        chosen = [d for d in chosen if d.create_time >= window["start"]]
    if window.get("end") is not None:
        chosen = [d for d in chosen if d.create_time <= window["end"]]
    ids, token = page([d.id for d in chosen], p.get("nextToken"))
    return {"deployments": ids, **({"nextToken": token} if token else {})}


def stop_deployment(state: State, p: dict[str, Any]) -> dict[str, Any]:
    deployment = deployment_by_id(state, p.get("deploymentId"))
    if deployment.status not in ACTIVE:
        raise error("DeploymentAlreadyCompleted", f"The deployment {deployment.id} is already "
                                                  "completed.")
    deployment.stop_requested = True
    if p.get("autoRollbackEnabled"):
        deployment.rollback_info = {"rollbackMessage": "Rollback requested with the stop."}
    # Pending commands no host has picked up are withdrawn; running ones finish first.
    for target in deployment.targets.values():
        command = state.commands.get(target.command or "")
        if command is not None and command.status == "Pending":
            command.status = "Failed"
            _fail_target(target, state.clock(), skip_rest=True, status="Skipped")
    tick(state)
    if deployment.status == "Stopped":
        return {"status": "Succeeded", "statusMessage": "The deployment was stopped."}
    return {"status": "Pending", "statusMessage": "Stopping: waiting for running lifecycle "
                                                  "events to finish."}


def _target_info(deployment: Deployment, target: Target) -> dict[str, Any]:
    events = []
    for event in target.events:
        item: dict[str, Any] = {"lifecycleEventName": event.name, "status": event.status}
        if event.start is not None:
            item["startTime"] = event.start
        if event.end is not None:
            item["endTime"] = event.end
        if event.diagnostics is not None:
            item["diagnostics"] = {k: v for k, v in event.diagnostics.items()
                                   if not k.startswith("_")}
        events.append(item)
    return {"deploymentTargetType": "InstanceTarget", "instanceTarget": {
        "deploymentId": deployment.id, "targetId": target.instance, "targetArn": target.arn,
        "status": target.status, "lastUpdatedAt": target.updated, "lifecycleEvents": events}}


def list_deployment_targets(state: State, p: dict[str, Any]) -> dict[str, Any]:
    deployment = deployment_by_id(state, p.get("deploymentId"))
    filters = p.get("targetFilters") or {}
    wanted = filters.get("TargetStatus")
    ids = sorted(t.instance for t in deployment.targets.values()
                 if not wanted or t.status in wanted)
    chosen, token = page(ids, p.get("nextToken"))
    return {"targetIds": chosen, **({"nextToken": token} if token else {})}


def batch_get_deployment_targets(state: State, p: dict[str, Any]) -> dict[str, Any]:
    deployment = deployment_by_id(state, p.get("deploymentId"))
    ids = check_batch(p.get("targetIds"), "DeploymentTargetId")
    missing = [i for i in ids if i not in deployment.targets]
    if missing:
        raise error("DeploymentTargetDoesNotExist", f"The target {missing[0]} is not part of "
                                                    f"deployment {deployment.id}.")
    return {"deploymentTargets": [_target_info(deployment, deployment.targets[i]) for i in ids]}


def get_deployment_target(state: State, p: dict[str, Any]) -> dict[str, Any]:
    deployment = deployment_by_id(state, p.get("deploymentId"))
    target = deployment.targets.get(p.get("targetId") or "")
    if target is None:
        raise error("DeploymentTargetDoesNotExist", f"The target {p.get('targetId')} is not "
                                                    f"part of deployment {deployment.id}.")
    return {"deploymentTarget": _target_info(deployment, target)}


HANDLERS = {
    "CreateDeployment": create_deployment,
    "GetDeployment": get_deployment,
    "BatchGetDeployments": batch_get_deployments,
    "ListDeployments": list_deployments,
    "StopDeployment": stop_deployment,
    "ListDeploymentTargets": list_deployment_targets,
    "BatchGetDeploymentTargets": batch_get_deployment_targets,
    "GetDeploymentTarget": get_deployment_target,
}
