"""Simulated Pis for the sandbox: each a real ``pifleet-agent run`` process with its own root,
an iot-cert identity registered by ``fleetctl register``'s library, enrolled with
``pifleet-agent enroll``'s library, and simulated sensors reporting to the sandbox's broker.

A device's files live in ``<root>/<name>/``: its enrolled ``etc/pifleet``, its
deployment-root and install root, its outbox, ``agent.log`` and ``agent.pid``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.enroll import enroll

from ..aws import Aws, AwsOptions
from ..names import FleetNames
from ..register import RegisterOptions, register_device

AGENT = str(Path(sys.executable).parent / "pifleet-agent")
APP_PORT_BASE = 18080  # examples/aqi-app on device i listens on APP_PORT_BASE + i


@dataclass(frozen=True)
class SandboxDevice:
    name: str
    home: Path
    pid: int
    app_port: int

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "home": str(self.home), "pid": self.pid,
                "app_port": self.app_port, "log": str(self.home / "agent.log")}


def start_devices(info: dict[str, Any], count: int, root: Path, *,
                  tags: dict[str, str] | None = None, fleet: str = "pifleet",
                  first: int = 1) -> list[SandboxDevice]:
    """Register, enroll and start ``count`` simulated Pis against a running sandbox."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", info["aws_access_key_id"])
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", info["aws_secret_access_key"])
    aws = Aws(AwsOptions(region=info["region"], endpoint_url=info["endpoint_url"]))
    names = FleetNames(fleet)
    devices = []
    for index in range(first, first + count):
        name = f"pi-{index}"
        home = root / name
        home.mkdir(parents=True, exist_ok=True)
        bundle = home / "enrollment.tar"
        bundle.unlink(missing_ok=True)
        register_device(aws, names, name, dict(tags or {}), bundle=bundle,
                        options=RegisterOptions(
                            credentials_endpoint=info["credentials_endpoint"],
                            credentials_ca=Path(info["credentials_ca"])))
        enrolled = enroll(bundle, root=home)
        configure(enrolled.drop_in, home, info, name)
        devices.append(_start(name, home, enrolled.config, APP_PORT_BASE + index))
    return devices


def configure(config: Path, home: Path, info: dict[str, Any], name: str) -> None:
    """Point the enrolled agent.toml at the sandbox: private paths, telemetry on the sandbox's
    broker, simulated sensors, and the sandbox's deployment-specification signer as trust."""
    document = tomllib.loads(config.read_text())
    signer = home / "etc" / "pifleet" / "spec-signer.pem"
    with urllib.request.urlopen(info["signer_certificate_url"], timeout=10) as answer:  # noqa: S310
        signer.write_bytes(answer.read())
    document["agent"] = {
        "deployment_root": str(home / "var" / "deployment-root"),
        "status_file": str(home / "var" / "agent-status.json"),
        "install_root": str(home / "fs"), "wait_for_clock_sync": False,
        "spec_trust_anchors": str(signer)}
    if info.get("mqtt_port"):
        document["telemetry"] = {
            "enabled": True, "endpoint": info["mqtt_host"], "port": info["mqtt_port"],
            "tls": False, "thing_name": name, "outbox": str(home / "var" / "outbox.db"),
            "readings_file": str(home / "var" / "readings.json"),
            "heartbeat_s": 60.0, "status_interval_s": 5.0}
        document["sensors"] = [
            {"name": "climate", "kind": "simulated-dht11", "interval_s": 5.0, "seed": len(name)},
            {"name": "air", "kind": "simulated-sds011", "interval_s": 10.0, "seed": 7}]
    else:
        document.pop("telemetry", None)
    config.write_text(dump_toml(document))


def dump_toml(document: dict[str, Any]) -> str:
    """TOML for flat sections and arrays of flat tables: all an agent.toml has."""
    lines: list[str] = []
    for section, body in document.items():
        tables = body if isinstance(body, list) else [body]
        header = f"[[{section}]]" if isinstance(body, list) else f"[{section}]"
        for table in tables:
            lines += ["", header]
            lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines).lstrip() + "\n"


def _start(name: str, home: Path, config: Path, app_port: int) -> SandboxDevice:
    env = {**os.environ, "AQI_SIMULATED": "1", "AQI_NO_SYSTEMD": "1",
           "AQI_PORT": str(app_port), "AQI_BIND": "127.0.0.1",
           "AQI_READINGS_FILE": str(home / "var" / "readings.json")}
    with (home / "agent.log").open("ab") as log:
        process = subprocess.Popen([AGENT, "run", "--config", str(config)], stdout=log,
                                   stderr=log, env=env, start_new_session=True)
    (home / "agent.pid").write_text(str(process.pid))
    return SandboxDevice(name, home, process.pid, app_port)


def stop_devices(root: Path, *, timeout_s: float = 30.0) -> list[str]:
    """SIGTERM every device agent under ``root`` (and the apps they started); their names."""
    stopped = []
    for pid_file in sorted(root.glob("*/agent.pid")):
        _terminate(int(pid_file.read_text()), timeout_s)
        pid_file.unlink()
        stopped.append(pid_file.parent.name)
    for app_pid in root.glob("*/fs/run/aqi-web.pid"):
        _terminate(int(app_pid.read_text() or 0), 5)
    return stopped


def _terminate(pid: int, timeout_s: float) -> None:
    if pid <= 0:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
