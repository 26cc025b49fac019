"""The ongoing-deployment tracking files that let an agent restart fail what it was running.

Before any command runs, ``<root>/ongoing-deployment/<deployment-id>`` is written with the host
command identifier; it is removed when the command completes. A file left behind means the agent
died mid-command: at start-up the newest one younger than 24 hours is reported failed (code 7)
and all are removed, as the official agent does.

pifleet also cleans up after the dead agent, which the official agent does not:

* A hook script runs in its own session, so it outlives an agent killed by SIGKILL, a crash or
  ``KillMode=process``. While a tracked command runs a script, ``<root>/ongoing-hooks/
  <deployment-id>`` holds the script's process group, its leader's start time and the boot id
  (a separate folder: the official agent reads every file of ``ongoing-deployment`` as a host
  command id). At start-up a group whose leader is still that same process is sent SIGTERM,
  then SIGKILL: its event is being failed, exactly as a timeout would end it. Daemons the
  script started in a session of their own (``setsid``, ``systemd-run``) are not in the group
  and keep running; a group whose leader already exited is left alone too (what remains is
  what the script started on purpose, e.g. ``app &``).
* The half-unpacked archive of an interrupted DownloadBundle (``.deployment-archive.partial-*``
  in the deployment's folder) is removed; no later unpack would ever reach that folder.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_atomic
from .bundle import remove_partial_unpacks
from .layout import DeploymentDir

log = logging.getLogger(__name__)

STALE_AFTER_S = 24 * 3600
HOOKS_FOLDER = "ongoing-hooks"
# How long a hook group left by the previous agent gets between SIGTERM and SIGKILL.
ORPHAN_GRACE_S = 10.0
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

# The record file of the tracked command running in this thread (None: not tracked, as in
# deploy-local). A context variable, so hooks.py can record the script it starts without the
# executor passing the tracker through every call; each command runs in one worker thread.
_running_command: ContextVar[Path | None] = ContextVar("pifleet_running_command", default=None)


@dataclass(frozen=True)
class InFlight:
    deployment_id: str
    host_command_identifier: str
    started: float = 0.0  # the tracking file's mtime: when the interrupted command began


@dataclass(frozen=True)
class HookGroup:
    """A hook script's process group, identified beyond its number (numbers are reused)."""

    pgid: int
    start_ticks: int  # the leader's start time, /proc/<pid>/stat field 22
    boot_id: str

    @classmethod
    def of(cls, pid: int) -> HookGroup | None:
        """The group led by ``pid`` (a script we just started); None where /proc is missing."""
        start = _start_ticks(pid)
        boot = _boot_id()
        return None if start is None or boot is None else cls(pid, start, boot)

    def leader_still_runs(self) -> bool:
        """Whether the group's leader is the process we started, still running (not a zombie,
        not a process that reused its number after a reboot or a wrap-around)."""
        if self.boot_id != _boot_id():
            return False
        fields = _stat_fields(self.pgid)
        return (fields is not None and fields[0] not in ("Z", "X")
                and int(fields[2]) == self.pgid and int(fields[19]) == self.start_ticks)


class CommandTracker:
    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._hooks = directory.parent / HOOKS_FOLDER

    def begin(self, deployment_id: str, host_command_identifier: str) -> None:
        write_atomic(self._directory / deployment_id, host_command_identifier)
        _running_command.set(self._hooks / deployment_id)

    def keep(self, in_flight: InFlight) -> None:
        """Put back the tracking file of an interrupted command that could not be reported
        yet (with its time, so it still goes stale 24 hours after the command began)."""
        path = self._directory / in_flight.deployment_id
        write_atomic(path, in_flight.host_command_identifier)
        if in_flight.started:
            os.utime(path, (in_flight.started, in_flight.started))

    def end(self, deployment_id: str) -> None:
        _running_command.set(None)
        with contextlib.suppress(FileNotFoundError):
            (self._directory / deployment_id).unlink()

    def in_flight(self) -> list[str]:
        """Deployment ids with a command running now (a stop should wait for them)."""
        if not self._directory.is_dir():
            return []
        return sorted(p.name for p in self._directory.iterdir() if not p.name.startswith("."))

    def recover(self, *, now: float | None = None,
                grace_s: float = ORPHAN_GRACE_S) -> InFlight | None:
        """After a restart: end the hook scripts the dead agent left running, remove its
        half-unpacked archives, and return the interrupted command to report failed, if any;
        clears all tracking files."""
        _running_command.set(None)
        self._end_orphaned_hooks(grace_s)
        if not self._directory.is_dir():
            return None
        now = time.time() if now is None else now
        candidates: list[tuple[float, Path]] = []
        for path in self._directory.iterdir():
            with contextlib.suppress(OSError):
                mtime = path.stat().st_mtime
                if not path.name.startswith(".") and now - mtime < STALE_AFTER_S:
                    candidates.append((mtime, path))
        found: InFlight | None = None
        if candidates:
            started, newest = max(candidates)
            with contextlib.suppress(OSError):
                found = InFlight(newest.name, newest.read_text().strip(), started)
        for path in self._directory.iterdir():
            if not path.name.startswith("."):
                self._remove_partial_unpacks(path.name)
            with contextlib.suppress(OSError):
                path.unlink()
        return found

    def _end_orphaned_hooks(self, grace_s: float) -> None:
        if not self._hooks.is_dir():
            return
        for record in self._hooks.iterdir():
            group = _read_group(record)
            if group is not None and group.leader_still_runs():
                log.warning("a hook script of deployment %s (process group %d) outlived the "
                            "previous agent; ending it", record.name, group.pgid)
                end_group(group, grace_s)
            with contextlib.suppress(OSError):
                record.unlink()

    def _remove_partial_unpacks(self, deployment_id: str) -> None:
        root = self._directory.parent
        with contextlib.suppress(OSError):
            for folder in root.glob(f"*/{glob.escape(deployment_id)}"):
                for removed in remove_partial_unpacks(DeploymentDir(folder).archive):
                    log.info("removed %s, the archive an interrupted DownloadBundle was "
                             "unpacking", removed)


@contextlib.contextmanager
def hook_group(pid: int) -> Iterator[None]:
    """Record the process group a hook script leads while it runs inside a tracked command,
    so a restarted agent can end it if we die first."""
    record = _running_command.get()
    group = HookGroup.of(pid) if record is not None else None
    if record is None or group is None:
        yield
        return
    try:
        _write_unsynced(record, json.dumps({"pgid": group.pgid,
                                            "start_ticks": group.start_ticks,
                                            "boot_id": group.boot_id}))
    except OSError as exc:  # a full disk must not fail the hook; only recovery loses it
        log.warning("cannot record the hook's process group in %s: %s", record, exc.strerror)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            record.unlink()


def _write_unsynced(path: Path, text: str) -> None:
    """Replace ``path`` atomically without fsync. The record only has to outlive the agent
    process, not the machine (a reboot ends the scripts too), and an fsync on an SD card would
    widen the moment between starting a script and recording it, where a kill goes unseen."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def end_group(group: HookGroup, grace_s: float) -> None:
    """SIGTERM the group, SIGKILL what is left after ``grace_s`` (as a hook timeout does)."""
    _signal_group(group.pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _group_alive(group.pgid) and time.monotonic() < deadline:
        time.sleep(0.05)  # not our children: there is nothing to wait on but /proc
    if _group_alive(group.pgid):
        _signal_group(group.pgid, signal.SIGKILL)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group runs (zombies waiting for init do not count)."""
    with contextlib.suppress(OSError), os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                fields = _stat_fields(int(entry.name))
                if fields is not None and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
                    return True
    return False


def _read_group(record: Path) -> HookGroup | None:
    try:
        data = json.loads(record.read_text())
        return HookGroup(int(data["pgid"]), int(data["start_ticks"]), str(data["boot_id"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # torn by a power cut: after a reboot there is nothing to end anyway


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: state is [0], pgrp [2], starttime [19]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def _boot_id() -> str | None:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return None
