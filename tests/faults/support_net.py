"""What the network, clock and throttling fault tests share: a device's view of its own state
(the status file), the CPU time a process used, and the sandbox's port for a Link to relay to."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.faults.conftest import Device, World

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def sandbox_port(world: World) -> int:
    port = urlsplit(world.sandbox.endpoint.url).port
    assert port is not None
    return port


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used so far (all its threads)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime


def status(device: Device) -> dict[str, Any]:
    """The agent's status file (what `pifleet-agent status` shows); {} before the first one."""
    try:
        return dict(json.loads((device.root / "status.json").read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def pid(device: Device) -> int:
    assert device.process is not None, f"{device.name} is not running"
    return device.process.pid
