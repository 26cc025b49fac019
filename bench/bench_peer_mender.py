"""Mender's client daemon (Debian's mender-client) idle on this machine: RSS, threads, CPU, size.

Run: ``python -m bench.bench_peer_mender [--seconds 60] [--json]``. Needs Debian's
mender-client package (``apt-get install --no-install-recommends mender-client``). There is no
Mender server here, so the daemon runs against a closed loopback port with 5-second poll
intervals: it cycles through its idle, inventory and update-check states and retries
authorisation, which is its idle loop without a server. What it uses while connected to a
server (TLS, JWT refresh) is not measured. Its own configuration and data directory are
temporary; nothing of the system's is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .timing import Figure, finish, mb

TITLE = "Peer: Mender's client daemon, idle"
ISSUE = 9
RUNS = {"full": [["--seconds", "60"]], "quick": [["--seconds", "10"]]}


def skip_reason() -> str | None:
    if shutil.which("mender") is None:
        return "mender is not installed (apt-get install --no-install-recommends mender-client)"
    return None


def _status(pid: int) -> tuple[int, int]:
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _package() -> tuple[str, int]:
    shown = subprocess.run(["dpkg-query", "-W", "-f=${Version}\t${Installed-Size}",
                            "mender-client"], capture_output=True, text=True, check=False)
    if shown.returncode != 0 or "\t" not in shown.stdout:
        return "unknown", 0
    version, size = shown.stdout.split("\t", 1)
    return version, int(size or 0)


def run(seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pifleet-bench-mender-") as tmp:
        work = Path(tmp)
        (work / "data").mkdir()
        (work / "data" / "device_type").write_text("device_type=raspberrypi4\n")
        # Port 9 (discard) on loopback: nothing listens, every connection is refused at once.
        (work / "mender.conf").write_text(json.dumps({
            "ServerURL": "http://127.0.0.1:9", "UpdatePollIntervalSeconds": 5,
            "InventoryPollIntervalSeconds": 5, "RetryPollIntervalSeconds": 5,
            "DeviceType": "raspberrypi4"}))
        with (work / "mender.log").open("wb") as log:
            daemon = subprocess.Popen(
                ["mender", "--config", str(work / "mender.conf"), "--fallback-config",
                 str(work / "none.conf"), "--data", str(work / "data"), "--no-syslog",
                 "daemon"], stdout=log, stderr=subprocess.STDOUT)
            try:
                time.sleep(5)  # past start-up
                cpu_before = _cpu_s(daemon.pid)
                time.sleep(seconds)
                if daemon.poll() is not None:
                    raise SystemExit(f"mender daemon exited with {daemon.returncode}: "
                                     f"{(work / 'mender.log').read_text()[-800:]}")
                rss, threads = _status(daemon.pid)
                cpu = _cpu_s(daemon.pid) - cpu_before
            finally:
                daemon.terminate()
                try:
                    daemon.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
    version, installed_kib = _package()
    return {"seconds": seconds, "rss_mb": rss / 1024, "threads": threads, "cpu_s": cpu,
            "version": version, "installed_kib": installed_kib}


def figures(result: dict[str, Any], argv: list[str]) -> list[Figure]:
    per_hour = 3600 / result["seconds"]
    return [
        Figure(f"mender daemon {result['version']}: RSS after {result['seconds']:.0f} s idle "
               f"(no server reachable)", f"{mb(result['rss_mb'])}, {result['threads']} "
               f"threads, {result['cpu_s'] * per_hour:.0f} CPU s per hour"),
        Figure("mender-client package, installed size (dpkg)",
               f"{result['installed_kib'] / 1024:.1f} MB"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    return finish(as_json=args.json, skip=skip_reason(), run=lambda: run(args.seconds),
                  figures=figures)


if __name__ == "__main__":
    raise SystemExit(main())
