"""Finds and reads the AppSpec file of a revision directory."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .errors import AppSpecNotFoundError, Finding, Severity
from .model import AppSpec
from .parser import parse_appspec

DEFAULT_NAMES = ("appspec.yml", "appspec.yaml")


def find_appspec(revision: str | os.PathLike[str], *, filename: str | None = None) -> Path:
    """The AppSpec file the agent would use: ``filename`` if given and present, else
    ``appspec.yml``, else ``appspec.yaml`` (the official agent's order)."""
    root = Path(revision)
    if not root.is_dir():
        raise AppSpecNotFoundError([Finding(
            "no-revision", Severity.ERROR,
            f"{root} is not a directory; give the folder that holds appspec.yml", file=str(root))])
    names = ((filename,) if filename else ()) + DEFAULT_NAMES
    for name in names:
        candidate = root / name
        if candidate.is_file():
            return candidate
    tried = ", ".join(dict.fromkeys(names))
    raise AppSpecNotFoundError([Finding(
        "no-appspec", Severity.ERROR,
        f"no AppSpec file in {root} (looked for {tried}); add an appspec.yml at the top "
        "of the revision", file=str(root))])


def read_appspec(revision: str | os.PathLike[str], *, filename: str | None = None,
                 custom_events: Iterable[str] = ()) -> AppSpec:
    """Find, read and parse a revision's AppSpec; raises an ``AppSpecError`` on any problem."""
    path = find_appspec(revision, filename=filename)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AppSpecNotFoundError([Finding(
            "unreadable", Severity.ERROR, f"cannot read {path}: {exc.strerror}",
            file=str(path))]) from exc
    return parse_appspec(data, file=str(path), custom_events=custom_events)
