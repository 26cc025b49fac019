"""Executes one host command (``DownloadBundle``, ``Install`` or a hook event) of a deployment.

The same engine serves the command plane (one command per ``PollHostCommand``) and
``deploy-local`` (all commands of a deployment in a row). Each command ends as ``Diagnostics``
the way the official agent reports it; no exception escapes ``execute`` for a failed command.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from appspec import AppSpec, AppSpecError, LifecycleEvent, read_appspec

from .bundle import BundleType, UnpackLimits, unpack_bundle
from .diagnostics import Diagnostics
from .errors import BundleError, DeployError, InstallError, InvalidCommandError
from .hooks import HookRunOptions, ScriptLog, run_event
from .install import Installer
from .layout import DeploymentDir, DeploymentRoot
from .revisions import select_revision
from .spec import DeploymentSpec, Revision, RevisionSource
from .tracking import CommandTracker, InFlight

log = logging.getLogger(__name__)

DOWNLOAD_BUNDLE = "DownloadBundle"
INSTALL = "Install"
HOOK_COMMANDS = tuple(str(e) for e in LifecycleEvent)
# The agent's own credentials must not reach revision scripts (they run revision code).
_SECRET_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                     "AWS_SECURITY_TOKEN")
# What systemd gives the agent's own process: a hook inheriting NOTIFY_SOCKET/WATCHDOG_* could
# speak for the service, and JOURNAL_STREAM would claim a stderr that is really our pipe.
_SERVICE_MANAGER_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID",
                              "JOURNAL_STREAM", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
                              "MANAGERPID")
# Fetches an S3 or GitHub revision to the given path; the command plane provides one.
Fetcher = Callable[[Revision, Path], None]


@dataclass(frozen=True)
class EngineConfig:
    root: DeploymentRoot = field(default_factory=DeploymentRoot)
    install_root: Path = Path("/")  # where AppSpec destinations land ("/" on a Pi)
    max_revisions: int = 5
    limits: UnpackLimits = field(default_factory=UnpackLimits)
    hooks: HookRunOptions = field(default_factory=HookRunOptions)
    deployments_log: bool = True
    environment: Mapping[str, str] | None = None  # base environment of hooks (default: ours)


class CommandExecutor:
    def __init__(self, config: EngineConfig | None = None, *,
                 fetch: Fetcher | None = None) -> None:
        self.config = config or EngineConfig()
        self.layout = self.config.root
        self.tracker = CommandTracker(self.layout.ongoing)
        self._fetch = fetch

    # -- the command plane's view ---------------------------------------------------------

    def recover(self) -> tuple[InFlight, Diagnostics] | None:
        """After a restart: the command that was running, reported failed with code 7."""
        found = self.tracker.recover()
        return (found, Diagnostics.after_restart()) if found else None

    def run_command(self, command: str, spec: DeploymentSpec, *,
                    host_command_identifier: str) -> Diagnostics:
        """``execute`` inside the ongoing-deployment tracking file."""
        self.tracker.begin(spec.deployment_id, host_command_identifier)
        try:
            return self.execute(command, spec)
        finally:
            self.tracker.end(spec.deployment_id)

    def is_noop(self, command: str, spec: DeploymentSpec) -> bool:
        """DownloadBundle and Install never are; unknown commands always; a hook when it has no
        revision (first deployment) or no scripts for the event."""
        if command in (DOWNLOAD_BUNDLE, INSTALL):
            return False
        if not self._is_hook(command, spec):
            return True
        try:
            chosen = select_revision(command, spec, self.layout)
            if chosen is None:
                return True
            return not self._appspec(chosen, spec).scripts(command)
        except (DeployError, AppSpecError):
            return False  # execute will report the problem

    def scripts_for(self, event: str, spec: DeploymentSpec) -> tuple[str, ...]:
        """The script locations a hook event would run (empty when unknown or none)."""
        if not self._is_hook(event, spec):
            return ()
        try:
            chosen = select_revision(event, spec, self.layout)
            if chosen is None:
                return ()
            return tuple(s.location for s in self._appspec(chosen, spec).scripts(event))
        except (DeployError, AppSpecError):
            return ()

    def execute(self, command: str, spec: DeploymentSpec) -> Diagnostics:
        try:
            if command == DOWNLOAD_BUNDLE:
                self.download_bundle(spec)
            elif command == INSTALL:
                self.install(spec)
            elif self._is_hook(command, spec):
                return self.run_hook(command, spec)
            else:
                raise InvalidCommandError(f"Unsupported command type: {command}.")
        except DeployError as exc:
            return Diagnostics.failure(exc)
        except AppSpecError as exc:
            return Diagnostics.failure(InstallError(_appspec_message(exc)))
        except Exception as exc:
            # The command boundary: whatever broke, the service must hear "failed, code 5"
            # (UnknownError) rather than nothing, as upstream does.
            log.exception("%s of %s failed unexpectedly", command, spec.deployment_id)
            return Diagnostics.failure(DeployError(f"{command} failed: {type(exc).__name__}: "
                                                   f"{exc}"))
        return Diagnostics.success()

    # -- the commands ---------------------------------------------------------------------

    def download_bundle(self, spec: DeploymentSpec) -> DeploymentDir:
        group = spec.deployment_group_id
        current = self.layout.deployment(group, spec.deployment_id)
        current.path.mkdir(parents=True, exist_ok=True)
        self.layout.prune(group, current, self.config.max_revisions)
        revision = spec.revision
        try:
            if revision.source is RevisionSource.LOCAL_DIRECTORY:
                unpack_bundle(Path(_location(revision)), BundleType.DIRECTORY, current.archive,
                              limits=self.config.limits)
            else:
                self._bring_bundle(revision, current.bundle)
                unpack_bundle(current.bundle, revision.bundle_type, current.archive,
                              limits=self.config.limits)
        except OSError as exc:
            raise BundleError(f"cannot prepare the bundle in {current.path}: "
                              f"{exc.strerror or exc}") from exc
        self.layout.set_most_recent(group, current)
        return current

    def install(self, spec: DeploymentSpec) -> None:
        group = spec.deployment_group_id
        current = self.layout.deployment(group, spec.deployment_id)
        if not current.archive.is_dir():
            raise InstallError(f"there is no downloaded revision in {current.archive}; "
                               "DownloadBundle must run before Install")
        appspec = self._appspec(current, spec)
        installer = Installer(cleanup_file=self.layout.cleanup_file(group),
                              install_json=self.layout.install_json(group),
                              install_root=self.config.install_root)
        installer.install(appspec, current.archive, spec)
        self.layout.set_last_successful(group, current)

    def run_hook(self, event: str, spec: DeploymentSpec) -> Diagnostics:
        chosen = select_revision(event, spec, self.layout)
        if chosen is None:
            return Diagnostics.success(noop=True)
        scripts = self._appspec(chosen, spec).scripts(event)
        if not scripts:
            return Diagnostics.success(noop=True)
        current = self.layout.deployment(spec.deployment_group_id, spec.deployment_id)
        log = ScriptLog(current.scripts_log,
                        deployments_log=(self.layout.deployments_log
                                         if self.config.deployments_log else None),
                        deployment_id=spec.deployment_id)
        try:
            run_event(event, scripts, archive_dir=chosen.archive,
                      environment=self.hook_environment(event, spec), log=log,
                      options=self.config.hooks)
        finally:
            log.close()
        return Diagnostics.success()

    def hook_environment(self, event: str, spec: DeploymentSpec) -> dict[str, str]:
        base = dict(os.environ if self.config.environment is None else self.config.environment)
        for name in (*_SECRET_VARIABLES, *_SERVICE_MANAGER_VARIABLES):
            base.pop(name, None)
        for name in ("BUNDLE_BUCKET", "BUNDLE_KEY", "BUNDLE_VERSION", "BUNDLE_ETAG",
                     "BUNDLE_COMMIT"):
            base.pop(name, None)
        base.update({
            "LIFECYCLE_EVENT": event,
            "DEPLOYMENT_ID": spec.deployment_id,
            "APPLICATION_NAME": spec.application_name,
            "DEPLOYMENT_GROUP_NAME": spec.deployment_group_name,
            "DEPLOYMENT_GROUP_ID": spec.deployment_group_id,
            **spec.revision.environment(),
        })
        if str(self.config.install_root) != "/":
            # pifleet's addition: scripts of a revision installed under a prefix can find it.
            base["PIFLEET_INSTALL_ROOT"] = str(self.config.install_root)
        return base

    # -- helpers --------------------------------------------------------------------------

    def _is_hook(self, command: str, spec: DeploymentSpec) -> bool:
        return command in HOOK_COMMANDS or command in spec.custom_events

    def _appspec(self, deployment: DeploymentDir, spec: DeploymentSpec) -> AppSpec:
        return read_appspec(deployment.archive, filename=spec.appspec_filename,
                            custom_events=spec.custom_events)

    def _bring_bundle(self, revision: Revision, bundle: Path) -> None:
        if bundle.is_symlink() or bundle.exists():
            bundle.unlink()
        if revision.source is RevisionSource.LOCAL_FILE:
            source = Path(_location(revision))
            if not source.is_file():
                raise BundleError(f"the bundle {source} does not exist or is not a file; check "
                                  "--bundle-location (use --type directory for a folder)")
            try:
                bundle.symlink_to(source.resolve())
            except OSError:
                shutil.copyfile(source, bundle)
            return
        if self._fetch is None:
            raise BundleError(f"{revision.source} revisions are downloaded by the running "
                              "agent; deploy-local takes a local file or directory")
        self._fetch(revision, bundle)


def _location(revision: Revision) -> str:
    if not revision.location:
        raise BundleError("the revision has no location")
    return revision.location


def _appspec_message(error: AppSpecError) -> str:
    lines = [str(f) for f in error.errors] or [str(error)]
    more = f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""
    return "the AppSpec is invalid: " + "; ".join(lines[:3]) + more
