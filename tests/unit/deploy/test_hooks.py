"""The hook runner against real shell scripts and real processes."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pwd
import re
import shlex
import signal
import stat
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.deploy import hooks
from agent.deploy.diagnostics import LOG_TAIL_BYTES, LogTail
from agent.deploy.errors import ErrorCode, ScriptError
from agent.deploy.hooks import (
    HookRunOptions,
    ScriptLog,
    _LineSplitter,
    _plan_command,
    command_line,
    run_event,
)
from appspec.model import HookScript

EVENT = "AfterInstall"
SCRIPTS_LOG_LINE = re.compile(
    r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} "
    r"(LifecycleEvent - \w+|Script - \S.*|\[stdout\].*|\[stderr\].*)\n")
FAST = HookRunOptions(kill_grace_s=5.0, outputs_grace_s=0.5)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    root = tmp_path / "deployment-archive"
    root.mkdir()
    return root


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "scripts.log"


@pytest.fixture
def log(log_path: Path) -> Iterator[ScriptLog]:
    with ScriptLog(log_path) as script_log:
        yield script_log


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", os.defpath), "LIFECYCLE_EVENT": EVENT,
            "DEPLOYMENT_ID": "d-TEST12345", "PIDS": str(tmp_path / "pids")}


@pytest.fixture
def leftovers(env: dict[str, str]) -> Iterator[None]:
    """Kill what the scripts recorded in $PIDS, which the runner leaves alive on purpose."""
    yield
    pids = Path(env["PIDS"])
    for pid in pids.read_text().split() if pids.exists() else []:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def script(root: Path, location: str, body: str, *, mode: int = 0o755) -> HookScript:
    path = root / location
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body if body.startswith("#!") else "#!/bin/sh\n" + body)
    path.chmod(mode)
    return HookScript(location)


def failure(scripts: list[HookScript], archive: Path, env: dict[str, str], log: ScriptLog,
            options: HookRunOptions = FAST) -> ScriptError:
    with pytest.raises(ScriptError) as info:
        run_event(EVENT, scripts, archive_dir=archive, environment=env, log=log,
                  options=options)
    return info.value


def recorded_pids(env: dict[str, str]) -> list[int]:
    return [int(pid) for pid in Path(env["PIDS"]).read_text().split()]


def alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's zombie may never be reaped in a container)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return fields.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- command lines --------------------------------------------------------------------------

@pytest.mark.parametrize(("runas", "sudo", "expected"), [
    (None, False, ["/a/my_script.sh"]),
    (None, True, ["sudo", "/a/my_script.sh"]),
    ("deploy", False, ["su", "deploy", "-c", "/a/my_script.sh"]),
    ("deploy", True, ["sudo", "su", "deploy", "-c", "/a/my_script.sh"]),
])
def test_command_line_has_the_official_shapes(runas: str | None, sudo: bool,
                                              expected: list[str]) -> None:
    assert command_line("/a/my_script.sh", runas, sudo) == expected


def test_command_line_quotes_the_su_argument() -> None:
    argv = command_line("/a/my script.sh", "deploy", True)
    assert argv == ["sudo", "su", "deploy", "-c", "'/a/my script.sh'"]
    assert shlex.split(argv[-1]) == ["/a/my script.sh"]
    assert command_line("/a/my script.sh", None, False) == ["/a/my script.sh"]


def fake_user(monkeypatch: pytest.MonkeyPatch, *, uid: int = 1001,
              login_shell: str = "/bin/sh") -> None:
    entry = pwd.struct_passwd(("deploy", "x", uid, uid, "", "/home/deploy", login_shell))
    monkeypatch.setattr(pwd, "getpwnam", lambda name: entry)


@pytest.mark.parametrize(("runas", "sudo", "expected"), [
    (None, True, ["/a/s.sh"]),
    ("deploy", False, ["su", "deploy", "-c", "/a/s.sh"]),
    ("deploy", True, ["su", "deploy", "-c", "/a/s.sh"]),
])
def test_as_root_sudo_is_dropped(monkeypatch: pytest.MonkeyPatch, runas: str | None,
                                 sudo: bool, expected: list[str]) -> None:
    fake_user(monkeypatch)
    assert _plan_command(HookScript("s.sh", runas=runas, sudo=sudo), Path("/a/s.sh"), 0) \
        == expected


def test_runas_an_account_without_login_shell_uses_sh(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_user(monkeypatch, login_shell="/usr/sbin/nologin")
    assert _plan_command(HookScript("s.sh", runas="deploy"), Path("/a/s.sh"), 0) \
        == ["su", "-s", "/bin/sh", "deploy", "-c", "/a/s.sh"]


@pytest.mark.parametrize(("runas", "sudo", "expected"), [
    (None, True, ["sudo", "-n", "/a/s.sh"]),
    ("deploy", True, ["sudo", "-n", "su", "deploy", "-c", "/a/s.sh"]),
])
def test_not_root_sudo_never_asks_for_a_password(monkeypatch: pytest.MonkeyPatch,
                                                 runas: str | None, sudo: bool,
                                                 expected: list[str]) -> None:
    fake_user(monkeypatch)
    assert _plan_command(HookScript("s.sh", runas=runas, sudo=sudo), Path("/a/s.sh"), 1000) \
        == expected


def test_not_root_runas_self_runs_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_user(monkeypatch, uid=1000)
    assert _plan_command(HookScript("s.sh", runas="deploy"), Path("/a/s.sh"), 1000) \
        == ["/a/s.sh"]


def test_not_root_runas_another_user_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_user(monkeypatch)
    with pytest.raises(ScriptError) as info:
        _plan_command(HookScript("s.sh", runas="deploy"), Path("/a/s.sh"), 1000)
    assert info.value.code is ErrorCode.SCRIPT_FAILED
    assert info.value.message.startswith(
        "Script at specified location: s.sh run as user deploy failed: runas needs the agent "
        "to run as root")


# --- success ----------------------------------------------------------------------------------

def test_success_logs_each_line_to_the_tail_and_scripts_log(
        archive: Path, env: dict[str, str], log: ScriptLog, log_path: Path) -> None:
    hook = script(archive, "scripts/a.sh", "echo hello\necho oops >&2\nprintf 'no newline'\n")
    tail = run_event(EVENT, [hook], archive_dir=archive, environment=env, log=log)
    text = tail.text()
    assert text.startswith(f"LifecycleEvent - {EVENT}\nScript - scripts/a.sh\n")
    assert {"[stdout]hello", "[stderr]oops", "[stdout]no newline"} <= set(text.splitlines())
    assert text.endswith("\n")
    lines = log_path.read_text().splitlines(keepends=True)
    assert len(lines) == 5
    for line in lines:
        assert SCRIPTS_LOG_LINE.fullmatch(line), line
    assert lines[0].endswith(f" LifecycleEvent - {EVENT}\n")


def test_an_event_without_scripts_logs_nothing(archive: Path, env: dict[str, str],
                                               log: ScriptLog, log_path: Path) -> None:
    assert run_event(EVENT, [], archive_dir=archive, environment=env, log=log).text() == ""
    assert log_path.read_text() == ""


def test_scripts_run_in_order_and_the_first_failure_stops_the_event(
        archive: Path, env: dict[str, str], log: ScriptLog, tmp_path: Path) -> None:
    order = tmp_path / "order"
    env["ORDER"] = str(order)
    hooks = [script(archive, name, f'echo {name} >> "$ORDER"\nexit {code}\n')
             for name, code in (("a.sh", 0), ("b.sh", 0), ("c.sh", 3), ("d.sh", 0))]
    error = failure(hooks, archive, env, log)
    assert order.read_text().split() == ["a.sh", "b.sh", "c.sh"]
    assert error.code is ErrorCode.SCRIPT_FAILED
    assert error.script_name == "c.sh"
    assert error.message == "Script at specified location: c.sh failed with exit code 3"
    assert error.log.endswith("Script - c.sh\n")
    assert "Script - d.sh" not in error.log


def test_environment_and_cwd_are_the_given_ones(archive: Path, env: dict[str, str],
                                                log: ScriptLog, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIFLEET_AGENT_ONLY", "leak")
    out = tmp_path / "env"
    env["OUT"] = str(out)
    hook = script(archive, "a.sh",
                  'echo "$LIFECYCLE_EVENT $DEPLOYMENT_ID ${PIFLEET_AGENT_ONLY-unset} $(pwd)"'
                  ' > "$OUT"\n')
    run_event(EVENT, [hook], archive_dir=archive, environment=env, log=log, cwd=tmp_path)
    assert out.read_text().split() == [EVENT, "d-TEST12345", "unset", str(tmp_path)]


def test_stdin_is_closed(archive: Path, env: dict[str, str], log: ScriptLog) -> None:
    hook = HookScript(script(archive, "a.sh", 'read x\necho "read=$?"\n').location, timeout_s=5)
    started = time.monotonic()
    tail = run_event(EVENT, [hook], archive_dir=archive, environment=env, log=log)
    assert "[stdout]read=1\n" in tail.text()
    assert time.monotonic() - started < 4


def test_a_script_without_shebang_runs_with_sh(archive: Path, env: dict[str, str],
                                               log: ScriptLog) -> None:
    path = archive / "plain.sh"
    path.write_text("echo plain\n")
    path.chmod(0o755)
    tail = run_event(EVENT, [HookScript("plain.sh")], archive_dir=archive, environment=env,
                     log=log)
    assert "[stdout]plain\n" in tail.text()


def test_deployments_log_has_the_agent_format(archive: Path, env: dict[str, str],
                                              tmp_path: Path) -> None:
    deployments = tmp_path / "deployment-logs" / "codedeploy-agent-deployments.log"
    hook = script(archive, "a.sh", "echo hi\n")
    with ScriptLog(tmp_path / "logs" / "scripts.log", deployments_log=deployments,
                   deployment_id="d-TEST12345") as log:
        run_event(EVENT, [hook], archive_dir=archive, environment=env, log=log)
    stamp = r"\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}\] \[d-TEST12345\]"
    assert re.fullmatch(
        f"{stamp}LifecycleEvent - {EVENT}\n{stamp}Script - a.sh\n{stamp}\\[stdout\\]hi\n",
        deployments.read_text())


def test_an_unwritable_log_does_not_fail_the_script(archive: Path, env: dict[str, str],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    hook = script(archive, "a.sh", "echo one\necho two\n")
    with caplog.at_level(logging.WARNING), ScriptLog(Path("/dev/full")) as log:
        tail = run_event(EVENT, [hook], archive_dir=archive, environment=env, log=log)
    assert tail.text().endswith("[stdout]one\n[stdout]two\n")
    assert sum("cannot write /dev/full" in r.getMessage() for r in caplog.records) == 1


# --- missing and not executable ---------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda path: None, lambda path: path.mkdir()])
def test_missing_script_is_code_1(archive: Path, env: dict[str, str], log: ScriptLog,
                                  make: Callable[[Path], object]) -> None:
    make(archive / "nope.sh")
    error = failure([HookScript("/nope.sh")], archive, env, log)
    assert error.code is ErrorCode.SCRIPT_MISSING
    assert error.script_name == "/nope.sh"
    assert error.message.startswith(
        f"Script does not exist at specified location: {archive.absolute() / 'nope.sh'}. ")
    assert error.log.endswith("Script - /nope.sh\n")


def test_non_executable_script_is_made_executable(archive: Path, env: dict[str, str],
                                                  log: ScriptLog) -> None:
    hook = script(archive, "a.sh", "echo ran\n", mode=0o644)
    tail = run_event(EVENT, [hook], archive_dir=archive, environment=env, log=log)
    assert "[stdout]ran\n" in tail.text()
    assert stat.S_IMODE((archive / "a.sh").stat().st_mode) == 0o755


def test_chmod_failure_is_code_2(archive: Path, env: dict[str, str], log: ScriptLog,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    hook = script(archive, "a.sh", "echo ran\n", mode=0o644)

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", refuse)
    error = failure([hook], archive, env, log)
    assert error.code is ErrorCode.SCRIPT_NOT_EXECUTABLE
    assert error.message.startswith(
        "Unable to set script at specified location: a.sh as executable")


def test_spawn_failure_is_code_4(archive: Path, env: dict[str, str], log: ScriptLog) -> None:
    hook = script(archive, "a.sh", "#!/nonexistent/interpreter\necho never\n")
    error = failure([hook], archive, env, log)
    assert error.code is ErrorCode.SCRIPT_FAILED
    assert error.message.startswith(
        "Script at specified location: a.sh failed with error FileNotFoundError with message ")
    assert "#! line" in error.message


# --- exit status ------------------------------------------------------------------------------

def test_death_by_signal_names_the_signal(archive: Path, env: dict[str, str],
                                          log: ScriptLog) -> None:
    error = failure([script(archive, "a.sh", "kill -USR1 $$\n")], archive, env, log)
    assert error.code is ErrorCode.SCRIPT_FAILED
    assert error.message == "Script at specified location: a.sh failed with signal SIGUSR1"


# --- timeouts ---------------------------------------------------------------------------------

@pytest.mark.usefixtures("leftovers")
def test_timeout_terminates_the_whole_group(archive: Path, env: dict[str, str],
                                            log: ScriptLog) -> None:
    body = 'sleep 1000 &\necho $! > "$PIDS"\necho started\nsleep 1000\n'
    hook = HookScript(script(archive, "a.sh", body).location, timeout_s=1)
    fds, started = open_fds(), time.monotonic()
    error = failure([hook], archive, env, log)
    elapsed = time.monotonic() - started
    assert error.code is ErrorCode.SCRIPT_TIMED_OUT
    assert error.message.startswith(
        "Script at specified location: a.sh failed to complete in 1 seconds. ")
    assert "SIGKILL" not in error.message
    assert "[stdout]started\n" in error.log
    assert 0.9 < elapsed < 4  # SIGTERM sufficed: no kill_grace_s wait
    assert gone_within(recorded_pids(env)[0], 5)
    assert open_fds() == fds


@pytest.mark.usefixtures("leftovers")
def test_a_script_ignoring_sigterm_is_killed(archive: Path, env: dict[str, str],
                                             log: ScriptLog) -> None:
    body = "trap '' TERM\necho $$ > \"$PIDS\"\nsleep 1000\n"
    hook = HookScript(script(archive, "a.sh", body).location, timeout_s=1)
    started = time.monotonic()
    error = failure([hook], archive, env, log, HookRunOptions(kill_grace_s=0.5))
    elapsed = time.monotonic() - started
    assert error.code is ErrorCode.SCRIPT_TIMED_OUT
    assert "SIGKILL" in error.message
    assert 1.4 < elapsed < 10
    assert gone_within(recorded_pids(env)[0], 5)


# --- outputs left open ------------------------------------------------------------------------

@pytest.mark.parametrize(("redirect", "stream"), [("", "STDOUT"), ("> /dev/null", "STDERR")])
@pytest.mark.usefixtures("leftovers")
def test_a_child_holding_the_output_is_code_6(archive: Path, env: dict[str, str],
                                              log: ScriptLog, redirect: str,
                                              stream: str) -> None:
    body = f'sleep 1000 {redirect} &\necho $! > "$PIDS"\necho done\n'
    hook = HookScript(script(archive, "a.sh", body).location, timeout_s=60)
    fds, started = open_fds(), time.monotonic()
    error = failure([hook], archive, env, log)
    assert time.monotonic() - started < 10
    assert error.code is ErrorCode.OUTPUTS_LEFT_OPEN
    assert error.message.startswith(
        f"Script at specified location: a.sh failed to close {stream}. ")
    assert "/dev/null 2>&1 &" in error.message
    assert "[stdout]done\n" in error.log
    assert alive(recorded_pids(env)[0])  # started on purpose: not ours to kill
    assert open_fds() == fds


@pytest.mark.usefixtures("leftovers")
def test_a_daemon_with_redirected_output_succeeds(archive: Path, env: dict[str, str],
                                                  log: ScriptLog) -> None:
    body = 'sleep 1000 > /dev/null 2>&1 &\necho $! > "$PIDS"\necho started\n'
    hook = HookScript(script(archive, "a.sh", body).location, timeout_s=60)
    started = time.monotonic()
    tail = run_event(EVENT, [hook], archive_dir=archive, environment=env, log=log, options=FAST)
    assert time.monotonic() - started < 5
    assert tail.text().endswith("[stdout]started\n")
    assert alive(recorded_pids(env)[0])


# --- runas --------------------------------------------------------------------------------------

@pytest.fixture
def public_archive() -> Iterator[Path]:
    """An archive every user can traverse (pytest's tmp_path is private to root)."""
    if os.geteuid() != 0:
        pytest.skip("runas another user needs the tests to run as root")
    with tempfile.TemporaryDirectory(prefix="pifleet-hooks-") as top:
        Path(top).chmod(0o755)
        yield Path(top) / "my app"


def test_runas_with_spaces_in_the_path(public_archive: Path, env: dict[str, str],
                                       log: ScriptLog) -> None:
    ok = script(public_archive, "my scripts/who am i.sh", "id -un\n")
    bad = script(public_archive, "my scripts/fail.sh", "exit 2\n")
    for directory in (public_archive, public_archive / "my scripts"):
        directory.chmod(0o755)
    user = "nobody"
    tail = run_event(EVENT, [HookScript(ok.location, runas=user)], archive_dir=public_archive,
                     environment=env, log=log)
    assert f"[stdout]{user}\n" in tail.text()
    error = failure([HookScript(bad.location, runas=user)], public_archive, env, log)
    assert error.message == (
        f"Script at specified location: my scripts/fail.sh run as user {user} failed with "
        "exit code 2")


def test_unknown_runas_user_is_code_4(archive: Path, env: dict[str, str],
                                      log: ScriptLog) -> None:
    hook = HookScript(script(archive, "a.sh", "echo never\n").location, runas="nosuchuser9")
    error = failure([hook], archive, env, log)
    assert error.code is ErrorCode.SCRIPT_FAILED
    assert error.message == (
        "Script at specified location: a.sh run as user nosuchuser9 failed: there is no user "
        "nosuchuser9 on this device; create it or change runas")


# --- bounded output ---------------------------------------------------------------------------

def test_a_huge_line_is_split_and_never_held_whole(archive: Path, env: dict[str, str],
                                                   log: ScriptLog, log_path: Path) -> None:
    size, limit = 10_000_000, HookRunOptions().max_line_bytes
    hook = script(archive, "a.sh", f"head -c {size} /dev/zero | tr '\\000' a\n")
    tracemalloc.start()
    try:
        tail = run_event(EVENT, [hook], archive_dir=archive, environment=env, log=log)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000
    assert len(tail.text().encode()) <= LOG_TAIL_BYTES
    pieces = [line.split(" [stdout]", 1)[1] for line in log_path.read_text().splitlines()
              if " [stdout]" in line]
    assert len(pieces) == math.ceil(size / limit)
    assert max(map(len, pieces)) == limit
    assert sum(map(len, pieces)) == size


def test_splitting_keeps_utf8_characters_whole() -> None:
    entries: list[str] = []
    splitter = _LineSplitter("stdout", 8, entries.append)
    for piece in (b"12345678\n", "abcdefgé".encode(), "ü\nxy".encode(), b"\xff"):
        splitter.feed(piece)
    splitter.finish()
    assert entries == ["[stdout]12345678\n", "[stdout]abcdefg\n", "[stdout]éü\n",
                       "[stdout]xy\ufffd\n"]


def test_the_tail_keeps_the_newest_entries(archive: Path, env: dict[str, str],
                                           log: ScriptLog) -> None:
    hook = script(archive, "a.sh", "i=0\nwhile [ $i -lt 500 ]; do echo line$i; i=$((i+1)); done\n")
    tail = run_event(EVENT, [hook], archive_dir=archive, environment=env, log=log)
    assert isinstance(tail, LogTail)
    assert len(tail.text().encode()) <= LOG_TAIL_BYTES
    assert tail.text().endswith("[stdout]line499\n")


@pytest.mark.usefixtures("leftovers")
def test_without_pidfd_the_runner_polls(archive: Path, env: dict[str, str], log: ScriptLog,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hooks, "_pidfd", lambda pid: None)
    ok = script(archive, "ok.sh", "echo fine\n")
    assert run_event(EVENT, [ok], archive_dir=archive, environment=env, log=log).text() \
        .endswith("[stdout]fine\n")
    held = script(archive, "held.sh", 'sleep 1000 &\necho $! > "$PIDS"\n')
    assert failure([held], archive, env, log).code is ErrorCode.OUTPUTS_LEFT_OPEN


def test_output_pending_at_exit_is_read_even_without_grace(archive: Path, env: dict[str, str],
                                                           log: ScriptLog) -> None:
    hook = script(archive, "a.sh", "echo first\nsleep 0.1\necho last\n")
    tail = run_event(EVENT, [hook], archive_dir=archive, environment=env, log=log,
                     options=HookRunOptions(outputs_grace_s=0))
    assert tail.text().endswith("[stdout]first\n[stdout]last\n")
