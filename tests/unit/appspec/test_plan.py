"""The install plan: copies, directories, conflicts, file_exists_behavior and permissions."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from appspec import AppSpec, FileExistsBehavior, InstallPlanError, parse_appspec
from appspec.permissions import full_acl, parse_ace
from appspec.plan import (
    Chmod,
    Chown,
    Copy,
    EmptyTarget,
    InstallPlan,
    Mkdir,
    RootedTarget,
    SetAcl,
    SetContext,
    normalize,
    plan_install,
)


def make_revision(root: Path, files: dict[str, str]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def spec(body: str) -> AppSpec:
    return parse_appspec("version: 0.0\nos: linux\n" + textwrap.dedent(body))


@pytest.fixture
def revision(tmp_path: Path) -> Path:
    return make_revision(tmp_path / "rev", {
        "appspec.yml": "", "app/web.py": "", "app/static/index.html": "",
        "app/static/style.css": "", "config.ini": "",
    })


@pytest.fixture
def pi(tmp_path: Path) -> RootedTarget:
    root = tmp_path / "pi"
    (root / "opt").mkdir(parents=True)
    (root / "etc").mkdir()
    return RootedTarget(str(root))


def steps_of(plan: InstallPlan, kind: type) -> list[object]:
    return [s for s in plan.steps if isinstance(s, kind)]


def test_directory_source_is_copied_recursively_with_ancestors(revision: Path,
                                                               pi: RootedTarget) -> None:
    plan = plan_install(spec("files:\n  - {source: app, destination: /opt/aqi/current}\n"),
                        revision, target=pi)
    a = str(revision / "app")
    assert plan.steps == (
        Mkdir("/opt/aqi"), Mkdir("/opt/aqi/current"),
        Mkdir("/opt/aqi/current/static"),
        Copy(f"{a}/static/index.html", "/opt/aqi/current/static/index.html"),
        Copy(f"{a}/static/style.css", "/opt/aqi/current/static/style.css"),
        Copy(f"{a}/web.py", "/opt/aqi/current/web.py"),
    )


def test_file_source_keeps_its_name_under_destination(revision: Path, pi: RootedTarget) -> None:
    plan = plan_install(spec("files:\n  - {source: config.ini, destination: /etc/aqi}\n"),
                        revision, target=pi)
    assert plan.steps == (Mkdir("/etc/aqi"), Copy(str(revision / "config.ini"),
                                                   "/etc/aqi/config.ini"))


def test_source_slash_copies_the_whole_revision(revision: Path, pi: RootedTarget) -> None:
    plan = plan_install(spec("files:\n  - {source: /, destination: /opt/all}\n"), revision,
                        target=pi)
    copied = sorted(s.destination for s in steps_of(plan, Copy))  # type: ignore[attr-defined]
    assert "/opt/all/appspec.yml" in copied
    assert len(copied) == 5


def test_repeated_directories_are_created_once(revision: Path, pi: RootedTarget) -> None:
    plan = plan_install(spec("""
        files:
          - {source: app/web.py, destination: /opt/new/}
          - {source: config.ini, destination: /opt/new}
    """), revision, target=pi)
    assert steps_of(plan, Mkdir) == [Mkdir("/opt/new")]


def test_two_sources_to_one_target_is_an_error(tmp_path: Path, pi: RootedTarget) -> None:
    rev = make_revision(tmp_path / "r", {"a/x.txt": "1", "b/x.txt": "2"})
    with pytest.raises(InstallPlanError) as info:
        plan_install(spec("""
            files:
              - {source: a, destination: /opt/x}
              - {source: b, destination: /opt/x}
        """), rev, target=pi)
    (error,) = info.value.findings
    assert error.yaml_path == "files[1]"
    assert "two sources" in error.message and "/opt/x/x.txt" in error.message


def test_copy_onto_a_directory_being_created_is_an_error(tmp_path: Path,
                                                         pi: RootedTarget) -> None:
    rev = make_revision(tmp_path / "r", {"one/data": "f", "two/data/inner": "d"})
    with pytest.raises(InstallPlanError, match=r"also creates a directory|copied file"):
        plan_install(spec("""
            files:
              - {source: two, destination: /opt/x}
              - {source: one, destination: /opt/x}
        """), rev, target=pi)


def test_missing_source_is_an_error(revision: Path, pi: RootedTarget) -> None:
    with pytest.raises(InstallPlanError, match=r"'nope' is not in the revision"):
        plan_install(spec("files:\n  - {source: nope, destination: /opt/x}\n"), revision,
                     target=pi)


def test_symlink_leading_out_of_the_revision_is_refused(tmp_path: Path,
                                                        pi: RootedTarget) -> None:
    rev = make_revision(tmp_path / "r", {"app/ok": ""})
    os.symlink("/etc", rev / "app" / "etc")
    with pytest.raises(InstallPlanError, match="symlink leading out of the revision"):
        plan_install(spec("files:\n  - {source: app, destination: /opt/x}\n"), rev, target=pi)


def test_symlinked_file_inside_the_revision_is_copied_as_a_link(tmp_path: Path,
                                                                pi: RootedTarget) -> None:
    rev = make_revision(tmp_path / "r", {"app/real": ""})
    os.symlink("real", rev / "app" / "alias")
    plan = plan_install(spec("files:\n  - {source: app, destination: /opt/x}\n"), rev,
                        target=pi)
    assert Copy(str(rev / "app" / "alias"), "/opt/x/alias") in plan.steps


def test_fifo_in_the_revision_is_refused(tmp_path: Path, pi: RootedTarget) -> None:
    rev = make_revision(tmp_path / "r", {"app/ok": ""})
    os.mkfifo(rev / "app" / "pipe")
    with pytest.raises(InstallPlanError, match="device, FIFO or socket"):
        plan_install(spec("files:\n  - {source: app, destination: /opt/x}\n"), rev, target=pi)


@pytest.mark.parametrize(("behavior", "expected"), [
    (FileExistsBehavior.OVERWRITE, "copy"), (FileExistsBehavior.RETAIN, "retain"),
    (FileExistsBehavior.DISALLOW, "error"),
])
def test_existing_destination_files(revision: Path, pi: RootedTarget,
                                    behavior: FileExistsBehavior, expected: str) -> None:
    Path(pi.real("/etc/aqi")).mkdir()
    Path(pi.real("/etc/aqi/config.ini")).write_text("local edits")
    s = spec("files:\n  - {source: config.ini, destination: /etc/aqi}\n")
    if expected == "error":
        with pytest.raises(InstallPlanError, match="already exists on the Pi"):
            plan_install(s, revision, file_exists_behavior=behavior, target=pi)
        return
    plan = plan_install(s, revision, file_exists_behavior=behavior, target=pi)
    assert bool(steps_of(plan, Copy)) is (expected == "copy")
    assert plan.retained == (("/etc/aqi/config.ini",) if expected == "retain" else ())


def test_appspec_behavior_wins_over_the_deployment(revision: Path, pi: RootedTarget) -> None:
    Path(pi.real("/etc/aqi")).mkdir()
    Path(pi.real("/etc/aqi/config.ini")).write_text("x")
    s = spec("file_exists_behavior: OVERWRITE\nfiles:\n"
             "  - {source: config.ini, destination: /etc/aqi}\n")
    plan = plan_install(s, revision, file_exists_behavior=FileExistsBehavior.DISALLOW,
                        target=pi)
    assert steps_of(plan, Copy)


def test_every_conflict_is_reported(tmp_path: Path, pi: RootedTarget) -> None:
    for name in ("a", "b"):
        Path(pi.real(f"/opt/{name}")).write_text("exists")
    rev = make_revision(tmp_path / "r", {"a": "", "b": ""})
    with pytest.raises(InstallPlanError) as info:
        plan_install(spec("files:\n  - {source: a, destination: /opt}\n"
                          "  - {source: b, destination: /opt}\n"), rev, target=pi)
    assert [f.yaml_path for f in info.value.findings] == ["files[0]", "files[1]"]


# --- permissions -----------------------------------------------------------------------------


def test_command_order_and_install_json_match_the_official_agent(tmp_path: Path,
                                                                 pi: RootedTarget) -> None:
    rev = make_revision(tmp_path / "r", {"testfile.txt": ""})
    s = spec("""
        files:
          - {source: testfile.txt, destination: /opt}
        permissions:
          - object: /opt/testfile.txt
            mode: 744
            acls: ['u:bob:7', 'g:dev:4']
            context: {name: name, type: type, range: 's2-s3:c0,c2.c4,c6'}
            owner: bob
            group: dev
          - object: /opt
            pattern: nothing-matches
    """)
    plan = plan_install(s, rev, target=pi)
    assert plan.to_instructions()["instructions"][1:] == [
        {"type": "chmod", "mode": "744", "file": "/opt/testfile.txt"},
        {"type": "setfacl", "acl": ["user:bob:rwx", "group:dev:r--"],
         "file": "/opt/testfile.txt"},
        {"type": "semanage", "context": {"user": "name", "role": None, "type": "type",
                                         "range": "s2-s3:c0,c2.c4,c6"},
         "file": "/opt/testfile.txt"},
        {"type": "chown", "owner": "bob", "group": "dev", "file": "/opt/testfile.txt"},
    ]
    json.dumps(plan.to_instructions())
    assert plan.permission_targets == (("/opt/testfile.txt",), ())


def test_owner_only_chown_has_null_group(tmp_path: Path, pi: RootedTarget) -> None:
    rev = make_revision(tmp_path / "r", {"f": ""})
    plan = plan_install(spec("files: [{source: f, destination: /opt}]\n"
                             "permissions: [{object: /opt/f, owner: bob}]\n"), rev, target=pi)
    assert plan.steps[-1] == Chown("/opt/f", "bob", None)


def test_pattern_and_except_on_a_directory(tmp_path: Path, pi: RootedTarget) -> None:
    rev = make_revision(tmp_path / "r", {
        "test/prefix": "", "test/prefix_matches": "", "test/prefix_ReadMe": "",
        "test/prefix.tmp": "", "test/not_prefix": "", "test/prefix_dir/does_not_match": "",
    })
    plan = plan_install(spec("""
        files: [{source: test, destination: /opt/test}]
        permissions:
          - object: /opt/test
            pattern: 'prefix*'
            except: ['*ReadMe', '*.tmp']
            mode: 600
    """), rev, target=pi)
    assert sorted(s.path for s in steps_of(plan, Chmod)) == [  # type: ignore[attr-defined]
        "/opt/test/prefix", "/opt/test/prefix_dir", "/opt/test/prefix_matches"]


def test_type_limits_what_a_directory_permission_touches(tmp_path: Path,
                                                         pi: RootedTarget) -> None:
    rev = make_revision(tmp_path / "r", {"app/sub/f": "", "app/g": ""})
    body = "files: [{source: app, destination: /opt/app}]\npermissions:\n"
    files_only = plan_install(spec(body + "  - {object: /opt/app, type: [file], mode: 640}\n"),
                              rev, target=pi)
    dirs_only = plan_install(spec(body + "  - {object: /opt/app, type: [directory], "
                                         "mode: 750}\n"), rev, target=pi)
    assert [s.path for s in steps_of(files_only, Chmod)] == [  # type: ignore[attr-defined]
        "/opt/app/g", "/opt/app/sub/f"]
    assert [s.path for s in steps_of(dirs_only, Chmod)] == [  # type: ignore[attr-defined]
        "/opt/app/sub"]


def test_files_that_were_there_before_are_never_touched(tmp_path: Path,
                                                        pi: RootedTarget) -> None:
    Path(pi.real("/opt/app")).mkdir()
    Path(pi.real("/opt/app/local.conf")).write_text("mine")
    rev = make_revision(tmp_path / "r", {"app/new": ""})
    plan = plan_install(spec("files: [{source: app, destination: /opt/app}]\n"
                             "permissions: [{object: /opt/app, mode: 600}]\n"), rev, target=pi)
    assert [s.path for s in steps_of(plan, Chmod)] == ["/opt/app/new"]  # type: ignore[attr-defined]


def test_a_target_hit_twice_is_an_error(tmp_path: Path, pi: RootedTarget) -> None:
    rev = make_revision(tmp_path / "r", {"app/f": ""})
    with pytest.raises(InstallPlanError, match="more than one permissions entry") as info:
        plan_install(spec("""
            files: [{source: app, destination: /opt/app}]
            permissions:
              - {object: /opt/app, mode: 600}
              - {object: /opt/app/f, mode: 644}
        """), rev, target=pi)
    assert info.value.findings[0].yaml_path == "permissions[1]"


@pytest.mark.parametrize("extra", ["pattern: 'x*'", "except: ['x']"])
def test_file_object_needs_the_default_pattern(tmp_path: Path, pi: RootedTarget,
                                               extra: str) -> None:
    rev = make_revision(tmp_path / "r", {"f": ""})
    with pytest.raises(InstallPlanError, match="pattern must be"):
        plan_install(spec(f"files: [{{source: f, destination: /opt}}]\npermissions:\n"
                          f"  - {{object: /opt/f, mode: 600, {extra}}}\n"), rev, target=pi)


def test_default_acl_on_a_file_is_an_error(tmp_path: Path, pi: RootedTarget) -> None:
    rev = make_revision(tmp_path / "r", {"app/f": ""})
    with pytest.raises(InstallPlanError, match="directories only"):
        plan_install(spec("files: [{source: app, destination: /opt/app}]\n"
                          "permissions: [{object: /opt/app, acls: ['d:u:bob:7']}]\n"),
                     rev, target=pi)
    plan = plan_install(spec("files: [{source: app, destination: /opt/app}]\n"
                             "permissions: [{object: /opt, type: [directory], "
                             "acls: ['d:u:bob:7']}]\n"), rev, target=pi)
    assert [s.path for s in steps_of(plan, SetAcl)] == ["/opt/app"]  # type: ignore[attr-defined]


def test_context_step(tmp_path: Path, pi: RootedTarget) -> None:
    rev = make_revision(tmp_path / "r", {"f": ""})
    plan = plan_install(spec("files: [{source: f, destination: /opt}]\n"
                             "permissions: [{object: /opt/f, context: {type: t}}]\n"),
                        rev, target=pi)
    assert isinstance(plan.steps[-1], SetContext)


def test_empty_target_plans_everything(revision: Path) -> None:
    plan = plan_install(spec("files: [{source: app, destination: /opt/aqi}]\n"), revision,
                        target=EmptyTarget())
    assert steps_of(plan, Mkdir)[:2] == [Mkdir("/opt"), Mkdir("/opt/aqi")]


@pytest.mark.parametrize(("path", "normal"), [
    ("/opt/app/", "/opt/app"), ("//opt//app", "/opt/app"), ("/opt/./a/../b", "/opt/b"),
    ("/", "/"),
])
def test_normalize_like_expand_path(path: str, normal: str) -> None:
    assert normalize(path) == normal


# --- the full ACL that setfacl receives ------------------------------------------------------


def test_full_acl_from_mode_0421() -> None:
    aces = [parse_ace("user:bob:rwx"), parse_ace("default:user:bob:rwx")]
    assert ",".join(full_acl(aces, 0o421)) == (
        "user:bob:rwx,default:user:bob:rwx,user::r--,group::-w-,other::--x,mask::-w-,"
        "default:user::r--,default:group::-w-,default:other::--x,default:mask::-w-")


def test_full_acl_keeps_given_masks_and_default_entries() -> None:
    aces = [parse_ace(a) for a in ["bob:6", "m:6", "d:bob:0", "d::3", "d:g::4", "d:o:3",
                                   "d:m:7"]]
    assert full_acl(aces, 0o750) == [str(a) for a in aces] + [
        "user::rwx", "group::r-x", "other::---"]


def test_full_acl_without_named_entries_adds_no_mask() -> None:
    assert full_acl([parse_ace("m::5")], 0o644) == [
        "mask::r-x", "user::rw-", "group::r--", "other::r--"]
