"""fleetctl deploy / status / deployments / stop / rollback against the strict sandbox, with
scripted hosts answering like agents from a background thread."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from fleet.aws import Aws
from fleet.deploy import (
    IN_PLACE_EVENTS,
    DeploymentWatcher,
    deployment_status,
    group_selects_a_device,
    s3_revision,
)
from fleet.errors import FleetError, NotFound
from fleet.sandbox.scripted_host import ScriptedHost, register_host
from fleet.sandbox.server import Sandbox

from .conftest import Fleetctl

pytestmark = pytest.mark.integration

APP = "pifleet"  # the default fleet's application
ROLE = "arn:aws:iam::123456789012:role/pifleet-codedeploy"
BUCKET = "artifacts"
PROD = [{"Key": "ring", "Value": "prod", "Type": "KEY_AND_VALUE"}]


def setup_group(aws: Aws, *, group: str = "prod", rollback: bool = False,
                **selection: Any) -> Any:
    cd = aws.client("codedeploy")
    cd.create_application(applicationName=APP, computePlatform="Server")
    extra: dict[str, Any] = selection or {"onPremisesInstanceTagFilters": PROD}
    if rollback:
        extra["autoRollbackConfiguration"] = {"enabled": True, "events": ["DEPLOYMENT_FAILURE"]}
    cd.create_deployment_group(applicationName=APP, deploymentGroupName=group,
                               serviceRoleArn=ROLE,
                               deploymentConfigName="CodeDeployDefault.AllAtOnce", **extra)
    return cd


def put_bundle(aws: Aws, key: str = "aqi/v1.zip") -> str:
    s3 = aws.client("s3")
    if not s3.list_buckets().get("Buckets"):
        s3.create_bucket(Bucket=BUCKET)
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as bundle:
        bundle.writestr("appspec.yml", "version: 0.0\nos: linux\n")
    return str(s3.put_object(Bucket=BUCKET, Key=key, Body=data.getvalue())["ETag"]).strip('"')


def host(aws: Aws, sandbox: Sandbox, name: str, tags: dict[str, str] | None = None,
         **behaviour: str) -> ScriptedHost:
    return register_host(sandbox.endpoint, name, tags, **behaviour)


@contextmanager
def agents(hosts: list[ScriptedHost]) -> Iterator[None]:
    """Hosts polling in the background, like agents, while the test runs fleetctl."""
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            for h in hosts:
                h.step()
            time.sleep(0.02)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=10)


def run_to_end(aws: Aws, hosts: list[ScriptedHost], deployment_id: str) -> str:
    cd = aws.client("codedeploy")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for h in hosts:
            h.step()
        status = str(cd.get_deployment(deploymentId=deployment_id)["deploymentInfo"]["status"])
        if status not in ("Created", "Queued", "InProgress"):
            return status
        time.sleep(0.02)
    raise AssertionError(f"{deployment_id} did not end")


def rows(stdout: str, device: str) -> list[str]:
    return [line for line in stdout.splitlines() if f" {device} " in line]


def test_deploy_s3_wait_succeeds_with_every_event_ticked(
        aws: Aws, sandbox: Sandbox, fleetctl: Fleetctl) -> None:
    cd = setup_group(aws)
    etag = put_bundle(aws)
    hosts = [host(aws, sandbox, f"pi-{i}", {"ring": "prod"}) for i in range(2)]
    with agents(hosts):
        out = fleetctl("deploy", f"s3://{BUCKET}/aqi/v1.zip", "--group", "prod", "--wait",
                       "--interval", "0.1", "--description", "v1",
                       "--file-exists-behavior", "overwrite")
    assert out.returncode == 0, out.stdout + out.stderr
    deployment_id = out.stdout.splitlines()[0].strip()
    assert deployment_id.startswith("d-")
    for name in ("pi-0", "pi-1"):
        (row,) = rows(out.stdout, name)
        assert row.count("✓") == len(IN_PLACE_EVENTS), row
        assert "Succeeded" in row
    info = cd.get_deployment(deploymentId=deployment_id)["deploymentInfo"]
    assert info["revision"]["s3Location"] == {"bucket": BUCKET, "key": "aqi/v1.zip",
                                              "bundleType": "zip", "eTag": etag}
    assert info["description"] == "v1" and info["fileExistsBehavior"] == "OVERWRITE"
    assert "Traceback" not in out.stderr


def test_failing_after_install_exits_1_with_diagnostics_and_rollback(
        aws: Aws, sandbox: Sandbox, fleetctl: Fleetctl) -> None:
    cd = setup_group(aws, rollback=True)
    put_bundle(aws)
    put_bundle(aws, "aqi/v2.tgz")
    pi = host(aws, sandbox, "pi-0", {"ring": "prod"})
    good = cd.create_deployment(applicationName=APP, deploymentGroupName="prod", revision={
        "revisionType": "S3", "s3Location": {"bucket": BUCKET, "key": "aqi/v1.zip",
                                             "bundleType": "zip"}})["deploymentId"]
    assert run_to_end(aws, [pi], good) == "Succeeded"
    pi.behaviour["AfterInstall"] = "fail"
    with agents([pi]):
        out = fleetctl("deploy", f"s3://{BUCKET}/aqi/v2.tgz", "--group", "prod", "--wait",
                       "--interval", "0.1")
    assert out.returncode == 1, out.stdout + out.stderr
    (row,) = rows(out.stdout, "pi-0")
    assert row.count("✓") == 4 and row.count("✗") == 1 and "Failed" in row
    assert "scripts/AfterInstall.sh" in out.stdout
    assert "failed with exit code 1" in out.stdout
    assert "[stderr]scripted failure" in out.stdout  # the last log lines
    assert "HEALTH_CONSTRAINTS" in out.stdout
    bad = out.stdout.splitlines()[0].strip()
    rollback_id = cd.get_deployment(deploymentId=bad)["deploymentInfo"]["rollbackInfo"][
        "rollbackDeploymentId"]
    assert f"rolled back by deployment {rollback_id}" in out.stdout
    assert cd.get_deployment(deploymentId=bad)["deploymentInfo"]["revision"]["s3Location"][
        "bundleType"] == "tgz"


def test_group_without_devices_is_refused_before_create_deployment(
        aws: Aws, sandbox: Sandbox, fleetctl: Fleetctl) -> None:
    cd = setup_group(aws)
    put_bundle(aws)
    host(aws, sandbox, "pi-dev", {"ring": "dev"})
    out = fleetctl("deploy", f"s3://{BUCKET}/aqi/v1.zip", "--group", "prod")
    assert out.returncode == 1
    assert "the group selects no registered device: tags ring=prod" in out.stderr
    assert "Traceback" not in out.stderr
    assert cd.list_deployments(applicationName=APP)["deployments"] == []
    missing = fleetctl("deploy", f"s3://{BUCKET}/aqi/v1.zip", "--group", "nope")
    assert missing.returncode == 1 and "no deployment group 'nope'" in missing.stderr


def test_tag_sets_are_and_of_ors(aws: Aws, sandbox: Sandbox) -> None:
    tag_set = {"onPremisesTagSetList": [
        [{"Key": "ring", "Value": "prod", "Type": "KEY_AND_VALUE"},
         {"Key": "ring", "Value": "canary", "Type": "KEY_AND_VALUE"}],
        [{"Key": "sensor", "Type": "KEY_ONLY"}]]}
    setup_group(aws, onPremisesTagSet=tag_set)
    info = aws.client("codedeploy").get_deployment_group(
        applicationName=APP, deploymentGroupName="prod")["deploymentGroupInfo"]
    host(aws, sandbox, "pi-a", {"ring": "prod"})
    host(aws, sandbox, "pi-b", {"sensor": "dht11"})
    assert group_selects_a_device(aws, info) is None
    host(aws, sandbox, "pi-c", {"ring": "canary", "sensor": "sds011"})
    assert group_selects_a_device(aws, info) == "pi-c"


def test_s3_revisions(aws: Aws) -> None:
    etag = put_bundle(aws)
    assert s3_revision(aws, f"s3://{BUCKET}/aqi/v1.zip?etag=given&versionId=v7") == {
        "revisionType": "S3", "s3Location": {"bucket": BUCKET, "key": "aqi/v1.zip",
                                             "bundleType": "zip", "eTag": "given",
                                             "version": "v7"}}
    assert s3_revision(aws, f"s3://{BUCKET}/aqi/v1.zip")["s3Location"]["eTag"] == etag
    with pytest.raises(FleetError, match="bundle type"):
        s3_revision(aws, f"s3://{BUCKET}/aqi/v1.rar")
    with pytest.raises(NotFound, match="does not exist"):
        s3_revision(aws, f"s3://{BUCKET}/aqi/none.zip")


def test_status_json_deployments_and_rollback(
        aws: Aws, sandbox: Sandbox, fleetctl: Fleetctl) -> None:
    cd = setup_group(aws)
    put_bundle(aws)
    put_bundle(aws, "aqi/v2.zip")
    pi = host(aws, sandbox, "pi-0", {"ring": "prod"})
    none = fleetctl("rollback", "--group", "prod")
    assert none.returncode == 1 and "no successful deployment" in none.stderr
    ids = []
    for key in ("aqi/v1.zip", "aqi/v2.zip"):
        ids.append(cd.create_deployment(applicationName=APP, deploymentGroupName="prod",
                                        revision={"revisionType": "S3", "s3Location": {
                                            "bucket": BUCKET, "key": key,
                                            "bundleType": "zip"}})["deploymentId"])
        assert run_to_end(aws, [pi], ids[-1]) == "Succeeded"

    out = fleetctl("--output", "json", "status", ids[0])
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert {"deploymentId", "status", "application", "group", "revision", "overview",
            "error", "rollback", "targets", "createTime", "completeTime"} <= set(status)
    assert status["status"] == "Succeeded" and status["group"] == "prod"
    (target,) = status["targets"]
    assert target["device"] == "pi-0" and target["status"] == "Succeeded"
    assert target["events"] == dict.fromkeys(IN_PLACE_EVENTS, "Succeeded")
    assert target["diagnostic"] is None
    table = fleetctl("status", ids[0])
    assert table.returncode == 0 and rows(table.stdout, "pi-0")[0].count("✓") == 7

    listed = json.loads(fleetctl("--output", "json", "deployments", "--group", "prod").stdout)
    assert [d["deploymentId"] for d in listed] == ids[::-1]
    assert listed[0]["revision"] == f"s3://{BUCKET}/aqi/v2.zip"
    one = json.loads(fleetctl("--output", "json", "deployments", "--limit", "1",
                              "--status", "succeeded").stdout)
    assert [d["deploymentId"] for d in one] == [ids[1]]

    back = fleetctl("rollback", "--group", "prod")
    assert back.returncode == 0, back.stderr
    rollback_id = back.stdout.strip()
    info = cd.get_deployment(deploymentId=rollback_id)["deploymentInfo"]
    assert info["revision"]["s3Location"]["key"] == "aqi/v2.zip"  # the last successful one
    assert ids[1] in info["description"]


def test_stop_and_timeout(aws: Aws, sandbox: Sandbox, fleetctl: Fleetctl) -> None:
    cd = setup_group(aws)
    put_bundle(aws)
    host(aws, sandbox, "pi-0", {"ring": "prod"})  # never polls
    out = fleetctl("deploy", f"s3://{BUCKET}/aqi/v1.zip", "--group", "prod", "--wait",
                   "--timeout", "0.5", "--interval", "0.1")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "gave up waiting" in out.stderr
    deployment_id = out.stdout.splitlines()[0].strip()
    stopped = fleetctl("stop", deployment_id)
    assert stopped.returncode == 0, stopped.stderr
    info = cd.get_deployment(deploymentId=deployment_id)["deploymentInfo"]
    assert info["status"] == "Stopped" and info["errorInformation"]["code"] == "MANUAL_STOP"
    again = fleetctl("stop", deployment_id)
    assert again.returncode == 1 and "already ended" in again.stderr
    assert "Traceback" not in again.stderr
    status = fleetctl("status", deployment_id)
    assert status.returncode == 0 and "MANUAL_STOP" in status.stdout
    from rich.console import Console  # noqa: PLC0415

    from fleet.watch import watch_live  # noqa: PLC0415

    screen = io.StringIO()  # a terminal: the live table path
    final, ended = watch_live(aws, deployment_id, Console(file=screen, force_terminal=True,
                                                          width=200), interval_s=0.1)
    assert ended and final.status == "Stopped"
    assert "pi-0" in screen.getvalue() and "MANUAL_STOP" in screen.getvalue()


def test_status_of_100_targets_takes_a_few_calls(aws: Aws, sandbox: Sandbox) -> None:
    cd = setup_group(aws)
    for start in range(0, 100, 25):
        names = [f"pi-{i:03d}" for i in range(start, start + 25)]
        for name in names:
            cd.register_on_premises_instance(
                instanceName=name, iamUserArn=f"arn:aws:iam::123456789012:user/{name}")
        cd.add_tags_to_on_premises_instances(instanceNames=names,
                                             tags=[{"Key": "ring", "Value": "prod"}])
    deployment_id = cd.create_deployment(
        applicationName=APP, deploymentGroupName="prod",
        revision={"revisionType": "S3", "s3Location": {"bucket": BUCKET, "key": "a.zip",
                                                       "bundleType": "zip"}})["deploymentId"]
    before = sandbox.app.requests
    status = deployment_status(aws, deployment_id)
    calls = sandbox.app.requests - before
    assert len(status.targets) == 100
    assert calls <= 10, calls  # 1 GetDeployment + 1 List + 4 BatchGet
    watcher = DeploymentWatcher(aws, deployment_id)
    watcher.refresh()
    before = sandbox.app.requests
    watcher.refresh()  # nothing moved: the overview says so, no target is re-read
    assert sandbox.app.requests - before <= 1 + 4
