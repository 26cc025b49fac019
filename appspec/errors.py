"""Findings and the one exception tree of the appspec package.

Tree::

    AppSpecError                 anything wrong with a revision's AppSpec
    ├── AppSpecNotFoundError     no appspec.yml / appspec.yaml / custom file in the revision
    ├── AppSpecInvalidError      the file breaks the format (carries every error found)
    └── InstallPlanError         valid file, but the install it describes cannot happen
                                 (conflicting targets, DISALLOW on an existing file, ...)

Every error carries ``findings``: each one names the file, the YAML path
(``hooks.AfterInstall[0].timeout``), the line and column, what is wrong and what is allowed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Position:
    """1-based line and column in the AppSpec file."""

    line: int
    column: int


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem or remark about an AppSpec, with enough context to act on it."""

    code: str
    severity: Severity
    message: str
    yaml_path: str = ""
    position: Position | None = None
    file: str | None = None

    def with_file(self, file: str) -> Finding:
        return Finding(self.code, self.severity, self.message, self.yaml_path, self.position, file)

    def location(self) -> str:
        where = self.file or "<appspec>"
        if self.position is not None:
            where += f":{self.position.line}:{self.position.column}"
        return where

    def __str__(self) -> str:
        path = f" {self.yaml_path}:" if self.yaml_path else ""
        return f"{self.location()}:{path} {self.severity} {self.code}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "severity": str(self.severity),
            "message": self.message,
            "file": self.file,
            "yaml_path": self.yaml_path,
            "line": self.position.line if self.position else None,
            "column": self.position.column if self.position else None,
        }


class AppSpecError(Exception):
    """Base of every error this package raises; ``findings`` says what and where."""

    def __init__(self, findings: Iterable[Finding]) -> None:
        self.findings: tuple[Finding, ...] = tuple(findings)
        super().__init__("\n".join(str(f) for f in self.findings))

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    def to_json(self) -> str:
        return json.dumps([f.to_dict() for f in self.findings], separators=(",", ":"))


class AppSpecNotFoundError(AppSpecError):
    """The revision has no AppSpec file under any of the accepted names."""


class AppSpecInvalidError(AppSpecError):
    """The AppSpec file breaks the format; ``findings`` lists every error, not just the first."""


class InstallPlanError(AppSpecError):
    """The AppSpec is valid but the install it asks for cannot be carried out."""
