"""Shared fixtures of the fault-injection suite: a sandbox fleet with real `pifleet-agent run`
processes (the e2e world), plus what fault tests need to look at processes and rewire a device.

Tests here kill agents with SIGKILL, stop them with SIGSTOP and cut their links; every wait is
a ``wait_for`` with a generous deadline, never a bare sleep.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import BUCKET, Device, World, fresh_world, revision_zip

__all__ = ["BUCKET", "HOOKS", "IN_PLACE", "Device", "World", "alive", "group_members",
           "revision_zip", "set_aws_endpoint"]

IN_PLACE = ["ApplicationStop", "DownloadBundle", "BeforeInstall", "Install", "AfterInstall",
            "ApplicationStart", "ValidateService"]
HOOKS = ("ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart",
         "ValidateService")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with fresh_world(tmp_path) as w:
        yield w


def set_aws_endpoint(device: Device, key: str, url: str) -> None:
    """Point one ``[aws]`` endpoint of a (stopped) device elsewhere, e.g. S3 through a Link."""
    text = device.config.read_text()
    new, count = re.subn(rf'(?m)^{re.escape(key)} = ".*"$', f'{key} = "{url}"', text)
    if count != 1:
        raise AssertionError(f"{device.config} has no single [aws] {key} line to rewrite")
    device.config.write_text(new)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], pgid [2]), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2:].split()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not count)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
                found.append(int(entry))
    return found
