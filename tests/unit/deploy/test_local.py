"""deploy-local end to end: real revisions, real hook processes, a real deployment-root."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from agent.deploy.bundle import BundleType
from agent.deploy.executor import CommandExecutor, EngineConfig
from agent.deploy.layout import DeploymentRoot
from agent.deploy.local import (
    LocalOptions,
    UsageError,
    deploy_local,
    engine_config,
    ordered_events,
)
from agent.deploy.spec import DeploymentSpec, Revision, RevisionSource

AGENT = str(Path(sys.executable).parent / "pifleet-agent")
HOOKS = ("BeforeBlockTraffic", "AfterBlockTraffic", "ApplicationStop", "BeforeInstall",
         "AfterInstall", "ApplicationStart", "ValidateService", "BeforeAllowTraffic",
         "AfterAllowTraffic")
PROOF_SCRIPT = """#!/bin/sh
echo "$LIFECYCLE_EVENT {tag} $DEPLOYMENT_ID|$APPLICATION_NAME|$DEPLOYMENT_GROUP_NAME|\
$DEPLOYMENT_GROUP_ID|$PIFLEET_INSTALL_ROOT" >> "$PROOF_FILE"
echo "ran $LIFECYCLE_EVENT"
"""


def proof_revision(path: Path, tag: str = "v1", *, fail: str | None = None) -> Path:
    """The official sample bundle idea: nine hooks, each appending its event to a proof file."""
    lines = ["version: 0.0", "os: linux", "files:", "  - source: app", "    destination: /opt/p",
             "hooks:"]
    for event in HOOKS:
        script = path / "scripts" / f"{event}.sh"
        script.parent.mkdir(parents=True, exist_ok=True)
        body = PROOF_SCRIPT.format(tag=tag)
        if event == fail:
            body += "echo 'it broke' >&2\nexit 3\n"
        script.write_text(body)
        script.chmod(0o755)
        lines += [f"  {event}:", f"    - location: scripts/{event}.sh", "      timeout: 30"]
    (path / "app").mkdir(parents=True, exist_ok=True)
    (path / "app" / "version.txt").write_text(tag)
    (path / "appspec.yml").write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def proof(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    file = tmp_path / "proof.txt"
    monkeypatch.setenv("PROOF_FILE", str(file))
    return file


def run(location: Path, root: Path, **kwargs: object) -> tuple[bool, str]:
    out = io.StringIO()
    options = LocalOptions(bundle_location=str(location), root=root, **kwargs)  # type: ignore[arg-type]
    result = deploy_local(options, out=out)
    return result.succeeded, out.getvalue()


def events_of(proof: Path) -> list[str]:
    return [line.split()[0] + " " + line.split()[1] for line in proof.read_text().splitlines()]


def test_first_deployment_runs_hooks_in_order_with_environment(tmp_path: Path,
                                                              proof: Path) -> None:
    root = tmp_path / "root"
    ok, out = run(proof_revision(tmp_path / "rev1"), root)
    assert ok, out
    # No previous revision: the block-traffic events and ApplicationStop have nothing to run.
    assert events_of(proof) == [f"{e} v1" for e in (
        "BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService",
        "BeforeAllowTraffic", "AfterAllowTraffic")]
    _, rest = proof.read_text().splitlines()[0].split(" ", 2)[1:]
    deployment_id, app, group_name, group_id, install_root = rest.split("|")
    assert deployment_id.startswith("d-") and deployment_id.endswith("-local")
    assert len(deployment_id) == len("d-XXXXXXXXX-local")
    assert app == str(tmp_path / "rev1")
    assert (group_name, group_id) == ("LocalFleet", "default-local-deployment-group")
    assert install_root == str(root.resolve())
    assert (root / "opt" / "p" / "version.txt").read_text() == "v1"
    assert "ApplicationStop      skipped" in out


def test_second_deployment_stops_with_the_previous_revisions_script(tmp_path: Path,
                                                                   proof: Path) -> None:
    root = tmp_path / "root"
    assert run(proof_revision(tmp_path / "rev1", "v1"), root)[0]
    proof.unlink()
    ok, out = run(proof_revision(tmp_path / "rev2", "v2"), root)
    assert ok, out
    assert events_of(proof) == [
        "BeforeBlockTraffic v1", "AfterBlockTraffic v1", "ApplicationStop v1",
        "BeforeInstall v2", "AfterInstall v2", "ApplicationStart v2", "ValidateService v2",
        "BeforeAllowTraffic v2", "AfterAllowTraffic v2"]
    assert (root / "opt" / "p" / "version.txt").read_text() == "v2"  # own files replaced


def test_a_failing_hook_stops_the_deployment_and_the_next_one_works(tmp_path: Path,
                                                                   proof: Path) -> None:
    root = tmp_path / "root"
    ok, out = run(proof_revision(tmp_path / "bad", fail="AfterInstall"), root)
    assert not ok
    assert "AfterInstall         FAILED" in out
    assert "SCRIPT_FAILED (code 4): Script at specified location: scripts/AfterInstall.sh " \
           "failed with exit code 3" in out
    assert "[stderr]it broke" in out
    assert events_of(proof)[-1] == "AfterInstall v1"  # nothing ran after it
    # Install succeeded, so that revision is the last successful one, as upstream.
    proof.unlink()
    ok, out = run(proof_revision(tmp_path / "good", "v2"), root)
    assert ok, out
    assert "ApplicationStop v1" in events_of(proof)


def test_scripts_log_and_deployments_log_are_written(tmp_path: Path, proof: Path) -> None:
    root = tmp_path / "root"
    out = io.StringIO()
    result = deploy_local(LocalOptions(bundle_location=str(proof_revision(tmp_path / "r")),
                                       root=root), out=out)
    text = result.scripts_log.read_text()
    assert "LifecycleEvent - AfterInstall" in text and "[stdout]ran AfterInstall" in text
    deployments_log = root / "deployment-root" / "deployment-logs" / (
        "codedeploy-agent-deployments.log")
    assert f"[{result.deployment_id}]" in deployments_log.read_text()
    instructions = root / "deployment-root" / "deployment-instructions"
    assert sorted(p.name for p in instructions.iterdir()) == [
        "default-local-deployment-group-cleanup",
        "default-local-deployment-group-install.json",
        "default-local-deployment-group_last_successful_install",
        "default-local-deployment-group_most_recent_install"]
    assert not any((root / "deployment-root" / "ongoing-deployment").iterdir())


@pytest.mark.parametrize("kind", ["tar", "tgz", "zip"])
def test_archive_bundles_with_a_leading_directory(tmp_path: Path, proof: Path,
                                                  kind: str) -> None:
    rev = proof_revision(tmp_path / "myapp-1.0")
    bundle = tmp_path / f"bundle.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(bundle, "w") as zf:
            for path in sorted(rev.rglob("*")):
                zf.write(path, path.relative_to(tmp_path))
    else:
        with tarfile.open(bundle, "w:gz" if kind == "tgz" else "w") as tf:
            tf.add(rev, arcname="myapp-1.0")
    ok, out = run(bundle, tmp_path / "root", bundle_type=BundleType(kind))
    assert ok, out
    assert "ValidateService v1" in events_of(proof)


def test_invalid_appspec_fails_the_first_event_reading_it(tmp_path: Path,
                                                          proof: Path) -> None:
    rev = proof_revision(tmp_path / "r")
    (rev / "appspec.yml").write_text("version: 0.0\nos: linux\nhooks:\n  AfterInstal: []\n")
    ok, out = run(rev, tmp_path / "root")
    assert not ok
    assert "BeforeInstall        FAILED" in out  # the first event that reads the new AppSpec
    assert "UNKNOWN_ERROR (code 5): the AppSpec is invalid" in out
    assert "AfterInstal" in out and "Did you mean 'AfterInstall'" in out


def test_missing_hook_script_is_code_1(tmp_path: Path, proof: Path) -> None:
    rev = proof_revision(tmp_path / "r")
    (rev / "scripts" / "BeforeInstall.sh").unlink()
    ok, out = run(rev, tmp_path / "root")
    assert not ok
    assert "SCRIPT_MISSING (code 1): Script does not exist at specified location" in out


@pytest.mark.parametrize(("events", "expected"), [
    (None, ["BeforeBlockTraffic", "AfterBlockTraffic", "ApplicationStop", "DownloadBundle",
            "BeforeInstall", "Install", "AfterInstall", "ApplicationStart", "ValidateService",
            "BeforeAllowTraffic", "AfterAllowTraffic"]),
    (["DownloadBundle", "ApplicationStart"], ["DownloadBundle", "Install", "ApplicationStart"]),
    (["ApplicationStart"], ["DownloadBundle", "Install", "ApplicationStart"]),
    (["ApplicationStop", "BeforeInstall", "Custom"],
     ["DownloadBundle", "Install", "ApplicationStop", "BeforeInstall", "Custom"]),
    (["Install"], ["DownloadBundle", "Install"]),
])
def test_event_order_rules(events: list[str] | None, expected: list[str]) -> None:
    assert ordered_events(events) == expected


@pytest.mark.parametrize(("events", "message"), [
    (["ApplicationStart", "DownloadBundle"], "may come before DownloadBundle"),
    (["Install", "DownloadBundle"], "may come before DownloadBundle"),
    (["DownloadBundle", "AfterInstall", "Install"], "may come before Install"),
])
def test_event_order_errors(events: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ordered_events(events)


def test_custom_events_run_their_hooks(tmp_path: Path, proof: Path) -> None:
    rev = proof_revision(tmp_path / "r")
    script = rev / "scripts" / "Smoke.sh"
    script.write_text(PROOF_SCRIPT.format(tag="custom"))
    script.chmod(0o755)
    (rev / "appspec.yml").write_text((rev / "appspec.yml").read_text()
                                     + "  Smoke:\n    - location: scripts/Smoke.sh\n")
    ok, out = run(rev, tmp_path / "root", events=("Smoke",))
    assert ok, out
    assert events_of(proof) == ["Smoke custom"]


def test_interrupted_deployment_is_reported_on_the_next_run(tmp_path: Path,
                                                            proof: Path) -> None:
    root = tmp_path / "root"
    config = engine_config(root)
    executor = CommandExecutor(config)
    executor.tracker.begin("d-CRASHED01-local", "local")
    ok, out = run(proof_revision(tmp_path / "r"), root)
    assert ok
    assert "d-CRASHED01-local was interrupted" in out


def test_unsupported_command_is_a_noop_failure(tmp_path: Path) -> None:
    executor = CommandExecutor(EngineConfig(root=engine_config(tmp_path).root))
    spec = DeploymentSpec("d-1", "a", "g", "g", Revision(RevisionSource.LOCAL_DIRECTORY,
                                                          BundleType.DIRECTORY, str(tmp_path)))
    assert executor.is_noop("Bogus", spec)
    payload = json.loads(executor.execute("Bogus", spec).payload())
    assert payload == {"error_code": 5, "script_name": "",
                       "message": "Unsupported command type: Bogus.", "log": ""}
    assert not executor.is_noop("DownloadBundle", spec)
    assert not executor.is_noop("Install", spec)


def test_agent_credentials_do_not_reach_hooks(tmp_path: Path) -> None:
    config = EngineConfig(root=engine_config(tmp_path).root,
                          environment={"AWS_SECRET_ACCESS_KEY": "s3cr3t", "PATH": "/bin",
                                       "BUNDLE_KEY": "stale", "NOTIFY_SOCKET": "/run/notify",
                                       "WATCHDOG_USEC": "300000000", "INVOCATION_ID": "ab12"})
    spec = DeploymentSpec("d-1", "a", "g", "gid", Revision(
        RevisionSource.S3, BundleType.ZIP, bucket="b", key="k.zip", etag="e"))
    env = CommandExecutor(config).hook_environment("AfterInstall", spec)
    assert "AWS_SECRET_ACCESS_KEY" not in env
    # Nor the service manager's handles: a hook must not be able to notify for the agent.
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "INVOCATION_ID"} & env.keys()
    assert env["BUNDLE_KEY"] == "k.zip" and "BUNDLE_VERSION" not in env
    assert env["LIFECYCLE_EVENT"] == "AfterInstall" and env["PATH"] == "/bin"


# -- the command line -----------------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENT, "deploy-local", *args], capture_output=True, text=True,
                          check=False, env=env, timeout=120)


def test_cli_success_prints_events_and_a_summary(tmp_path: Path, proof: Path) -> None:
    rev = proof_revision(tmp_path / "r")
    done = cli("-l", str(rev), "--root", str(tmp_path / "root"),
               env={**os.environ, "PROOF_FILE": str(proof)})
    assert done.returncode == 0, done.stderr
    assert "ValidateService      ok" in done.stdout
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("Local deployment d-") and "succeeded" in last
    assert "scripts.log" in last


def test_cli_failure_exits_1(tmp_path: Path, proof: Path) -> None:
    rev = proof_revision(tmp_path / "r", fail="ApplicationStart")
    done = cli("-l", str(rev), "--root", str(tmp_path / "root"),
               env={**os.environ, "PROOF_FILE": str(proof)})
    assert done.returncode == 1
    assert "failed at ApplicationStart" in done.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--type", "zip"], "is a directory but --type is zip"),
    (["--events", "ValidateService,DownloadBundle"], "may come before DownloadBundle"),
    (["-l", "s3://bucket/key.zip"], "is not a local path"),
    (["-l", "/nonexistent/rev"], "does not exist"),
])
def test_cli_usage_errors_exit_2_without_traceback(tmp_path: Path, args: list[str],
                                                   message: str) -> None:
    rev = proof_revision(tmp_path / "r")
    full = ["-l", str(rev), *args] if "-l" not in args else args
    done = cli(*full, "--root", str(tmp_path / "root"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_directory_without_appspec_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = cli("-l", str(tmp_path / "empty"), "--root", str(tmp_path / "root"))
    assert done.returncode == 2
    assert "holds no appspec.yml or appspec.yaml" in done.stderr


def test_an_unexpected_error_is_reported_as_code_5(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    executor = CommandExecutor(EngineConfig(root=engine_config(tmp_path).root))
    spec = DeploymentSpec("d-1", "a", "g", "g", Revision(RevisionSource.LOCAL_DIRECTORY,
                                                          BundleType.DIRECTORY, str(tmp_path)))

    def broken(*_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(DeploymentRoot, "prune", broken)
    payload = json.loads(executor.execute("DownloadBundle", spec).payload())
    assert payload["error_code"] == 5
    assert payload["message"] == "DownloadBundle failed: RuntimeError: boom"
