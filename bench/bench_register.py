"""Registering a fleet from an inventory against the sandbox: API calls per device, wall time.

Run: ``python -m bench.bench_register [--devices 1000] [--json]``. A sandbox runs in this
process; ``fleetctl init`` creates the fleet, then ``register_inventory`` registers every device
with an iot-cert identity (thing, certificate, policy, registration, tags, enrollment bundle);
a second run over the same inventory shows what a re-run costs (everything skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from fleet.aws import Aws, AwsOptions
from fleet.names import FleetNames
from fleet.register import DeviceSpec, register_inventory
from fleet.sandbox.server import Sandbox
from fleet.setup import init_fleet

from .timing import Figure

TITLE = "fleetctl: registering a fleet"
ISSUE = 7
RUNS = {"full": [["--devices", "1000"]], "quick": [["--devices", "50"]]}


def counted(aws: Aws, calls: Counter[str]) -> Aws:
    """Count every AWS call the clients make (botocore's before-call event)."""
    for service in ("iot", "iam", "sts", "codedeploy", "s3"):
        aws.client(service).meta.events.register(
            "before-call.*.*", lambda model, **_: calls.update([model.name]))
    return aws


def run(devices: int) -> dict[str, Any]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with Sandbox() as sandbox, tempfile.TemporaryDirectory() as tmp:
        sandbox.app.reset()
        names = FleetNames()
        aws = Aws(AwsOptions(region="us-east-1", endpoint_url=sandbox.endpoint.url))
        init_fleet(aws, names)
        specs = [DeviceSpec(f"pi-{i:04d}", {"ring": "bench"}) for i in range(devices)]
        calls: Counter[str] = Counter()
        counted(aws, calls)
        start = time.perf_counter()
        first = register_inventory(aws, names, specs, directory=Path(tmp) / "bundles")
        first_s = time.perf_counter() - start
        first_calls = sum(calls.values())
        rerun_start = time.perf_counter()
        second = register_inventory(aws, names, specs, directory=Path(tmp) / "bundles2")
        rerun_s = time.perf_counter() - rerun_start
        rerun_calls = sum(calls.values()) - first_calls
    return {"devices": devices, "registered": len(first.registered),
            "failed": len(first.failed), "seconds": first_s,
            "calls": first_calls, "calls_per_device": first_calls / devices,
            "rerun_skipped": len(second.skipped), "rerun_seconds": rerun_s,
            "rerun_calls_per_device": rerun_calls / devices,
            "calls_by_operation": dict(calls.most_common())}


def figures(result: dict[str, Any], argv: list[str]) -> list[Figure]:
    return [
        Figure(f"{result['devices']:,} devices from an inventory",
               f"{result['seconds']:.1f} s, {result['calls']:,} API calls: "
               f"{result['calls_per_device']:.1f} per device",
               "report calls per device"),
        Figure("devices that failed to register", str(result["failed"]), "none",
               result["failed"] == 0),
        Figure("re-running the same inventory",
               f"{result['rerun_skipped']:,} skipped in {result['rerun_seconds']:.1f} s, "
               f"{result['rerun_calls_per_device']:.1f} calls per device"),
        Figure("calls by operation", ", ".join(
            f"{k} {v:,}" for k, v in result["calls_by_operation"].items())),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.devices)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"  {result['registered']} registered ({result['failed']} failed) in "
          f"{result['seconds']:.1f} s: {result['calls']} API calls, "
          f"{result['calls_per_device']:.1f} per device")
    print(f"  re-run: {result['rerun_skipped']} skipped in {result['rerun_seconds']:.1f} s, "
          f"{result['rerun_calls_per_device']:.1f} calls per device")
    print("  calls:", ", ".join(f"{k} {v}" for k, v in result["calls_by_operation"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
