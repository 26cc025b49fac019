"""The install plan: what the Install step copies, creates and changes, in the agent's order.

``plan_install`` is a pure function of the AppSpec, the revision directory (read only) and a view
of the target filesystem. It follows the official agent's rules:

- a directory source is copied recursively into ``destination``; a file source is copied to
  ``destination/<basename>`` (files cannot be renamed); missing ancestors are created first;
- an existing destination file follows ``file_exists_behavior`` (the AppSpec's value wins over
  the deployment's): DISALLOW fails, OVERWRITE copies, RETAIN keeps it;
- two copies to one target, or a copy and a directory at one target, are errors; repeated
  directories are created once;
- permissions apply only to what this plan installs, in permission order, each target at most
  once, as chmod, setfacl, semanage, chown.

Where the official agent would follow a symlink out of the revision we refuse instead.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from .errors import Finding, InstallPlanError, Position, Severity
from .model import AppSpec, FileExistsBehavior, Permission, SelinuxContext
from .permissions import Ace, Mode, simple_glob_matches


class TargetView(Protocol):
    """What the planner needs to know about the machine the revision is installed on."""

    def exists(self, path: str) -> bool: ...

    def is_dir(self, path: str) -> bool: ...


@dataclass(frozen=True)
class RootedTarget:
    """The real filesystem, with AppSpec paths placed under ``root`` (``/`` on a real Pi)."""

    root: str = "/"

    def real(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def exists(self, path: str) -> bool:
        return os.path.exists(self.real(path))

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(self.real(path))


@dataclass(frozen=True)
class EmptyTarget:
    """A machine where nothing exists yet but ``/``: shows everything a revision would create."""

    def exists(self, path: str) -> bool:
        return path == "/"

    def is_dir(self, path: str) -> bool:
        return path == "/"


@dataclass(frozen=True, slots=True)
class Mkdir:
    path: str


@dataclass(frozen=True, slots=True)
class Copy:
    source: str
    destination: str


@dataclass(frozen=True, slots=True)
class Chmod:
    path: str
    mode: Mode


@dataclass(frozen=True, slots=True)
class SetAcl:
    path: str
    aces: tuple[Ace, ...]


@dataclass(frozen=True, slots=True)
class SetContext:
    path: str
    context: SelinuxContext


@dataclass(frozen=True, slots=True)
class Chown:
    path: str
    owner: str | None
    group: str | None


Step = Mkdir | Copy | Chmod | SetAcl | SetContext | Chown


@dataclass(frozen=True)
class InstallPlan:
    """Steps in execution order; ``retained`` files were kept (RETAIN); ``permission_targets[i]``
    lists what ``permissions[i]`` applies to."""

    steps: tuple[Step, ...]
    retained: tuple[str, ...] = ()
    permission_targets: tuple[tuple[str, ...], ...] = ()

    def to_instructions(self) -> dict[str, list[dict[str, object]]]:
        """The ``<group>-install.json`` document the official agent writes."""
        return {"instructions": [_instruction(s) for s in self.steps]}


def _instruction(step: Step) -> dict[str, object]:
    if isinstance(step, Copy):
        return {"type": "copy", "source": step.source, "destination": step.destination}
    if isinstance(step, Mkdir):
        return {"type": "mkdir", "directory": step.path}
    if isinstance(step, Chmod):
        return {"type": "chmod", "mode": step.mode.text, "file": step.path}
    if isinstance(step, SetAcl):
        return {"type": "setfacl", "acl": [str(a) for a in step.aces], "file": step.path}
    if isinstance(step, SetContext):
        ctx = step.context
        return {"type": "semanage", "context": {
            "user": ctx.name, "role": None, "type": ctx.type,
            "range": str(ctx.range) if ctx.range else None}, "file": step.path}
    return {"type": "chown", "owner": step.owner, "group": step.group, "file": step.path}


def normalize(path: str) -> str:
    """``File.expand_path`` for absolute paths: no ``.``/``..``, no doubled or trailing ``/``."""
    result = posixpath.normpath(path)
    return "/" + result.lstrip("/") if result.startswith("//") else result


def plan_install(spec: AppSpec, revision: str | os.PathLike[str], *,
                 file_exists_behavior: FileExistsBehavior = FileExistsBehavior.DISALLOW,
                 target: TargetView | None = None) -> InstallPlan:
    """Compute the install plan; raise ``InstallPlanError`` listing every conflict found."""
    builder = _Builder(spec, os.fspath(revision), target or RootedTarget(),
                       spec.file_exists_behavior or file_exists_behavior)
    builder.plan_files()
    builder.plan_permissions()
    if builder.findings:
        raise InstallPlanError(builder.findings)
    return InstallPlan(tuple(builder.steps), tuple(builder.retained),
                       tuple(tuple(t) for t in builder.targets))


@dataclass
class _Builder:
    spec: AppSpec
    revision: str
    target: TargetView
    behavior: FileExistsBehavior
    steps: list[Step] = field(default_factory=list)
    retained: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    copies: dict[str, str] = field(default_factory=dict)
    mkdirs: dict[str, None] = field(default_factory=dict)  # ordered set
    permitted: set[str] = field(default_factory=set)
    targets: list[list[str]] = field(default_factory=list)
    _where: str = ""
    _pos: Position | None = None

    def fail(self, message: str) -> None:
        self.findings.append(Finding("install-plan", Severity.ERROR, message, self._where,
                                     self._pos, self.spec.file))

    def plan_files(self) -> None:
        real_root = os.path.realpath(self.revision)
        for i, mapping in enumerate(self.spec.files):
            self._where, self._pos = f"files[{i}]", mapping.position
            source = os.path.join(self.revision, mapping.source.lstrip("/"))
            destination = normalize(mapping.destination)
            if not os.path.lexists(source):
                self.fail(f"source {mapping.source!r} is not in the revision; check the path "
                          "(it is relative to the folder holding the AppSpec)")
            elif not _inside(os.path.realpath(source), real_root):
                self.fail(f"source {mapping.source!r} is a symlink leading out of the revision")
            elif os.path.isdir(source):
                self._ancestors(destination)
                self._copy_dir(source, destination, real_root, set())
            else:
                file_destination = normalize(posixpath.join(destination,
                                                            posixpath.basename(source)))
                self._ancestors(file_destination)
                self._copy_file(source, file_destination)

    def _ancestors(self, destination: str) -> None:
        missing: list[str] = []
        parent = posixpath.dirname(destination)
        while parent not in (".", "/") and not self.target.exists(parent):
            missing.insert(0, parent)
            parent = posixpath.dirname(parent)
        for directory in missing:
            self._mkdir(directory)

    def _copy_dir(self, source: str, destination: str, real_root: str, seen: set[str]) -> None:
        real = os.path.realpath(source)
        if real in seen:
            self.fail(f"{source} is a symlink loop inside the revision")
            return
        if self.target.exists(destination) and not self.target.is_dir(destination):
            self.fail(f"{destination} already exists on the Pi and is not a directory")
            return
        if not self.target.is_dir(destination):
            self._mkdir(destination)
        with os.scandir(source) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        for entry in entries:
            path = os.path.join(source, entry.name)
            entry_destination = posixpath.join(destination, entry.name)
            # Only a symlink can lead out: a plain entry of a directory inside is inside too,
            # so realpath (an lstat per path component) is paid for symlinks alone.
            if entry.is_symlink() and not _inside(os.path.realpath(path), real_root):
                self.fail(f"{path} is a symlink leading out of the revision")
            elif entry.is_dir():
                self._copy_dir(path, entry_destination, real_root, seen | {real})
            else:
                self._copy_file(path, entry_destination,
                                plain=entry.is_file(follow_symlinks=False) or entry.is_symlink())

    def _copy_file(self, source: str, destination: str, *, plain: bool | None = None) -> None:
        if plain is None:
            mode = os.lstat(source).st_mode
            plain = stat.S_ISREG(mode) or stat.S_ISLNK(mode)
        if not plain:
            self.fail(f"{source} is a device, FIFO or socket; a revision may hold only files, "
                      "directories and symlinks")
            return
        if self.target.exists(destination):
            if self.target.is_dir(destination):
                self.fail(f"{destination} is an existing directory on the Pi; a file cannot "
                          "replace it")
                return
            if self.behavior is FileExistsBehavior.DISALLOW:
                self.fail(f"{destination} already exists on the Pi and file_exists_behavior is "
                          "DISALLOW; set OVERWRITE or RETAIN, or remove the file")
                return
            if self.behavior is FileExistsBehavior.RETAIN:
                self.retained.append(destination)
                return
        if destination in self.copies:
            self.fail(f"two sources, {self.copies[destination]} and {source}, are copied to "
                      f"{destination}; remove one of them from files")
            return
        if destination in self.mkdirs:
            self.fail(f"{source} would be copied to {destination}, where this install also "
                      "creates a directory")
            return
        self.copies[destination] = source
        self.steps.append(Copy(source, destination))

    def _mkdir(self, directory: str) -> None:
        directory = normalize(directory)
        if directory in self.copies:
            self.fail(f"{directory} is both a copied file ({self.copies[directory]}) and a "
                      "directory to create")
            return
        if directory not in self.mkdirs:
            self.mkdirs[directory] = None
            self.steps.append(Mkdir(directory))

    def plan_permissions(self) -> None:
        for i, permission in enumerate(self.spec.permissions):
            self._where, self._pos = f"permissions[{i}]", permission.position
            self.targets.append([])
            obj = normalize(permission.object)
            if obj in self.copies:
                if "file" in permission.types and self._valid_for_file(permission, obj):
                    self._set(obj, permission)
            elif obj in self.mkdirs or self.target.is_dir(obj):
                for match in self._matches(permission, obj):
                    self._set(match, permission)

    def _valid_for_file(self, permission: Permission, obj: str) -> bool:
        if permission.pattern != "**" or permission.excepts:
            self.fail(f"object {obj} is a file, so pattern must be '**' and except empty")
            return False
        return self._no_default_acl(permission, obj)

    def _no_default_acl(self, permission: Permission, path: str) -> bool:
        if permission.acls and any(a.default for a in permission.acls):
            self.fail(f"default ACL entries (d:...) apply to directories only, but {path} is a "
                      "file; limit this permission with 'type: [directory]'")
            return False
        return True

    def _matches(self, permission: Permission, obj: str) -> Iterator[str]:
        base = obj if obj.endswith("/") else obj + "/"
        candidates: list[tuple[str, bool]] = []
        if "file" in permission.types:
            candidates += [(p, True) for p in self.copies]
        if "directory" in permission.types:
            candidates += [(p, False) for p in self.mkdirs]
        for path, is_file in candidates:
            if not path.startswith(base):
                continue
            rel = path[len(base):]
            if permission.pattern != "**" and not simple_glob_matches(rel, permission.pattern):
                continue
            if any(simple_glob_matches(rel, e) for e in permission.excepts):
                continue
            if is_file and not self._no_default_acl(permission, path):
                continue
            yield path

    def _set(self, path: str, permission: Permission) -> None:
        if path in self.permitted:
            self.fail(f"permissions for {path} are set by more than one permissions entry; "
                      "narrow the patterns so each file matches one entry")
            return
        self.permitted.add(path)
        self.targets[-1].append(path)
        if permission.mode is not None:
            self.steps.append(Chmod(path, permission.mode))
        if permission.acls is not None:
            self.steps.append(SetAcl(path, permission.acls))
        if permission.context is not None:
            self.steps.append(SetContext(path, permission.context))
        if permission.owner is not None or permission.group is not None:
            self.steps.append(Chown(path, permission.owner, permission.group))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")
