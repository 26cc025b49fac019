"""Fixtures for the system stage: the .deb built once, and a fresh Debian 12 tree per test."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import testbed

ROOT = Path(__file__).resolve().parents[2]
DEB_NAME = "pifleet-agent_0.1.0-1_all.deb"
# Where a test's .deb lands inside the tree (nspawn mounts a fresh tmpfs on /tmp).
DEB_IN_TREE = "/root/" + DEB_NAME


def build_deb(out: Path, version: str | None = None) -> Path:
    """Builds the package into ``out``; ``version`` (e.g. ``0.1.1-1``) rewrites the changelog's
    top entry in a copy of the packaging, for upgrade tests."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PIP_PYTHON": sys.executable}
    if version is not None:
        env["PIFLEET_DEB_VERSION"] = version
    result = subprocess.run([str(ROOT / "packaging" / "build-deb.sh"), str(out), "amd64"],
                            capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.split()[-1])


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_deb(tmp_path_factory.mktemp("deb"))


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    """A throw-away Debian 12 amd64 system (overlay over the cached testbed)."""
    scratch = Path(tmp_path) / "overlay"
    with testbed.overlay(testbed.base_tree("amd64"), scratch) as root:
        yield root


def copy_in(root: Path, source: Path, inside: str) -> str:
    """Copies ``source`` to the absolute path ``inside`` of ``root``; returns ``inside``."""
    target = root / inside.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)
    return inside


def offline_apt(root: Path) -> list[str]:
    """apt options hiding the tree's package sources: dependencies must come from the tree or
    the given .debs, never from the network (``--no-download`` breaks local .debs)."""
    (root / "root/offline").mkdir(parents=True, exist_ok=True)
    (root / "root/offline/sources.list").touch()
    return ["-o", "Dir::Etc::SourceList=/root/offline/sources.list",
            "-o", "Dir::Etc::SourceParts=/root/offline"]


def apt_install(root: Path, deb: Path, *extra: str,
                check: bool = True) -> subprocess.CompletedProcess[str]:
    """``apt-get install ./pifleet-agent_*.deb`` inside ``root``, offline: the Depends are in
    the testbed; Recommends are skipped, as on a board without sensors."""
    inside = copy_in(root, deb, "/root/" + deb.name)
    return testbed.run_in(root, ["apt-get", "install", "-y", "--no-install-recommends",
                                 *offline_apt(root), *extra, inside], check=check)
