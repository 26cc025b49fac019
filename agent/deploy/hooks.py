"""Runs the scripts of one lifecycle event the way the official agent does, without its bugs.

``run_event`` runs each script in its own session (so its whole process group can be signalled),
logs every output line to ``scripts.log`` as it arrives and keeps a bounded tail for the
diagnostics. The first failing script raises ``ScriptError`` with the official code and message.

Deliberate deviations from ``hook_executor.rb``:

* No shell: the command is an argv list, and the ``su -c`` argument is shell-quoted, so paths
  with spaces or metacharacters work (upstream splits them into words).
* ``sudo: true`` is a no-op when the agent already runs as root, so devices without sudo work;
  when not root we use ``sudo -n`` so a hook can never hang waiting for a password.
* ``runas`` a system account whose login shell is ``nologin``/``false`` runs through
  ``su -s /bin/sh`` (upstream's ``su`` refuses with "This account is currently not available").
* On timeout the group gets SIGTERM, then SIGKILL after ``kill_grace_s`` (upstream stops at
  SIGTERM, so a script that ignores it lives on).
* A script that exited while a child keeps its stdout/stderr open fails with code 6 after
  ``outputs_grace_s``, not after the whole timeout; the child is left running, only our end of
  the pipe is closed. As upstream, this outranks a non-zero exit status.
* A script killed by a signal reports ``failed with signal <NAME>`` (upstream: an empty code).
* Output lines longer than ``max_line_bytes`` are split, so memory stays bounded.
* A script without a ``#!`` line runs with ``/bin/sh`` (as upstream's exec does implicitly).
* A log file that cannot be written (full SD card) is reported once and skipped: the scripts
  still run and the diagnostics tail still gets every line.
* A script still running when the agent dies (SIGKILL, crash, ``KillMode=process``) has its
  process group recorded (tracking.py), and the next agent start ends it; upstream leaves it
  running, possibly forever, next to the retried deployment's scripts.
* When the agent runs as root as a systemd service (``pifleet-agent.service``), each script
  runs in its own transient scope unit, ``pifleet-hook-<deployment>-<event>-<random>.scope``
  (``systemd-run --scope``, which execs the script in place: same PID, process group, pipes,
  environment and exit status). What a hook leaves running (the app an ApplicationStart hook
  launched) is then not part of the agent's service: stopping, restarting or upgrading the
  agent neither kills it nor makes systemd warn about left-over processes, and ``systemctl
  status pifleet-hook-…`` shows and stops it. The price: the service's ``MemoryMax=`` no
  longer covers hooks, and a script whose ``#!`` interpreter is missing fails with
  systemd-run's message (exit code 1) instead of ours.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pwd
import re
import secrets
import selectors
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from appspec.model import HookScript

from .diagnostics import LogTail
from .errors import ErrorCode, ScriptError
from .tracking import hook_group

__all__ = ["HookRunOptions", "ScriptLog", "command_line", "run_event", "scope_command",
           "scope_unit_name"]

_LOG = logging.getLogger(__name__)

_READ_CHUNK = 65_536
# Without a pidfd we cannot sleep until the script exits, so we poll at this interval.
_POLL_S = 0.05
# After SIGKILL the kernel closes the group's pipes at once; only an escaped process (setsid)
# keeps them open, and we do not wait for that one.
_DRAIN_AFTER_KILL_S = 1.0
# Output already in the pipes when the script exits is read even past the deadline.
_MIN_DRAIN_S = 0.25
_FALLBACK_SHELL = "/bin/sh"
_NO_LOGIN_SHELLS = frozenset({"nologin", "false"})
_EXIT_HINTS = {
    126: ". Exit code 126 means a command was found but could not be run (permissions?)",
    127: ". Exit code 127 means a command was not found (check PATH and the #! line)",
}
# sd_booted(): systemd is PID 1 (and its manager answers systemd-run).
_SYSTEMD_BOOTED = Path("/run/systemd/system")
_SCOPE_PREFIX = "pifleet-hook"
_UNIT_NAME_MAX = 200  # systemd allows 255: room for the random suffix and ".scope"
_DAEMON_HINT = (". A process it started keeps the output open; redirect a daemon's output, "
                "e.g. `cmd > /dev/null 2>&1 &`")


@dataclass(frozen=True)
class HookRunOptions:
    kill_grace_s: float = 10.0
    """After the timeout's SIGTERM to the group, how long before SIGKILL."""
    outputs_grace_s: float = 30.0
    """After the script exits, how long its stdout/stderr may stay open (code 6 after that)."""
    max_line_bytes: int = 16_384
    """Longer output lines are split, never held whole."""
    own_scope: bool | None = None
    """Run each script in its own systemd scope. None: when the agent runs as root under
    systemd (``INVOCATION_ID`` set, systemd booted, ``systemd-run`` on the PATH)."""

    def __post_init__(self) -> None:
        if self.kill_grace_s < 0 or self.outputs_grace_s < 0:
            raise ValueError("grace periods cannot be negative")
        if self.max_line_bytes < 8:
            raise ValueError("max_line_bytes must leave room for a UTF-8 character")


_DEFAULT_OPTIONS = HookRunOptions()


class ScriptLog:
    """Appends entries to ``scripts.log`` and, optionally, to the agent's deployments log.

    Each line is flushed as it arrives so ``tail -f`` shows a running hook live; there is no
    fsync per line, which would wear an SD card for logs we can afford to lose in a power cut.
    """

    def __init__(self, path: Path, *, deployments_log: Path | None = None,
                 deployment_id: str = "") -> None:
        self._scripts: BinaryIO | None = _open_append(path)
        self._deployments = _open_append(deployments_log) if deployments_log else None
        self._deployment_id = deployment_id

    def write(self, entry: str) -> None:
        if not entry.endswith("\n"):
            entry += "\n"
        if self._scripts is not None:
            line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {entry}"
            self._scripts = _append(self._scripts, line)
        if self._deployments is not None:
            now = datetime.now()
            stamp = f"{now:%Y-%m-%d %H:%M:%S}.{now.microsecond // 1000:03d}"
            line = f"[{stamp}] [{self._deployment_id}]{entry}"
            self._deployments = _append(self._deployments, line)

    def close(self) -> None:
        for stream in (self._scripts, self._deployments):
            if stream is not None:
                stream.close()
        self._scripts = self._deployments = None

    def __enter__(self) -> ScriptLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


def _open_append(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


def _append(stream: BinaryIO, line: str) -> BinaryIO | None:
    """Write and flush ``line``; on failure report once and return None to stop using the file."""
    try:
        stream.write(line.encode(errors="replace"))
        stream.flush()
    except OSError as error:
        # Losing log lines is better than failing a deployment because the disk is full.
        _LOG.warning("cannot write %s (%s); further script output is not logged there",
                     stream.name, error)
        try:
            stream.close()
        except OSError:
            _LOG.debug("closing %s failed too", stream.name)
        return None
    return stream


def command_line(path: str, runas: str | None, sudo: bool) -> list[str]:
    """The official agent's command as argv: ``[sudo] [su <runas> -c] <path>``.

    Unlike upstream's command string, the ``su -c`` argument is shell-quoted, so a path with
    spaces stays one word. ``run_event`` adapts this to the agent's own user (see the module).
    """
    argv = ["su", runas, "-c", shlex.quote(path)] if runas else [path]
    return ["sudo", *argv] if sudo else argv


def run_event(event: str, scripts: Sequence[HookScript], *, archive_dir: Path,
              environment: Mapping[str, str], log: ScriptLog,
              options: HookRunOptions = _DEFAULT_OPTIONS, cwd: Path | None = None) -> LogTail:
    """Run ``event``'s scripts in order; return the log tail, or raise the first ``ScriptError``.

    An event without scripts is a no-op and logs nothing, as upstream.
    """
    tail = LogTail()
    if not scripts:
        return tail

    def record(entry: str) -> None:
        tail.append(entry)
        log.write(entry)

    record(f"LifecycleEvent - {event}\n")
    for script in scripts:
        record(f"Script - {script.location}\n")
        try:
            _run_script(script, archive_dir=archive_dir, environment=environment,
                        record=record, options=options, cwd=cwd)
        except ScriptError as error:
            error.log = tail.text()
            raise
    return tail


def _run_script(script: HookScript, *, archive_dir: Path, environment: Mapping[str, str],
                record: Callable[[str], None], options: HookRunOptions,
                cwd: Path | None) -> None:
    path = _executable_script(script, archive_dir)
    argv = _plan_command(script, path, os.geteuid())
    systemd_run = _systemd_run(options)
    if systemd_run is not None:
        argv = scope_command(systemd_run, argv, environment)
    deadline = time.monotonic() + script.timeout_s
    process = _spawn(argv, script, path, environment, cwd)
    with hook_group(process.pid):  # so an agent restarted after we die can end the group
        returncode = _supervise(process, script, deadline, record, options)
    _check_exit(returncode, script)


def _systemd_run(options: HookRunOptions) -> str | None:
    """The systemd-run to wrap scripts with, or None to exec them directly."""
    if options.own_scope is False:
        return None
    found = shutil.which("systemd-run")
    if options.own_scope:
        if found is None:
            raise RuntimeError("own_scope is set but systemd-run is not on the PATH")
        return found
    # Only the system manager gives a root service scopes without asking polkit; INVOCATION_ID
    # is what systemd sets for the processes of a unit it started.
    under_systemd = bool(os.environ.get("INVOCATION_ID")) and _SYSTEMD_BOOTED.is_dir()
    return found if under_systemd and os.geteuid() == 0 else None


def scope_unit_name(environment: Mapping[str, str]) -> str:
    """``pifleet-hook-<deployment>-<event>-<random>.scope``: unique (an app from an earlier run
    of the same event may still hold its scope) and readable in ``systemctl list-units``."""
    parts = [environment.get("DEPLOYMENT_ID", ""), environment.get("LIFECYCLE_EVENT", "")]
    name = "-".join([_SCOPE_PREFIX, *(p for p in parts if p)])
    name = re.sub(r"[^A-Za-z0-9_.:-]", "_", name)[:_UNIT_NAME_MAX]
    return f"{name}-{secrets.token_hex(4)}.scope"


def scope_command(systemd_run: str, argv: Sequence[str],
                  environment: Mapping[str, str]) -> list[str]:
    """``argv`` run by ``systemd-run --scope`` in a new scope unit, collected once it is empty;
    ``--quiet`` keeps systemd-run's own messages out of the script's output."""
    unit = scope_unit_name(environment)
    event = environment.get("LIFECYCLE_EVENT", "hook")
    deployment = environment.get("DEPLOYMENT_ID", "")
    return [systemd_run, "--scope", "--quiet", "--collect", f"--unit={unit}",
            f"--description=pifleet {event} hook {deployment}".rstrip(), "--", *argv]


def _failure(code: ErrorCode, script: HookScript, message: str) -> ScriptError:
    return ScriptError(code, message, script_name=script.location)


def _prefix(script: HookScript, *, with_user: bool = False) -> str:
    who = f" run as user {script.runas}" if with_user and script.runas else ""
    return f"Script at specified location: {script.location}{who}"


def _executable_script(script: HookScript, archive_dir: Path) -> Path:
    """The script's path, made executable if needed (codes 1 and 2)."""
    path = archive_dir / script.location.lstrip("/")
    # is_file() also turns away FIFOs and devices, which would block or misbehave when run.
    if not path.is_file():
        raise _failure(ErrorCode.SCRIPT_MISSING, script,
                       f"Script does not exist at specified location: {path.absolute()}. "
                       "Check the hook's location in the AppSpec; it is relative to the "
                       "revision's root")
    if not os.access(path, os.X_OK):
        _LOG.warning("%s is not executable; making it executable", path)
        try:
            # chmod +x for all, as upstream: a runas user must be able to execute it too.
            os.chmod(path, path.stat().st_mode | 0o111)  # noqa: S103
        except OSError as error:
            raise _failure(ErrorCode.SCRIPT_NOT_EXECUTABLE, script,
                           f"Unable to set script at specified location: {script.location} as "
                           f"executable ({error.strerror or error}). Commit it with its "
                           "executable bit set (git update-index --chmod=+x)") from error
    return path


def _plan_command(script: HookScript, path: Path, euid: int) -> list[str]:
    """``command_line`` adapted to the agent's user; runas problems are code 4."""
    runas = script.runas or None
    account = _account(script, runas) if runas else None
    if euid != 0 and account is not None and account.pw_uid == euid:
        runas = account = None
    if euid != 0 and account is not None and not script.sudo:
        raise _failure(ErrorCode.SCRIPT_FAILED, script,
                       f"{_prefix(script, with_user=True)} failed: runas needs the agent to run "
                       f"as root, and it runs as {_user_name(euid)}; run the agent as root, "
                       "add sudo: true, or drop runas")
    # Root needs no sudo, and leaving it out spares devices that do not have sudo installed.
    argv = command_line(str(path), runas, sudo=script.sudo and euid != 0)
    if argv[0] == "sudo":
        argv.insert(1, "-n")  # fail at once instead of waiting for a password nobody types
    if account is not None and not _has_login_shell(account):
        at = argv.index("su") + 1
        argv[at:at] = ["-s", _FALLBACK_SHELL]
    return argv


def _account(script: HookScript, runas: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(runas)
    except KeyError:
        raise _failure(ErrorCode.SCRIPT_FAILED, script,
                       f"{_prefix(script)} run as user {runas} failed: there is no user "
                       f"{runas} on this device; create it or change runas") from None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _has_login_shell(account: pwd.struct_passwd) -> bool:
    shell = account.pw_shell
    return (bool(shell) and os.path.basename(shell) not in _NO_LOGIN_SHELLS
            and os.access(shell, os.X_OK))


def _spawn(argv: list[str], script: HookScript, path: Path, environment: Mapping[str, str],
           cwd: Path | None) -> subprocess.Popen[bytes]:
    try:
        try:
            return _popen(argv, environment, cwd)
        except OSError as error:
            # A script without a #! line: the shell would run it with sh, and so do we.
            if error.errno != errno.ENOEXEC or argv != [str(path)]:
                raise
            return _popen([_FALLBACK_SHELL, str(path)], environment, cwd)
    except OSError as error:
        hint = ""
        if isinstance(error, FileNotFoundError) and argv == [str(path)] and path.is_file():
            hint = (". The interpreter on the script's #! line is missing (or the line ends "
                    "with a Windows CR)")
        raise _failure(ErrorCode.SCRIPT_FAILED, script,
                       f"{_prefix(script)} failed with error {type(error).__name__} with "
                       f"message {error}{hint}") from error


def _popen(argv: list[str], environment: Mapping[str, str],
           cwd: Path | None) -> subprocess.Popen[bytes]:
    # A new session makes the script the leader of its own process group, which is what the
    # timeout signals: the script and everything it started, and nothing of the agent.
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(environment), cwd=cwd,
                            start_new_session=True)


def _supervise(process: subprocess.Popen[bytes], script: HookScript, deadline: float,
               record: Callable[[str], None], options: HookRunOptions) -> int:
    """Log the script's output until it ends; return its exit status (codes 3 and 6)."""
    pump = _Pump(process, record, options.max_line_bytes)
    try:
        pump.run_until(deadline, pump.leader_exited)
        if not pump.leader_exited():
            killed = _terminate_group(process, pump, options.kill_grace_s)
            raise _timed_out(script, killed, options.kill_grace_s)
        exited_at = time.monotonic()
        returncode = process.wait()
        # A script that exits just before its deadline still gets its last output read.
        drain_until = max(min(deadline, exited_at + options.outputs_grace_s),
                          exited_at + _MIN_DRAIN_S)
        pump.run_until(drain_until, pump.all_closed)
        left_open = pump.open_streams()
        if left_open:
            raise _failure(ErrorCode.OUTPUTS_LEFT_OPEN, script,
                           f"{_prefix(script)} failed to close {left_open[0].upper()}"
                           f"{_DAEMON_HINT}")
        return returncode
    finally:
        if process.returncode is None:
            # Something unexpected interrupted us (KeyboardInterrupt, a bug): leave no orphans.
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
        pump.close()


def _terminate_group(process: subprocess.Popen[bytes], pump: _Pump, grace_s: float) -> bool:
    """SIGTERM the group, SIGKILL it after ``grace_s``; True if SIGTERM did not suffice."""
    _signal_group(process.pid, signal.SIGTERM)
    pump.run_until(time.monotonic() + grace_s,
                   lambda: pump.leader_exited() and pump.all_closed())
    stubborn = not (pump.leader_exited() and pump.all_closed())
    # Sent while the leader is still an unreaped zombie, so its group id cannot have been
    # recycled; it also ends members that outlived the leader but closed their output.
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()
    pump.run_until(time.monotonic() + _DRAIN_AFTER_KILL_S, pump.all_closed)
    if stubborn:
        _LOG.warning("process group %d ignored SIGTERM for %ss; killed it", process.pid, grace_s)
    return stubborn


def _timed_out(script: HookScript, killed: bool, grace_s: float) -> ScriptError:
    how = f"SIGTERM and, still running {grace_s:g}s later, SIGKILL" if killed else "SIGTERM"
    return _failure(ErrorCode.SCRIPT_TIMED_OUT, script,
                    f"{_prefix(script)} failed to complete in {script.timeout_s} seconds. "
                    f"Its process group was sent {how}; raise the timeout in the AppSpec or "
                    "make the script finish sooner")


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is already gone
        os.killpg(pgid, signum)


def _check_exit(returncode: int, script: HookScript) -> None:
    if returncode == 0:
        return
    prefix = f"{_prefix(script, with_user=True)} failed with"
    if returncode < 0:
        raise _failure(ErrorCode.SCRIPT_FAILED, script,
                       f"{prefix} signal {_signal_name(-returncode)}")
    raise _failure(ErrorCode.SCRIPT_FAILED, script,
                   f"{prefix} exit code {returncode}{_EXIT_HINTS.get(returncode, '')}")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class _Pump:
    """Reads a script's stdout and stderr in the calling thread, so nothing outlives the run.

    One selector watches both pipes and, where the kernel has pidfds, the script's exit; reads
    are non-blocking, so we can stop at any deadline with pipes still open.
    """

    def __init__(self, process: subprocess.Popen[bytes], record: Callable[[str], None],
                 max_line_bytes: int) -> None:
        if process.stdout is None or process.stderr is None:
            raise ValueError("the script's stdout and stderr must be pipes")
        self._process = process
        self._selector = selectors.DefaultSelector()
        self._open: dict[int, _LineSplitter] = {}
        for name, pipe in (("stdout", process.stdout), ("stderr", process.stderr)):
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            self._open[fd] = _LineSplitter(name, max_line_bytes, record)
            self._selector.register(fd, selectors.EVENT_READ)
        self._pidfd = _pidfd(process.pid)
        if self._pidfd is not None:
            self._selector.register(self._pidfd, selectors.EVENT_READ)

    def open_streams(self) -> list[str]:
        """Names of the outputs still open, stdout first."""
        return [splitter.name for splitter in self._open.values()]

    def all_closed(self) -> bool:
        return not self._open

    def leader_exited(self) -> bool:
        """Whether the script itself has exited, without reaping it (WNOWAIT)."""
        if self._process.returncode is not None:
            return True
        try:
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            return os.waitid(os.P_PID, self._process.pid, flags) is not None
        except ChildProcessError:
            return True

    def run_until(self, until: float, done: Callable[[], bool]) -> None:
        while not done():
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            wait = remaining if self._pidfd is not None else min(remaining, _POLL_S)
            for key, _ in self._selector.select(wait):
                if key.fd == self._pidfd:
                    # A pidfd stays readable once the process exits; stop watching it.
                    self._selector.unregister(key.fd)
                else:
                    self._read(key.fd)

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        if data:
            self._open[fd].feed(data)
        else:
            self._stop(fd)

    def _stop(self, fd: int) -> None:
        self._open.pop(fd).finish()
        self._selector.unregister(fd)

    def close(self) -> None:
        """Log partial lines, stop watching and close our pipe ends (a leftover child may not)."""
        for fd in list(self._open):
            self._stop(fd)
        self._selector.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        for pipe in (self._process.stdout, self._process.stderr):
            if pipe is not None:
                pipe.close()


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # an old kernel: _Pump polls instead


class _LineSplitter:
    """Turns a byte stream into ``[name]<line>\\n`` entries, never holding more than a line."""

    def __init__(self, name: str, max_line_bytes: int, record: Callable[[str], None]) -> None:
        self.name = name
        self._limit = max_line_bytes
        self._record = record
        self._pending = bytearray()

    def feed(self, data: bytes) -> None:
        buffer = self._pending
        buffer += data
        start = 0
        while True:
            newline = buffer.find(b"\n", start, start + self._limit + 1)
            if newline >= 0:
                self._emit(buffer[start:newline])
                start = newline + 1
            elif len(buffer) - start > self._limit:
                end = _utf8_cut(buffer, start + self._limit)
                self._emit(buffer[start:end])
                start = end
            else:
                break
        del buffer[:start]

    def finish(self) -> None:
        if self._pending:
            self._emit(self._pending)
            self._pending = bytearray()

    def _emit(self, line: bytes | bytearray) -> None:
        self._record(f"[{self.name}]{line.decode(errors='replace')}\n")


def _utf8_cut(buffer: bytearray, end: int) -> int:
    """Move a split point back off UTF-8 continuation bytes, so no character is cut in two."""
    for cut in range(end, end - 4, -1):
        if buffer[cut] & 0xC0 != 0x80:
            return cut
    return end
