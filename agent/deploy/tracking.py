"""The ongoing-deployment tracking files that let an agent restart fail what it was running.

Before any command runs, ``<root>/ongoing-deployment/<deployment-id>`` is written with the host
command identifier; it is removed when the command completes. A file left behind means the agent
died mid-command: at start-up the newest one younger than 24 hours is reported failed (code 7)
and all are removed, as the official agent does.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_atomic

STALE_AFTER_S = 24 * 3600


@dataclass(frozen=True)
class InFlight:
    deployment_id: str
    host_command_identifier: str


class CommandTracker:
    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def begin(self, deployment_id: str, host_command_identifier: str) -> None:
        write_atomic(self._directory / deployment_id, host_command_identifier)

    def end(self, deployment_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._directory / deployment_id).unlink()

    def in_flight(self) -> list[str]:
        """Deployment ids with a command running now (a stop should wait for them)."""
        if not self._directory.is_dir():
            return []
        return sorted(p.name for p in self._directory.iterdir() if not p.name.startswith("."))

    def recover(self, *, now: float | None = None) -> InFlight | None:
        """After a restart: the interrupted command to report failed, if any; clears them all."""
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
            _, newest = max(candidates)
            with contextlib.suppress(OSError):
                found = InFlight(newest.name, newest.read_text().strip())
        for path in self._directory.iterdir():
            with contextlib.suppress(OSError):
                path.unlink()
        return found
