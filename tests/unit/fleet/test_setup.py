"""``fleetctl init`` against the sandbox: every resource checked through boto3, idempotence,
dry runs that change nothing, group updates, drift repair, and the CLI (subprocess and
CliRunner)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from fleet.aws import Aws
from fleet.cli import app
from fleet.errors import FleetError
from fleet.names import FleetNames
from fleet.sandbox.server import Sandbox
from fleet.setup import (
    DEVICE_POLICY_NAME,
    FALLBACK_POLICY_NAME,
    InitOptions,
    Step,
    TagFilter,
    init_fleet,
)

Fleetctl = Callable[..., subprocess.CompletedProcess[str]]  # the conftest's fleetctl fixture

NAMES = FleetNames()
ACCOUNT = "123456789012"
BUCKET = NAMES.bucket(ACCOUNT, "us-east-1")
RESOURCES = [
    ("s3-bucket", BUCKET),
    ("codedeploy-application", "pifleet"),
    ("iam-role", "pifleet-codedeploy"),
    ("iam-role", "pifleet-device"),
    ("iot-role-alias", "pifleet-device"),
    ("iot-policy", "pifleet-device"),
    ("codedeploy-deployment-group", "all"),
]


def _actions(steps: list[Step]) -> dict[tuple[str, str], str]:
    return {(s.resource, s.name): s.action for s in steps}


def _doc(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def test_init_creates_everything(aws: Aws) -> None:
    assert aws.account_id == ACCOUNT
    steps = init_fleet(aws, NAMES)
    assert [(s.resource, s.name) for s in steps] == RESOURCES
    assert {s.action for s in steps} == {"create"}

    s3 = aws.client("s3")
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    block = s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4

    cd = aws.client("codedeploy")
    assert cd.get_application(applicationName="pifleet")["application"][
        "computePlatform"] == "Server"
    group = cd.get_deployment_group(applicationName="pifleet",
                                    deploymentGroupName="all")["deploymentGroupInfo"]
    assert group["deploymentConfigName"] == "CodeDeployDefault.OneAtATime"
    assert group["onPremisesInstanceTagFilters"] == [
        {"Key": "pifleet:fleet", "Value": "pifleet", "Type": "KEY_AND_VALUE"}]
    assert group["autoRollbackConfiguration"] == {"enabled": True,
                                                  "events": ["DEPLOYMENT_FAILURE"]}
    assert group["serviceRoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/pifleet/pifleet-codedeploy"

    iam = aws.client("iam")
    service = iam.get_role(RoleName="pifleet-codedeploy")["Role"]
    assert service["Arn"] == group["serviceRoleArn"]
    trust = _doc(service["AssumeRolePolicyDocument"])
    assert trust["Statement"][0]["Principal"] == {"Service": "codedeploy.amazonaws.com"}
    # moto has no AWS managed policies: the equivalent inline policy, and the step says so.
    fallback = _doc(iam.get_role_policy(RoleName="pifleet-codedeploy",
                                        PolicyName=FALLBACK_POLICY_NAME)["PolicyDocument"])
    assert "tag:GetResources" in fallback["Statement"][0]["Action"]
    assert "not available" in steps[2].detail

    device = iam.get_role(RoleName="pifleet-device")["Role"]
    assert _doc(device["AssumeRolePolicyDocument"])["Statement"][0]["Principal"] == {
        "Service": "credentials.iot.amazonaws.com"}
    read = _doc(iam.get_role_policy(RoleName="pifleet-device",
                                    PolicyName=DEVICE_POLICY_NAME)["PolicyDocument"])
    assert read["Statement"][0]["Action"] == ["s3:GetObject", "s3:GetObjectVersion"]
    assert read["Statement"][0]["Resource"] == f"arn:aws:s3:::{BUCKET}/*"

    iot = aws.client("iot")
    alias = iot.describe_role_alias(roleAlias="pifleet-device")["roleAliasDescription"]
    assert alias["roleArn"] == device["Arn"]
    policy = json.loads(iot.get_policy(policyName="pifleet-device")["policyDocument"])
    by_action = {json.dumps(s["Action"]): s["Resource"] for s in policy["Statement"]}
    assert by_action['"iot:AssumeRoleWithCertificate"'] == alias["roleAliasArn"]
    assert by_action['"iot:Connect"'].endswith(":client/${iot:Connection.Thing.ThingName}")
    assert by_action['["iot:Publish", "iot:Receive"]'].endswith(
        ":topic/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*")
    assert by_action['"iot:Subscribe"'].endswith(
        ":topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*")


def test_second_init_changes_nothing(aws: Aws) -> None:
    init_fleet(aws, NAMES)
    again = init_fleet(aws, NAMES)
    assert [(s.resource, s.name) for s in again] == RESOURCES
    assert {s.action for s in again} == {"unchanged"}


def test_dry_run_creates_nothing(aws: Aws) -> None:
    plan = init_fleet(aws, NAMES, dry_run=True)
    assert [(s.resource, s.name, s.action) for s in plan] == [
        (r, n, "create") for r, n in RESOURCES]
    assert aws.client("s3").list_buckets()["Buckets"] == []
    assert aws.client("codedeploy").list_applications()["applications"] == []
    assert aws.client("iam").list_roles()["Roles"] == []
    assert aws.client("iot").list_role_aliases()["roleAliases"] == []
    assert aws.client("iot").list_policies()["policies"] == []


def test_config_change_updates_the_group_only(aws: Aws) -> None:
    init_fleet(aws, NAMES)
    changed = InitOptions(deployment_config="CodeDeployDefault.AllAtOnce", rollback=False)
    preview = init_fleet(aws, NAMES, changed, dry_run=True)
    assert _actions(preview)[("codedeploy-deployment-group", "all")] == "update"
    cd = aws.client("codedeploy")

    def group() -> dict[str, Any]:
        return dict(cd.get_deployment_group(applicationName="pifleet",
                                            deploymentGroupName="all")["deploymentGroupInfo"])

    assert group()["deploymentConfigName"] == "CodeDeployDefault.OneAtATime"  # dry run
    steps = init_fleet(aws, NAMES, changed)
    assert {k: a for k, a in _actions(steps).items() if a != "unchanged"} == {
        ("codedeploy-deployment-group", "all"): "update"}
    assert "config CodeDeployDefault.AllAtOnce" in steps[-1].detail
    assert "rollback off" in steps[-1].detail
    info = group()
    assert info["deploymentConfigName"] == "CodeDeployDefault.AllAtOnce"
    assert info["autoRollbackConfiguration"]["enabled"] is False
    assert {s.action for s in init_fleet(aws, NAMES, changed)} == {"unchanged"}


def test_several_groups_and_tag_filters(aws: Aws) -> None:
    options = InitOptions(groups=("canary", "rest"),
                          tags=(TagFilter.parse("ring=canary"), TagFilter.parse("lab")))
    steps = init_fleet(aws, NAMES, options)
    assert [s.name for s in steps if s.resource == "codedeploy-deployment-group"] == [
        "canary", "rest"]
    info = aws.client("codedeploy").get_deployment_group(
        applicationName="pifleet", deploymentGroupName="rest")["deploymentGroupInfo"]
    assert info["onPremisesInstanceTagFilters"] == [
        {"Key": "ring", "Value": "canary", "Type": "KEY_AND_VALUE"},
        {"Key": "lab", "Type": "KEY_ONLY"}]
    with pytest.raises(FleetError, match="KEY=VALUE"):
        TagFilter.parse("=x")


def test_drift_is_repaired(aws: Aws) -> None:
    init_fleet(aws, NAMES)
    aws.client("s3").put_bucket_versioning(Bucket=BUCKET,
                                           VersioningConfiguration={"Status": "Suspended"})
    aws.client("iam").put_role_policy(RoleName="pifleet-device", PolicyName=DEVICE_POLICY_NAME,
                                      PolicyDocument=json.dumps({
                                          "Version": "2012-10-17", "Statement": [{
                                              "Effect": "Allow", "Action": "s3:*",
                                              "Resource": "*"}]}))
    aws.client("iot").update_role_alias(roleAlias="pifleet-device",
                                        credentialDurationSeconds=900)
    aws.client("iot").create_policy_version(
        policyName="pifleet-device", setAsDefault=True, policyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}))
    steps = init_fleet(aws, NAMES)
    assert {k: a for k, a in _actions(steps).items() if a != "unchanged"} == {
        ("s3-bucket", BUCKET): "update", ("iam-role", "pifleet-device"): "update",
        ("iot-role-alias", "pifleet-device"): "update", ("iot-policy", "pifleet-device"): "update"}
    assert {s.action for s in init_fleet(aws, NAMES)} == {"unchanged"}


def test_cli_json_then_unchanged_table(fleetctl: Fleetctl) -> None:
    first = fleetctl("--region", "us-east-1", "--output", "json", "init")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["fleet"] == "pifleet" and report["dry_run"] is False
    assert [(s["resource"], s["name"], s["action"]) for s in report["steps"]] == [
        (r, n, "create") for r, n in RESOURCES]
    assert set(report["steps"][0]) == {"resource", "name", "action", "detail"}
    second = fleetctl("--region", "us-east-1", "init", "--config",
                      "CodeDeployDefault.HalfAtATime", "--dry-run")
    assert second.returncode == 0, second.stderr
    assert "dry run" in second.stdout and "would update" in second.stdout
    assert second.stdout.count("unchanged") == len(RESOURCES) - 1


def test_cli_runner_errors_are_one_line(sandbox: Sandbox, aws: Aws) -> None:
    runner = CliRunner()
    base = ["--endpoint-url", sandbox.endpoint.url, "--region", "us-east-1"]
    ok = runner.invoke(app, [*base, "--output", "json", "init", "--group", "a",
                             "--tag", "ring=a", "--no-rollback"])
    assert ok.exit_code == 0, ok.output
    assert [s["action"] for s in json.loads(ok.stdout)["steps"]][-1] == "create"
    bad = runner.invoke(app, [*base, "init", "--config", "NoSuchConfig"])
    assert bad.exit_code == 1
    assert bad.stderr.startswith("fleetctl init: ") and "Traceback" not in bad.stderr
    tag = runner.invoke(app, [*base, "init", "--tag", "=v"])
    assert tag.exit_code == 1 and "KEY=VALUE" in tag.stderr
