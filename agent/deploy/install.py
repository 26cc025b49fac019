"""The Install command: undo the group's previous install, copy the revision, set permissions.

Every path is in the group's clean-up file *before* it is created, so an agent killed or a
power cut mid-install leaves a list the next Install can undo; DISALLOW then only trips on files
the agent did not install. The official agent appends each path just before acting; we list all
new paths up front and fsync once (durable at the price of one fsync, where one per file would
make installs several times slower on an SD card). An existing file replaced under OVERWRITE is
listed only when it is actually replaced, so a failed install never makes the next clean-up
delete a file it did not touch. Paths listed but never created are skipped by the clean-up.
"""

from __future__ import annotations

import errno
import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from appspec import AppSpec
from appspec.permissions import full_acl
from appspec.plan import (
    Chmod,
    Chown,
    Copy,
    InstallPlan,
    Mkdir,
    RootedTarget,
    SetAcl,
    SetContext,
    Step,
    plan_install,
)

from .atomic import fsync_dir, write_atomic
from .errors import InstallError
from .spec import DeploymentSpec

SEMANAGE_PREFIX = "semanage\0"
Runner = Callable[[list[str]], None]


def read_cleanup(path: Path) -> list[str]:
    """The entries of a clean-up file; a last line without newline is a torn write: dropped."""
    try:
        text = path.read_bytes().decode(errors="surrogateescape")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    return [line for line in lines[:-1] if line]


def run_cleanup(path: Path, *, run: Runner | None = None,
                which: Callable[[str], str | None] = shutil.which) -> list[str]:
    """Undo the previous install from ``path`` in reverse order, then delete the file.

    Files and symlinks are removed, directories removed only when empty, missing paths skipped,
    SELinux rules deleted. Returns the entries that could not be removed (left in place).
    """
    runner = run or _run
    left: list[str] = []
    for entry in reversed(read_cleanup(path)):
        if entry.startswith(SEMANAGE_PREFIX):
            target = entry.removeprefix(SEMANAGE_PREFIX)
            if which("semanage"):
                try:
                    runner(["semanage", "fcontext", "-d", target])
                except InstallError:
                    left.append(entry)
            continue
        if not _remove(entry):
            left.append(entry)
    if path.exists():
        path.unlink()
        fsync_dir(path.parent)
    return left


def _remove(entry: str) -> bool:
    try:
        info = os.lstat(entry)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        if stat.S_ISDIR(info.st_mode):
            os.rmdir(entry)
        else:
            os.unlink(entry)
    except OSError as exc:
        return exc.errno in (errno.ENOTEMPTY, errno.EEXIST)  # a non-empty directory stays
    return True


class Installer:
    """Runs the Install command for one deployment of a group."""

    def __init__(self, *, cleanup_file: Path, install_json: Path, install_root: Path = Path("/"),
                 run: Runner | None = None,
                 which: Callable[[str], str | None] = shutil.which) -> None:
        self._cleanup_file = cleanup_file
        self._install_json = install_json
        self._root = install_root
        self._run = run or _run
        self._which = which

    def install(self, appspec: AppSpec, archive: Path, spec: DeploymentSpec) -> InstallPlan:
        left = run_cleanup(self._cleanup_file, run=self._run, which=self._which)
        if left:
            raise InstallError(
                f"could not remove {len(left)} file(s) of the previous install, for example "
                f"{left[0]!r}; remove them by hand (or fix their permissions) and deploy again")
        if str(self._root) != "/":
            self._root.mkdir(parents=True, exist_ok=True)  # a sandbox prefix made on first use
        plan = plan_install(appspec, archive, file_exists_behavior=spec.file_exists_behavior,
                            target=RootedTarget(str(self._root)))
        write_atomic(self._install_json, json.dumps(plan.to_instructions()))
        self._execute(plan.steps)
        return plan

    def _real(self, path: str) -> str:
        return os.path.join(self._root, path.lstrip("/")) if str(self._root) != "/" else path

    def _execute(self, steps: Sequence[Step]) -> None:
        for step in steps:
            path = _created_path(step)
            if path is not None and "\n" in path:
                # The clean-up file is one path per line: the next Install would delete the
                # path after the line break, wherever it is.
                raise InstallError(f"cannot install {path!r}: the path holds a line break; "
                                   "fix the AppSpec's files destination (or the file's name)")
        self._cleanup_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self._cleanup_file, "a", encoding="utf-8", errors="surrogateescape") as log:
            # Everything this install will create, listed and made durable before the first
            # change: one fsync instead of one per file, and a power cut at any point leaves a
            # list that covers every path it could have created.
            for step in steps:
                path = _created_path(step)
                if path is not None and not os.path.lexists(self._real(path)):
                    log.write(self._real(path) + "\n")
            log.flush()
            os.fsync(log.fileno())
            for step in steps:
                try:
                    self._step(step, log)
                except OSError as exc:
                    raise InstallError(_os_message(step, exc)) from exc
            log.flush()

    def _step(self, step: Step, log: IO[str]) -> None:
        if isinstance(step, Mkdir):
            real = self._real(step.path)
            if not os.path.isdir(real):
                os.mkdir(real)
        elif isinstance(step, Copy):
            real = self._real(step.destination)
            exists = os.path.lexists(real)
            if exists:
                _note(log, real)  # OVERWRITE: listed only now that it is really replaced
            if exists or os.path.islink(step.source):
                # A kill between creating the replacement and renaming it over ``real`` would
                # otherwise leave a hidden file of ours there for good.
                _note(log, replacement_path(real))
            copy_entry(step.source, real, exists=exists)
        elif isinstance(step, Chmod):
            os.chmod(self._real(step.path), step.mode.bits)
        elif isinstance(step, SetAcl):
            real = self._real(step.path)
            acl = full_acl(step.aces, stat.S_IMODE(os.stat(real).st_mode))
            self._tool(["setfacl", "--set", ",".join(acl), real], "acl")
        elif isinstance(step, SetContext):
            self._set_context(step, log)
        else:
            self._chown(step)

    def _set_context(self, step: SetContext, log: IO[str]) -> None:
        if not self._which("semanage"):
            return  # no SELinux tooling: the official agent would fail; a Pi has no SELinux
        real = os.path.realpath(self._real(step.path))
        ctx = step.context
        command = ["semanage", "fcontext", "-a"]
        if ctx.name:
            command += ["-s", ctx.name]
        command += ["-t", ctx.type]
        if ctx.range:
            command += ["-r", str(ctx.range)]
        _note(log, SEMANAGE_PREFIX + real)
        self._run([*command, real])
        self._tool(["restorecon", "-v", real], "policycoreutils")

    def _chown(self, step: Chown) -> None:
        uid = _lookup(pwd.getpwnam, step.owner, "user", step.path)
        gid = _lookup(grp.getgrnam, step.group, "group", step.path)
        try:
            os.lchown(self._real(step.path), uid, gid)
        except PermissionError as exc:
            raise InstallError(f"cannot chown {step.path} to {step.owner or ''}:"
                               f"{step.group or ''}: only root may give files away; run the "
                               "agent as root") from exc

    def _tool(self, command: list[str], package: str) -> None:
        if not self._which(command[0]):
            raise InstallError(f"{command[0]} is not installed but the AppSpec's permissions "
                               f"need it; install the Debian package {package!r}")
        self._run(command)


def _lookup(find: Callable[[str], Any], name: str | None, what: str, path: str) -> int:
    if name is None:
        return -1
    try:
        return int(find(name)[2])
    except KeyError:
        raise InstallError(f"cannot chown {path}: there is no {what} {name!r} on this device; "
                           f"create the {what}, or change the AppSpec's permissions") from None


def _created_path(step: Step) -> str | None:
    if isinstance(step, Mkdir):
        return step.path
    if isinstance(step, Copy):
        return step.destination
    return None


def _note(log: IO[str], path: str) -> None:
    log.write(path + "\n")
    log.flush()


def copy_entry(source: str, destination: str, *, exists: bool | None = None) -> None:
    """Copy a file or symlink, keeping mode and times.

    A new file is written in place (it is in the clean-up list already, so a crash mid-copy is
    undone next time). An existing one is replaced by renaming a complete copy over it, so a
    running program never sees it half-written (and ETXTBSY cannot happen).
    """
    if exists is None:
        exists = os.path.lexists(destination)
    info = os.lstat(source)
    tmp = replacement_path(destination)
    if stat.S_ISLNK(info.st_mode):
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(os.readlink(source), tmp)
        os.replace(tmp, destination)
        return
    if not exists:
        _copy_file(source, destination)
        return
    if os.path.lexists(tmp):
        os.unlink(tmp)
    _copy_file(source, tmp)
    try:
        os.replace(tmp, destination)
    except BaseException:
        os.unlink(tmp)
        raise


def replacement_path(destination: str) -> str:
    """The hidden sibling a copy is written to before it is renamed over ``destination``."""
    directory, name = os.path.split(destination)
    return os.path.join(directory, f".{name}.pifleet-new")


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _copy_file(source: str, destination: str) -> None:
    """Copy data (in the kernel), mode and times; never leaves a partial file behind."""
    with open(source, "rb") as src:
        info = os.fstat(src.fileno())
        out = os.open(destination, _CREATE, 0o600)
        try:
            _copy_data(src.fileno(), out, info.st_size)
            os.fchmod(out, stat.S_IMODE(info.st_mode))
            os.utime(out, ns=(info.st_atime_ns, info.st_mtime_ns))
        except BaseException:
            os.close(out)
            os.unlink(destination)  # a half-written file (disk full) must not stay
            raise
        os.close(out)


def _copy_data(src: int, dst: int, size: int) -> None:
    offset = 0
    while True:
        # sendfile(2) copies in the kernel; a size that changed under us is followed to EOF.
        sent = os.sendfile(dst, src, offset, max(size - offset, 1024 * 1024))
        if sent == 0:
            return
        offset += sent


def _os_message(step: Step, exc: OSError) -> str:
    what = {Mkdir: "create directory", Copy: "copy to", Chmod: "chmod",
            SetAcl: "set the ACL of", SetContext: "set the SELinux context of",
            Chown: "chown"}[type(step)]
    path = step.destination if isinstance(step, Copy) else step.path
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full: cannot {what} {path}; free some space on the device and deploy again"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot {what} {path}: {reason}; the agent needs write access there (run it "
                "as root, or pick another destination)")
    return f"cannot {what} {path}: {reason}"


def _run(command: list[str]) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False,
                                timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{command[0]} failed: {exc}") from exc
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise InstallError(f"{' '.join(command[:3])} ... failed with exit code "
                           f"{result.returncode}: {detail[-1] if detail else 'no output'}")
