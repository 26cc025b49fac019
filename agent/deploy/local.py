"""``pifleet-agent deploy-local``: a whole deployment from a local bundle, no AWS involved.

Our ``codedeploy-local``: the same options, event-order rules and deployment-root, driving the
same ``CommandExecutor`` the daemon uses, so what works here works on the fleet.
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from appspec import FileExistsBehavior, LifecycleEvent

from .bundle import BundleType
from .diagnostics import Diagnostics
from .errors import DeployError, ErrorCode
from .executor import DOWNLOAD_BUNDLE, INSTALL, CommandExecutor, EngineConfig
from .layout import DEFAULT_ROOT, DeploymentRoot
from .spec import DeploymentSpec, Revision, RevisionSource

E = LifecycleEvent
DEFAULT_EVENTS = (E.BeforeBlockTraffic, E.AfterBlockTraffic, E.ApplicationStop, DOWNLOAD_BUNDLE,
                  E.BeforeInstall, INSTALL, E.AfterInstall, E.ApplicationStart,
                  E.ValidateService, E.BeforeAllowTraffic, E.AfterAllowTraffic)
# Events that run the previous revision's scripts and so may come before DownloadBundle.
PREVIOUS_REVISION_EVENTS = (E.BeforeBlockTraffic, E.AfterBlockTraffic, E.ApplicationStop)
NEW_REVISION_EVENTS = (E.AfterInstall, E.ApplicationStart, E.ValidateService,
                       E.BeforeAllowTraffic, E.AfterAllowTraffic)
DEFAULT_GROUP_ID = "default-local-deployment-group"
DEFAULT_GROUP_NAME = "LocalFleet"


class UsageError(DeployError):
    """The options do not describe a deployment we can run (exit status 2)."""


@dataclass(frozen=True)
class LocalOptions:
    bundle_location: str = "."
    bundle_type: BundleType = BundleType.DIRECTORY
    file_exists_behavior: FileExistsBehavior = FileExistsBehavior.DISALLOW
    deployment_group_id: str = DEFAULT_GROUP_ID
    deployment_group_name: str = DEFAULT_GROUP_NAME
    application_name: str | None = None
    events: tuple[str, ...] | None = None
    appspec_filename: str | None = None
    root: Path | None = None  # everything under this folder: deployment-root and destinations


@dataclass(frozen=True)
class EventResult:
    name: str
    diagnostics: Diagnostics
    noop: bool
    seconds: float
    scripts: tuple[str, ...] = ()


@dataclass(frozen=True)
class LocalResult:
    deployment_id: str
    events: tuple[EventResult, ...]
    scripts_log: Path

    @property
    def succeeded(self) -> bool:
        return all(e.diagnostics.succeeded for e in self.events)


def ordered_events(events: Sequence[str] | None) -> list[str]:
    """The events to run: the default order, or ``events`` checked and completed as upstream
    does (DownloadBundle and Install added in front if missing, swapped if reversed)."""
    if not events:
        return list(DEFAULT_EVENTS)
    events = list(events)
    _check_order(events)
    result = [e for e in (DOWNLOAD_BUNDLE, INSTALL) if e not in events] + events
    download, install = result.index(DOWNLOAD_BUNDLE), result.index(INSTALL)
    if install < download:
        result[download], result[install] = result[install], result[download]
    return result


def _check_order(events: list[str]) -> None:
    given = ",".join(events)
    if DOWNLOAD_BUNDLE in events:
        before = events[: events.index(DOWNLOAD_BUNDLE)]
        if any(e in (*NEW_REVISION_EVENTS, INSTALL) for e in before):
            raise UsageError(f"only {', '.join(PREVIOUS_REVISION_EVENTS)} may come before "
                             f"DownloadBundle; fix the order of --events {given}")
    if INSTALL in events:
        before = events[: events.index(INSTALL)]
        if any(e in NEW_REVISION_EVENTS for e in before):
            allowed = (*PREVIOUS_REVISION_EVENTS, DOWNLOAD_BUNDLE, E.BeforeInstall)
            raise UsageError(f"only {', '.join(allowed)} may come before Install; fix the "
                             f"order of --events {given}")


def revision_for(location: str, bundle_type: BundleType) -> Revision:
    """A local file or directory revision; remote locations are refused with what to do."""
    if location.startswith(("s3://", "https://", "http://")):
        raise UsageError(f"{location} is not a local path; deploy-local takes a local bundle "
                         "file or directory (download the bundle first, or push it with "
                         "fleetctl and deploy it to the device)")
    path = Path(location.removeprefix("file://")).expanduser().resolve()
    if not path.exists():
        raise UsageError(f"bundle location {location} does not exist")
    if bundle_type is BundleType.DIRECTORY:
        if not path.is_dir():
            raise UsageError(f"{location} is a file but --type is directory; give --type "
                             "tar, tgz or zip")
        return Revision(RevisionSource.LOCAL_DIRECTORY, bundle_type, str(path))
    if path.is_dir():
        raise UsageError(f"{location} is a directory but --type is {bundle_type}; give "
                         "--type directory")
    return Revision(RevisionSource.LOCAL_FILE, bundle_type, str(path))


def check_appspec_present(revision: Revision, filename: str | None) -> None:
    if revision.source is not RevisionSource.LOCAL_DIRECTORY or revision.location is None:
        return
    names = ([filename] if filename else []) + ["appspec.yml", "appspec.yaml"]
    if not any((Path(revision.location) / n).is_file() for n in names):
        raise UsageError(f"{revision.location} holds no {' or '.join(names)}; give the folder "
                         "that holds the AppSpec, or --appspec-filename")


def new_deployment_id() -> str:
    alphabet = string.ascii_uppercase + string.digits
    return "d-" + "".join(secrets.choice(alphabet) for _ in range(9)) + "-local"


def engine_config(root: Path | None) -> EngineConfig:
    if root is None:
        return EngineConfig(root=DeploymentRoot(DEFAULT_ROOT))
    root = root.resolve()
    return EngineConfig(root=DeploymentRoot(root / "deployment-root"), install_root=root)


def deploy_local(options: LocalOptions, *, out: TextIO,
                 config: EngineConfig | None = None) -> LocalResult:
    """Run the deployment, printing each event as it ends; raises UsageError on bad options."""
    events = ordered_events(options.events)
    revision = revision_for(options.bundle_location, options.bundle_type)
    check_appspec_present(revision, options.appspec_filename)
    custom = tuple(e for e in events if e not in DEFAULT_EVENTS)
    spec = DeploymentSpec(
        deployment_id=new_deployment_id(),
        application_name=options.application_name or options.bundle_location,
        deployment_group_name=options.deployment_group_name,
        deployment_group_id=options.deployment_group_id,
        revision=revision,
        file_exists_behavior=options.file_exists_behavior,
        appspec_filename=options.appspec_filename,
        custom_events=custom,
    )
    executor = CommandExecutor(config or engine_config(options.root))
    folder = executor.layout.deployment(spec.deployment_group_id, spec.deployment_id)
    _prepare(executor, out)
    out.write(f"Deploying {revision.location} ({revision.bundle_type}) as {spec.deployment_id} "
              f"of group {spec.deployment_group_id}\n  folder {folder.path}\n")
    results: list[EventResult] = []
    for event in events:
        noop = executor.is_noop(event, spec)
        scripts = executor.scripts_for(event, spec)
        out.write(f"  {event:<20} ")
        out.flush()
        start = time.monotonic()
        diagnostics = executor.run_command(event, spec, host_command_identifier="local")
        result = EventResult(event, diagnostics, noop and diagnostics.succeeded,
                             time.monotonic() - start, scripts)
        results.append(result)
        _print_event(out, result)
        out.flush()
        if not diagnostics.succeeded:
            break
    return LocalResult(spec.deployment_id, tuple(results), folder.scripts_log)


def _prepare(executor: CommandExecutor, out: TextIO) -> None:
    try:
        executor.layout.root.mkdir(parents=True, exist_ok=True)
    except PermissionError as exc:
        raise UsageError(f"cannot create {executor.layout.root}: permission denied; run as root "
                         "or pass --root DIR to deploy under a folder of yours") from exc
    interrupted = executor.recover()
    if interrupted:
        found, _ = interrupted
        out.write(f"note: deployment {found.deployment_id} was interrupted mid-command; its "
                  "event counts as failed (code 7)\n")


def _print_event(out: TextIO, result: EventResult) -> None:
    d = result.diagnostics
    if d.succeeded:
        status = "skipped" if result.noop else "ok"
        detail = "nothing to run" if result.noop else ", ".join(result.scripts)
    else:
        status = "FAILED"
        detail = f"{ErrorCode(d.error_code).name} (code {int(d.error_code)}): {d.message}"
    out.write(f"{status:<8} {result.seconds:7.2f} s  {detail}".rstrip() + "\n")
    if not d.succeeded and d.log:
        out.write("    last output:\n")
        for line in d.log.splitlines()[-20:]:
            out.write(f"      {line}\n")


def summary(result: LocalResult) -> str:
    ran = [e for e in result.events if not e.noop]
    seconds = sum(e.seconds for e in result.events)
    if result.succeeded:
        return (f"Local deployment {result.deployment_id} succeeded: {len(ran)} events ran, "
                f"{len(result.events) - len(ran)} had nothing to do, {seconds:.1f} s. "
                f"Script log: {result.scripts_log}")
    failed = result.events[-1]
    return (f"Local deployment {result.deployment_id} failed at {failed.name} after "
            f"{seconds:.1f} s. Script log: {result.scripts_log}")
