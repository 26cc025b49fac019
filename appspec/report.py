"""Presents findings for people (text) and programs (JSON); shared by both CLIs."""

from __future__ import annotations

import json
from collections.abc import Sequence

from .errors import Finding, Severity

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


def counts(findings: Sequence[Finding]) -> dict[str, int]:
    return {str(s): sum(1 for f in findings if f.severity is s) for s in Severity}


def exit_status(findings: Sequence[Finding], *, strict: bool = False) -> int:
    """1 when there are errors (or warnings, with ``strict``), else 0."""
    failing = {Severity.ERROR, Severity.WARNING} if strict else {Severity.ERROR}
    return EXIT_INVALID if any(f.severity in failing for f in findings) else EXIT_OK


def summary(findings: Sequence[Finding], revision: str) -> str:
    n = counts(findings)
    state = "invalid" if n["error"] else "valid"
    parts = [_plural(n["error"], "error"), _plural(n["warning"], "warning"),
             _plural(n["info"], "note")]
    return f"{revision}: {state} ({', '.join(parts)})"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def render_text(findings: Sequence[Finding], revision: str) -> str:
    lines = [_line(f) for f in findings]
    lines.append(summary(findings, revision))
    return "\n".join(lines)


def _line(finding: Finding) -> str:
    path = f" {finding.yaml_path}:" if finding.yaml_path else ""
    return f"{finding.location()}: {finding.severity} [{finding.code}]{path} {finding.message}"


def render_json(findings: Sequence[Finding], revision: str, appspec_file: str | None) -> str:
    n = counts(findings)
    return json.dumps({
        "revision": revision,
        "appspec": appspec_file,
        "valid": n["error"] == 0,
        "counts": n,
        "findings": [f.to_dict() for f in findings],
    }, indent=2)
