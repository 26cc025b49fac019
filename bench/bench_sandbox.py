"""100 scripted hosts polling the sandbox at 1 s while a deployment reaches all of them.

Run: ``python -m bench.bench_sandbox [--hosts 100] [--seconds 30] [--json]``. The sandbox runs
as its own process (``fleetctl sandbox up``), the hosts as threads in 4 worker processes, each a
real botocore client on our CodeDeployCommand model, signing every request. Reported: requests
per second the sandbox served, PollHostCommand latency (median, p99, max) as the hosts saw it,
and how long the AllAtOnce deployment of 7 events took to reach every host.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3

from .timing import Figure

TITLE = "Sandbox control plane: 100 polling hosts"
ISSUE = 4
RUNS = {"full": [["--seconds", "30"]], "quick": [["--hosts", "20", "--seconds", "15"]]}

FLEETCTL = str(Path(sys.executable).parent / "fleetctl")
WORKERS = 4
ROLE = "arn:aws:iam::123456789012:role/CodeDeployServiceRole"


def _client(info: dict[str, Any], service: str) -> Any:
    return boto3.client(service, endpoint_url=info["endpoint_url"], region_name=info["region"],
                        aws_access_key_id=info["aws_access_key_id"],
                        aws_secret_access_key=info["aws_secret_access_key"])


def register(info: dict[str, Any], count: int) -> list[dict[str, str]]:
    iam, cd = _client(info, "iam"), _client(info, "codedeploy")
    hosts = []
    for i in range(count):
        name = f"pi-{i:03d}"
        arn = iam.create_user(UserName=name)["User"]["Arn"]
        key = iam.create_access_key(UserName=name)["AccessKey"]
        cd.register_on_premises_instance(instanceName=name, iamUserArn=arn)
        hosts.append({"name": name, "arn": arn, "key": key["AccessKeyId"],
                      "secret": key["SecretAccessKey"]})
    cd.add_tags_to_on_premises_instances(instanceNames=[h["name"] for h in hosts[:100]],
                                         tags=[{"Key": "ring", "Value": "bench"}])
    for start in range(100, count, 100):
        cd.add_tags_to_on_premises_instances(
            instanceNames=[h["name"] for h in hosts[start:start + 100]],
            tags=[{"Key": "ring", "Value": "bench"}])
    cd.create_application(applicationName="bench")
    cd.create_deployment_group(
        applicationName="bench", deploymentGroupName="all", serviceRoleArn=ROLE,
        deploymentConfigName="CodeDeployDefault.AllAtOnce",
        onPremisesInstanceTagFilters=[{"Key": "ring", "Value": "bench",
                                       "Type": "KEY_AND_VALUE"}])
    return hosts


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a worker process: one thread per host, polling every second until told."""
    from fleet.sandbox.scripted_host import ScriptedHost, commands_client  # noqa: PLC0415

    info, deadline = spec["info"], spec["deadline"]
    latencies: list[float] = []
    requests = [0]
    errors: list[str] = []
    lock = threading.Lock()

    def host_loop(host: dict[str, str], offset: float) -> None:
        client = commands_client(info["endpoint_url"], info["region"], host["key"],
                                 host["secret"])
        scripted = ScriptedHost(client, host["arn"])
        original = client.poll_host_command

        def timed_poll(**kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(**kwargs)
            finally:
                with lock:
                    latencies.append(time.perf_counter() - start)

        scripted.client.poll_host_command = timed_poll
        next_poll = time.monotonic() + offset
        while time.monotonic() < deadline:
            time.sleep(max(0.0, next_poll - time.monotonic()))
            next_poll += 1.0  # the agent's 1 s between polls
            try:
                name = scripted.step()
            except Exception as exc:  # noqa: BLE001  (counted and reported, not fatal)
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                requests[0] += 1 if name is None else 4

    threads = [threading.Thread(target=host_loop, args=(h, i / len(spec["hosts"])))
               for i, h in enumerate(spec["hosts"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"latencies": latencies, "requests": requests[0], "errors": errors,
            "cpu_s": usage.ru_utime + usage.ru_stime}


def run(count: int, seconds: float) -> dict[str, Any]:
    env = {**os.environ, "XDG_RUNTIME_DIR": f"/tmp/pifleet-bench-{os.getpid()}"}  # noqa: S108
    with subprocess.Popen([FLEETCTL, "sandbox", "up", "--port", "0", "--output", "json"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env=env) as sandbox:
        try:
            assert sandbox.stdout is not None
            info = json.loads(sandbox.stdout.readline())
            return _measure(info, count, seconds, sandbox.pid)
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(info: dict[str, Any], count: int, seconds: float, pid: int) -> dict[str, Any]:
    hosts = register(info, count)
    cpu_before = _cpu_seconds(pid)
    cd = _client(info, "codedeploy")
    start = time.monotonic()
    deadline = time.time() + seconds
    workers = [subprocess.Popen(
        [sys.executable, "-m", "bench.bench_sandbox", "--worker"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
        for _ in range(WORKERS)]
    for i, process in enumerate(workers):
        assert process.stdin is not None
        process.stdin.write(json.dumps({"info": info, "deadline": time.monotonic() + seconds,
                                        "hosts": hosts[i::WORKERS]}))
        process.stdin.close()
    time.sleep(2)  # let every host poll at least once before the deployment exists
    deployment = cd.create_deployment(
        applicationName="bench", deploymentGroupName="all",
        revision={"revisionType": "S3", "s3Location": {"bucket": "b", "key": "k.zip",
                                                       "bundleType": "zip"}})["deploymentId"]
    created = time.monotonic()
    finished = None
    while time.time() < deadline:
        status = cd.get_deployment(deploymentId=deployment)["deploymentInfo"]["status"]
        if status not in ("Created", "InProgress") and finished is None:
            finished = time.monotonic() - created
        time.sleep(0.5)
    results = []
    for process in workers:
        assert process.stdout is not None
        results.append(json.loads(process.stdout.read()))
        process.wait()
    elapsed = time.monotonic() - start
    server_cpu = _cpu_seconds(pid) - cpu_before
    latencies = sorted(x for r in results for x in r["latencies"])
    requests = sum(r["requests"] for r in results)
    errors = [e for r in results for e in r["errors"]]
    return {
        "hosts": count, "seconds": round(elapsed, 1), "requests": requests,
        "requests_per_s": requests / elapsed,
        "poll_median_ms": statistics.median(latencies) * 1000,
        "poll_p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "poll_max_ms": latencies[-1] * 1000,
        "sandbox_cpu_ms_per_request": server_cpu / requests * 1000,
        "sandbox_cpu_share": server_cpu / elapsed,
        "clients_cpu_s": sum(r["cpu_s"] for r in results),
        "deployment_status": status, "deployment_s": finished, "errors": len(errors),
        "first_errors": errors[:3],
    }


def figures(result: dict[str, Any], argv: list[str]) -> list[Figure]:
    deployment = result["deployment_s"]
    return [
        Figure(f"requests served, {result['hosts']} hosts polling every 1 s",
               f"{result['requests']:,} in {result['seconds']} s "
               f"({result['requests_per_s']:.0f}/s)", "report requests/s"),
        Figure("PollHostCommand latency, median / p99 / max",
               f"{result['poll_median_ms']:.1f} / {result['poll_p99_ms']:.1f} / "
               f"{result['poll_max_ms']:,.0f} ms", "report p99"),
        Figure("sandbox CPU per request",
               f"{result['sandbox_cpu_ms_per_request']:.2f} ms "
               f"({result['sandbox_cpu_share']:.0%} of a core)"),
        Figure("client-side errors", str(result["errors"]), "none", result["errors"] == 0),
        Figure(f"AllAtOnce deployment of 7 events to all {result['hosts']}",
               f"{result['deployment_status']} in "
               + ("(not finished)" if deployment is None else f"{deployment:.1f} s"),
               "Succeeded", result["deployment_status"] == "Succeeded"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.load(sys.stdin))))
        return 0
    result = run(args.hosts, args.seconds)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"  {result['hosts']} hosts polling every 1 s for {result['seconds']} s: "
          f"{result['requests']} requests, {result['requests_per_s']:.0f} requests/s served")
    print(f"  PollHostCommand latency: median {result['poll_median_ms']:.1f} ms, "
          f"p99 {result['poll_p99_ms']:.1f} ms, max {result['poll_max_ms']:.1f} ms")
    print(f"  sandbox CPU per request: {result['sandbox_cpu_ms_per_request']:.2f} ms "
          f"({result['sandbox_cpu_share']:.0%} of one core); the 100 clients used "
          f"{result['clients_cpu_s']:.0f} CPU s")
    print(f"  client-side errors: {result['errors']} {result['first_errors']}")
    print(f"  AllAtOnce deployment to every host: {result['deployment_status']} in "
          f"{result['deployment_s'] or float('nan'):.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
