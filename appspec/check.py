"""What ``fleetctl validate`` and ``pifleet-agent validate`` do, as one function of the library."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from .errors import AppSpecError, Severity
from .explain import explain
from .lint import lint_revision
from .locate import find_appspec, read_appspec
from .report import exit_status, render_json, render_text

OutputFormat = Literal["text", "json"]


@dataclass(frozen=True)
class CheckOutput:
    text: str
    status: int


def check_revision(revision: str | os.PathLike[str], *, filename: str | None = None,
                   output: OutputFormat = "text", with_explanation: bool = False,
                   previous: str | os.PathLike[str] | None = None, strict: bool = False,
                   custom_events: Iterable[str] = ()) -> CheckOutput:
    """Validate and lint a revision; the rendered report and the exit status (0 or 1)."""
    events = tuple(custom_events)
    findings = lint_revision(revision, filename=filename, previous=previous,
                             custom_events=events)
    name = os.fspath(revision)
    try:
        appspec_file: str | None = str(find_appspec(revision, filename=filename))
    except AppSpecError:
        appspec_file = None
    if output == "json":
        text = render_json(findings, name, appspec_file)
    else:
        text = render_text(findings, name)
        if with_explanation and not any(f.severity is Severity.ERROR for f in findings):
            spec = read_appspec(revision, filename=filename, custom_events=events)
            text = "\n".join([*explain(spec, revision), "", text])
    return CheckOutput(text, exit_status(findings, strict=strict))
