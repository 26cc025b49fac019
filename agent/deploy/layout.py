"""The deployment-root on disk, laid out exactly as the official agent lays it out.

Keeping the layout lets pifleet-agent take over a device from the Ruby agent (and back) without
breaking ApplicationStop, clean-up or DISALLOW: those depend on the files below.

::

    <root>/deployment-instructions/<dg>-cleanup, <dg>-install.json,
                                   <dg>_last_successful_install, <dg>_most_recent_install
    <root>/deployment-logs/codedeploy-agent-deployments.log
    <root>/ongoing-deployment/<deployment-id>
    <root>/ongoing-hooks/<deployment-id>            (pifleet: the running hook's process group)
    <root>/<dg>/<deployment-id>/{bundle.tar, deployment-archive/, logs/scripts.log}
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_atomic

DEFAULT_ROOT = Path("/var/lib/pifleet/deployment-root")
# A deployment group id named like one of these would share the folder with the agent's own.
_RESERVED = frozenset({"deployment-instructions", "deployment-logs", "ongoing-deployment",
                       "ongoing-hooks"})


def _safe_name(value: str, what: str) -> str:
    """Ids become path components: refuse anything that could leave the root."""
    if not value or value in (".", "..") or "/" in value or "\0" in value or value in _RESERVED:
        raise ValueError(f"{what} {value!r} cannot be used as a folder name")
    return value


@dataclass(frozen=True)
class DeploymentDir:
    """One deployment's folder: ``<root>/<dg>/<deployment-id>``."""

    path: Path

    @property
    def bundle(self) -> Path:
        return self.path / "bundle.tar"

    @property
    def archive(self) -> Path:
        return self.path / "deployment-archive"

    @property
    def scripts_log(self) -> Path:
        return self.path / "logs" / "scripts.log"


@dataclass(frozen=True)
class DeploymentRoot:
    root: Path = DEFAULT_ROOT

    @property
    def instructions(self) -> Path:
        return self.root / "deployment-instructions"

    @property
    def deployments_log(self) -> Path:
        return self.root / "deployment-logs" / "codedeploy-agent-deployments.log"

    @property
    def ongoing(self) -> Path:
        return self.root / "ongoing-deployment"

    def group_dir(self, group_id: str) -> Path:
        return self.root / _safe_name(group_id, "deployment group id")

    def deployment(self, group_id: str, deployment_id: str) -> DeploymentDir:
        return DeploymentDir(self.group_dir(group_id) / _safe_name(deployment_id,
                                                                   "deployment id"))

    def cleanup_file(self, group_id: str) -> Path:
        return self.instructions / f"{_safe_name(group_id, 'deployment group id')}-cleanup"

    def install_json(self, group_id: str) -> Path:
        return self.instructions / f"{_safe_name(group_id, 'deployment group id')}-install.json"

    def _pointer(self, group_id: str, which: str) -> Path:
        return self.instructions / f"{_safe_name(group_id, 'deployment group id')}_{which}"

    def last_successful(self, group_id: str) -> DeploymentDir | None:
        """The deployment whose Install last succeeded in this group (ApplicationStop runs it)."""
        return self._read_pointer(self._pointer(group_id, "last_successful_install"))

    def most_recent(self, group_id: str) -> DeploymentDir | None:
        return self._read_pointer(self._pointer(group_id, "most_recent_install"))

    def set_last_successful(self, group_id: str, deployment: DeploymentDir) -> None:
        # The official format: the absolute path, no trailing newline.
        write_atomic(self._pointer(group_id, "last_successful_install"), str(deployment.path))

    def set_most_recent(self, group_id: str, deployment: DeploymentDir) -> None:
        write_atomic(self._pointer(group_id, "most_recent_install"), str(deployment.path))

    def _read_pointer(self, pointer: Path) -> DeploymentDir | None:
        try:
            text = pointer.read_text().strip()
        except FileNotFoundError:
            return None
        return DeploymentDir(Path(text)) if text else None

    def prune(self, group_id: str, current: DeploymentDir, max_revisions: int) -> list[Path]:
        """Delete the oldest deployment folders of the group beyond ``max_revisions``.

        As upstream: about ``max_revisions`` folders remain counting the current one, oldest by
        mtime go first, and the last successful install is never removed (ApplicationStop of the
        next deployment needs its scripts). Returns what was removed.
        """
        if max_revisions < 1:
            raise ValueError(f"max_revisions must be at least 1, not {max_revisions}")
        group = self.group_dir(group_id)
        if not group.is_dir():
            return []
        keep = self.last_successful(group_id)
        others = [p for p in group.iterdir()
                  if p.is_dir() and not p.is_symlink() and p != current.path]
        extra = len(others) - max_revisions + 1
        if extra <= 0:
            return []
        oldest = sorted(others, key=lambda p: p.stat().st_mtime)
        removed: list[Path] = []
        for path in oldest:
            if len(removed) == extra:
                break
            if keep is not None and os.path.realpath(path) == os.path.realpath(keep.path):
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed
