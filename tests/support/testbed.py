"""Debian 12 test systems for the package tests: a debootstrap tree per architecture, built once
and cached, given to each test as a throw-away overlay, entered as a container or booted under
systemd-nspawn with a real systemd as PID 1.

Building needs Debian's archive (the mirror is read from this machine's own apt sources, so no
host name lives in the repo); everything after that is offline. `make testbed` builds the trees
(`python -m tests.support.testbed build ARCH...`); the tests fail with that instruction if one is
missing rather than downloading in the middle of a test run.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

RELEASE = "bookworm"
CACHE = Path(os.environ.get("PIFLEET_TESTBED_CACHE", "/var/cache/pifleet-testbed"))
# The package's Depends are preinstalled so `apt-get install ./pifleet-agent_*.deb` resolves
# offline; systemd + dbus make the tree bootable. Changing this list rebuilds the cache.
# logrotate: Recommended by the package, and piuparts installs it to try the package's rules.
PACKAGES = ("python3", "python3-yaml", "python3-serial", "openssl", "systemd", "systemd-sysv",
            "dbus", "procps", "acl", "logrotate")
# Foreign (qemu-user) trees are never booted: the package's Depends are enough.
FOREIGN_PACKAGES = ("python3", "python3-yaml", "python3-serial", "openssl", "acl")
QEMU = {"arm64": "qemu-aarch64", "armhf": "qemu-arm"}
HOST_ARCH = "amd64"


class TestbedError(RuntimeError):
    """The testbed cannot be built or used here; the message says what to do."""


def debian_mirror(release: str = RELEASE) -> str:
    """The Debian archive URI this machine's apt already uses for ``release``
    (``PIFLEET_DEBIAN_MIRROR`` overrides)."""
    if os.environ.get("PIFLEET_DEBIAN_MIRROR"):
        return os.environ["PIFLEET_DEBIAN_MIRROR"]
    candidates: list[tuple[str, list[str]]] = []
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in path.read_text(encoding="utf-8").split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.MULTILINE))
            for uri in fields.get("URIs", "").split():
                candidates.append((uri, fields.get("Suites", "").split()))
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text(encoding="utf-8").splitlines():
            match = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
            if match:
                candidates.append((match.group(1), [match.group(2)]))
    for uri, suites in candidates:
        if release in suites and "security" not in uri:
            return uri
    raise TestbedError(f"no apt source for Debian {release} on this machine: "
                       "set PIFLEET_DEBIAN_MIRROR to a Debian archive URI")


def base_tree(arch: str = HOST_ARCH, release: str = RELEASE) -> Path:
    """The cached tree for ``arch``; fails with the command that builds it."""
    tree = CACHE / f"{release}-{arch}"
    if not _stamp_matches(tree):
        option = "" if release == RELEASE else f"--release {release} "
        raise TestbedError(f"no {release} {arch} test system in {CACHE}: run `make testbed` "
                           f"(python -m tests.support.testbed build {option}{arch})")
    return tree


def _stamp(tree: Path) -> Path:
    return tree.parent / f"{tree.name}.stamp"


def _packages(arch: str, release: str = RELEASE) -> tuple[str, ...]:
    # Other releases (an unsupported one, to show the package refuses it) are never booted.
    return PACKAGES if arch == HOST_ARCH and release == RELEASE else FOREIGN_PACKAGES


def _stamp_matches(tree: Path) -> bool:
    stamp = _stamp(tree)
    release, arch = tree.name.rsplit("-", 1)
    return tree.is_dir() and stamp.is_file() and \
        stamp.read_text() == " ".join(_packages(arch, release))


def enable_foreign(arch: str) -> None:
    """Registers qemu-user-static for ``arch`` with binfmt_misc (mounting it if needed)."""
    if arch == HOST_ARCH:
        return
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)], check=True)
    if not (binfmt / QEMU[arch]).exists():
        subprocess.run(["update-binfmts", "--enable", QEMU[arch]], check=True)
    if (binfmt / QEMU[arch]).read_text().splitlines()[0] != "enabled":
        raise TestbedError(f"binfmt_misc entry {QEMU[arch]} is disabled")


def build(arch: str, release: str = RELEASE) -> Path:
    """Builds (or keeps) the cached tree for ``arch``; atomic: a failed build leaves nothing.
    Another ``release`` comes from the same archive as this machine's bookworm."""
    tree = CACHE / f"{release}-{arch}"
    if _stamp_matches(tree):
        return tree
    enable_foreign(arch)
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=CACHE))
    try:
        result = subprocess.run(
            ["debootstrap", f"--arch={arch}", "--variant=minbase",
             f"--include={','.join(_packages(arch, release))}", release, str(work / "root"),
             debian_mirror()], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            log = work / "root" / "debootstrap" / "debootstrap.log"
            detail = log.read_text(errors="replace")[-3000:] if log.is_file() else result.stderr
            raise TestbedError(f"debootstrap {arch} failed:\n{detail}")
        root = work / "root"
        (root / "etc" / "hostname").write_text("pifleet-testbed\n")
        # No getty on a console nobody reads; apt timers would only add noise to the journal.
        for unit in ("console-getty.service", "apt-daily.timer", "apt-daily-upgrade.timer"):
            (root / "etc/systemd/system" / unit).unlink(missing_ok=True)
            (root / "etc/systemd/system" / unit).symlink_to("/dev/null")
        subprocess.run(["apt-get", "-o", f"Dir={root}", "clean"], check=False,
                       capture_output=True)
        if tree.exists():
            shutil.rmtree(tree)
        root.rename(tree)
        _stamp(tree).write_text(" ".join(_packages(arch, release)))
        return tree
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def overlay(base: Path, scratch: Path) -> Iterator[Path]:
    """A writable copy-on-write view of ``base`` (overlayfs), discarded on exit."""
    upper, work, merged = scratch / "upper", scratch / "work", scratch / "merged"
    for path in (upper, work, merged):
        path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={base},upperdir={upper},workdir={work}", str(merged)], check=True)
    try:
        yield merged
    finally:
        subprocess.run(["umount", "-l", str(merged)], check=False)


def run_in(root: Path, argv: Sequence[str], *, timeout_s: float = 300,
           check: bool = True, binds: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Runs ``argv`` inside ``root`` as a container without booting it (as a package installs in
    a chroot: debhelper's snippets see no running systemd and do not start the service)."""
    argv = ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "--pipe", "-D", str(root),
            "--setenv=DEBIAN_FRONTEND=noninteractive", "--setenv=LC_ALL=C.UTF-8",
            *(f"--bind={bind}" for bind in binds), "--", *argv]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                            stdin=subprocess.DEVNULL, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


class Booted:
    """A tree booted under ``systemd-nspawn --boot`` sharing the host's network (so the agent
    inside reaches a sandbox on the host's loopback). ``run`` executes in its namespaces."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.log = log
        self._nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def start(self, timeout_s: float = 120) -> Booted:
        with self.log.open("wb") as out:
            self._nspawn = subprocess.Popen(
                ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", str(self.root),
                 "--boot", "--console=passive"], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent)  # noqa: PLW1509 (no threads exec between fork and exec here)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited {self._nspawn.returncode}:\n"
                                     f"{self.log.read_text(errors='replace')[-3000:]}")
            self.leader = self.leader or _container_init(self._nspawn.pid)
            if self.leader:
                state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return self
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"the container did not finish booting in {timeout_s} s")

    def run(self, argv: Sequence[str], *, check: bool = True, timeout_s: float = 120,
            ) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the booted system (its mount, PID, IPC and UTS namespaces)."""
        assert self.leader, "not booted"
        full = ["nsenter", f"--target={self.leader}", "--mount", "--uts", "--ipc", "--pid",
                "--", "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "LC_ALL=C.UTF-8", *argv]
        result = subprocess.run(full, capture_output=True, text=True, timeout=timeout_s,
                                stdin=subprocess.DEVNULL, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode} in the "
                                 f"container:\n{result.stdout}\n{result.stderr}")
        return result

    def show(self, unit: str, prop: str) -> str:
        """One property of a unit (``systemctl show -P``)."""
        return self.run(["systemctl", "show", "-P", prop, unit]).stdout.strip()

    def stop(self, timeout_s: float = 60) -> None:
        if self._nspawn is None or self._nspawn.poll() is not None:
            return
        if self.leader:
            # SIGRTMIN+4 asks systemd for a clean poweroff.
            os.kill(self.leader, signal.SIGRTMIN + 4)
        try:
            self._nspawn.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self._nspawn.pid, signal.SIGKILL)
            self._nspawn.wait(timeout=10)

    def __enter__(self) -> Booted:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    """SIGTERM to nspawn (which shuts the container down) if the test or benchmark process
    dies without stopping it: a killed run must not leave booted systems behind."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _container_init(nspawn_pid: int) -> int:
    """The PID (host view) of the container's PID 1 among ``nspawn_pid``'s descendants."""
    pending = [nspawn_pid]
    while pending:
        pid = pending.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        nspid = re.search(r"^NSpid:\s*(.*)$", status, re.MULTILINE)
        if pid != nspawn_pid and nspid and nspid.group(1).split()[-1] == "1" \
                and len(nspid.group(1).split()) > 1:
            return pid
        pending.extend(int(child) for child in children)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.testbed")
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser("build", help="build the cached Debian trees (needs the archive)")
    build_cmd.add_argument("arches", nargs="+", choices=["amd64", "arm64", "armhf"])
    build_cmd.add_argument("--release", default=RELEASE,
                           help=f"Debian release (default {RELEASE}; bullseye: the package's "
                                "unsupported-release test)")
    args = parser.parse_args(argv)
    for arch in args.arches:
        started = time.monotonic()
        try:
            tree = build(arch, args.release)
        except (TestbedError, subprocess.CalledProcessError) as error:
            print(f"testbed: {error}", file=sys.stderr)
            return 1
        print(f"testbed: {arch}: {tree} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
