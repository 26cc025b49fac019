"""fleetctl pipeline: role, artifact store and pipeline against the strict sandbox (moto
CodePipeline/IAM/S3 plus our CodeDeploy), and the validation moto does not do."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from fleet import pipeline
from fleet.aws import Aws
from fleet.errors import FleetError, NotFound
from fleet.names import FleetNames

from .conftest import Fleetctl

NAMES = FleetNames("pifleet")
ROLE = "arn:aws:iam::123456789012:role/pifleet-codedeploy"


def _group(aws: Aws, group: str = "kitchen") -> None:
    codedeploy = aws.client("codedeploy")
    codedeploy.create_application(applicationName=NAMES.application, computePlatform="Server")
    codedeploy.create_deployment_group(applicationName=NAMES.application,
                                       deploymentGroupName=group, serviceRoleArn=ROLE)


def _bucket(aws: Aws) -> str:
    return NAMES.bucket(aws.account_id, aws.region)


def _actions(result: pipeline.CreateResult) -> dict[str, str]:
    return {c.kind: c.action for c in result.changes}


def test_create_builds_role_store_and_stages(aws: Aws) -> None:
    _group(aws)
    source = pipeline.S3Source(_bucket(aws), "aqi/latest.zip")
    result = pipeline.create_pipeline(aws, NAMES, group="kitchen", source=source)
    assert result.name == "pifleet-kitchen"
    assert _actions(result) == {"bucket": "create", "role": "create", "pipeline": "create"}

    iam = aws.client("iam")
    role = iam.get_role(RoleName="pifleet-kitchen-codepipeline")["Role"]
    statement = role["AssumeRolePolicyDocument"]["Statement"][0]
    assert statement["Principal"] == {"Service": "codepipeline.amazonaws.com"}  # a string
    assert role["Path"] == "/pifleet/"
    policy = iam.get_role_policy(RoleName=role["RoleName"], PolicyName="pipeline")
    actions = {a for s in policy["PolicyDocument"]["Statement"] for a in s["Action"]}
    assert {"s3:GetObject", "s3:PutObject", "codedeploy:CreateDeployment",
            "codedeploy:GetDeployment", "codedeploy:GetApplicationRevision",
            "codedeploy:RegisterApplicationRevision",
            "codedeploy:GetDeploymentConfig"} <= actions
    assert not any(a.startswith("codecommit:") for a in actions)

    versioning = aws.client("s3").get_bucket_versioning(Bucket=_bucket(aws))
    assert versioning["Status"] == "Enabled"

    got = aws.client("codepipeline").get_pipeline(name="pifleet-kitchen")["pipeline"]
    assert got["roleArn"] == role["Arn"]
    assert got["artifactStore"] == {"type": "S3", "location": _bucket(aws)}
    source_stage, deploy_stage = got["stages"]
    s3 = source_stage["actions"][0]
    assert s3["actionTypeId"] == {"category": "Source", "owner": "AWS", "provider": "S3",
                                  "version": "1"}
    assert s3["configuration"] == {"S3Bucket": _bucket(aws), "S3ObjectKey": "aqi/latest.zip",
                                   "PollForSourceChanges": "false"}
    deploy = deploy_stage["actions"][0]
    assert deploy["actionTypeId"]["provider"] == "CodeDeploy"
    assert deploy["configuration"] == {"ApplicationName": "pifleet",
                                       "DeploymentGroupName": "kitchen"}
    assert deploy["inputArtifacts"] == s3["outputArtifacts"] == [{"name": "SourceArtifact"}]


def test_second_create_is_unchanged_then_updates(aws: Aws) -> None:
    _group(aws)
    source = pipeline.S3Source(_bucket(aws), "aqi/latest.zip")
    pipeline.create_pipeline(aws, NAMES, group="kitchen", source=source)
    again = pipeline.create_pipeline(aws, NAMES, group="kitchen", source=source)
    assert set(_actions(again).values()) == {"unchanged"}

    moved = pipeline.S3Source(_bucket(aws), "aqi/v2.zip")
    changed = pipeline.create_pipeline(aws, NAMES, group="kitchen", source=moved)
    assert _actions(changed) == {"bucket": "unchanged", "role": "update", "pipeline": "update"}
    got = aws.client("codepipeline").get_pipeline(name="pifleet-kitchen")["pipeline"]
    assert got["version"] == 2
    assert got["stages"][0]["actions"][0]["configuration"]["S3ObjectKey"] == "aqi/v2.zip"


def test_codecommit_source(aws: Aws) -> None:
    _group(aws)
    source = pipeline.parse_source(None, "aqi-app@release")
    result = pipeline.create_pipeline(aws, NAMES, group="kitchen", source=source, name="aqi")
    assert result.name == "aqi"
    got = aws.client("codepipeline").get_pipeline(name="aqi")["pipeline"]
    action = got["stages"][0]["actions"][0]
    assert action["actionTypeId"]["provider"] == "CodeCommit"
    assert action["configuration"]["RepositoryName"] == "aqi-app"
    assert action["configuration"]["BranchName"] == "release"
    policy = aws.client("iam").get_role_policy(RoleName="aqi-codepipeline",
                                               PolicyName="pipeline")["PolicyDocument"]
    assert any("codecommit:GitPull" in s["Action"] or "codecommit:GetBranch" in s["Action"]
               for s in policy["Statement"])


def test_dry_run_creates_nothing(aws: Aws) -> None:
    _group(aws)
    source = pipeline.S3Source(_bucket(aws), "aqi/latest.zip")
    result = pipeline.create_pipeline(aws, NAMES, group="kitchen", source=source, dry_run=True)
    assert _actions(result) == {"bucket": "create", "role": "create", "pipeline": "create"}
    assert aws.client("codepipeline").list_pipelines()["pipelines"] == []
    assert aws.client("iam").list_roles(PathPrefix="/pifleet/")["Roles"] == []
    assert aws.client("s3").list_buckets()["Buckets"] == []


def test_missing_deployment_group_is_a_clear_error(aws: Aws) -> None:
    source = pipeline.S3Source(_bucket(aws), "aqi/latest.zip")
    with pytest.raises(NotFound, match="deployment group 'kitchen' of application 'pifleet'"):
        pipeline.create_pipeline(aws, NAMES, group="kitchen", source=source)


def test_unversioned_or_missing_source_bucket(aws: Aws) -> None:
    _group(aws)
    aws.client("s3").create_bucket(Bucket="plain")
    with pytest.raises(FleetError, match="versioning off"):
        pipeline.create_pipeline(aws, NAMES, group="kitchen",
                                 source=pipeline.S3Source("plain", "a.zip"))
    with pytest.raises(NotFound, match="source bucket 'nope' does not exist"):
        pipeline.create_pipeline(aws, NAMES, group="kitchen",
                                 source=pipeline.S3Source("nope", "a.zip"))


@pytest.mark.parametrize(("source", "codecommit", "message"), [
    (None, None, "exactly one source"),
    ("s3://b/k.zip", "repo", "exactly one source"),
    ("https://b/k.zip", None, "not an S3 URL"),
    ("s3://bucket-only", None, "must name an object"),
    ("s3://b/dir/", None, "must name an object"),
    (None, "@main", "no repository name"),
])
def test_parse_source_errors(source: str | None, codecommit: str | None, message: str) -> None:
    with pytest.raises(FleetError, match=message):
        pipeline.parse_source(source, codecommit)


def _valid() -> dict[str, Any]:
    return pipeline.build_declaration(NAMES, name="p", group="g",
                                      source=pipeline.S3Source("b", "k.zip"),
                                      role_arn=ROLE, bucket="b")


def _broken(edit: str) -> dict[str, Any]:
    declaration = copy.deepcopy(_valid())
    source, deploy = (s["actions"][0] for s in declaration["stages"])
    if edit == "provider":
        deploy["actionTypeId"]["provider"] = "CodeDeplo"
    elif edit == "missing-key":
        del deploy["configuration"]["DeploymentGroupName"]
    elif edit == "unknown-key":
        source["configuration"]["S3Key"] = "k.zip"
    elif edit == "poll":
        source["configuration"]["PollForSourceChanges"] = "no"
    elif edit == "artifacts":
        deploy["inputArtifacts"] = [{"name": "Other"}]
    elif edit == "one-stage":
        declaration["stages"] = declaration["stages"][:1]
    elif edit == "source-late":
        declaration["stages"].reverse()
    return declaration


def test_valid_declaration_passes() -> None:
    pipeline.validate_declaration(_valid())


@pytest.mark.parametrize(("edit", "message"), [
    ("provider", "unsupported action type Deploy/CodeDeplo"),
    ("missing-key", "missing configuration DeploymentGroupName"),
    ("unknown-key", "unknown configuration S3Key"),
    ("poll", "PollForSourceChanges must be"),
    ("artifacts", "input artifact Other is not produced"),
    ("one-stage", "at least 2 stages"),
    ("source-late", "first stage may only hold Source"),
])
def test_validation_catches_what_moto_accepts(edit: str, message: str) -> None:
    with pytest.raises(FleetError, match=message) as caught:
        pipeline.validate_declaration(_broken(edit))
    assert "would be rejected by AWS" in caught.value.message


def test_show_lists_stages_and_tolerates_missing_state(aws: Aws) -> None:
    _group(aws)
    pipeline.create_pipeline(aws, NAMES, group="kitchen",
                             source=pipeline.S3Source(_bucket(aws), "aqi/latest.zip"))
    aws.client("codepipeline").start_pipeline_execution(name="pifleet-kitchen")
    info = pipeline.show_pipeline(aws, "pifleet-kitchen")
    assert [s["name"] for s in info["stages"]] == ["Source", "Deploy"]
    assert info["stages"][1]["actions"][0]["type"] == "Deploy/AWS/CodeDeploy/1"
    assert info["state"] is None  # GetPipelineState is not in moto
    assert [e["status"] for e in info["executions"]] == ["Succeeded"]
    assert [p["name"] for p in pipeline.list_pipelines(aws)] == ["pifleet-kitchen"]
    with pytest.raises(NotFound, match="pipeline 'nope' does not exist"):
        pipeline.show_pipeline(aws, "nope")


def test_delete_removes_pipeline_and_role(aws: Aws) -> None:
    _group(aws)
    pipeline.create_pipeline(aws, NAMES, group="kitchen",
                             source=pipeline.S3Source(_bucket(aws), "aqi/latest.zip"))
    changes = pipeline.delete_pipeline(aws, NAMES, "pifleet-kitchen")
    assert [(c.kind, c.action) for c in changes] == [("pipeline", "delete"), ("role", "delete")]
    assert aws.client("codepipeline").list_pipelines()["pipelines"] == []
    assert aws.client("iam").list_roles(PathPrefix="/pifleet/")["Roles"] == []
    with pytest.raises(NotFound):
        pipeline.delete_pipeline(aws, NAMES, "pifleet-kitchen")


def test_cli_create_show_list_delete(aws: Aws, fleetctl: Fleetctl) -> None:
    _group(aws)
    source = f"s3://{_bucket(aws)}/aqi/latest.zip"
    dry = fleetctl("--output", "json", "pipeline", "create", "--group", "kitchen",
                   "--source", source, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["dry_run"] is True
    assert aws.client("codepipeline").list_pipelines()["pipelines"] == []

    made = fleetctl("pipeline", "create", "--group", "kitchen", "--source", source)
    assert made.returncode == 0, made.stderr
    assert "pifleet-kitchen" in made.stdout and "start-pipeline-execution" in made.stdout

    shown = fleetctl("--output", "json", "pipeline", "show", "pifleet-kitchen")
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["stages"][1]["actions"][0]["configuration"]["DeploymentGroupName"] == "kitchen"
    text = fleetctl("pipeline", "show", "pifleet-kitchen")
    assert "Deploy/AWS/CodeDeploy/1" in text.stdout and "no executions yet" in text.stdout

    listed = fleetctl("pipeline", "list")
    assert "pifleet-kitchen" in listed.stdout

    gone = fleetctl("pipeline", "delete", "pifleet-kitchen")
    assert gone.returncode == 0, gone.stderr
    assert "deleted pipeline pifleet-kitchen" in gone.stdout


def test_cli_errors_have_no_traceback(fleetctl: Fleetctl) -> None:
    bad = fleetctl("pipeline", "create", "--group", "kitchen", "--source", "s3://b/k.zip",
                   "--codecommit", "repo")
    assert bad.returncode == 1
    assert "exactly one source" in bad.stderr and "Traceback" not in bad.stderr
    missing = fleetctl("pipeline", "show", "nope")
    assert missing.returncode == 1
    assert "pipeline 'nope' does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
