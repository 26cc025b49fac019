"""pifleet-agent.service cold start to READY in a Debian 12 system booted under systemd-nspawn,
and the agent's RSS there.

Run: ``python -m bench.bench_boot [--runs 5] [--json]`` (root and ``make testbed``). Each run
installs the .deb into a fresh overlay of the amd64 testbed, enrolls it (iam-session) against a
sandbox in this process and boots it with ``systemd-nspawn --boot``. The times come from
systemd's own timestamps (CLOCK_MONOTONIC, shared by host and container), not from polling:
nspawn started -> unit active (READY=1 received), and the agent's exec -> READY (imports,
configuration, credentials, the first PollHostCommand).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fleet.sandbox.server import Sandbox
from fleet.sandbox.state import Timeouts
from tests.e2e.conftest import World
from tests.support import testbed
from tests.system.agent_tree import UNIT, install_and_enroll
from tests.system.conftest import build_deb

from .timing import Figure, finish, mb, ms

TITLE = "pifleet-agent.service: cold start to READY under systemd-nspawn"
ISSUE = 8
RUNS = {"full": [["--runs", "7"]], "quick": [["--runs", "2"]]}
TIMEOUT_S = 900.0
RSS_TARGET_MB = 30.0


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (overlay mounts and systemd-nspawn --boot)"
    try:
        testbed.base_tree("amd64")
    except testbed.TestbedError as error:
        return str(error)
    return None


def _usec(system: testbed.Booted, prop: str) -> float:
    value = system.show(UNIT, prop)
    if not value.isdigit() or value == "0":
        raise RuntimeError(f"{UNIT} has no {prop} ({value!r}): did it start?")
    return int(value) / 1e6


def _one(world: World, deb: Path, scratch: Path, index: int) -> dict[str, float]:
    with testbed.overlay(testbed.base_tree("amd64"), scratch / "overlay") as root:
        install_and_enroll(root, deb, world, name=f"pi-bench-{index}")
        system = testbed.Booted(root, scratch / "boot.log")
        started = time.monotonic()
        with system:  # boots it
            booted = time.monotonic()
            active = _usec(system, "ActiveEnterTimestampMonotonic")
            exec_start = _usec(system, "ExecMainStartTimestampMonotonic")
            if not started < exec_start < active <= booted:
                raise RuntimeError("the container's monotonic clock is not the host's "
                                   "(a time namespace?): cannot compare timestamps")
            pid = system.show(UNIT, "MainPID")
            status = system.run(["cat", f"/proc/{pid}/status"]).stdout
            rss_kib = next(int(line.split()[1]) for line in status.splitlines()
                           if line.startswith("VmRSS:"))
    return {"nspawn_to_active_s": active - started, "exec_to_ready_s": active - exec_start,
            "nspawn_to_system_running_s": booted - started, "rss_mb": rss_kib / 1024}


def run(runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-boot-", dir="/var/tmp") as work, \
            Sandbox(strict=True, timeouts=Timeouts(start_s=60, event_s=120)) as sandbox:
        sandbox.app.reset()
        world = World(sandbox, Path(work))
        world.setup_fleet()
        deb = build_deb(Path(work) / "deb")
        samples = [_one(world, deb, Path(work) / f"run-{i}", i) for i in range(runs)]
    result: dict[str, Any] = {"runs": runs, "samples": samples}
    for key in samples[0]:
        result[f"{key}_median"] = statistics.median(s[key] for s in samples)
        result[f"{key}_max"] = max(s[key] for s in samples)
    return result


def figures(result: dict[str, Any], argv: list[str]) -> list[Figure]:
    n = result["runs"]
    rss = result["rss_mb_median"]
    return [
        Figure(f"nspawn start -> pifleet-agent.service active (READY), median of {n}",
               ms(result["nspawn_to_active_s_median"])),
        Figure(f"agent exec -> READY (imports, config, credentials, first poll), median of {n}",
               ms(result["exec_to_ready_s_median"])),
        Figure(f"nspawn start -> system running, median of {n}",
               ms(result["nspawn_to_system_running_s_median"])),
        Figure("agent RSS at READY (booted, under systemd)", mb(rss),
               f"at most {RSS_TARGET_MB:g} MB", rss <= RSS_TARGET_MB),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return finish(as_json=args.json, skip=skip_reason(), run=lambda: run(args.runs),
                  figures=figures)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    raise SystemExit(main())
