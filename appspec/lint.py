"""Checks a revision beyond validity: what would fail, surprise or differ on a Pi.

Every finding has an id (``code``), a severity and a location. Errors are what would make a
deployment fail; warnings are what probably does not do what the author meant; info explains a
behaviour people trip over.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import AppSpecError, Finding, Position, Severity
from .events import EVENT_TIME_LIMIT_S, RUNS_PREVIOUS_REVISION
from .locate import read_appspec
from .model import AppSpec, HookScript
from .plan import Copy, EmptyTarget, normalize, plan_install

# Directories of the agent itself (ours and the official one's): a revision must not write there.
AGENT_PATHS = ("/etc/pifleet", "/var/lib/pifleet", "/usr/lib/pifleet-agent",
               "/opt/codedeploy-agent", "/etc/codedeploy-agent")
_SCRIPT_HEAD_BYTES = 4096
_SUDO = re.compile(rb"(^|[\s;&|(`])sudo\s")


def lint_revision(revision: str | os.PathLike[str], *, filename: str | None = None,
                  previous: str | os.PathLike[str] | None = None,
                  custom_events: Iterable[str] = ()) -> list[Finding]:
    """Validate and lint a revision directory; returns every finding (errors first)."""
    try:
        spec = read_appspec(revision, filename=filename, custom_events=custom_events)
    except AppSpecError as exc:
        return list(exc.findings)
    root = Path(revision)
    findings = list(spec.findings)
    file = spec.file
    checks: list[Iterator[Finding]] = [
        _appspec_name(root, filename, file),
        _hook_scripts(spec, root),
        _event_timeouts(spec),
        _application_stop(spec, root, previous),
        _destinations(spec),
        _permission_objects(spec),
        _install_plan(spec, root),
    ]
    for check in checks:
        findings.extend(f.with_file(file) if file and not f.file else f for f in check)
    order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    return sorted(findings, key=lambda f: (order[f.severity],
                                           f.position.line if f.position else 0))


def _appspec_name(root: Path, filename: str | None, file: str | None) -> Iterator[Finding]:
    if filename is None and file is not None and file.endswith("appspec.yaml"):
        yield Finding("appspec-yaml-name", Severity.WARNING,
                      "only appspec.yaml exists: pifleet-agent uses it, but the official agent "
                      "installs with it and then fails to find appspec.yml for the hooks; "
                      "rename it to appspec.yml")


def _hook_scripts(spec: AppSpec, root: Path) -> Iterator[Finding]:
    for event, scripts in spec.hooks:
        for i, script in enumerate(scripts):
            path = f"hooks.{event}[{i}].location"
            for code, severity, message in _script_problems(script, root):
                yield Finding(code, severity, message, path, script.position)


def _script_problems(script: HookScript, root: Path) -> Iterator[tuple[str, Severity, str]]:
    loc = script.location
    if loc.startswith("/"):
        yield ("location-absolute", Severity.WARNING,
               f"location {loc!r} starts with '/' but is still looked up inside the revision; "
               f"write {loc.lstrip('/')!r}")
    if any(c.isspace() for c in loc):
        yield ("location-space", Severity.WARNING,
               f"location {loc!r} contains white space; pifleet-agent quotes it, but the "
               "official agent splits the command there and fails")
    file = root / loc.lstrip("/")
    try:
        info = file.stat()
    except OSError:
        yield ("hook-script-missing", Severity.ERROR,
               f"{loc} is not in the revision; the event would fail with ScriptMissing")
        return
    if not stat.S_ISREG(info.st_mode):
        yield ("hook-script-missing", Severity.ERROR, f"{loc} is not a regular file")
        return
    if not info.st_mode & stat.S_IXUSR:
        yield ("hook-not-executable", Severity.WARNING,
               f"{loc} is not executable; the agent will chmod +x it, but set the bit in the "
               "revision (git update-index --chmod=+x, or chmod +x before zipping)")
    try:
        with file.open("rb") as fh:
            head = fh.read(_SCRIPT_HEAD_BYTES)
    except OSError as exc:
        yield ("hook-script-missing", Severity.ERROR, f"{loc} cannot be read: {exc.strerror}")
        return
    yield from _script_content(loc, head, script)


def _script_content(loc: str, head: bytes, script: HookScript) -> Iterator[
        tuple[str, Severity, str]]:
    if head.startswith(b"\x7fELF"):
        return
    first_line = head.split(b"\n", 1)[0]
    if not head.startswith(b"#!"):
        yield ("hook-no-shebang", Severity.WARNING,
               f"{loc} has no '#!' line, so it cannot be executed directly "
               "('Exec format error'); start it with #!/bin/bash or #!/bin/sh")
    elif first_line.endswith(b"\r"):
        yield ("hook-crlf", Severity.ERROR,
               f"{loc} has Windows line endings (CRLF): the kernel looks for an interpreter "
               "named with a trailing carriage return and fails; convert it with dos2unix")
    if script.runas and _SUDO.search(head):
        yield ("runas-sudo", Severity.WARNING,
               f"{loc} runs as {script.runas!r} and calls sudo, which will wait for a password "
               "unless that user has passwordless sudo; drop runas or the sudo")


def _event_timeouts(spec: AppSpec) -> Iterator[Finding]:
    for event, scripts in spec.hooks:
        total = sum(s.timeout_s for s in scripts if s.timeout_given)
        if total > EVENT_TIME_LIMIT_S:
            yield Finding("event-timeout", Severity.WARNING,
                          f"the timeouts of {event} add up to {total} s; CodeDeploy allows "
                          f"{EVENT_TIME_LIMIT_S} s for all scripts of one event, so lower them",
                          f"hooks.{event}", scripts[0].position if scripts else None)


def _application_stop(spec: AppSpec, root: Path,
                      previous: str | os.PathLike[str] | None) -> Iterator[Finding]:
    for event in sorted(RUNS_PREVIOUS_REVISION):
        scripts = spec.scripts(event)
        if not scripts:
            continue
        where = f"hooks.{event}"
        if previous is None:
            yield Finding("previous-revision-script", Severity.INFO,
                          f"{event} runs the scripts of the last successfully installed "
                          "revision, not these: a change here takes effect on the deployment "
                          "after this one", where, scripts[0].position)
            continue
        changed = [s.location for s in scripts
                   if _read(root / s.location.lstrip("/"))
                   != _read(Path(previous) / s.location.lstrip("/"))]
        if changed:
            yield Finding("previous-revision-script", Severity.WARNING,
                          f"{event} scripts changed since the previous revision "
                          f"({', '.join(changed)}); this deployment still runs the old ones",
                          where, scripts[0].position)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _destinations(spec: AppSpec) -> Iterator[Finding]:
    for i, mapping in enumerate(spec.files):
        dest = normalize(mapping.destination)
        where = f"files[{i}].destination"
        if dest == "/boot" or (dest.startswith("/boot/") and not dest.startswith("/boot/firmware")):
            yield Finding("boot-firmware", Severity.WARNING,
                          f"{dest} is under /boot: on Raspberry Pi OS Bookworm and later the "
                          "firmware partition (config.txt, cmdline.txt) is /boot/firmware",
                          where, mapping.position)
        agent_path = _agent_path(dest)
        if agent_path:
            yield _agent_path_finding(dest, agent_path, where, mapping.position)


def _agent_path(path: str) -> str | None:
    return next((p for p in AGENT_PATHS if _under(path, p)), None)


def _agent_path_finding(path: str, agent_path: str, where: str,
                        position: Position | None) -> Finding:
    return Finding("agent-path", Severity.ERROR,
                   f"{path} is inside {agent_path}, which belongs to the deployment agent; "
                   "install the application elsewhere (for example under /opt)",
                   where, position)


def _permission_objects(spec: AppSpec) -> Iterator[Finding]:
    destinations = [normalize(m.destination) for m in spec.files]
    for i, permission in enumerate(spec.permissions):
        obj = normalize(permission.object)
        related = any(_under(obj, d) or _under(d, obj) for d in destinations)
        if not related:
            yield Finding("permission-unused", Severity.WARNING,
                          f"object {obj} is not installed by this AppSpec; permissions only "
                          "apply to files and directories a deployment installs",
                          f"permissions[{i}].object", permission.position)


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _install_plan(spec: AppSpec, root: Path) -> Iterator[Finding]:
    try:
        plan = plan_install(spec, root, target=EmptyTarget())
    except AppSpecError as exc:
        yield from exc.findings
        return
    destinations = [normalize(m.destination) for m in spec.files]
    for i, (permission, targets) in enumerate(zip(spec.permissions, plan.permission_targets,
                                                  strict=True)):
        obj = normalize(permission.object)
        if not targets and any(_under(obj, d) or _under(d, obj) for d in destinations):
            yield Finding("permission-matches-nothing", Severity.WARNING,
                          f"this permission matches nothing the revision installs: an object "
                          f"directory applies to what is below {obj}, not to {obj} itself, and "
                          "only to files and directories this deployment creates",
                          f"permissions[{i}]", permission.position)
    flagged = {_agent_path(normalize(m.destination)) for m in spec.files}
    for step in plan.steps:
        if not isinstance(step, Copy):
            continue
        agent_path = _agent_path(step.destination)
        if agent_path and agent_path not in flagged:
            flagged.add(agent_path)
            yield _agent_path_finding(step.destination, agent_path, "files", None)
    scripts = {os.path.normpath(root / s.location.lstrip("/")): s.location
               for _, group in spec.hooks for s in group}
    for step in plan.steps:
        if isinstance(step, Copy) and os.path.normpath(step.source) in scripts:
            yield Finding("installs-hook-script", Severity.INFO,
                          f"hook script {scripts[os.path.normpath(step.source)]} is also "
                          f"installed to {step.destination}; hooks run the copy inside the "
                          "revision, not the installed one")

