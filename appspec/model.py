"""The AppSpec of an EC2/On-Premises revision as frozen, typed values."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from .errors import Finding, Position
from .permissions import Ace, Mode, SelinuxRange

DEFAULT_TIMEOUT_S = 3600
DEFAULT_PATTERN = "**"

ObjectType = Literal["file", "directory"]


class FileExistsBehavior(StrEnum):
    DISALLOW = "DISALLOW"
    OVERWRITE = "OVERWRITE"
    RETAIN = "RETAIN"


@dataclass(frozen=True, slots=True)
class FileMapping:
    """``files[i]``: copy ``source`` (relative to the revision) into ``destination``."""

    source: str
    destination: str
    position: Position | None = None


@dataclass(frozen=True, slots=True)
class HookScript:
    """One script of a lifecycle event; ``location`` is relative to the revision root."""

    location: str
    timeout_s: int = DEFAULT_TIMEOUT_S
    runas: str | None = None
    sudo: bool = False
    position: Position | None = None
    timeout_given: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class SelinuxContext:
    type: str
    name: str | None = None
    range: SelinuxRange | None = None


@dataclass(frozen=True, slots=True)
class Permission:
    """``permissions[i]``: what to set on installed files and directories under ``object``."""

    object: str
    pattern: str = DEFAULT_PATTERN
    excepts: tuple[str, ...] = ()
    types: tuple[ObjectType, ...] = ("file", "directory")
    owner: str | None = None
    group: str | None = None
    mode: Mode | None = None
    acls: tuple[Ace, ...] | None = None
    context: SelinuxContext | None = None
    position: Position | None = None


@dataclass(frozen=True, slots=True)
class AppSpec:
    """A validated AppSpec. ``findings`` holds the warnings met while reading it."""

    version: float
    os: str
    files: tuple[FileMapping, ...] = ()
    hooks: tuple[tuple[str, tuple[HookScript, ...]], ...] = ()
    permissions: tuple[Permission, ...] = ()
    file_exists_behavior: FileExistsBehavior | None = None
    file: str | None = None
    findings: tuple[Finding, ...] = field(default=(), compare=False)

    def scripts(self, event: str) -> tuple[HookScript, ...]:
        """The scripts of ``event`` in file order; empty if the event has none."""
        for name, scripts in self.hooks:
            if name == event:
                return scripts
        return ()

    def total_timeout_s(self, event: str) -> int | None:
        """Sum of the event's script timeouts (what the agent waits at most), None if no scripts."""
        scripts = self.scripts(event)
        return sum(s.timeout_s for s in scripts) if scripts else None
