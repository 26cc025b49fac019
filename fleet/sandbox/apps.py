"""CodeDeploy applications, deployment groups, application revisions and deployment configs.

Only what an EC2/On-Premises fleet uses; deployment groups select on-premises instances by tag
filters (OR) or a tag set (AND across up to 3 groups of up to 10 tags, OR within a group).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .common import check_batch, error, page
from .state import (
    Application,
    DeploymentConfig,
    DeploymentGroup,
    RegisteredRevision,
    State,
    new_uuid,
)

_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+")
ROLLBACK_EVENTS = ("DEPLOYMENT_FAILURE", "DEPLOYMENT_STOP_ON_ALARM", "DEPLOYMENT_STOP_ON_REQUEST")
BUNDLE_TYPES = ("tar", "tgz", "zip", "YAML", "JSON")


# -- applications -------------------------------------------------------------------------


def create_application(state: State, p: dict[str, Any]) -> dict[str, Any]:
    name = _name(p.get("applicationName"), "ApplicationName")
    if name in state.applications:
        raise error("ApplicationAlreadyExists", f"An application with the name {name} already "
                                                "exists in this account.")
    platform = p.get("computePlatform") or "Server"
    app = Application(name, new_uuid(), state.clock(), platform)
    state.applications[name] = app
    return {"applicationId": app.id}


def application(state: State, name: str | None) -> Application:
    name = _name(name, "ApplicationName")
    app = state.applications.get(name)
    if app is None:
        raise error("ApplicationDoesNotExist", f"No application found for name: {name}")
    return app


def _app_info(app: Application) -> dict[str, Any]:
    return {"applicationId": app.id, "applicationName": app.name, "createTime": app.create_time,
            "linkedToGitHub": False, "computePlatform": app.compute_platform}


def get_application(state: State, p: dict[str, Any]) -> dict[str, Any]:
    return {"application": _app_info(application(state, p.get("applicationName")))}


def batch_get_applications(state: State, p: dict[str, Any]) -> dict[str, Any]:
    names = check_batch(p.get("applicationNames"), "ApplicationName")
    return {"applicationsInfo": [_app_info(application(state, n)) for n in names]}


def list_applications(state: State, p: dict[str, Any]) -> dict[str, Any]:
    names, token = page(sorted(state.applications), p.get("nextToken"))
    return {"applications": names, **({"nextToken": token} if token else {})}


def delete_application(state: State, p: dict[str, Any]) -> dict[str, Any]:
    name = _name(p.get("applicationName"), "ApplicationName")
    state.applications.pop(name, None)
    for key in [k for k in state.groups if k[0] == name]:
        del state.groups[key]
    return {}


# -- deployment groups --------------------------------------------------------------------


def create_deployment_group(state: State, p: dict[str, Any]) -> dict[str, Any]:
    app = application(state, p.get("applicationName"))
    name = _name(p.get("deploymentGroupName"), "DeploymentGroupName")
    if (app.name, name) in state.groups:
        raise error("DeploymentGroupAlreadyExists", f"A deployment group with the name {name} "
                    f"already exists for application {app.name}.")
    group = DeploymentGroup(app.name, name, new_uuid(), _role(p.get("serviceRoleArn")))
    _apply_group_settings(state, group, p)
    state.groups[(app.name, name)] = group
    return {"deploymentGroupId": group.id}


def update_deployment_group(state: State, p: dict[str, Any]) -> dict[str, Any]:
    group = deployment_group(state, p.get("applicationName"), p.get("currentDeploymentGroupName"))
    new_name = p.get("newDeploymentGroupName")
    if new_name and new_name != group.name:
        if (group.application, new_name) in state.groups:
            raise error("DeploymentGroupAlreadyExists", f"A deployment group with the name "
                        f"{new_name} already exists for application {group.application}.")
        del state.groups[(group.application, group.name)]
        group.name = new_name
        state.groups[(group.application, new_name)] = group
    if p.get("serviceRoleArn"):
        group.service_role_arn = _role(p["serviceRoleArn"])
    _apply_group_settings(state, group, p)
    return {"hooksNotCleanedUp": []}


def _apply_group_settings(state: State, group: DeploymentGroup, p: dict[str, Any]) -> None:
    filters = p.get("onPremisesInstanceTagFilters")
    tag_set = p.get("onPremisesTagSet")
    if filters and tag_set and tag_set.get("onPremisesTagSetList"):
        raise error("InvalidOnPremisesTagCombination", "onPremisesInstanceTagFilters and "
                    "onPremisesTagSet cannot be used in the same deployment group; use one.")
    if filters is not None:
        _check_filters(filters)
        group.tag_filters, group.tag_set = list(filters), []
    if tag_set is not None:
        groups = tag_set.get("onPremisesTagSetList") or []
        if len(groups) > 3 or any(len(g) > 10 for g in groups):
            raise error("TagSetListLimitExceeded", "An on-premises tag set may hold at most 3 "
                        "tag groups of at most 10 tags each.")
        if len({json.dumps(g, sort_keys=True) for g in groups}) != len(groups):
            raise error("InvalidOnPremisesTagCombination", "The tag groups of an on-premises "
                        "tag set must all differ.")
        for g in groups:
            _check_filters(g)
        group.tag_set, group.tag_filters = [list(g) for g in groups], []
    config = p.get("deploymentConfigName")
    if config:
        deployment_config(state, config)
        group.deployment_config = config
    if p.get("autoRollbackConfiguration") is not None:
        group.auto_rollback = check_auto_rollback(p["autoRollbackConfiguration"])
    style = p.get("deploymentStyle")
    if style is not None:
        if style.get("deploymentType", "IN_PLACE") != "IN_PLACE":
            raise error("InvalidDeploymentStyle", "On-premises instances support only in-place "
                        "deployments (deploymentType IN_PLACE).")
        group.deployment_style = {"deploymentType": "IN_PLACE",
                                  "deploymentOption": style.get("deploymentOption",
                                                                "WITHOUT_TRAFFIC_CONTROL")}


def _check_filters(filters: list[dict[str, str]]) -> None:
    for f in filters:
        kind = f.get("Type")
        if kind not in ("KEY_ONLY", "VALUE_ONLY", "KEY_AND_VALUE") or (
                kind != "VALUE_ONLY" and not f.get("Key")) or (
                kind != "KEY_ONLY" and f.get("Value") is None):
            raise error("InvalidTagFilter", f"The tag filter {f} is not valid: Type KEY_ONLY "
                        "needs Key, VALUE_ONLY needs Value, KEY_AND_VALUE needs both.")


def check_auto_rollback(config: dict[str, Any]) -> dict[str, Any]:
    events = config.get("events") or []
    if any(e not in ROLLBACK_EVENTS for e in events) or (config.get("enabled") and not events):
        raise error("InvalidAutoRollbackConfig", "An enabled auto-rollback configuration needs "
                    f"events from {', '.join(ROLLBACK_EVENTS)}.")
    return {"enabled": bool(config.get("enabled")), "events": list(events)}


def deployment_group(state: State, app_name: str | None, name: str | None) -> DeploymentGroup:
    app = application(state, app_name)
    name = _name(name, "DeploymentGroupName")
    group = state.groups.get((app.name, name))
    if group is None:
        raise error("DeploymentGroupDoesNotExist", f"No Deployment Group found for name: {name}")
    return group


def group_info(group: DeploymentGroup) -> dict[str, Any]:
    result: dict[str, Any] = {
        "applicationName": group.application,
        "deploymentGroupId": group.id,
        "deploymentGroupName": group.name,
        "deploymentConfigName": group.deployment_config,
        "onPremisesInstanceTagFilters": group.tag_filters,
        "serviceRoleArn": group.service_role_arn,
        "deploymentStyle": group.deployment_style,
        "computePlatform": "Server",
        "ec2TagFilters": [],
        "autoScalingGroups": [],
        "triggerConfigurations": [],
    }
    if group.tag_set:
        result["onPremisesTagSet"] = {"onPremisesTagSetList": group.tag_set}
    if group.auto_rollback is not None:
        result["autoRollbackConfiguration"] = group.auto_rollback
    if group.target_revision is not None:
        result["targetRevision"] = group.target_revision
    if group.last_successful is not None:
        result["lastSuccessfulDeployment"] = group.last_successful
    if group.last_attempted is not None:
        result["lastAttemptedDeployment"] = group.last_attempted
    return result


def get_deployment_group(state: State, p: dict[str, Any]) -> dict[str, Any]:
    group = deployment_group(state, p.get("applicationName"), p.get("deploymentGroupName"))
    return {"deploymentGroupInfo": group_info(group)}


def batch_get_deployment_groups(state: State, p: dict[str, Any]) -> dict[str, Any]:
    names = check_batch(p.get("deploymentGroupNames"), "DeploymentGroupName")
    app = application(state, p.get("applicationName"))
    found = [group_info(state.groups[(app.name, n)]) for n in names
             if (app.name, n) in state.groups]
    missing = [n for n in names if (app.name, n) not in state.groups]
    result: dict[str, Any] = {"deploymentGroupsInfo": found}
    if missing:
        result["errorMessage"] = f"Deployment groups not found: {', '.join(missing)}"
    return result


def list_deployment_groups(state: State, p: dict[str, Any]) -> dict[str, Any]:
    app = application(state, p.get("applicationName"))
    names, token = page(sorted(n for a, n in state.groups if a == app.name), p.get("nextToken"))
    return {"applicationName": app.name, "deploymentGroups": names,
            **({"nextToken": token} if token else {})}


def delete_deployment_group(state: State, p: dict[str, Any]) -> dict[str, Any]:
    group = deployment_group(state, p.get("applicationName"), p.get("deploymentGroupName"))
    del state.groups[(group.application, group.name)]
    return {"hooksNotCleanedUp": []}


# -- revisions ----------------------------------------------------------------------------


def check_revision(revision: Any) -> dict[str, Any]:
    if not isinstance(revision, dict) or not revision.get("revisionType"):
        raise error("RevisionRequired", "The revision ID was not specified.")
    if revision["revisionType"] != "S3":
        raise error("InvalidRevision", f"Revision type {revision['revisionType']} is not "
                    "supported for on-premises deployments in the sandbox; use S3.")
    s3 = revision.get("s3Location") or {}
    if not s3.get("bucket") or not s3.get("key"):
        raise error("InvalidRevision", "An S3 revision needs s3Location.bucket and "
                    "s3Location.key.")
    if s3.get("bundleType") not in BUNDLE_TYPES:
        raise error("InvalidRevision", f"s3Location.bundleType must be one of "
                    f"{', '.join(BUNDLE_TYPES)}.")
    return {"revisionType": "S3", "s3Location": dict(s3)}


def revision_key(revision: dict[str, Any]) -> str:
    return json.dumps(revision, sort_keys=True)


def register_application_revision(state: State, p: dict[str, Any]) -> dict[str, Any]:
    app = application(state, p.get("applicationName"))
    revision = check_revision(p.get("revision"))
    key = (app.name, revision_key(revision))
    existing = state.revisions.get(key)
    if existing is None:
        state.revisions[key] = RegisteredRevision(app.name, revision, p.get("description"),
                                                  state.clock())
    elif p.get("description") is not None:
        existing.description = p["description"]
    return {}


def note_revision_used(state: State, app: str, revision: dict[str, Any], group: str) -> None:
    key = (app, revision_key(revision))
    record = state.revisions.get(key)
    if record is None:  # deploying an unregistered revision registers it, as CodeDeploy does
        record = state.revisions[key] = RegisteredRevision(app, revision, None, state.clock())
    now = state.clock()
    record.first_used = record.first_used or now
    record.last_used = now
    if group not in record.groups:
        record.groups.append(group)


def _revision_info(record: RegisteredRevision) -> dict[str, Any]:
    info: dict[str, Any] = {"deploymentGroups": list(record.groups),
                            "registerTime": record.register_time}
    if record.description is not None:
        info["description"] = record.description
    if record.first_used is not None:
        info["firstUsedTime"] = record.first_used
        info["lastUsedTime"] = record.last_used
    return info


def get_application_revision(state: State, p: dict[str, Any]) -> dict[str, Any]:
    app = application(state, p.get("applicationName"))
    revision = check_revision(p.get("revision"))
    record = state.revisions.get((app.name, revision_key(revision)))
    if record is None:
        raise error("RevisionDoesNotExist", "The named revision does not exist with the IAM "
                    "user or Amazon Web Services account.")
    return {"applicationName": app.name, "revision": record.revision,
            "revisionInfo": _revision_info(record)}


def list_application_revisions(state: State, p: dict[str, Any]) -> dict[str, Any]:
    app = application(state, p.get("applicationName"))
    records = [r for (a, _), r in state.revisions.items() if a == app.name]
    bucket, prefix = p.get("s3Bucket"), p.get("s3KeyPrefix")
    if prefix and not bucket:
        raise error("InvalidBucketName", "s3KeyPrefix needs s3Bucket.")
    records = [r for r in records
               if (not bucket or r.revision["s3Location"]["bucket"] == bucket)
               and (not prefix or r.revision["s3Location"]["key"].startswith(prefix))]
    deployed = p.get("deployed", "ignore")
    if deployed == "include":
        records = [r for r in records if r.first_used is not None]
    elif deployed == "exclude":
        records = [r for r in records if r.first_used is None]
    sort_by = p.get("sortBy", "registerTime")
    records.sort(key=lambda r: {"registerTime": r.register_time, "firstUsedTime": r.first_used or 0,
                                "lastUsedTime": r.last_used or 0}.get(sort_by, r.register_time),
                 reverse=p.get("sortOrder") == "descending")
    chosen, token = page(records, p.get("nextToken"))
    return {"revisions": [r.revision for r in chosen], **({"nextToken": token} if token else {})}


# -- deployment configs -------------------------------------------------------------------


def deployment_config(state: State, name: str | None) -> DeploymentConfig:
    if not name:
        raise error("DeploymentConfigNameRequired", "The deployment configuration name was not "
                                                    "specified.")
    config = state.configs.get(name)
    if config is None:
        raise error("DeploymentConfigDoesNotExist", f"No deployment configuration found for "
                                                    f"name: {name}")
    return config


def create_deployment_config(state: State, p: dict[str, Any]) -> dict[str, Any]:
    name = p.get("deploymentConfigName")
    if not name:
        raise error("DeploymentConfigNameRequired", "The deployment configuration name was not "
                                                    "specified.")
    if name.startswith("CodeDeployDefault."):
        raise error("InvalidDeploymentConfigName", "The prefix CodeDeployDefault. is reserved.")
    if name in state.configs:
        raise error("DeploymentConfigAlreadyExists", f"A deployment configuration with the name "
                                                     f"{name} already exists.")
    hosts = p.get("minimumHealthyHosts") or {}
    kind, value = hosts.get("type"), hosts.get("value")
    if kind not in ("HOST_COUNT", "FLEET_PERCENT") or not isinstance(value, int) or value < 0 or (
            kind == "FLEET_PERCENT" and value > 99):
        raise error("InvalidMinimumHealthyHostValue", "minimumHealthyHosts needs type HOST_COUNT "
                    "(value >= 0) or FLEET_PERCENT (value 0-99).")
    config = DeploymentConfig(name, new_uuid(), kind, value, state.clock())
    state.configs[name] = config
    return {"deploymentConfigId": config.id}


def get_deployment_config(state: State, p: dict[str, Any]) -> dict[str, Any]:
    config = deployment_config(state, p.get("deploymentConfigName"))
    return {"deploymentConfigInfo": {
        "deploymentConfigId": config.id, "deploymentConfigName": config.name,
        "minimumHealthyHosts": {"type": config.min_type, "value": config.min_value},
        "createTime": config.create_time, "computePlatform": "Server"}}


def list_deployment_configs(state: State, p: dict[str, Any]) -> dict[str, Any]:
    names, token = page(sorted(state.configs), p.get("nextToken"))
    return {"deploymentConfigsList": names, **({"nextToken": token} if token else {})}


def delete_deployment_config(state: State, p: dict[str, Any]) -> dict[str, Any]:
    config = deployment_config(state, p.get("deploymentConfigName"))
    if config.name.startswith("CodeDeployDefault."):
        raise error("InvalidOperation", "A default deployment configuration cannot be deleted.")
    if any(g.deployment_config == config.name for g in state.groups.values()):
        raise error("DeploymentConfigInUse", "The deployment configuration is still in use.")
    del state.configs[config.name]
    return {}


def minimum_healthy(config: DeploymentConfig, targets: int) -> int:
    """Hosts that must stay healthy; FLEET_PERCENT rounds up, as CodeDeploy does."""
    if config.min_type == "FLEET_PERCENT":
        return math.ceil(targets * config.min_value / 100)
    return config.min_value


def _name(value: str | None, what: str) -> str:
    if not value:
        raise error(f"{what}Required", f"The {what[0].lower() + what[1:]} was not specified.")
    if len(value) > 100:
        raise error(f"Invalid{what}", f"The {what} {value[:20]}... is longer than 100 "
                                      "characters.")
    return value


def _role(value: str | None) -> str:
    if not value:
        raise error("RoleRequired", "The role ID was not specified.")
    if not _ROLE_ARN.fullmatch(value):
        raise error("InvalidRole", f"The service role ARN {value} is not valid: expected "
                                   "arn:aws:iam::<account>:role/<name>.")
    return value


HANDLERS = {
    "CreateApplication": create_application,
    "GetApplication": get_application,
    "BatchGetApplications": batch_get_applications,
    "ListApplications": list_applications,
    "DeleteApplication": delete_application,
    "CreateDeploymentGroup": create_deployment_group,
    "UpdateDeploymentGroup": update_deployment_group,
    "GetDeploymentGroup": get_deployment_group,
    "BatchGetDeploymentGroups": batch_get_deployment_groups,
    "ListDeploymentGroups": list_deployment_groups,
    "DeleteDeploymentGroup": delete_deployment_group,
    "RegisterApplicationRevision": register_application_revision,
    "GetApplicationRevision": get_application_revision,
    "ListApplicationRevisions": list_application_revisions,
    "CreateDeploymentConfig": create_deployment_config,
    "GetDeploymentConfig": get_deployment_config,
    "ListDeploymentConfigs": list_deployment_configs,
    "DeleteDeploymentConfig": delete_deployment_config,
}
