"""Ways to stop an agent at an exact point of a deployment, and to check what it left behind.

No timing guesses: a hook blocks until the test kills the agent (a one-shot trap armed by the
test), a download is held by a relay after a byte budget, and the copies of a large revision
are caught with SIGSTOP (then checked to be really half done) before the SIGKILL.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.deploy.install import read_cleanup
from tests.support.waiting import wait_for

from .conftest import HOOKS, Device, World

RESTART_MESSAGE = "Failed: Failing in-progress lifecycle event after an agent restart."
PARTIAL_GLOB = "*/*/.deployment-archive.partial-*"


class Traps:
    """One-shot blocking hooks: ``arm(event)`` makes that event's next script start a daemon
    in its own session (setsid, as an app's hook may), record both pids and block."""

    def __init__(self, home: Path) -> None:
        self.armed = home / "traps" / "armed"
        self.fired = home / "traps" / "fired"
        self.armed.mkdir(parents=True)
        self.fired.mkdir(parents=True)

    def body(self, event: str) -> str:
        a, f = self.armed / event, self.fired / event
        return (f'if mv "{a}" "{f}.taken" 2>/dev/null; then\n'
                f"  setsid sh -c 'echo $$ > \"{f}.daemon.tmp\"; mv \"{f}.daemon.tmp\" "
                f"\"{f}.daemon\"; exec sleep 900' </dev/null >/dev/null 2>&1 &\n"
                f'  echo $$ > "{f}.pid.tmp"; mv "{f}.pid.tmp" "{f}.pid"\n'
                "  sleep 900\nfi")

    def hooks(self) -> dict[str, str]:
        return {event: self.body(event) for event in HOOKS}

    def arm(self, event: str) -> None:
        (self.armed / event).touch()

    def wait_fired(self, event: str) -> tuple[int, int]:
        """The blocked hook's pid (its process group) and its daemon's pid."""
        pid, daemon = self.fired / f"{event}.pid", self.fired / f"{event}.daemon"
        wait_for(lambda: pid.exists() and daemon.exists(), 60, f"the {event} hook to block")
        return int(pid.read_text()), int(daemon.read_text())

    def daemons(self) -> list[int]:
        return [int(p.read_text()) for p in self.fired.glob("*.daemon")]


def big_revision(hooks: dict[str, str], files: dict[str, str], count: int) -> bytes:
    """A zip bundle like ``revision_zip`` with ``count`` more small files under ``app/big/``,
    so unpacking and copying it take long enough to be caught half-way."""
    lines = ["version: 0.0", "os: linux", "files:", "  - source: app",
             "    destination: /opt/proof", "hooks:"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for event, body in hooks.items():
            info = zipfile.ZipInfo(f"scripts/{event}.sh")
            info.external_attr = 0o100755 << 16
            zf.writestr(info, f'#!/bin/sh\necho "{event} $DEPLOYMENT_ID" >> "$PROOF_FILE"\n'
                              f"{body}\n")
            lines += [f"  {event}:", f"    - location: scripts/{event}.sh", "      timeout: 60"]
        zf.writestr("appspec.yml", "\n".join(lines) + "\n")
        for name, text in files.items():
            zf.writestr(f"app/{name}", text)
        for i in range(count):
            zf.writestr(f"app/big/f{i:05d}", f"file {i}\n" * 8)
    return buffer.getvalue()


def freeze_when(device: Device, predicate: Callable[[], Any], what: str,
                timeout_s: float = 120) -> None:
    """SIGSTOP the agent as soon as ``predicate`` holds and wait until every thread is stopped:
    its state can then be inspected before the SIGKILL, nothing moves any more."""
    assert device.process is not None
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline or device.process.poll() is not None:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}:\n"
                                 f"{device.output()[-3000:]}")
        time.sleep(0.001)  # a tight poll: the window we aim at lasts a second or so
    device.process.send_signal(signal.SIGSTOP)
    tasks = Path(f"/proc/{device.process.pid}/task")

    def all_stopped() -> bool:
        states = []
        for task in tasks.iterdir():
            with contextlib.suppress(OSError):
                raw = (task / "stat").read_text()
                states.append(raw[raw.rindex(")") + 2])
        return all(s in "tT" for s in states)

    wait_for(all_stopped, 30, "the agent's threads to stop")


def kill(device: Device) -> None:
    """SIGKILL (a stopped agent dies too: SIGKILL needs no SIGCONT)."""
    assert device.process is not None
    device.process.kill()
    device.process.wait(timeout=30)
    device.process = None


class StallingRelay:
    """A TCP relay to the sandbox (the device's S3 endpoint) that, once armed, passes at most
    ``budget`` more bytes towards the device and then holds the connection: a download stuck
    half-way, for as long as the test wants."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._budget: int | None = None
        self.stalled = threading.Event()
        self._released = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, budget: int) -> None:
        with self._lock:
            self._budget = budget

    def release(self) -> None:
        """Drop the held connection and pass everything from now on."""
        with self._lock:
            self._budget = None
        self._released.set()

    def close(self) -> None:
        self.release()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_device: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if to_device:
                    data, hold = self._take(data)
                    dst.sendall(data)
                    if hold:
                        self.stalled.set()
                        self._released.wait()
                        break
                else:
                    dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _take(self, data: bytes) -> tuple[bytes, bool]:
        with self._lock:
            if self._budget is None:
                return data, False
            if len(data) <= self._budget:
                self._budget -= len(data)
                return data, False
            allowed, self._budget = self._budget, 0
            return data[:allowed], True


# --- what the deployment-root must look like after a restart ---------------------------------

def deployment_root(device: Device) -> Path:
    return device.root / "deployment-root"


def group_folder(device: Device) -> Path:
    """The one deployment group's folder in the device's deployment-root."""
    reserved = {"deployment-instructions", "deployment-logs", "ongoing-deployment",
                "ongoing-hooks"}
    folders = [p for p in deployment_root(device).iterdir()
               if p.is_dir() and p.name not in reserved]
    assert len(folders) == 1, folders
    return folders[0]


def pointer(device: Device, which: str) -> str | None:
    """Where ``_last_successful_install`` / ``_most_recent_install`` point (a deployment id)."""
    group = group_folder(device).name
    path = deployment_root(device) / "deployment-instructions" / f"{group}_{which}"
    if not path.exists():
        return None
    target = Path(path.read_text())
    assert target.parent == group_folder(device), target
    assert (target / "deployment-archive").is_dir(), f"{target} has no archive"
    return target.name


def cleanup_entries(device: Device) -> list[str]:
    group = group_folder(device).name
    return read_cleanup(deployment_root(device) / "deployment-instructions" / f"{group}-cleanup")


def assert_nothing_in_flight(device: Device) -> None:
    root = deployment_root(device)
    for folder in ("ongoing-deployment", "ongoing-hooks"):
        path = root / folder
        assert not path.exists() or list(path.iterdir()) == [], f"{path} is not empty"
    assert list(root.glob(PARTIAL_GLOB)) == [], "a half-unpacked archive was left"


def installed(device: Device) -> dict[str, str]:
    """The small files installed under /opt/proof (app/big/ excluded), name -> content."""
    top = device.root / "fs" / "opt" / "proof"
    if not top.exists():
        return {}
    return {p.name: p.read_text() for p in top.iterdir() if p.is_file()}


def installed_big(device: Device) -> int:
    big = device.root / "fs" / "opt" / "proof" / "big"
    return len(os.listdir(big)) if big.exists() else 0


def deploy_ok(world: World, device: Device, key: str, bundle: bytes) -> str:
    deployment = world.deploy(world.push(key, bundle))
    info = world.wait_deployment(deployment, timeout_s=120)
    assert info["status"] == "Succeeded", device.output()[-4000:]
    return deployment
