"""Deployments driven end to end: boto3 for CodeDeploy, scripted hosts on the command plane."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from typing import Any

import pytest
from botocore.exceptions import ClientError

from fleet.sandbox.scripted_host import ScriptedHost, commands_client

from .conftest import Fleet

ROLE = "arn:aws:iam::123456789012:role/CodeDeployServiceRole"
REVISION = {"revisionType": "S3", "s3Location": {"bucket": "artifacts", "key": "aqi/v1.zip",
                                                 "bundleType": "zip", "eTag": "abc"}}
REVISION_2 = {"revisionType": "S3", "s3Location": {"bucket": "artifacts", "key": "aqi/v2.zip",
                                                   "bundleType": "zip"}}
IN_PLACE = ["ApplicationStop", "DownloadBundle", "BeforeInstall", "Install", "AfterInstall",
            "ApplicationStart", "ValidateService"]


def setup_group(fleet: Fleet, *, config: str = "CodeDeployDefault.OneAtATime",
                rollback: bool = False, **kwargs: Any) -> Any:
    cd = fleet.client("codedeploy")
    cd.create_application(applicationName="aqi", computePlatform="Server")
    extra: dict[str, Any] = {"onPremisesInstanceTagFilters": [
        {"Key": "ring", "Value": "prod", "Type": "KEY_AND_VALUE"}]}
    extra.update(kwargs)
    if rollback:
        extra["autoRollbackConfiguration"] = {"enabled": True, "events": ["DEPLOYMENT_FAILURE"]}
    cd.create_deployment_group(applicationName="aqi", deploymentGroupName="pis",
                               serviceRoleArn=ROLE, deploymentConfigName=config, **extra)
    return cd


def run(fleet: Fleet, hosts: list[ScriptedHost], deployment_id: str,
        timeout_s: float = 30) -> dict[str, Any]:
    """Let the hosts poll until the deployment ends; record how many ran at once."""
    cd = fleet.client("codedeploy")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for host in hosts:
            host.step()
        info = cd.get_deployment(deploymentId=deployment_id)["deploymentInfo"]
        if info["status"] not in ("Created", "Queued", "InProgress"):
            return dict(info)
        time.sleep(0.02)  # pacing the pollers like agents, not synchronising
    raise AssertionError(f"deployment {deployment_id} did not finish in {timeout_s} s")


def targets(cd: Any, deployment_id: str) -> dict[str, Any]:
    ids = cd.list_deployment_targets(deploymentId=deployment_id)["targetIds"]
    found = cd.batch_get_deployment_targets(deploymentId=deployment_id, targetIds=ids)
    return {t["instanceTarget"]["targetId"]: t["instanceTarget"]
            for t in found["deploymentTargets"]}


def max_concurrent(cd: Any, deployment_id: str) -> int:
    """Targets whose event windows overlapped, from the recorded start/end times."""
    spans = []
    for target in targets(cd, deployment_id).values():
        times = [(e["startTime"], e["endTime"]) for e in target["lifecycleEvents"]
                 if "startTime" in e and "endTime" in e]
        if times:
            spans.append((min(s for s, _ in times), max(e for _, e in times)))
    return max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)


def three_hosts(fleet: Fleet, **behaviour: str) -> list[ScriptedHost]:
    return [fleet.host(f"pi-{i}", {"ring": "prod"}, **(behaviour if i == 1 else {}))
            for i in range(3)]


@pytest.mark.parametrize(("config", "concurrent"), [
    ("CodeDeployDefault.OneAtATime", 1),
    ("CodeDeployDefault.HalfAtATime", 1),  # 3 hosts: at most floor(3/2) = 1 at a time
    ("CodeDeployDefault.AllAtOnce", 3),
])
def test_deploy_to_three_hosts(fleet: Fleet, config: str, concurrent: int) -> None:
    cd = setup_group(fleet, config=config)
    hosts = three_hosts(fleet)
    fleet.host("pi-other", {"ring": "dev"})  # not selected by the group
    deployment = cd.create_deployment(applicationName="aqi", deploymentGroupName="pis",
                                      revision=REVISION)["deploymentId"]
    info = run(fleet, hosts, deployment)
    assert info["status"] == "Succeeded"
    assert info["deploymentOverview"]["Succeeded"] == 3
    assert all(h.seen == IN_PLACE for h in hosts)
    found = targets(cd, deployment)
    assert sorted(found) == ["pi-0", "pi-1", "pi-2"]
    assert all(t["status"] == "Succeeded" for t in found.values())
    assert max_concurrent(cd, deployment) == concurrent
    group = cd.get_deployment_group(applicationName="aqi", deploymentGroupName="pis")
    assert group["deploymentGroupInfo"]["lastSuccessfulDeployment"]["deploymentId"] == deployment


def test_spec_is_signed_and_describes_the_deployment(fleet: Fleet, tmp_path: Any) -> None:
    cd = setup_group(fleet)
    host = fleet.host("pi-0", {"ring": "prod"})
    deployment = cd.create_deployment(applicationName="aqi", deploymentGroupName="pis",
                                      revision=REVISION, fileExistsBehavior="OVERWRITE",
                                      )["deploymentId"]
    assert host.step() == "ApplicationStop"
    spec = host.specs[0]
    assert spec["DeploymentSystem"] == "CodeDeploy"
    envelope = spec["DeploymentSpecification"]["GenericEnvelope"]
    assert envelope["Format"] == "PKCS7/JSON"
    (tmp_path / "spec.pem").write_text(envelope["Payload"])
    out = subprocess.run(["openssl", "smime", "-verify", "-noverify", "-binary", "-inform",
                          "PEM", "-in", str(tmp_path / "spec.pem")],
                         capture_output=True, check=True)
    payload = json.loads(out.stdout)
    assert payload["DeploymentId"] == deployment
    assert payload["ApplicationName"] == "aqi" and payload["DeploymentGroupName"] == "pis"
    assert payload["AgentActionOverrides"]["AgentOverrides"]["FileExistsBehavior"] == "OVERWRITE"
    assert payload["Revision"] == {"RevisionType": "S3", "S3Revision": {
        "Bucket": "artifacts", "Key": "aqi/v1.zip", "BundleType": "zip", "ETag": "abc"}}
    group_id = cd.get_deployment_group(applicationName="aqi", deploymentGroupName="pis")[
        "deploymentGroupInfo"]["deploymentGroupId"]
    assert payload["DeploymentGroupId"] == group_id


def test_failing_validate_service_stops_and_rolls_back(fleet: Fleet) -> None:
    cd = setup_group(fleet, rollback=True)
    hosts = three_hosts(fleet)
    good = cd.create_deployment(applicationName="aqi", deploymentGroupName="pis",
                                revision=REVISION)["deploymentId"]
    assert run(fleet, hosts, good)["status"] == "Succeeded"
    hosts[0].behaviour["ValidateService"] = "fail"
    bad = cd.create_deployment(applicationName="aqi", deploymentGroupName="pis",
                               revision=REVISION_2)["deploymentId"]
    info = run(fleet, hosts, bad)
    assert info["status"] == "Failed"
    assert info["errorInformation"]["code"] == "HEALTH_CONSTRAINTS"
    found = targets(cd, bad)
    assert found["pi-0"]["status"] == "Failed"
    # OneAtATime: the first failure stops the deployment; the others never start.
    assert found["pi-1"]["status"] == found["pi-2"]["status"] == "Skipped"
    events = {e["lifecycleEventName"]: e for e in found["pi-0"]["lifecycleEvents"]}
    assert events["ValidateService"]["status"] == "Failed"
    assert events["ValidateService"]["diagnostics"]["errorCode"] == "ScriptFailed"
    assert events["ValidateService"]["diagnostics"]["logTail"] == "[stderr]scripted failure\n"
    rollback_id = info["rollbackInfo"]["rollbackDeploymentId"]
    rollback = run(fleet, hosts, rollback_id)
    assert rollback["creator"] == "codeDeployRollback"
    assert rollback["revision"] == REVISION  # the last good revision
    assert rollback["rollbackInfo"]["rollbackTriggeringDeploymentId"] == bad
    assert rollback["status"] == "Failed"  # pi-0 still fails ValidateService
    assert "rollbackDeploymentId" not in rollback.get("rollbackInfo", {})  # no rollback loops


def test_last_instance_may_fail_with_one_at_a_time(fleet: Fleet) -> None:
    cd = setup_group(fleet)
    hosts = [fleet.host(f"pi-{i}", {"ring": "prod"}) for i in range(3)]
    hosts[2].behaviour["AfterInstall"] = "fail"
    deployment = cd.create_deployment(applicationName="aqi", deploymentGroupName="pis",
                                      revision=REVISION)["deploymentId"]
    assert run(fleet, hosts, deployment)["status"] == "Succeeded"


def test_half_at_a_time_tolerates_one_failure_of_three(fleet: Fleet) -> None:
    cd = setup_group(fleet, config="CodeDeployDefault.HalfAtATime")
    hosts = three_hosts(fleet, BeforeInstall="fail")
    deployment = cd.create_deployment(applicationName="aqi", deploymentGroupName="pis",
                                      revision=REVISION)["deploymentId"]
    info = run(fleet, hosts, deployment)
    assert info["status"] == "Succeeded"
    assert info["deploymentOverview"] == {"Pending": 0, "InProgress": 0, "Succeeded": 2,
                                          "Failed": 1, "Skipped": 0, "Ready": 0}


def test_a_host_that_never_answers_times_out(fleet: Fleet) -> None:
    cd = setup_group(fleet, config="CodeDeployDefault.AllAtOnce")
    hosts = [fleet.host("pi-0", {"ring": "prod"}, Install="hang")]
    fleet.host("pi-1", {"ring": "prod"})  # registered, never polls: its event never starts
    deployment = cd.create_deployment(applicationName="aqi", deploymentGroupName="pis",
                                      revision=REVISION)["deploymentId"]
    info = run(fleet, hosts, deployment)
    assert info["status"] == "Failed"
    assert info["errorInformation"]["code"] == "TIMEOUT"
    found = targets(cd, deployment)
    events = {e["lifecycleEventName"]: e for e in found["pi-0"]["lifecycleEvents"]}
    assert events["Install"]["status"] == "Failed"
    assert "did not finish within 2 seconds" in events["Install"]["diagnostics"]["message"]
    never = {e["lifecycleEventName"]: e for e in found["pi-1"]["lifecycleEvents"]}
    assert "did not start within 2 seconds" in never["ApplicationStop"]["diagnostics"]["message"]


def test_stop_deployment(fleet: Fleet) -> None:
    cd = setup_group(fleet)
    hosts = three_hosts(fleet)
    deployment = cd.create_deployment(applicationName="aqi", deploymentGroupName="pis",
                                      revision=REVISION)["deploymentId"]
    hosts[0].step()
    hosts[0].step()
    stop = cd.stop_deployment(deploymentId=deployment)
    assert stop["status"] == "Succeeded"  # the pending command was withdrawn at once
    info = cd.get_deployment(deploymentId=deployment)["deploymentInfo"]
    assert info["status"] == "Stopped" and info["errorInformation"]["code"] == "MANUAL_STOP"
    with pytest.raises(cd.exceptions.DeploymentAlreadyCompletedException):
        cd.stop_deployment(deploymentId=deployment)


def test_one_active_deployment_per_group_and_no_instances(fleet: Fleet) -> None:
    cd = setup_group(fleet)
    empty = cd.create_deployment(applicationName="aqi", deploymentGroupName="pis",
                                 revision=REVISION)["deploymentId"]
    info = cd.get_deployment(deploymentId=empty)["deploymentInfo"]
    assert info["status"] == "Failed" and info["errorInformation"]["code"] == "NO_INSTANCES"
    fleet.host("pi-0", {"ring": "prod"})
    cd.create_deployment(applicationName="aqi", deploymentGroupName="pis", revision=REVISION)
    with pytest.raises(cd.exceptions.DeploymentLimitExceededException):
        cd.create_deployment(applicationName="aqi", deploymentGroupName="pis",
                             revision=REVISION)


def test_tag_set_is_and_across_groups(fleet: Fleet) -> None:
    cd = fleet.client("codedeploy")
    cd.create_application(applicationName="aqi")
    cd.create_deployment_group(
        applicationName="aqi", deploymentGroupName="pis", serviceRoleArn=ROLE,
        onPremisesTagSet={"onPremisesTagSetList": [
            [{"Key": "ring", "Value": "prod", "Type": "KEY_AND_VALUE"},
             {"Key": "ring", "Value": "canary", "Type": "KEY_AND_VALUE"}],
            [{"Key": "sensor", "Type": "KEY_ONLY"}]]})
    chosen = [fleet.host("pi-a", {"ring": "prod", "sensor": "sds011"}),
              fleet.host("pi-b", {"ring": "canary", "sensor": "dht11"})]
    fleet.host("pi-c", {"ring": "prod"})
    fleet.host("pi-d", {"sensor": "dht11"})
    deployment = cd.create_deployment(applicationName="aqi", deploymentGroupName="pis",
                                      revision=REVISION)["deploymentId"]
    assert sorted(targets(cd, deployment)) == ["pi-a", "pi-b"]
    assert run(fleet, chosen, deployment)["status"] == "Succeeded"


def test_revisions_and_configs(fleet: Fleet) -> None:
    cd = setup_group(fleet)
    cd.register_application_revision(applicationName="aqi", revision=REVISION,
                                     description="first")
    revs = cd.list_application_revisions(applicationName="aqi")["revisions"]
    assert revs == [REVISION]
    got = cd.get_application_revision(applicationName="aqi", revision=REVISION)
    assert got["revisionInfo"]["description"] == "first"
    cd.create_deployment_config(deploymentConfigName="two-healthy",
                                minimumHealthyHosts={"type": "HOST_COUNT", "value": 2})
    config = cd.get_deployment_config(deploymentConfigName="two-healthy")
    assert config["deploymentConfigInfo"]["minimumHealthyHosts"] == {"type": "HOST_COUNT",
                                                                     "value": 2}
    with pytest.raises(cd.exceptions.InvalidDeploymentConfigNameException):
        cd.create_deployment_config(deploymentConfigName="CodeDeployDefault.Mine",
                                    minimumHealthyHosts={"type": "HOST_COUNT", "value": 1})
    cd.update_deployment_group(applicationName="aqi", currentDeploymentGroupName="pis",
                               deploymentConfigName="two-healthy")
    group = cd.get_deployment_group(applicationName="aqi", deploymentGroupName="pis")
    assert group["deploymentGroupInfo"]["deploymentConfigName"] == "two-healthy"
    hosts = [fleet.host(f"pi-{i}", {"ring": "prod"}) for i in range(4)]
    deployment = cd.create_deployment(applicationName="aqi", deploymentGroupName="pis",
                                      revision=REVISION)["deploymentId"]
    assert run(fleet, hosts, deployment)["status"] == "Succeeded"
    assert max_concurrent(cd, deployment) == 2  # 4 hosts, 2 must stay healthy
    used = cd.get_application_revision(applicationName="aqi", revision=REVISION)
    assert used["revisionInfo"]["deploymentGroups"] == ["pis"]


def test_command_plane_refuses_other_hosts_and_bad_signatures(fleet: Fleet) -> None:
    setup_group(fleet)
    pi0 = fleet.host("pi-0", {"ring": "prod"})
    pi1 = fleet.host("pi-1", {"ring": "prod"})
    with pytest.raises(ClientError) as exc:
        pi1.client.poll_host_command(HostIdentifier=pi0.host_identifier)
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"
    with pytest.raises(ClientError) as exc:
        pi0.client.poll_host_command(HostIdentifier="arn:aws:iam::123456789012:user/nobody")
    assert exc.value.response["Error"]["Code"] == "ClientException"
    forged = commands_client(fleet.endpoint.url, fleet.endpoint.region, "AKIAFORGED",
                             "wrong-secret")
    with pytest.raises(ClientError) as exc:
        forged.poll_host_command(HostIdentifier=pi0.host_identifier)
    assert exc.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_injected_faults(fleet: Fleet) -> None:
    cd = setup_group(fleet)
    hosts = [fleet.host("pi-0", {"ring": "prod"})]

    def fault(spec: dict[str, Any]) -> None:
        request = urllib.request.Request(  # noqa: S310  (loopback http only)
            f"{fleet.endpoint.url}/_pifleet/faults", data=json.dumps(spec).encode(),
            method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310  (loopback)
            assert response.status == 200

    fault({"kind": "fail_event", "instance": "pi-0", "event": "AfterInstall"})
    deployment = cd.create_deployment(applicationName="aqi", deploymentGroupName="pis",
                                      revision=REVISION)["deploymentId"]
    assert run(fleet, hosts, deployment)["status"] == "Failed"
    events = {e["lifecycleEventName"]: e
              for e in targets(cd, deployment)["pi-0"]["lifecycleEvents"]}
    assert "Injected failure" in events["AfterInstall"]["diagnostics"]["message"]
    assert "AfterInstall" not in hosts[0].seen  # the host never received it
    fault({"kind": "throttle", "seconds": 30})
    with pytest.raises(ClientError) as exc:
        cd.list_applications()
    assert exc.value.response["Error"]["Code"] == "ThrottlingException"
    urllib.request.urlopen(urllib.request.Request(  # noqa: S310  (loopback)
        f"{fleet.endpoint.url}/_pifleet/faults", method="DELETE"), timeout=5).close()
    assert cd.list_applications()["applications"] == ["aqi"]
    fault({"kind": "server_error", "seconds": 30, "status": 503, "services": ["codedeploy"]})
    with pytest.raises(ClientError) as exc:
        cd.list_applications()
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503


def test_delayed_and_dropped_commands(fleet: Fleet) -> None:
    cd = setup_group(fleet)
    host = fleet.host("pi-0", {"ring": "prod"})
    fleet.sandbox.state.faults.apply({"kind": "delay_commands", "seconds": 0.5})
    deployment = cd.create_deployment(applicationName="aqi", deploymentGroupName="pis",
                                      revision=REVISION)["deploymentId"]
    assert host.step() is None  # not visible yet
    deadline = time.monotonic() + 10
    while host.step() is None:
        assert time.monotonic() < deadline, "the delayed command never arrived"
        time.sleep(0.05)
    assert host.seen == ["ApplicationStop"]
    fleet.sandbox.state.faults.apply({"kind": "delay_commands", "seconds": 0})
    fleet.sandbox.state.faults.apply({"kind": "drop_commands", "count": 1})
    assert host.step() is None  # DownloadBundle was handed out and lost on the way
    info = run(fleet, [host], deployment)
    assert info["status"] == "Failed"
    events = {e["lifecycleEventName"]: e
              for e in targets(cd, deployment)["pi-0"]["lifecycleEvents"]}
    assert events["DownloadBundle"]["status"] == "Failed"
    assert "did not finish within" in events["DownloadBundle"]["diagnostics"]["message"]
