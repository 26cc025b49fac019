"""API calls fleetctl spends reading a 1,000-device deployment.

Run: ``python -m bench.bench_status [--devices 1000] [--json]``. An in-process strict sandbox
gets ``--devices`` registered on-prem instances and one deployment to all of them; nobody
answers, so the bench moves targets along by editing the sandbox state directly (as an agent's
acknowledgements would). Counted: requests the sandbox served for

- ``status``: one ``deployment_status`` (GetDeployment + ListDeploymentTargets pages +
  BatchGetDeploymentTargets by 25);
- ``naive_refresh``: what re-reading every target on each watch refresh would cost;
- a watch loop (``DeploymentWatcher``) once half the devices are done: ``catch_up`` (the first
  refresh after half finished at once) and ``steady`` (the next refresh, one more device done),
  for AllAtOnce (everything running) and OneAtATime (one running, the rest pending).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from fleet.aws import Aws, AwsOptions
from fleet.deploy import DeploymentWatcher, deployment_status
from fleet.sandbox.server import Sandbox

from .timing import Figure

TITLE = "fleetctl: deployment status"
ISSUE = 7
RUNS = {"full": [["--devices", "1000"]], "quick": [["--devices", "100"]]}

ROLE = "arn:aws:iam::123456789012:role/CodeDeployServiceRole"
REVISION = {"revisionType": "S3", "s3Location": {"bucket": "artifacts", "key": "aqi/v1.zip",
                                                 "bundleType": "zip"}}


def register(cd: Any, devices: int) -> None:
    for start in range(0, devices, 25):
        names = [f"pi-{i:04d}" for i in range(start, min(devices, start + 25))]
        for name in names:
            cd.register_on_premises_instance(
                instanceName=name, iamUserArn=f"arn:aws:iam::123456789012:user/{name}")
        cd.add_tags_to_on_premises_instances(instanceNames=names,
                                             tags=[{"Key": "ring", "Value": "prod"}])


def finish(sandbox: Sandbox, deployment_id: str, names: list[str]) -> None:
    """Mark these targets Succeeded with every event done, as their agents would have."""
    state = sandbox.state
    with state.lock:
        deployment = state.deployments[deployment_id]
        now = state.clock()
        for name in names:
            target = deployment.targets[name]
            for event in target.events:
                event.status = "Succeeded"
                event.start = event.start or now
                event.end = now
            target.status, target.updated, target.command = "Succeeded", now, None


def scenario(sandbox: Sandbox, aws: Aws, devices: int, config: str) -> dict[str, int]:
    sandbox.app.reset()
    cd = aws.client("codedeploy")
    cd.create_application(applicationName="aqi", computePlatform="Server")
    cd.create_deployment_group(
        applicationName="aqi", deploymentGroupName="pis", serviceRoleArn=ROLE,
        deploymentConfigName=config,
        onPremisesInstanceTagFilters=[{"Key": "ring", "Value": "prod", "Type": "KEY_AND_VALUE"}])
    register(cd, devices)
    deployment_id = cd.create_deployment(applicationName="aqi", deploymentGroupName="pis",
                                         revision=REVISION)["deploymentId"]

    def calls(action: Any) -> int:
        before = sandbox.app.requests
        action()
        return sandbox.app.requests - before

    status_calls = calls(lambda: deployment_status(aws, deployment_id))
    watcher = DeploymentWatcher(aws, deployment_id)
    first = calls(watcher.refresh)
    names = sorted(sandbox.state.deployments[deployment_id].targets)
    half = devices // 2
    # OneAtATime: the one running target finishes first; keep one running after the half.
    finish(sandbox, deployment_id, names[:half])
    catch_up = calls(watcher.refresh)
    finish(sandbox, deployment_id, names[half:half + 1])
    steady = calls(watcher.refresh)
    return {"status": status_calls, "first_refresh": first, "catch_up": catch_up,
            "steady": steady, "naive_refresh": status_calls}


def figures(result: dict[str, Any], argv: list[str]) -> list[Figure]:
    devices = result["devices"]
    rows = []
    for config in ("AllAtOnce", "OneAtATime"):
        r = result[config]
        # "About 40" for 1,000 targets: 1 + 10 list pages + 40 batches of 25 is the floor.
        budget = 1 + -(-devices // 100) + -(-devices // 25)
        rows.append(Figure(f"one fleetctl status, {devices:,} targets, {config}",
                           f"{r['status']} calls", f"about 40 (not {devices:,})",
                           r["status"] <= budget, r["status"] / devices,
                           "one call per target"))
        rows.append(Figure(f"--wait refresh once half are done / the refresh after, {config}",
                           f"{r['catch_up']} / {r['steady']} calls"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    started = time.perf_counter()
    results: dict[str, Any] = {"devices": args.devices}
    with Sandbox(strict=True) as sandbox:
        aws = Aws(AwsOptions(region="us-east-1", endpoint_url=sandbox.endpoint.url))
        for config in ("CodeDeployDefault.AllAtOnce", "CodeDeployDefault.OneAtATime"):
            results[config.split(".")[1]] = scenario(sandbox, aws, args.devices, config)
    results["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{args.devices} devices, one deployment: calls per read")
        for config in ("AllAtOnce", "OneAtATime"):
            r = results[config]
            print(f"  {config:10}  status {r['status']:3}  watch: first {r['first_refresh']:3}"
                  f"  half done (catch-up) {r['catch_up']:3}  next refresh {r['steady']:3}"
                  f"  (re-reading all: {r['naive_refresh']})")
        print(f"  ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
