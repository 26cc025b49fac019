"""``fleetctl init``: create or update, idempotently, every AWS resource a fleet needs.

The resources, in order (names from :class:`~fleet.names.FleetNames`):

1. the versioned artifact bucket (public access blocked) that ``fleetctl push`` uploads to;
2. the CodeDeploy application (compute platform Server);
3. the CodeDeploy service role (trusts codedeploy.amazonaws.com; the AWS managed
   ``AWSCodeDeployRole`` policy, or an equivalent inline policy where that managed policy does
   not exist, as in moto);
4. the device role the Pis assume through the IoT credentials provider (trusts
   credentials.iot.amazonaws.com; reads revisions from the bucket);
5. the IoT role alias pointing at the device role;
6. the IoT policy devices' certificates get (assume the role alias, connect as their thing,
   use their own shadow topics);
7. one deployment group per ``--group``, selecting on-premises instances by tag filters.

:func:`init_fleet` inspects each resource, decides ``create``, ``update`` or ``unchanged``, and
(unless ``dry_run``) makes the change; it returns the plan as :class:`Step` values. Dry runs call
only read APIs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

from .aws import Aws, aws_errors
from .errors import Conflict, FleetError, NotFound
from .names import DEFAULT_GROUP, FLEET_TAG, FleetNames

Action = Literal["create", "update", "unchanged"]
DEFAULT_CONFIG = "CodeDeployDefault.OneAtATime"
CODEDEPLOY_MANAGED_POLICY = "policy/service-role/AWSCodeDeployRole"
FALLBACK_POLICY_NAME = "AWSCodeDeployRole-equivalent"
DEVICE_POLICY_NAME = "artifacts-read"
CREDENTIAL_DURATION_S = 3600
_ROLE_RETRY_S = (2.0, 4.0, 8.0, 10.0)  # a new IAM role takes seconds to reach CodeDeploy

# What the AWS managed AWSCodeDeployRole allows (the parts that matter without EC2 are tag
# lookups, SNS triggers and CloudWatch alarms); used when that managed policy is not available.
_CODEDEPLOY_ROLE_ACTIONS = (
    "autoscaling:CompleteLifecycleAction", "autoscaling:DeleteLifecycleHook",
    "autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeLifecycleHooks",
    "autoscaling:PutLifecycleHook", "autoscaling:RecordLifecycleActionHeartbeat",
    "autoscaling:CreateAutoScalingGroup", "autoscaling:UpdateAutoScalingGroup",
    "autoscaling:EnableMetricsCollection", "autoscaling:DescribePolicies",
    "autoscaling:DescribeScheduledActions", "autoscaling:DescribeNotificationConfigurations",
    "autoscaling:SuspendProcesses", "autoscaling:ResumeProcesses",
    "autoscaling:AttachLoadBalancers", "autoscaling:AttachLoadBalancerTargetGroups",
    "autoscaling:PutScalingPolicy", "autoscaling:PutScheduledUpdateGroupAction",
    "autoscaling:PutNotificationConfiguration", "autoscaling:PutWarmPool",
    "autoscaling:DescribeScalingActivities", "autoscaling:DeleteAutoScalingGroup",
    "ec2:DescribeInstances", "ec2:DescribeInstanceStatus", "ec2:TerminateInstances",
    "tag:GetResources", "sns:Publish", "cloudwatch:DescribeAlarms",
    "cloudwatch:PutMetricAlarm", "elasticloadbalancing:DescribeLoadBalancerAttributes",
    "elasticloadbalancing:DescribeTargetGroupAttributes",
    "elasticloadbalancing:DescribeLoadBalancers", "elasticloadbalancing:DescribeInstanceHealth",
    "elasticloadbalancing:RegisterInstancesWithLoadBalancer",
    "elasticloadbalancing:DeregisterInstancesFromLoadBalancer",
    "elasticloadbalancing:DescribeTargetGroups", "elasticloadbalancing:DescribeTargetHealth",
    "elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets",
)


@dataclass(frozen=True)
class Step:
    """One resource of the plan and what ``init`` does (or did) to it."""

    resource: str
    name: str
    action: Action
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class TagFilter:
    key: str
    value: str | None = None

    @classmethod
    def parse(cls, text: str) -> TagFilter:
        """``KEY=VALUE`` (instances with that tag) or ``KEY`` (with that tag, any value)."""
        key, sep, value = text.partition("=")
        if not key.strip():
            raise FleetError(f"tag filter {text!r}: write KEY=VALUE or KEY")
        return cls(key.strip(), value if sep else None)

    def to_api(self) -> dict[str, str]:
        if self.value is None:
            return {"Key": self.key, "Type": "KEY_ONLY"}
        return {"Key": self.key, "Value": self.value, "Type": "KEY_AND_VALUE"}


@dataclass(frozen=True)
class InitOptions:
    groups: Sequence[str] = (DEFAULT_GROUP,)
    tags: Sequence[TagFilter] = ()  # empty: pifleet:fleet=<fleet>
    deployment_config: str = DEFAULT_CONFIG
    rollback: bool = True


@dataclass
class _Run:
    aws: Aws
    names: FleetNames
    options: InitOptions
    dry_run: bool
    steps: list[Step] = field(default_factory=list)
    new_roles: set[str] = field(default_factory=set)

    def client(self, service: str) -> Any:
        return self.aws.client(service)

    def step(self, resource: str, name: str, action: Action, detail: str = "") -> None:
        self.steps.append(Step(resource, name, action, detail))

    @property
    def account(self) -> str:
        return self.aws.account_id

    @property
    def region(self) -> str:
        return self.aws.region

    @property
    def partition(self) -> str:
        return self.aws.partition()

    @property
    def bucket(self) -> str:
        return self.names.bucket(self.account, self.region)

    def role_arn(self, name: str) -> str:
        return f"arn:{self.partition}:iam::{self.account}:role{self.names.iam_path}{name}"

    @property
    def role_alias_arn(self) -> str:
        return (f"arn:{self.partition}:iot:{self.region}:{self.account}:"
                f"rolealias/{self.names.role_alias}")


def init_fleet(aws: Aws, names: FleetNames, options: InitOptions | None = None, *,
               dry_run: bool = False) -> list[Step]:
    """Create or update the fleet's resources (only read them with ``dry_run``); the plan."""
    options = options or InitOptions()
    if not options.groups:
        raise FleetError("no deployment group named: pass --group NAME at least once")
    run = _Run(aws, names, options, dry_run)
    _bucket(run)
    _application(run)
    _service_role(run)
    _device_role(run)
    _role_alias(run)
    _iot_policy(run)
    for group in dict.fromkeys(options.groups):
        _deployment_group(run, names.group(group))
    return run.steps


# -- helpers ---------------------------------------------------------------------------------


def _read(doing: str, call: Callable[..., Any], **kwargs: Any) -> Any:
    """The response of a read call, or None when the thing does not exist."""
    try:
        with aws_errors(doing):
            return call(**kwargs)
    except NotFound:
        return None


def _call(doing: str, call: Callable[..., Any], **kwargs: Any) -> Any:
    with aws_errors(doing):
        return call(**kwargs)


def _document(value: Any) -> Any:
    """A policy document as AWS returns it (dict, JSON text, or URL-encoded JSON text)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return json.loads(unquote(value))
    return value


def _canonical(value: Any) -> Any:
    """Policy documents compared by meaning: one-element lists as scalars, lists sorted."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_canonical(v) for v in value]
        if len(items) == 1:
            return items[0]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    return value


def _same_policy(current: Any, wanted: dict[str, Any]) -> bool:
    return bool(_canonical(_document(current)) == _canonical(wanted))


def _dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"))


# -- the bucket ------------------------------------------------------------------------------


_PUBLIC_ACCESS_BLOCK = {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                        "BlockPublicPolicy": True, "RestrictPublicBuckets": True}


def _bucket(run: _Run) -> None:
    s3 = run.client("s3")
    bucket = run.bucket
    exists = _bucket_exists(s3, bucket)
    if not exists:
        if not run.dry_run:
            kwargs: dict[str, Any] = {"Bucket": bucket}
            if run.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": run.region}
            _call(f"creating the artifact bucket {bucket}", s3.create_bucket, **kwargs)
            _enable_versioning(s3, bucket)
            _block_public_access(s3, bucket)
        run.step("s3-bucket", bucket, "create", "versioned, public access blocked")
        return
    changes = []
    versioning = _call(f"reading the versioning of bucket {bucket}",
                       s3.get_bucket_versioning, Bucket=bucket)
    if versioning.get("Status") != "Enabled":
        changes.append("enable versioning")
        if not run.dry_run:
            _enable_versioning(s3, bucket)
    block = _read(f"reading the public access block of bucket {bucket}",
                  s3.get_public_access_block, Bucket=bucket)
    if (block or {}).get("PublicAccessBlockConfiguration") != _PUBLIC_ACCESS_BLOCK:
        changes.append("block public access")
        if not run.dry_run:
            _block_public_access(s3, bucket)
    run.step("s3-bucket", bucket, "update" if changes else "unchanged",
             ", ".join(changes) or "versioned, public access blocked")


def _bucket_exists(s3: Any, bucket: str) -> bool:
    from botocore.exceptions import ClientError  # noqa: PLC0415

    try:
        with aws_errors(f"looking for the artifact bucket {bucket}"):
            try:
                s3.head_bucket(Bucket=bucket)
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if status == 404 or code in ("404", "NoSuchBucket"):
                    return False
                if status == 403 or code in ("403", "Forbidden"):
                    raise Conflict(
                        f"the artifact bucket {bucket} exists but this account cannot use it "
                        "(another account owns it, or you lack s3:ListBucket on it); pick "
                        "another fleet name with --fleet") from None
                raise
    except NotFound:
        return False
    return True


def _enable_versioning(s3: Any, bucket: str) -> None:
    _call(f"enabling versioning on bucket {bucket}", s3.put_bucket_versioning, Bucket=bucket,
          VersioningConfiguration={"Status": "Enabled"})


def _block_public_access(s3: Any, bucket: str) -> None:
    _call(f"blocking public access to bucket {bucket}", s3.put_public_access_block,
          Bucket=bucket, PublicAccessBlockConfiguration=dict(_PUBLIC_ACCESS_BLOCK))


# -- the application -------------------------------------------------------------------------


def _application(run: _Run) -> None:
    codedeploy = run.client("codedeploy")
    name = run.names.application
    found = _read(f"looking for the CodeDeploy application {name}",
                  codedeploy.get_application, applicationName=name)
    if found is None:
        if not run.dry_run:
            _call(f"creating the CodeDeploy application {name}", codedeploy.create_application,
                  applicationName=name, computePlatform="Server")
        run.step("codedeploy-application", name, "create", "compute platform Server")
        return
    platform = found.get("application", {}).get("computePlatform", "Server")
    if platform != "Server":
        raise Conflict(f"the CodeDeploy application {name} exists for compute platform "
                       f"{platform}, not Server (on-premises instances); delete it or pick "
                       "another fleet name with --fleet")
    run.step("codedeploy-application", name, "unchanged", "compute platform Server")


# -- IAM roles -------------------------------------------------------------------------------


def _trust(service: str) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]}


def _role(run: _Run, name: str, trusted: str, description: str) -> tuple[bool, list[str]]:
    """Create the role or fix its trust policy; (created, changes)."""
    iam = run.client("iam")
    found = _read(f"looking for the IAM role {name}", iam.get_role, RoleName=name)
    trust = _trust(trusted)
    if found is None:
        if not run.dry_run:
            _call(f"creating the IAM role {name}", iam.create_role, RoleName=name,
                  Path=run.names.iam_path, AssumeRolePolicyDocument=_dumps(trust),
                  Description=description)
            run.new_roles.add(name)
        return True, []
    role = found["Role"]
    if role.get("Path", "/") != run.names.iam_path:
        raise Conflict(f"the IAM role {name} exists with path {role.get('Path')}, not "
                       f"{run.names.iam_path}; delete it or pick another fleet name with --fleet")
    if _same_policy(role.get("AssumeRolePolicyDocument"), trust):
        return False, []
    if not run.dry_run:
        _call(f"updating the trust policy of IAM role {name}", iam.update_assume_role_policy,
              RoleName=name, PolicyDocument=_dumps(trust))
    return False, [f"trust {trusted}"]


def _inline_policy(run: _Run, role: str, policy: str, document: dict[str, Any],
                   created: bool) -> list[str]:
    iam = run.client("iam")
    if not created:
        found = _read(f"reading policy {policy} of IAM role {role}", iam.get_role_policy,
                      RoleName=role, PolicyName=policy)
        if found is not None and _same_policy(found.get("PolicyDocument"), document):
            return []
    if not run.dry_run:
        _call(f"writing policy {policy} of IAM role {role}", iam.put_role_policy,
              RoleName=role, PolicyName=policy, PolicyDocument=_dumps(document))
    return [f"inline policy {policy}"]


def _service_role(run: _Run) -> None:
    iam = run.client("iam")
    name = run.names.service_role
    created, changes = _role(run, name, "codedeploy.amazonaws.com",
                             f"CodeDeploy service role of fleet {run.names.fleet}")
    managed = f"arn:{run.partition}:iam::aws:{CODEDEPLOY_MANAGED_POLICY}"
    if _read("looking for the AWS managed policy AWSCodeDeployRole", iam.get_policy,
             PolicyArn=managed) is not None:
        attached = [] if created else _attached_policies(iam, name)
        if managed not in attached:
            if not run.dry_run:
                _call(f"attaching AWSCodeDeployRole to IAM role {name}", iam.attach_role_policy,
                      RoleName=name, PolicyArn=managed)
            changes.append("attach AWSCodeDeployRole")
        policy_note = "managed policy AWSCodeDeployRole"
    else:
        document = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": list(_CODEDEPLOY_ROLE_ACTIONS), "Resource": "*"}]}
        changes += _inline_policy(run, name, FALLBACK_POLICY_NAME, document, created)
        policy_note = (f"AWSCodeDeployRole is not available here: inline policy "
                       f"{FALLBACK_POLICY_NAME} with the same permissions instead")
    action: Action = "create" if created else "update" if changes else "unchanged"
    detail = "; ".join([*changes, policy_note]) if action == "update" else policy_note
    run.step("iam-role", name, action, detail)


def _attached_policies(iam: Any, role: str) -> list[str]:
    arns: list[str] = []
    with aws_errors(f"listing the managed policies of IAM role {role}"):
        for page in iam.get_paginator("list_attached_role_policies").paginate(RoleName=role):
            arns += [p["PolicyArn"] for p in page.get("AttachedPolicies", [])]
    return arns


def _device_role(run: _Run) -> None:
    name = run.names.device_role
    created, changes = _role(run, name, "credentials.iot.amazonaws.com",
                             f"Role the Raspberry Pis of fleet {run.names.fleet} assume "
                             "through the AWS IoT credentials provider")
    # Revisions are shared by every device of the fleet, so the read is not scoped per thing;
    # the default CodeDeploy agent stack needs nothing beyond S3 reads.
    bucket_arn = f"arn:{run.partition}:s3:::{run.bucket}"
    document = {"Version": "2012-10-17", "Statement": [{
        "Sid": "ReadRevisions", "Effect": "Allow",
        "Action": ["s3:GetObject", "s3:GetObjectVersion"], "Resource": f"{bucket_arn}/*"}]}
    changes += _inline_policy(run, name, DEVICE_POLICY_NAME, document, created)
    action: Action = "create" if created else "update" if changes else "unchanged"
    run.step("iam-role", name, action,
             ", ".join(changes) if action == "update" else f"reads s3://{run.bucket}")


# -- IoT -------------------------------------------------------------------------------------


def _role_alias(run: _Run) -> None:
    iot = run.client("iot")
    alias = run.names.role_alias
    role_arn = run.role_arn(run.names.device_role)
    found = _read(f"looking for the IoT role alias {alias}", iot.describe_role_alias,
                  roleAlias=alias)
    if found is None:
        if not run.dry_run:
            _call(f"creating the IoT role alias {alias}", iot.create_role_alias,
                  roleAlias=alias, roleArn=role_arn,
                  credentialDurationSeconds=CREDENTIAL_DURATION_S)
        run.step("iot-role-alias", alias, "create", f"-> {run.names.device_role}")
        return
    description = found.get("roleAliasDescription", {})
    if (description.get("roleArn") == role_arn
            and description.get("credentialDurationSeconds") == CREDENTIAL_DURATION_S):
        run.step("iot-role-alias", alias, "unchanged", f"-> {run.names.device_role}")
        return
    if not run.dry_run:
        _call(f"updating the IoT role alias {alias}", iot.update_role_alias, roleAlias=alias,
              roleArn=role_arn, credentialDurationSeconds=CREDENTIAL_DURATION_S)
    run.step("iot-role-alias", alias, "update", f"-> {run.names.device_role}")


def device_iot_policy(partition: str, region: str, account: str,
                      role_alias_arn: str) -> dict[str, Any]:
    """The IoT policy of a fleet's device certificates."""
    base = f"arn:{partition}:iot:{region}:{account}"
    thing = "${iot:Connection.Thing.ThingName}"
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:AssumeRoleWithCertificate",
         "Resource": role_alias_arn},
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{base}:client/{thing}"},
        {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
         "Resource": f"{base}:topic/$aws/things/{thing}/shadow/*"},
        {"Effect": "Allow", "Action": "iot:Subscribe",
         "Resource": f"{base}:topicfilter/$aws/things/{thing}/shadow/*"},
    ]}


def _iot_policy(run: _Run) -> None:
    iot = run.client("iot")
    name = run.names.iot_policy
    document = device_iot_policy(run.partition, run.region, run.account, run.role_alias_arn)
    found = _read(f"looking for the IoT policy {name}", iot.get_policy, policyName=name)
    if found is None:
        if not run.dry_run:
            _call(f"creating the IoT policy {name}", iot.create_policy, policyName=name,
                  policyDocument=_dumps(document))
        run.step("iot-policy", name, "create", "role alias, connect, own shadow topics")
        return
    if _same_policy(found.get("policyDocument", "{}"), document):
        run.step("iot-policy", name, "unchanged", "role alias, connect, own shadow topics")
        return
    if not run.dry_run:
        _new_policy_version(iot, name, document)
    run.step("iot-policy", name, "update", "new default version")


def _new_policy_version(iot: Any, name: str, document: dict[str, Any]) -> None:
    versions = _call(f"listing the versions of IoT policy {name}", iot.list_policy_versions,
                     policyName=name).get("policyVersions", [])
    if len(versions) >= 5:  # the IoT limit: drop the oldest non-default version
        old = sorted((v for v in versions if not v.get("isDefaultVersion")),
                     key=lambda v: int(v["versionId"]))
        if old:
            _call(f"deleting an old version of IoT policy {name}", iot.delete_policy_version,
                  policyName=name, policyVersionId=old[0]["versionId"])
    _call(f"updating the IoT policy {name}", iot.create_policy_version, policyName=name,
          policyDocument=_dumps(document), setAsDefault=True)


# -- deployment groups -----------------------------------------------------------------------


def _wanted_group(run: _Run) -> dict[str, Any]:
    tags = list(run.options.tags) or [TagFilter(FLEET_TAG, run.names.fleet)]
    rollback = ({"enabled": True, "events": ["DEPLOYMENT_FAILURE"]} if run.options.rollback
                else {"enabled": False, "events": []})
    return {
        "serviceRoleArn": run.role_arn(run.names.service_role),
        "deploymentConfigName": run.options.deployment_config,
        "onPremisesInstanceTagFilters": [t.to_api() for t in dict.fromkeys(tags)],
        "autoRollbackConfiguration": rollback,
    }


def _group_differences(current: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    changes = []
    if current.get("serviceRoleArn") != wanted["serviceRoleArn"]:
        changes.append("service role")
    if current.get("deploymentConfigName") != wanted["deploymentConfigName"]:
        changes.append(f"config {wanted['deploymentConfigName']}")

    def filters(value: list[dict[str, str]]) -> list[str]:
        return sorted(json.dumps(f, sort_keys=True) for f in value)

    if (current.get("onPremisesTagSet", {}).get("onPremisesTagSetList")
            or filters(current.get("onPremisesInstanceTagFilters") or [])
            != filters(wanted["onPremisesInstanceTagFilters"])):
        changes.append("tag filters")
    rollback = current.get("autoRollbackConfiguration") or {"enabled": False, "events": []}
    want = wanted["autoRollbackConfiguration"]
    if bool(rollback.get("enabled")) != want["enabled"] or (
            want["enabled"] and sorted(rollback.get("events") or []) != sorted(want["events"])):
        changes.append("rollback on" if want["enabled"] else "rollback off")
    return changes


def _deployment_group(run: _Run, group: str) -> None:
    codedeploy = run.client("codedeploy")
    app = run.names.application
    wanted = _wanted_group(run)
    summary = _group_summary(wanted)
    found = None
    if not any(s.resource == "codedeploy-application" and s.action == "create"
               for s in run.steps):
        found = _read(f"looking for deployment group {group} of application {app}",
                      codedeploy.get_deployment_group, applicationName=app,
                      deploymentGroupName=group)
    if found is None:
        if not run.dry_run:
            _with_role_retry(run, lambda: _call(
                f"creating deployment group {group} of application {app}",
                codedeploy.create_deployment_group, applicationName=app,
                deploymentGroupName=group,
                deploymentStyle={"deploymentType": "IN_PLACE",
                                 "deploymentOption": "WITHOUT_TRAFFIC_CONTROL"},
                **wanted))
        run.step("codedeploy-deployment-group", group, "create", summary)
        return
    changes = _group_differences(found.get("deploymentGroupInfo", {}), wanted)
    if not changes:
        run.step("codedeploy-deployment-group", group, "unchanged", summary)
        return
    if not run.dry_run:
        update = dict(wanted)
        if found["deploymentGroupInfo"].get("onPremisesTagSet", {}).get("onPremisesTagSetList"):
            update["onPremisesTagSet"] = {"onPremisesTagSetList": []}
        _with_role_retry(run, lambda: _call(
            f"updating deployment group {group} of application {app}",
            codedeploy.update_deployment_group, applicationName=app,
            currentDeploymentGroupName=group, **update))
    run.step("codedeploy-deployment-group", group, "update", ", ".join(changes))


def _group_summary(wanted: dict[str, Any]) -> str:
    tags = " or ".join(f["Key"] + (f"={f['Value']}" if "Value" in f else "")
                       for f in wanted["onPremisesInstanceTagFilters"])
    rollback = "rollback on failure" if wanted["autoRollbackConfiguration"]["enabled"] \
        else "no rollback"
    return f"{tags}; {wanted['deploymentConfigName']}; {rollback}"


def _with_role_retry(run: _Run, call: Callable[[], Any]) -> None:
    """A service role created a moment ago may not be visible to CodeDeploy yet: retry."""
    for delay in (*_ROLE_RETRY_S, None):
        try:
            call()
            return
        except FleetError as exc:
            if delay is None or not run.new_roles or "InvalidRole" not in exc.message:
                raise
            time.sleep(delay)
