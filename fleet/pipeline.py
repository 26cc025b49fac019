"""CodePipeline for a fleet: a Source stage (S3 object or CodeCommit branch) feeding a CodeDeploy
Deploy stage that targets one deployment group of the fleet's application.

What gets created (idempotently: a second run updates what differs and leaves the rest):

- the pipeline service role ``<pipeline>-codepipeline`` (trusts codepipeline.amazonaws.com, with
  an inline policy for the artifact store, the source and the fleet's CodeDeploy application);
- the artifact store, the fleet bucket (created versioned when missing);
- the pipeline itself.

An S3 source is declared with ``PollForSourceChanges=false``. The recommended change trigger, an
EventBridge rule on the object's S3 events, is out of scope: start the pipeline after each upload
(``aws codepipeline start-pipeline-execution``) or add the rule yourself.

moto stores pipelines without checking action types or configuration keys, so
:func:`validate_declaration` checks what AWS would (per the action references) before any call.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from .aws import Aws, aws_errors
from .errors import FleetError, NotFound
from .names import FleetNames

CODEPIPELINE_PRINCIPAL = "codepipeline.amazonaws.com"
SOURCE_ARTIFACT = "SourceArtifact"
POLICY_NAME = "pipeline"

# category -> provider -> (required configuration keys, optional keys, inputs, outputs)
_ACTION_TYPES: dict[str, dict[str, tuple[frozenset[str], frozenset[str], int, int]]] = {
    "Source": {
        "S3": (frozenset({"S3Bucket", "S3ObjectKey"}),
               frozenset({"PollForSourceChanges", "AllowOverrideForS3ObjectKey"}), 0, 1),
        "CodeCommit": (frozenset({"RepositoryName", "BranchName"}),
                       frozenset({"PollForSourceChanges", "OutputArtifactFormat"}), 0, 1),
    },
    "Deploy": {
        "CodeDeploy": (frozenset({"ApplicationName", "DeploymentGroupName"}), frozenset(), 1, 0),
    },
}


@dataclass(frozen=True)
class S3Source:
    bucket: str
    key: str

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class CodeCommitSource:
    repository: str
    branch: str = "main"

    def describe(self) -> str:
        return f"codecommit:{self.repository}@{self.branch}"


Source = S3Source | CodeCommitSource


@dataclass(frozen=True)
class Change:
    kind: str      # role, bucket, pipeline
    name: str
    action: str    # create, update, unchanged (with --dry-run: what would be done)

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "action": self.action}


@dataclass
class CreateResult:
    name: str
    dry_run: bool
    changes: list[Change] = field(default_factory=list)
    declaration: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dry_run": self.dry_run,
                "changes": [c.as_dict() for c in self.changes],
                "pipeline": self.declaration}


def parse_source(source: str | None, codecommit: str | None) -> Source:
    """``--source s3://bucket/key`` or ``--codecommit REPO[@branch]``: exactly one."""
    if bool(source) == bool(codecommit):
        raise FleetError("give exactly one source: --source s3://BUCKET/KEY.zip or "
                         "--codecommit REPO[@BRANCH]")
    if source:
        if not source.startswith("s3://"):
            raise FleetError(f"--source {source!r} is not an S3 URL; use s3://BUCKET/KEY.zip")
        bucket, _, key = source[len("s3://"):].partition("/")
        if not bucket or not key or key.endswith("/"):
            raise FleetError(f"--source {source!r} must name an object: s3://BUCKET/KEY.zip "
                             "(the S3 source action watches one zip file)")
        return S3Source(bucket, key)
    repository, _, branch = (codecommit or "").partition("@")
    if not repository:
        raise FleetError(f"--codecommit {codecommit!r} has no repository name; use REPO[@BRANCH]")
    return CodeCommitSource(repository, branch or "main")


def default_name(names: FleetNames, group: str) -> str:
    return f"{names.fleet}-{group}"


def role_name(pipeline: str) -> str:
    return f"{pipeline}-codepipeline"[:64]


def trust_policy() -> dict[str, Any]:
    # A string principal: moto (wrongly) rejects a list-valued Service; AWS accepts both.
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": CODEPIPELINE_PRINCIPAL},
        "Action": "sts:AssumeRole"}]}


def role_policy(names: FleetNames, *, account: str, region: str, partition: str,
                source: Source) -> dict[str, Any]:
    bucket = names.bucket(account, region)
    arn = f"arn:{partition}:"
    statements: list[dict[str, Any]] = [
        {"Sid": "ArtifactStore", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject",
                    "s3:GetBucketVersioning", "s3:GetBucketLocation"],
         "Resource": [f"{arn}s3:::{bucket}", f"{arn}s3:::{bucket}/*"]},
        {"Sid": "CodeDeploy", "Effect": "Allow",
         "Action": ["codedeploy:CreateDeployment", "codedeploy:GetDeployment",
                    "codedeploy:GetApplication", "codedeploy:GetApplicationRevision",
                    "codedeploy:RegisterApplicationRevision"],
         "Resource": [f"{arn}codedeploy:{region}:{account}:application:{names.application}",
                      f"{arn}codedeploy:{region}:{account}:deploymentgroup:"
                      f"{names.application}/*"]},
        {"Sid": "DeploymentConfig", "Effect": "Allow",
         "Action": ["codedeploy:GetDeploymentConfig"],
         "Resource": [f"{arn}codedeploy:{region}:{account}:deploymentconfig:*"]},
    ]
    if isinstance(source, S3Source):
        statements.append({
            "Sid": "Source", "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:GetBucketVersioning",
                       "s3:GetBucketLocation"],
            "Resource": [f"{arn}s3:::{source.bucket}", f"{arn}s3:::{source.bucket}/{source.key}"]})
    else:
        statements.append({
            "Sid": "Source", "Effect": "Allow",
            "Action": ["codecommit:GetBranch", "codecommit:GetCommit",
                       "codecommit:GetRepository", "codecommit:UploadArchive",
                       "codecommit:GetUploadArchiveStatus", "codecommit:CancelUploadArchive"],
            "Resource": [f"{arn}codecommit:{region}:{account}:{source.repository}"]})
    return {"Version": "2012-10-17", "Statement": statements}


def build_declaration(names: FleetNames, *, name: str, group: str, source: Source,
                      role_arn: str, bucket: str) -> dict[str, Any]:
    if isinstance(source, S3Source):
        source_action: dict[str, Any] = {
            "name": "Source",
            "actionTypeId": {"category": "Source", "owner": "AWS", "provider": "S3",
                             "version": "1"},
            "configuration": {"S3Bucket": source.bucket, "S3ObjectKey": source.key,
                              "PollForSourceChanges": "false"}}
    else:
        source_action = {
            "name": "Source",
            "actionTypeId": {"category": "Source", "owner": "AWS", "provider": "CodeCommit",
                             "version": "1"},
            "configuration": {"RepositoryName": source.repository,
                              "BranchName": source.branch,
                              "PollForSourceChanges": "false"}}
    source_action.update(outputArtifacts=[{"name": SOURCE_ARTIFACT}], inputArtifacts=[],
                         runOrder=1)
    return {
        "name": name,
        "roleArn": role_arn,
        "artifactStore": {"type": "S3", "location": bucket},
        "stages": [
            {"name": "Source", "actions": [source_action]},
            {"name": "Deploy", "actions": [{
                "name": "Deploy",
                "actionTypeId": {"category": "Deploy", "owner": "AWS", "provider": "CodeDeploy",
                                 "version": "1"},
                "configuration": {"ApplicationName": names.application,
                                  "DeploymentGroupName": group},
                "inputArtifacts": [{"name": SOURCE_ARTIFACT}], "outputArtifacts": [],
                "runOrder": 1}]},
        ],
        "pipelineType": "V2",
        "executionMode": "QUEUED",
    }


def validate_declaration(declaration: dict[str, Any]) -> None:
    """Raise a FleetError listing every problem AWS would reject (moto accepts them all)."""
    problems: list[str] = []
    stages = declaration.get("stages") or []
    if len(stages) < 2:
        problems.append("a pipeline needs at least 2 stages (Source and Deploy)")
    produced: set[str] = set()
    for index, stage in enumerate(stages):
        for action in stage.get("actions") or []:
            where = f"stage {stage.get('name')!r} action {action.get('name')!r}"
            type_id = action.get("actionTypeId") or {}
            category, provider = type_id.get("category"), type_id.get("provider")
            if index == 0 and category != "Source":
                problems.append(f"{where}: the first stage may only hold Source actions")
            if index > 0 and category == "Source":
                problems.append(f"{where}: Source actions belong in the first stage only")
            known = _ACTION_TYPES.get(str(category), {})
            if provider not in known:
                choices = ", ".join(f"{c}/{p}" for c, ps in _ACTION_TYPES.items() for p in ps)
                problems.append(f"{where}: unsupported action type {category}/{provider} "
                                f"(fleetctl builds {choices})")
                continue
            if type_id.get("owner") != "AWS" or type_id.get("version") != "1":
                problems.append(f"{where}: {provider} actions are owner AWS, version 1")
            required, optional, n_in, n_out = known[str(provider)]
            config = action.get("configuration") or {}
            if missing := sorted(k for k in required if not config.get(k)):
                problems.append(f"{where}: missing configuration {', '.join(missing)}")
            if unknown := sorted(set(config) - required - optional):
                problems.append(f"{where}: unknown configuration {', '.join(unknown)}")
            if "PollForSourceChanges" in config and config["PollForSourceChanges"] not in (
                    "true", "false"):
                problems.append(f"{where}: PollForSourceChanges must be 'true' or 'false'")
            inputs = [a.get("name") for a in action.get("inputArtifacts") or []]
            outputs = [a.get("name") for a in action.get("outputArtifacts") or []]
            if len(inputs) != n_in or len(outputs) != n_out:
                problems.append(f"{where}: {provider} takes {n_in} input and {n_out} output "
                                f"artifact(s), not {len(inputs)} and {len(outputs)}")
            if absent := [a for a in inputs if a not in produced]:
                problems.append(f"{where}: input artifact {', '.join(map(str, absent))} is not "
                                "produced by an earlier action")
            produced.update(str(o) for o in outputs)
    if problems:
        raise FleetError(f"pipeline {declaration.get('name')!r} would be rejected by AWS:\n  - "
                         + "\n  - ".join(problems))


# -- AWS ---------------------------------------------------------------------------------


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _ensure_role(aws: Aws, names: FleetNames, role: str, policy: dict[str, Any],
                 dry_run: bool) -> tuple[str, Change]:
    iam = aws.client("iam")
    trust = trust_policy()
    with aws_errors(f"reading the pipeline role {role}"):
        try:
            current = iam.get_role(RoleName=role)["Role"]
        except iam.exceptions.NoSuchEntityException:
            current = None
    if current is None:
        arn = f"arn:{aws.partition()}:iam::{aws.account_id}:role{names.iam_path}{role}"
        if not dry_run:
            with aws_errors(f"creating the pipeline role {role}"):
                arn = iam.create_role(
                    RoleName=role, Path=names.iam_path,
                    AssumeRolePolicyDocument=json.dumps(trust),
                    Description=f"CodePipeline service role of fleet {names.fleet}",
                    Tags=[{"Key": "pifleet:fleet", "Value": names.fleet}])["Role"]["Arn"]
                iam.put_role_policy(RoleName=role, PolicyName=POLICY_NAME,
                                    PolicyDocument=json.dumps(policy))
        return arn, Change("role", role, "create")
    changed = False
    with aws_errors(f"updating the pipeline role {role}"):
        if _document(current.get("AssumeRolePolicyDocument")) != trust:
            changed = True
            if not dry_run:
                iam.update_assume_role_policy(RoleName=role, PolicyDocument=json.dumps(trust))
        try:
            existing = _document(iam.get_role_policy(RoleName=role,
                                                     PolicyName=POLICY_NAME)["PolicyDocument"])
        except iam.exceptions.NoSuchEntityException:
            existing = None
        if existing != policy:
            changed = True
            if not dry_run:
                iam.put_role_policy(RoleName=role, PolicyName=POLICY_NAME,
                                    PolicyDocument=json.dumps(policy))
    return str(current["Arn"]), Change("role", role, "update" if changed else "unchanged")


def _document(value: Any) -> Any:
    """IAM returns policy documents URL-encoded JSON strings (boto3 decodes some to dicts)."""
    if isinstance(value, str):
        from urllib.parse import unquote  # noqa: PLC0415

        return json.loads(unquote(value))
    return value


def _bucket_versioned(s3: Any, bucket: str) -> bool | None:
    """True/False, or None when the bucket does not exist."""
    try:
        status = s3.get_bucket_versioning(Bucket=bucket).get("Status")
    except Exception as exc:
        if _code(exc) in ("NoSuchBucket", "404"):
            return None
        raise
    return bool(status == "Enabled")


def _ensure_bucket(aws: Aws, bucket: str, dry_run: bool) -> Change:
    s3 = aws.client("s3")
    with aws_errors(f"checking the artifact bucket {bucket}"):
        versioned = _bucket_versioned(s3, bucket)
        if versioned:
            return Change("bucket", bucket, "unchanged")
        if not dry_run:
            if versioned is None:
                extra = ({} if aws.region == "us-east-1" else
                         {"CreateBucketConfiguration": {"LocationConstraint": aws.region}})
                s3.create_bucket(Bucket=bucket, **extra)
            s3.put_bucket_versioning(Bucket=bucket,
                                     VersioningConfiguration={"Status": "Enabled"})
    return Change("bucket", bucket, "create" if versioned is None else "update")


def _check_targets(aws: Aws, names: FleetNames, group: str, source: Source,
                   artifact_bucket: str) -> None:
    with aws_errors(f"checking deployment group {group} of application {names.application}"):
        try:
            aws.client("codedeploy").get_deployment_group(
                applicationName=names.application, deploymentGroupName=group)
        except Exception as exc:
            if _code(exc) in ("ApplicationDoesNotExistException",
                              "DeploymentGroupDoesNotExistException"):
                raise NotFound(
                    f"the pipeline deploys to deployment group {group!r} of application "
                    f"{names.application!r}, which does not exist ({_code(exc)}); create it "
                    f"first (fleetctl init / the group commands), or pass the right "
                    f"--group/--fleet") from None
            raise
    if isinstance(source, S3Source) and source.bucket != artifact_bucket:
        with aws_errors(f"checking the source bucket {source.bucket}"):
            versioned = _bucket_versioned(aws.client("s3"), source.bucket)
        if versioned is None:
            raise NotFound(f"source bucket {source.bucket!r} does not exist; create it "
                           f"(versioned) or use s3://{artifact_bucket}/<key>.zip")
        if not versioned:
            raise FleetError(f"source bucket {source.bucket!r} has versioning off, and the S3 "
                             "source action requires it; run `aws s3api put-bucket-versioning "
                             f"--bucket {source.bucket} --versioning-configuration "
                             "Status=Enabled`")


def _comparable(declaration: dict[str, Any]) -> dict[str, Any]:
    """A declaration without the fields AWS adds (version) or defaults, for comparison."""
    out = {k: v for k, v in declaration.items() if k != "version"}
    for stage in out.get("stages", []):
        for action in stage.get("actions", []):
            for key in ("inputArtifacts", "outputArtifacts"):
                action.setdefault(key, [])
    return out


def create_pipeline(aws: Aws, names: FleetNames, *, group: str, source: Source,
                    name: str | None = None, dry_run: bool = False) -> CreateResult:
    """Create or update the pipeline, its role and its artifact store; with ``dry_run`` only
    report what would change."""
    name = name or default_name(names, group)
    bucket = names.bucket(aws.account_id, aws.region)
    role = role_name(name)
    policy = role_policy(names, account=aws.account_id, region=aws.region,
                         partition=aws.partition(), source=source)
    placeholder = f"arn:{aws.partition()}:iam::{aws.account_id}:role{names.iam_path}{role}"
    declaration = build_declaration(names, name=name, group=group, source=source,
                                    role_arn=placeholder, bucket=bucket)
    validate_declaration(declaration)
    _check_targets(aws, names, group, source, bucket)
    result = CreateResult(name, dry_run)
    result.changes.append(_ensure_bucket(aws, bucket, dry_run))
    role_arn, change = _ensure_role(aws, names, role, policy, dry_run)
    result.changes.append(change)
    declaration["roleArn"] = role_arn
    result.declaration = declaration
    codepipeline = aws.client("codepipeline")
    with aws_errors(f"reading pipeline {name}"):
        try:
            current = codepipeline.get_pipeline(name=name)["pipeline"]
        except codepipeline.exceptions.PipelineNotFoundException:
            current = None
    if current is None:
        if not dry_run:
            _call_with_new_role(lambda: codepipeline.create_pipeline(pipeline=declaration),
                                f"creating pipeline {name}", fresh=change.action == "create")
        result.changes.append(Change("pipeline", name, "create"))
    elif _comparable(current) != _comparable(declaration):
        if not dry_run:
            _call_with_new_role(lambda: codepipeline.update_pipeline(pipeline=declaration),
                                f"updating pipeline {name}", fresh=change.action == "create")
        result.changes.append(Change("pipeline", name, "update"))
    else:
        result.changes.append(Change("pipeline", name, "unchanged"))
    return result


def _call_with_new_role(call: Any, doing: str, *, fresh: bool) -> None:
    """A role just created takes seconds to be assumable by CodePipeline (IAM is eventually
    consistent): retry that one error for up to ~30 s when the role is new."""
    deadline = time.monotonic() + (30.0 if fresh else 0.0)
    with aws_errors(doing):
        while True:
            try:
                call()
                return
            except Exception as exc:
                if (_code(exc) == "InvalidStructureException" and "AssumeRole" in str(exc)
                        and time.monotonic() < deadline):
                    time.sleep(3.0)
                    continue
                raise


def list_pipelines(aws: Aws) -> list[dict[str, Any]]:
    codepipeline = aws.client("codepipeline")
    out: list[dict[str, Any]] = []
    with aws_errors("listing pipelines (codepipeline:ListPipelines)"):
        for page in codepipeline.get_paginator("list_pipelines").paginate():
            out.extend({"name": p["name"], "version": p.get("version"),
                        "created": p.get("created"), "updated": p.get("updated")}
                       for p in page.get("pipelines", []))
    return out


def _existing_pipeline(aws: Aws, name: str, doing: str) -> dict[str, Any]:
    codepipeline = aws.client("codepipeline")
    with aws_errors(doing):
        try:
            return dict(codepipeline.get_pipeline(name=name)["pipeline"])
        except codepipeline.exceptions.PipelineNotFoundException:
            raise NotFound(f"pipeline {name!r} does not exist; `fleetctl pipeline list` shows "
                           "the pipelines of this account and region") from None


def show_pipeline(aws: Aws, name: str, *, executions: int = 5) -> dict[str, Any]:
    """The pipeline's stages and actions, plus its state (GetPipelineState) or, where that is
    not available (moto), its last executions."""
    codepipeline = aws.client("codepipeline")
    pipeline = _existing_pipeline(aws, name, f"reading pipeline {name}")
    stages = [{"name": s["name"], "actions": [{
        "name": a["name"],
        "type": "{category}/{owner}/{provider}/{version}".format(**a["actionTypeId"]),
        "configuration": a.get("configuration", {}),
        "inputs": [x["name"] for x in a.get("inputArtifacts", [])],
        "outputs": [x["name"] for x in a.get("outputArtifacts", [])]}
        for a in s.get("actions", [])]} for s in pipeline.get("stages", [])]
    state: list[dict[str, Any]] | None = None
    with aws_errors(f"reading the state of pipeline {name}"):
        try:
            raw = _no_retries(aws, "codepipeline").get_pipeline_state(name=name)
            state = [{"stage": s["stageName"],
                      "status": (s.get("latestExecution") or {}).get("status", "-")}
                     for s in raw.get("stageStates", [])]
        except Exception as exc:
            if not _unsupported(exc):
                raise
    with aws_errors(f"listing executions of pipeline {name}"):
        summaries = codepipeline.list_pipeline_executions(
            pipelineName=name, maxResults=executions).get("pipelineExecutionSummaries", [])
    return {"name": pipeline["name"], "version": pipeline.get("version"),
            "roleArn": pipeline.get("roleArn"),
            "artifactStore": pipeline.get("artifactStore", {}).get("location"),
            "stages": stages, "state": state,
            "executions": [{"id": e.get("pipelineExecutionId"), "status": e.get("status"),
                            "started": e.get("startTime"), "updated": e.get("lastUpdateTime")}
                           for e in summaries[:executions]]}


def _no_retries(aws: Aws, service: str) -> Any:
    """A client that tries once: an unimplemented operation (moto answers HTTP 500) must not
    be retried eight times."""
    from botocore.config import Config  # noqa: PLC0415

    return aws.session.client(service, region_name=aws.region,
                              endpoint_url=aws.options.endpoint_url,
                              config=Config(retries={"total_max_attempts": 1},
                                            user_agent_extra="pifleet-fleetctl"))


def _unsupported(exc: Exception) -> bool:
    code = _code(exc)
    text = str(exc)
    return (isinstance(exc, NotImplementedError) or code in (
        "NotImplemented", "InvalidAction", "UnknownOperationException", "500")
        or "not yet implemented" in text.lower() or "NotImplemented" in text)


def delete_pipeline(aws: Aws, names: FleetNames, name: str, *, keep_role: bool = False,
                    ) -> list[Change]:
    """Delete the pipeline and (unless ``keep_role``) the service role fleetctl made for it.
    The artifact bucket stays: other pipelines and pushes share it."""
    codepipeline = aws.client("codepipeline")
    pipeline = _existing_pipeline(aws, name, f"deleting pipeline {name}")
    with aws_errors(f"deleting pipeline {name}"):
        codepipeline.delete_pipeline(name=name)
    changes = [Change("pipeline", name, "delete")]
    role = str(pipeline.get("roleArn", "")).rsplit("/", 1)[-1]
    if keep_role or role != role_name(name):
        return changes
    iam = aws.client("iam")
    with aws_errors(f"deleting the pipeline role {role}"):
        try:
            for policy in iam.list_role_policies(RoleName=role).get("PolicyNames", []):
                iam.delete_role_policy(RoleName=role, PolicyName=policy)
            iam.delete_role(RoleName=role)
            changes.append(Change("role", role, "delete"))
        except iam.exceptions.NoSuchEntityException:
            pass
    return changes
