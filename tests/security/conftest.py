"""The adversary's view: hostile revisions built byte by byte and given to the real agent.

Revisions go through `pifleet-agent deploy-local` as a subprocess (fast, no network) and, where
the diagnostic must reach the control plane, through `pifleet-agent run` against the sandbox
(the `world` fixture of tests/e2e). Every test checks the same three things: the refusal names
the entry, nothing outside the deployment's own folder changed, the previous revision is still
installed.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import World, revision_zip, world

AGENT = str(Path(sys.executable).parent / "pifleet-agent")
APPSPEC = (b"version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: /opt/app\n")
GROUP = "default-local-deployment-group"

__all__ = ["APPSPEC", "World", "revision_zip", "world"]


# -- building hostile archives --------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """One archive entry; ``kind`` is a tarfile type (REGTYPE, SYMTYPE, LNKTYPE, CHRTYPE...)."""

    name: str
    data: bytes = b"x"
    kind: bytes = tarfile.REGTYPE
    link: str = ""
    mode: int = 0o644


def file(name: str, data: bytes = b"x", mode: int = 0o644) -> Member:
    return Member(name, data, mode=mode)


def symlink(name: str, target: str) -> Member:
    return Member(name, b"", tarfile.SYMTYPE, target, 0o777)


def hardlink(name: str, target: str) -> Member:
    return Member(name, b"", tarfile.LNKTYPE, target)


def special(name: str, kind: bytes) -> Member:
    return Member(name, b"", kind, mode=0o600)


def revision(version: str, *extra: Member) -> list[Member]:
    """A good revision (appspec + app/v.txt) plus the hostile entries."""
    return [file("appspec.yml", APPSPEC), file("app/v.txt", version.encode()), *extra]


def make_tar(path: Path, members: Iterable[Member], compression: str = "") -> Path:
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT,  # type: ignore[call-overload]
                      encoding="utf-8", errors="surrogateescape") as archive:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.kind
            info.mode = member.mode
            info.linkname = member.link
            info.mtime = 1_700_000_000
            if member.kind == tarfile.REGTYPE:
                info.size = len(member.data)
                archive.addfile(info, io.BytesIO(member.data))
            else:
                archive.addfile(info)
    return path


_ZIP_KIND = {tarfile.REGTYPE: stat.S_IFREG, tarfile.SYMTYPE: stat.S_IFLNK,
             tarfile.CHRTYPE: stat.S_IFCHR, tarfile.FIFOTYPE: stat.S_IFIFO}


def make_zip(path: Path, members: Iterable[Member]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in members:
            info = zipfile.ZipInfo(member.name, (2023, 11, 14, 22, 13, 20))
            info.create_system = 3
            info.external_attr = (_ZIP_KIND[member.kind] | member.mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.link.encode() if member.link else member.data)
    return path


def make_bundle(path: Path, kind: str, members: Iterable[Member]) -> Path:
    if kind == "zip":
        return make_zip(path, members)
    return make_tar(path, members, "gz" if kind == "tgz" else "")


def honest_zip_bomb(path: Path, unpacked: int) -> Path:
    """One entry of ``unpacked`` zero bytes whose headers say so, in a few MB.

    Built from one full-flushed deflate block repeated (each is self-contained), so making a
    multi-gigabyte bomb costs no compression time. The CRC is left 0: a correct agent refuses the
    declared size before reading any data.
    """
    chunk_size = 1024 * 1024
    assert unpacked % chunk_size == 0
    squeezer = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = squeezer.compress(bytes(chunk_size)) + squeezer.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    compressed_size = len(chunk) * (unpacked // chunk_size) + len(final)
    name = b"app/zeros.bin"
    appspec = APPSPEC
    out = io.BytesIO()
    entries = []

    def local(name: bytes, method: int, crc: int, csize: int, usize: int) -> None:
        entries.append((name, method, crc, csize, usize, out.tell()))
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, csize,
                              usize, len(name), 0) + name)

    local(b"appspec.yml", 0, zlib.crc32(appspec), len(appspec), len(appspec))
    out.write(appspec)
    local(name, 8, 0, compressed_size, unpacked)
    for _ in range(unpacked // chunk_size):
        out.write(chunk)
    out.write(final)
    directory = out.tell()
    for name_, method, crc, csize, usize, offset in entries:
        out.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0x031E, 20, 0, method, 0, 0x21,
                              crc, csize, usize, len(name_), 0, 0, 0, 0, 0o100644 << 16, offset)
                  + name_)
    size = out.tell() - directory
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), size,
                          directory, 0))
    path.write_bytes(out.getvalue())
    return path


# -- running the agent and checking the aftermath -------------------------------------------------

def deploy_local(bundle: Path, kind: str, root: Path,
                 timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENT, "deploy-local", "-l", str(bundle), "-t", kind, "--root",
                           str(root)], capture_output=True, text=True, timeout=timeout_s,
                          check=False, errors="replace")


def snapshot(top: Path, *, skip: Iterable[Path] = ()) -> dict[str, tuple[int, int, int, str]]:
    """Every path under ``top`` with its type, mode, size and (for files and links) content."""
    skipped = {str(p) for p in skip}
    found: dict[str, tuple[int, int, int, str]] = {}
    for directory, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(directory, d) not in skipped]
        for name in [*dirs, *files]:
            path = os.path.join(directory, name)
            if path in skipped:
                continue
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                content = Path(path).read_bytes().hex()[:200]
            else:
                content = ""
            if stat.S_ISDIR(info.st_mode):  # a new deployment folder changes its parent's
                found[path] = (info.st_mode, 0, 0, content)
            else:
                found[path] = (info.st_mode, info.st_size, info.st_nlink, content)
    return found


@dataclass
class Pi:
    """A deploy-local "device": its --root, a first good revision installed, and a victim file
    outside the root that hostile bundles aim at."""

    tmp: Path
    root: Path
    outside: Path
    first_folder: Path

    @property
    def deployment_root(self) -> Path:
        return self.root / "deployment-root"

    def installed_version(self) -> str:
        return (self.root / "opt" / "app" / "v.txt").read_text()

    def last_successful(self) -> str:
        return (self.deployment_root / "deployment-instructions" /
                f"{GROUP}_last_successful_install").read_text()

    def folders(self) -> set[Path]:
        return set((self.deployment_root / GROUP).iterdir())

    def state(self, new_folders: Iterable[Path] = ()) -> dict[str, tuple[int, int, int, str]]:
        """Everything under tmp except what one deployment may legitimately touch: its own
        folder, the deployments log and the ongoing-deployment marker."""
        return snapshot(self.tmp, skip=[*new_folders,
                                        self.deployment_root / "deployment-logs",
                                        self.deployment_root / "ongoing-deployment",
                                        self.tmp / "bundles"])

    def refuses(self, bundle: Path, kind: str, *fragments: str) -> str:
        """Deploy ``bundle``; it must fail at DownloadBundle naming ``fragments``, change
        nothing outside its folder and leave the first revision installed."""
        before = self.state()
        folders = self.folders()
        done = deploy_local(bundle, kind, self.root)
        output = done.stdout + done.stderr
        assert done.returncode == 1, output
        failed = [line for line in output.splitlines() if "FAILED" in line]
        assert len(failed) == 1 and "DownloadBundle" in failed[0], output
        for fragment in fragments:
            assert fragment in failed[0], output
        assert "Traceback" not in output
        assert self.state(self.folders() - folders) == before
        assert self.installed_version() == "1"
        assert self.last_successful() == str(self.first_folder)
        return failed[0]


@pytest.fixture
def pi(tmp_path: Path) -> Pi:
    (tmp_path / "bundles").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep me")
    root = tmp_path / "pi"
    first = make_tar(tmp_path / "bundles" / "v1.tgz", revision("1"), "gz")
    done = deploy_local(first, "tgz", root)
    assert done.returncode == 0, done.stdout + done.stderr
    (folder,) = (root / "deployment-root" / GROUP).iterdir()
    return Pi(tmp_path, root, outside, folder)
