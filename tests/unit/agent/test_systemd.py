"""``agent.systemd``: sd_notify datagrams to a real socket, and the watchdog interval."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.systemd import notify, under_systemd, watchdog_interval_s


def receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)  # a deadline for recv, should the datagram never come
    return sock


@pytest.fixture
def bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    with receiver(str(path)) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_notify_sends_the_fields_as_lines(bound: socket.socket) -> None:
    assert notify("READY=1", "STATUS=polling: d-1 BeforeInstall") is True
    assert bound.recv(4096) == b"READY=1\nSTATUS=polling: d-1 BeforeInstall"
    assert notify("WATCHDOG=1") is True
    assert bound.recv(4096) == b"WATCHDOG=1"


def test_notify_to_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"pifleet-test-{os.getpid()}-{secrets.token_hex(4)}"
    with receiver("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STOPPING=1", "STATUS=stopping") is True
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert notify("READY=1") is False


def test_a_socket_nobody_listens_on_is_not_an_error(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert notify("READY=1") is False


def test_under_systemd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert under_systemd() is False
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
    assert under_systemd() is True
    monkeypatch.delenv("INVOCATION_ID")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n.sock"))
    assert under_systemd() is True


@pytest.mark.parametrize(("usec", "pid", "expected"), [
    ("30000000", None, 15.0),
    ("30000000", "self", 15.0),
    ("1000", "self", 0.0005),
    ("30000000", "1", None),  # the watchdog is another process's (WATCHDOG_PID)
    (None, None, None),
    ("", None, None),
    ("thirty", None, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch,
                                                    usec: str | None, pid: str | None,
                                                    expected: float | None) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(os.getpid()) if value == "self" else value)
    assert watchdog_interval_s() == expected
