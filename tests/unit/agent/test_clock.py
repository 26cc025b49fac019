"""``agent.clock``: timesyncd's flag file, else ``timedatectl`` (a real script on PATH here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent import clock


@pytest.fixture
def no_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    flag = tmp_path / "run" / "synchronized"
    monkeypatch.setattr(clock, "TIMESYNCD_FLAG", flag)
    return flag


def timedatectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """A ``timedatectl`` script alone on PATH; it records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "timedatectl"
    script.write_text(f'#!/bin/sh\necho "$@" > "{tmp_path / "args"}"\n{body}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return script


def test_the_timesyncd_flag_means_synchronised(no_flag: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    no_flag.parent.mkdir()
    no_flag.touch()
    monkeypatch.setattr(shutil, "which", lambda _name: pytest.fail("timedatectl was asked"))
    assert clock.clock_synchronized() is True


def test_without_flag_or_timedatectl_nobody_can_tell(no_flag: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr(shutil, "which", asked.append)
    assert clock.clock_synchronized() is None
    assert asked == ["timedatectl"]


@pytest.mark.parametrize(("body", "expected"), [
    ("echo yes", True),
    ("echo no", False),
    ("echo maybe", None),
    ("echo yes; exit 1", None),
    ("echo 'Failed to connect to bus' >&2; exit 1", None),
])
def test_timedatectl_says_whether_ntp_synchronised(
        tmp_path: Path, no_flag: Path, monkeypatch: pytest.MonkeyPatch, body: str,
        expected: bool | None) -> None:
    timedatectl(tmp_path, monkeypatch, body)
    assert clock.clock_synchronized() is expected
    assert (tmp_path / "args").read_text() == "show --property=NTPSynchronized --value\n"


def test_a_timedatectl_that_cannot_run_is_no_answer(tmp_path: Path, no_flag: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "timedatectl"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda _name: str(script))
    assert clock.clock_synchronized() is None
