"""CodeDeploy's on-premises instance registry: register, deregister, describe, list, tag.

Limits and errors are the service's: one IAM ARN per instance and per registration, tags with
a key of at most 128 and a value of at most 256 characters, 10 tags per instance, 25 names per
batch. Several ``tagFilters`` in ListOnPremisesInstances select instances matching any of them
(OR, as deployment groups do; AWS does not document it).
"""

from __future__ import annotations

import re
import secrets
import string
from typing import Any

from .common import check_batch, error, page, tag_matches
from .state import Instance, State

MAX_TAGS = 10
_USER_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:user/[\w+=,.@/-]+")
_SESSION_ARN = re.compile(r"arn:aws[a-z-]*:sts::\d{12}:assumed-role/[\w+=,.@-]+/[\w+=,.@-]+")
_SUFFIX = string.ascii_letters + string.digits


def register(state: State, p: dict[str, Any]) -> dict[str, Any]:
    name = p.get("instanceName")
    user, session = p.get("iamUserArn"), p.get("iamSessionArn")
    if not name:
        raise error("InstanceNameRequired", "An on-premises instance name was not specified.")
    if user and session:
        raise error("MultipleIamArnsProvided")
    if not user and not session:
        raise error("IamArnRequired")
    if user and not _USER_ARN.fullmatch(user):
        raise error("InvalidIamUserArn", f"The IAM user ARN {user} is not valid: expected "
                                         "arn:aws:iam::<account>:user/<path><name>.")
    if session and not _SESSION_ARN.fullmatch(session):
        raise error("InvalidIamSessionArn", f"The IAM session ARN {session} is not valid: "
                    "expected arn:aws:sts::<account>:assumed-role/<role>/<session>.")
    existing = state.instances.get(name)
    if existing is not None and existing.registered:
        raise error("InstanceNameAlreadyRegistered")
    for other in state.instances.values():
        if not other.registered:
            continue
        if user and other.iam_user_arn == user:
            raise error("IamUserArnAlreadyRegistered")
        if session and other.iam_session_arn == session:
            raise error("IamSessionArnAlreadyRegistered")
    suffix = "".join(secrets.choice(_SUFFIX) for _ in range(10))
    state.instances[name] = Instance(name, user, session,
                                     state.arn("codedeploy", f"instance/{name}_{suffix}"),
                                     state.clock())
    return {}


def deregister(state: State, p: dict[str, Any]) -> dict[str, Any]:
    instance = _existing(state, p.get("instanceName"), registered_only=False)
    if instance.registered:
        instance.deregister_time = state.clock()
    return {}


def get(state: State, p: dict[str, Any]) -> dict[str, Any]:
    return {"instanceInfo": info(_existing(state, p.get("instanceName"),
                                           registered_only=False))}


def batch_get(state: State, p: dict[str, Any]) -> dict[str, Any]:
    names = check_batch(p.get("instanceNames"), "InstanceName")
    return {"instanceInfos": [info(state.instances[n]) for n in names if n in state.instances]}


def list_instances(state: State, p: dict[str, Any]) -> dict[str, Any]:
    status = p.get("registrationStatus")
    if status not in (None, "Registered", "Deregistered"):
        raise error("InvalidRegistrationStatus", "The registration status was specified in an "
                    "invalid format: use Registered or Deregistered.")
    filters = p.get("tagFilters") or []
    for f in filters:
        if f.get("Type") not in (None, "KEY_ONLY", "VALUE_ONLY", "KEY_AND_VALUE"):
            raise error("InvalidTagFilter")
    names = sorted(
        i.name for i in state.instances.values()
        if (status is None or (status == "Registered") == i.registered)
        and (not filters or any(tag_matches(i.tags, f) for f in filters)))
    names_page, token = page(names, p.get("nextToken"))
    result: dict[str, Any] = {"instanceNames": names_page}
    if token:
        result["nextToken"] = token
    return result


def add_tags(state: State, p: dict[str, Any]) -> dict[str, Any]:
    tags, instances = _tags_and_instances(state, p)
    for instance in instances:
        merged = {**instance.tags, **tags}
        if len(merged) > MAX_TAGS:
            raise error("TagLimitExceeded", f"The maximum allowed number of tags was exceeded: "
                        f"{instance.name} would have {len(merged)} tags (at most {MAX_TAGS}).")
    for instance in instances:
        instance.tags.update(tags)
    return {}


def remove_tags(state: State, p: dict[str, Any]) -> dict[str, Any]:
    tags, instances = _tags_and_instances(state, p)
    for instance in instances:
        for key, value in tags.items():
            if instance.tags.get(key) == value:
                del instance.tags[key]
    return {}


def _tags_and_instances(state: State, p: dict[str, Any]) -> tuple[dict[str, str], list[Instance]]:
    raw = p.get("tags")
    if not raw:
        raise error("TagRequired", "A tag was not specified.")
    names = p.get("instanceNames")
    if not names:
        raise error("InstanceNameRequired", "An on-premises instance name was not specified.")
    if len(names) > 100:
        raise error("InstanceLimitExceeded", "The maximum number of allowed on-premises "
                    "instances in a single call was exceeded (100).")
    tags: dict[str, str] = {}
    for tag in raw:
        key, value = tag.get("Key"), tag.get("Value")
        if not key or value is None or len(key) > 128 or len(value) > 256:
            raise error("InvalidTag", "The tag was specified in an invalid format: each tag needs "
                        "a Key of 1-128 and a Value of 0-256 characters.")
        tags[key] = value
    return tags, [_existing(state, n) for n in names]


def _existing(state: State, name: str | None, *, registered_only: bool = True) -> Instance:
    if not name:
        raise error("InstanceNameRequired", "An on-premises instance name was not specified.")
    instance = state.instances.get(name)
    if instance is None or (registered_only and not instance.registered):
        raise error("InstanceNotRegistered", f"The specified on-premises instance is not "
                                             f"registered: {name}.")
    return instance


def info(instance: Instance) -> dict[str, Any]:
    result: dict[str, Any] = {
        "instanceName": instance.name,
        "instanceArn": instance.arn,
        "registerTime": instance.register_time,
        "tags": [{"Key": k, "Value": v} for k, v in sorted(instance.tags.items())],
    }
    if instance.iam_user_arn:
        result["iamUserArn"] = instance.iam_user_arn
    if instance.iam_session_arn:
        result["iamSessionArn"] = instance.iam_session_arn
    if instance.deregister_time is not None:
        result["deregisterTime"] = instance.deregister_time
    return result


HANDLERS = {
    "RegisterOnPremisesInstance": register,
    "DeregisterOnPremisesInstance": deregister,
    "GetOnPremisesInstance": get,
    "BatchGetOnPremisesInstances": batch_get,
    "ListOnPremisesInstances": list_instances,
    "AddTagsToOnPremisesInstances": add_tags,
    "RemoveTagsFromOnPremisesInstances": remove_tags,
}
