"""pifleet-agent as a daemon: idle memory, memory over many deployments, reaction time, and
network use while idle.

Run: ``python -m bench.bench_agent [--deployments 200] [--idle-seconds 30] [--json]``. A sandbox
runs in this process; the agent is a real ``pifleet-agent run`` process (iam-user identity)
whose traffic to the sandbox goes through a counting TCP relay.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fleet.sandbox.server import Sandbox
from fleet.sandbox.state import Timeouts
from tests.e2e.conftest import World, revision_zip
from tests.support.link import Link
from tests.support.waiting import wait_for

from .timing import Figure, mb

TITLE = "pifleet-agent daemon"
ISSUE = 5
RUNS = {"full": [["--deployments", "200", "--idle-seconds", "60"]],
        "quick": [["--deployments", "15", "--idle-seconds", "10"]]}

HOOKS = ("ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart",
         "ValidateService")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def bare_python_rss_kib() -> int:
    """Peak RSS of ``python -c pass``: the floor any Python daemon starts from."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0
    return usage.ru_maxrss


def run(deployments: int, idle_seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pifleet-bench-agent-") as tmp, \
            Sandbox(timeouts=Timeouts(start_s=120, event_s=300)) as sandbox:
        sandbox.app.reset()
        world = World(sandbox, Path(tmp))
        world.setup_fleet()
        relay = Link(int(sandbox.endpoint.url.rsplit(":", 1)[1]))
        device = world.device("pi-bench", poll_interval_s=1.0)
        config = device.config.read_text().replace(
            f'commands_endpoint = "{sandbox.endpoint.url}"',
            f'commands_endpoint = "http://127.0.0.1:{relay.port}"')
        device.config.write_text(config)
        device.start()
        try:
            return _measure(world, device, relay, deployments, idle_seconds)
        finally:
            if device.process is not None:
                device.stop()
            relay.down()


def _measure(world: World, device: Any, relay: Link, deployments: int,
             idle_seconds: float) -> dict[str, Any]:
    status = device.root / "status.json"
    wait_for(lambda: status.exists() and json.loads(status.read_text())["state"] == "polling",
             60, "the agent to poll")
    time.sleep(3)  # settle after start-up before the idle window
    before = relay.total_bytes
    time.sleep(idle_seconds)
    idle_bytes = relay.total_bytes - before
    pid = device.process.pid
    idle_rss = rss_kib(pid)

    marker = device.root / "first-hook.txt"
    hooks = {h: "true" for h in HOOKS}
    hooks["BeforeInstall"] = f'date +%s.%N > "{marker}"'
    revision = world.push("bench/v1.zip", revision_zip(hooks))
    latencies = []
    for _ in range(5):
        marker.unlink(missing_ok=True)
        created = time.time()
        deployment = world.deploy(revision)
        wait_for(marker.exists, 60, "the first hook")
        latencies.append(float(marker.read_text()) - created)
        assert world.wait_deployment(deployment)["status"] == "Succeeded"

    # Memory over many deployments: poll fast so 200 take minutes, not hours.
    device.stop()
    device.config.write_text(device.config.read_text().replace("poll_interval_s = 1.0",
                                                               "poll_interval_s = 0.05"))
    device.start()
    plain = world.push("bench/plain.zip", revision_zip({h: "true" for h in HOOKS}))
    samples = []
    started = time.monotonic()
    for i in range(deployments):
        info = world.wait_deployment(world.deploy(plain), timeout_s=120)
        assert info["status"] == "Succeeded", info
        if i in (9, deployments - 1):
            samples.append(rss_kib(device.process.pid))
    return {
        "idle_rss_mb": idle_rss / 1024,
        "idle_seconds": idle_seconds,
        "idle_bytes_per_hour": idle_bytes * 3600 / idle_seconds,
        "first_hook_latency_s_median": statistics.median(latencies),
        "first_hook_latency_s_max": max(latencies),
        "deployments": deployments,
        "deployments_seconds": time.monotonic() - started,
        "rss_after_10_mb": samples[0] / 1024,
        "rss_after_all_mb": samples[-1] / 1024,
        "rss_growth_mb": (samples[-1] - samples[0]) / 1024,
        "python": sys.version.split()[0],
        "python_pass_rss_mb": bare_python_rss_kib() / 1024,
    }


def figures(result: dict[str, Any], argv: list[str]) -> list[Figure]:
    growth = result["rss_growth_mb"]
    latency = result["first_hook_latency_s_median"]
    return [
        Figure(f"idle RSS of pifleet-agent run after {result['idle_seconds']:.0f} s of polling",
               mb(result["idle_rss_mb"]), "at most 30 MB", result["idle_rss_mb"] <= 30,
               result["idle_rss_mb"] / result["python_pass_rss_mb"],
               f"python -c pass ({result['python_pass_rss_mb']:.1f} MB peak)"),
        Figure(f"RSS after 10 deployments / after {result['deployments']}",
               f"{result['rss_after_10_mb']:.1f} / {result['rss_after_all_mb']:.1f} MB: "
               f"{growth * 1024:+.0f} KiB", "growth under 1 MB", growth < 1),
        Figure("CreateDeployment to the first hook starting (5 runs)",
               f"median {latency:.2f} s, max {result['first_hook_latency_s_max']:.2f} s",
               "under 2 s", result["first_hook_latency_s_max"] < 2),
        Figure("command-plane traffic while idle (1 poll/s, both directions)",
               f"{result['idle_bytes_per_hour'] / 1e6:.2f} MB per hour"),
        Figure(f"{result['deployments']} deployments at a 0.05 s poll interval",
               f"{result['deployments_seconds']:.0f} s"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--deployments", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.deployments < 11:
        parser.error("--deployments must be at least 11 (growth is measured from the 10th)")
    result = run(args.deployments, args.idle_seconds)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"  idle RSS of pifleet-agent run: {result['idle_rss_mb']:.1f} MB (target <= 30 MB)")
    print(f"  idle traffic: {result['idle_bytes_per_hour'] / 1e6:.2f} MB per hour "
          f"(measured over {result['idle_seconds']:.0f} s, 1 poll per second)")
    print(f"  CreateDeployment -> first hook: median {result['first_hook_latency_s_median']:.2f}"
          f" s, max {result['first_hook_latency_s_max']:.2f} s (target < 2 s)")
    print(f"  RSS after 10 deployments {result['rss_after_10_mb']:.1f} MB, after "
          f"{result['deployments']}: {result['rss_after_all_mb']:.1f} MB, growth "
          f"{result['rss_growth_mb'] * 1024:.0f} KiB (target < 1 MB); "
          f"{result['deployments_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    raise SystemExit(main())
