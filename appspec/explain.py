"""Says in plain words what a deployment of a revision will do on a Pi, event by event."""

from __future__ import annotations

import os
from pathlib import Path

from .events import IN_PLACE_ORDER, RUNS_PREVIOUS_REVISION
from .model import AppSpec, FileExistsBehavior
from .plan import Chmod, Chown, Copy, EmptyTarget, Mkdir, SetAcl, SetContext, plan_install


def explain(spec: AppSpec, revision: str | os.PathLike[str]) -> list[str]:
    """Lines describing the in-place lifecycle of ``spec`` (the plan assumes a fresh Pi)."""
    lines = [f"A deployment of {revision} runs these lifecycle events in order:"]
    for event in IN_PLACE_ORDER:
        lines.extend(_event(spec, event, revision))
    behavior = spec.file_exists_behavior
    lines.append("")
    lines.append(
        f"Existing files at a destination: {behavior.value} (set in the AppSpec)" if behavior
        else f"Existing files at a destination: the deployment's choice "
             f"(default {FileExistsBehavior.DISALLOW.value}); files the previous deployment of "
             "the same group installed are removed first")
    return lines


def _event(spec: AppSpec, event: str, revision: str | os.PathLike[str]) -> list[str]:
    if event == "DownloadBundle":
        return ["  DownloadBundle    the agent fetches and unpacks the revision"]
    if event == "Install":
        return _install(spec, revision)
    scripts = spec.scripts(event)
    if not scripts:
        return []
    whose = " (scripts of the last successful revision)" if event in RUNS_PREVIOUS_REVISION \
        else ""
    lines = [f"  {event:<17} runs{whose}:"]
    for s in scripts:
        who = f" as {s.runas}" if s.runas else " as root"
        who += " with sudo" if s.sudo else ""
        lines.append(f"    {s.location}{who}, killed after {s.timeout_s} s")
    return lines


def _install(spec: AppSpec, revision: str | os.PathLike[str]) -> list[str]:
    plan = plan_install(spec, Path(revision), target=EmptyTarget())
    copies = [s for s in plan.steps if isinstance(s, Copy)]
    mkdirs = [s for s in plan.steps if isinstance(s, Mkdir)]
    perms = [s for s in plan.steps if isinstance(s, Chmod | SetAcl | SetContext | Chown)]
    lines = [f"  Install           copies {len(copies)} files and creates {len(mkdirs)} "
             "directories:"]
    for m in spec.files:
        lines.append(f"    {m.source} -> {m.destination}")
    if perms:
        lines.append(f"    then sets permissions {len(perms)} times "
                     "(chmod, setfacl, semanage, chown per target):")
        for step in perms[:8]:
            lines.append(f"      {_describe_step(step)}")
        if len(perms) > 8:
            lines.append(f"      ... and {len(perms) - 8} more")
    return lines


def _describe_step(step: Chmod | SetAcl | SetContext | Chown) -> str:
    if isinstance(step, Chmod):
        return f"chmod {step.mode.text} {step.path}"
    if isinstance(step, SetAcl):
        return f"setfacl {','.join(str(a) for a in step.aces)} {step.path}"
    if isinstance(step, SetContext):
        return f"semanage fcontext -t {step.context.type} {step.path}"
    owner = f"{step.owner or ''}:{step.group or ''}".rstrip(":")
    return f"chown {owner} {step.path}"
