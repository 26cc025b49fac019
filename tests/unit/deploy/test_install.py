"""The Install command on real files: clean-up, copies, file_exists_behavior, permissions."""

from __future__ import annotations

import errno
import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from agent.deploy.bundle import BundleType
from agent.deploy.errors import InstallError
from agent.deploy.install import Installer, copy_entry, read_cleanup, run_cleanup
from agent.deploy.spec import DeploymentSpec, Revision, RevisionSource
from appspec import FileExistsBehavior, parse_appspec

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
needs_setfacl = pytest.mark.skipif(shutil.which("setfacl") is None,
                                   reason="setfacl missing: `make test` installs the acl package")


def spec(behavior: FileExistsBehavior = FileExistsBehavior.DISALLOW) -> DeploymentSpec:
    return DeploymentSpec("d-1", "app", "dg", "dg-id",
                          Revision(RevisionSource.LOCAL_DIRECTORY, BundleType.DIRECTORY, "/x"),
                          file_exists_behavior=behavior)


def revision(tmp_path: Path, appspec: str, files: dict[str, str]) -> Path:
    root = tmp_path / "revision"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "appspec.yml").write_text(appspec)
    return root


APP = "version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: /opt/app\n"


class Target:
    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "target"
        self.root.mkdir()
        self.state = tmp_path / "state"
        self.cleanup = self.state / "dg-id-cleanup"
        self.installer = Installer(cleanup_file=self.cleanup,
                                   install_json=self.state / "dg-id-install.json",
                                   install_root=self.root)

    def install(self, rev: Path, behavior: FileExistsBehavior = FileExistsBehavior.DISALLOW,
                ) -> None:
        appspec = parse_appspec((rev / "appspec.yml").read_text())
        self.installer.install(appspec, rev, spec(behavior))

    def path(self, path: str) -> Path:
        return self.root / path.lstrip("/")


def test_cleanup_parsing_drops_a_torn_last_line(tmp_path: Path) -> None:
    # The official vector: "test_delete_path\nanother_delete_path\nmangled".
    file = tmp_path / "c"
    file.write_text("test_delete_path\nanother_delete_path\nmangled")
    assert read_cleanup(file) == ["test_delete_path", "another_delete_path"]
    file.write_text("")
    assert read_cleanup(file) == []
    assert read_cleanup(tmp_path / "absent") == []


def test_cleanup_runs_in_reverse_and_keeps_non_empty_directories(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "mine").write_text("x")
    (d / "theirs").write_text("y")
    (tmp_path / "link").symlink_to("/nonexistent")
    file = tmp_path / "cleanup"
    file.write_text(f"{d}\n{d / 'mine'}\n{tmp_path / 'link'}\n{tmp_path / 'gone'}\n")
    assert run_cleanup(file) == []
    assert not (d / "mine").exists() and (d / "theirs").exists()
    assert not os.path.lexists(tmp_path / "link")
    assert not file.exists()


def test_install_copies_and_writes_cleanup_and_instructions(tmp_path: Path) -> None:
    rev = revision(tmp_path, APP, {"app/a.txt": "a", "app/sub/b.txt": "b"})
    os.chmod(rev / "app" / "a.txt", 0o750)
    os.utime(rev / "app" / "a.txt", (1_000_000, 1_000_000))
    t = Target(tmp_path)
    t.install(rev)
    assert t.path("/opt/app/sub/b.txt").read_text() == "b"
    info = t.path("/opt/app/a.txt").stat()
    assert stat.S_IMODE(info.st_mode) == 0o750 and int(info.st_mtime) == 1_000_000
    entries = read_cleanup(t.cleanup)
    assert entries == [str(t.path(p)) for p in
                       ("/opt", "/opt/app", "/opt/app/a.txt", "/opt/app/sub",
                        "/opt/app/sub/b.txt")]
    instructions = json.loads((t.state / "dg-id-install.json").read_text())["instructions"]
    assert instructions[0] == {"type": "mkdir", "directory": "/opt"}
    assert {"type": "copy", "source": str(rev / "app" / "a.txt"),
            "destination": "/opt/app/a.txt"} in instructions


def test_redeploy_removes_own_files_so_disallow_does_not_trip(tmp_path: Path) -> None:
    t = Target(tmp_path)
    t.install(revision(tmp_path / "1", APP, {"app/old.txt": "1", "app/keep.txt": "1"}))
    t.path("/opt/app/user-data.db").write_text("precious")
    t.install(revision(tmp_path / "2", APP, {"app/keep.txt": "2"}))
    assert t.path("/opt/app/keep.txt").read_text() == "2"
    assert not t.path("/opt/app/old.txt").exists()  # removed by the clean-up
    assert t.path("/opt/app/user-data.db").read_text() == "precious"


def test_disallow_fails_on_a_foreign_file_and_changes_nothing(tmp_path: Path) -> None:
    t = Target(tmp_path)
    t.path("/opt/app").mkdir(parents=True)
    t.path("/opt/app/a.txt").write_text("foreign")
    rev = revision(tmp_path, APP, {"app/a.txt": "new", "app/b.txt": "b"})
    with pytest.raises(Exception, match="already exists"):
        t.install(rev)
    assert t.path("/opt/app/a.txt").read_text() == "foreign"
    assert not t.path("/opt/app/b.txt").exists()


@pytest.mark.parametrize(("behavior", "expected"), [
    (FileExistsBehavior.OVERWRITE, "new"), (FileExistsBehavior.RETAIN, "foreign")])
def test_overwrite_and_retain(tmp_path: Path, behavior: FileExistsBehavior,
                              expected: str) -> None:
    t = Target(tmp_path)
    t.path("/opt/app").mkdir(parents=True)
    t.path("/opt/app/a.txt").write_text("foreign")
    t.install(revision(tmp_path, APP, {"app/a.txt": "new"}), behavior)
    assert t.path("/opt/app/a.txt").read_text() == expected


def test_appspec_behavior_wins_over_the_deployment(tmp_path: Path) -> None:
    t = Target(tmp_path)
    t.path("/opt/app").mkdir(parents=True)
    t.path("/opt/app/a.txt").write_text("foreign")
    rev = revision(tmp_path, APP + "file_exists_behavior: RETAIN\n", {"app/a.txt": "new"})
    t.install(rev, FileExistsBehavior.OVERWRITE)
    assert t.path("/opt/app/a.txt").read_text() == "foreign"


def test_crash_mid_install_is_cleaned_up_next_time(tmp_path: Path) -> None:
    """A cleanup file written up to a crash (torn last line) still undoes what was done."""
    t = Target(tmp_path)
    t.install(revision(tmp_path / "1", APP, {"app/a.txt": "1", "app/b.txt": "1"}))
    # Simulate the crash: the file lost its tail mid-line, b.txt was not listed.
    text = t.cleanup.read_text()
    t.cleanup.write_text(text[: text.index("b.txt") + 2])
    t.install(revision(tmp_path / "2", APP, {"app/a.txt": "2"}),
              FileExistsBehavior.OVERWRITE)
    assert t.path("/opt/app/a.txt").read_text() == "2"


def test_mode_and_symlinks_are_kept(tmp_path: Path) -> None:
    rev = revision(tmp_path, APP, {"app/run.sh": "#!/bin/sh\n"})
    os.chmod(rev / "app" / "run.sh", 0o755)
    (rev / "app" / "current").symlink_to("run.sh")
    t = Target(tmp_path)
    t.install(rev)
    assert os.readlink(t.path("/opt/app/current")) == "run.sh"
    assert stat.S_IMODE(t.path("/opt/app/run.sh").stat().st_mode) == 0o755


def test_permissions_mode_applies_to_installed_files_only(tmp_path: Path) -> None:
    appspec = APP + ("permissions:\n  - object: /opt/app\n    pattern: '*.sh'\n    mode: 700\n"
                     "    type: [file]\n")
    rev = revision(tmp_path, appspec, {"app/a.sh": "", "app/b.txt": ""})
    t = Target(tmp_path)
    t.install(rev)
    assert stat.S_IMODE(t.path("/opt/app/a.sh").stat().st_mode) == 0o700
    assert stat.S_IMODE(t.path("/opt/app/b.txt").stat().st_mode) == 0o644


@needs_setfacl
def test_acls_are_set_with_setfacl(tmp_path: Path) -> None:
    appspec = APP + ("permissions:\n  - object: /opt/app\n    mode: 640\n"
                     "    acls: ['u:nobody:4']\n    type: [file]\n")
    t = Target(tmp_path)
    t.install(revision(tmp_path, appspec, {"app/a.txt": "x"}))
    out = subprocess.run(["getfacl", "-c", str(t.path("/opt/app/a.txt"))], check=True,
                         capture_output=True, text=True).stdout.split()
    assert "user:nobody:r--" in out and "user::rw-" in out and "group::r--" in out


@needs_root
def test_owner_and_group_are_applied(tmp_path: Path) -> None:
    appspec = APP + ("permissions:\n  - object: /opt/app\n    owner: nobody\n"
                     "    group: nogroup\n    type: [file]\n")
    t = Target(tmp_path)
    t.install(revision(tmp_path, appspec, {"app/a.txt": "x"}))
    info = t.path("/opt/app/a.txt").stat()
    assert pwd.getpwuid(info.st_uid).pw_name == "nobody"
    assert grp.getgrgid(info.st_gid).gr_name == "nogroup"


def test_unknown_owner_is_a_clear_error(tmp_path: Path) -> None:
    appspec = APP + "permissions:\n  - object: /opt/app\n    owner: no-such-user-x\n"
    t = Target(tmp_path)
    with pytest.raises(InstallError, match=r"no user .no-such-user-x.*create the user"):
        t.install(revision(tmp_path, appspec, {"app/a.txt": "x"}))


def test_disk_full_during_copy_is_a_clear_error(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("agent.deploy.install._copy_data", full)
    t = Target(tmp_path)
    with pytest.raises(InstallError, match=r"disk full.*free some space"):
        t.install(revision(tmp_path, APP, {"app/a.txt": "x"}))
    # Nothing half-written stays at the destination; the clean-up file lists what was made.
    assert not t.path("/opt/app/a.txt").exists()
    assert [p for p in t.path("/opt/app").iterdir()] == []
    assert str(t.path("/opt/app/a.txt")) in read_cleanup(t.cleanup)


def test_copy_entry_replaces_atomically(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_text("new")
    dst = tmp_path / "dst"
    dst.write_text("old")
    inode = dst.stat().st_ino
    copy_entry(str(src), str(dst))
    assert dst.read_text() == "new" and dst.stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


def test_selinux_context_commands_and_their_cleanup(tmp_path: Path) -> None:
    """SELinux cannot exist here: the tools are faked at the command boundary, and the exact
    commands checked against the official vector (`semanage fcontext -a -s name -t type -r s0`).
    """
    commands: list[list[str]] = []
    appspec = APP + ("permissions:\n  - object: /opt/app\n    type: [file]\n"
                     "    context:\n      name: name\n      type: type\n      range: s0\n")
    t = Target(tmp_path)
    t.installer = Installer(cleanup_file=t.cleanup, install_json=t.state / "i.json",
                            install_root=t.root, run=commands.append,
                            which=lambda name: f"/usr/sbin/{name}")
    t.install(revision(tmp_path, appspec, {"app/a.txt": "x"}))
    real = os.path.realpath(t.path("/opt/app/a.txt"))
    assert commands == [["semanage", "fcontext", "-a", "-s", "name", "-t", "type", "-r", "s0",
                         real], ["restorecon", "-v", real]]
    assert "semanage\0" + real in read_cleanup(t.cleanup)
    commands.clear()
    run_cleanup(t.cleanup, run=commands.append, which=lambda name: name)
    assert commands == [["semanage", "fcontext", "-d", real]]


def test_missing_setfacl_is_a_clear_error(tmp_path: Path) -> None:
    appspec = APP + "permissions:\n  - object: /opt/app\n    acls: ['u:nobody:4']\n"
    t = Target(tmp_path)
    t.installer = Installer(cleanup_file=t.cleanup, install_json=t.state / "i.json",
                            install_root=t.root, which=lambda _: None)
    with pytest.raises(InstallError, match=r"setfacl is not installed.*'acl'"):
        t.install(revision(tmp_path, appspec, {"app/a.txt": "x"}))


def test_a_replacement_cut_short_by_a_kill_is_cleaned_up_next_time(tmp_path: Path) -> None:
    """OVERWRITE copies to a hidden sibling and renames it over the file; that sibling is
    listed first, so a kill between the copy and the rename leaves nothing of ours for good."""
    t = Target(tmp_path)
    t.path("/opt/app").mkdir(parents=True)
    t.path("/opt/app/a.txt").write_text("foreign")
    t.install(revision(tmp_path / "1", APP, {"app/a.txt": "new"}), FileExistsBehavior.OVERWRITE)
    leftover = t.path("/opt/app/.a.txt.pifleet-new")
    assert str(leftover) in read_cleanup(t.cleanup)
    leftover.write_text("half a copy")  # what the kill leaves
    t.install(revision(tmp_path / "2", APP, {"app/b.txt": "b"}), FileExistsBehavior.OVERWRITE)
    assert sorted(p.name for p in t.path("/opt/app").iterdir()) == ["b.txt"]
