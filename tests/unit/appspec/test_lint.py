"""The linter: one test per rule, on real revision directories."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

from appspec import Finding, Severity
from appspec.lint import lint_revision

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "aqi-app"
SCRIPT = "#!/bin/bash\necho ok\n"


def revision(tmp_path: Path, appspec: str, files: dict[str, str] | None = None,
             *, name: str = "appspec.yml", executable: bool = True) -> Path:
    root = tmp_path / "rev"
    root.mkdir(exist_ok=True)
    (root / name).write_text("version: 0.0\nos: linux\n" + textwrap.dedent(appspec))
    for rel, content in (files or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        if executable and rel.endswith(".sh"):
            path.chmod(0o755)
    return root


def by_code(findings: list[Finding], code: str) -> list[Finding]:
    return [f for f in findings if f.code == code]


def test_the_example_revision_is_clean() -> None:
    findings = lint_revision(EXAMPLE)
    assert [f.severity for f in findings if f.severity is not Severity.INFO] == []


def test_missing_appspec(tmp_path: Path) -> None:
    (finding,) = lint_revision(tmp_path)
    assert finding.code == "no-appspec"
    assert "appspec.yml, appspec.yaml" in finding.message


def test_not_a_directory(tmp_path: Path) -> None:
    (finding,) = lint_revision(tmp_path / "nope")
    assert finding.code == "no-revision"


def test_validation_errors_come_back_as_findings(tmp_path: Path) -> None:
    root = revision(tmp_path, "hooks:\n  AfterInstal: []\n")
    (finding,) = lint_revision(root)
    assert (finding.code, finding.file) == ("unknown-key", str(root / "appspec.yml"))


def test_custom_appspec_name(tmp_path: Path) -> None:
    root = revision(tmp_path, "", name="deploy.yml")
    assert by_code(lint_revision(root), "no-appspec")
    assert lint_revision(root, filename="deploy.yml") == []


def test_appspec_yaml_only_is_flagged_for_the_official_agent(tmp_path: Path) -> None:
    root = revision(tmp_path, "", name="appspec.yaml")
    (finding,) = lint_revision(root)
    assert (finding.code, finding.severity) == ("appspec-yaml-name", Severity.WARNING)


HOOK = "hooks:\n  AfterInstall:\n    - location: {loc}\n"


def test_missing_hook_script(tmp_path: Path) -> None:
    root = revision(tmp_path, HOOK.format(loc="scripts/nope.sh"))
    (finding,) = lint_revision(root)
    assert (finding.code, finding.severity) == ("hook-script-missing", Severity.ERROR)
    assert finding.yaml_path == "hooks.AfterInstall[0].location"
    assert finding.position is not None and finding.position.line == 5


def test_hook_script_not_executable(tmp_path: Path) -> None:
    root = revision(tmp_path, HOOK.format(loc="a.sh"), {"a.sh": SCRIPT}, executable=False)
    assert [f.code for f in lint_revision(root)] == ["hook-not-executable"]


@pytest.mark.parametrize(("content", "code", "severity"), [
    ("echo no shebang\n", "hook-no-shebang", Severity.WARNING),
    ("#!/bin/bash\r\necho crlf\r\n", "hook-crlf", Severity.ERROR),
])
def test_script_content(tmp_path: Path, content: str, code: str, severity: Severity) -> None:
    root = revision(tmp_path, HOOK.format(loc="a.sh"), {"a.sh": content})
    (finding,) = lint_revision(root)
    assert (finding.code, finding.severity) == (code, severity)


def test_elf_binaries_need_no_shebang(tmp_path: Path) -> None:
    root = revision(tmp_path, HOOK.format(loc="a.sh"), {})
    (root / "a.sh").write_bytes(b"\x7fELF\x02\x01\x01")
    (root / "a.sh").chmod(0o755)
    assert lint_revision(root) == []


def test_runas_with_sudo(tmp_path: Path) -> None:
    root = revision(tmp_path, "hooks:\n  AfterInstall:\n    - {location: a.sh, runas: pi}\n",
                    {"a.sh": "#!/bin/sh\nsudo systemctl restart x\n"})
    assert [f.code for f in lint_revision(root)] == ["runas-sudo"]


def test_location_absolute_and_with_spaces(tmp_path: Path) -> None:
    root = revision(tmp_path, HOOK.format(loc="'/my scripts/a.sh'"),
                    {"my scripts/a.sh": SCRIPT})
    assert sorted(f.code for f in lint_revision(root)) == ["location-absolute",
                                                           "location-space"]


def test_event_timeouts_over_an_hour(tmp_path: Path) -> None:
    root = revision(tmp_path, """
        hooks:
          AfterInstall:
            - {location: a.sh, timeout: 3000}
            - {location: a.sh, timeout: 1200}
    """, {"a.sh": SCRIPT})
    (finding,) = lint_revision(root)
    assert finding.code == "event-timeout"
    assert "4200 s" in finding.message


def test_application_stop_runs_the_previous_revision(tmp_path: Path) -> None:
    body = "hooks:\n  ApplicationStop:\n    - location: stop.sh\n"
    root = revision(tmp_path, body, {"stop.sh": SCRIPT})
    (note,) = lint_revision(root)
    assert (note.code, note.severity) == ("previous-revision-script", Severity.INFO)
    previous = tmp_path / "previous"
    shutil.copytree(root, previous)
    assert lint_revision(root, previous=previous) == []
    (root / "stop.sh").write_text(SCRIPT + "systemctl stop new-name\n")
    (changed,) = lint_revision(root, previous=previous)
    assert (changed.code, changed.severity) == ("previous-revision-script", Severity.WARNING)
    assert "stop.sh" in changed.message


@pytest.mark.parametrize(("destination", "code"), [
    ("/boot", "boot-firmware"), ("/boot/overlays", "boot-firmware"),
    ("/var/lib/pifleet/x", "agent-path"), ("/etc/pifleet", "agent-path"),
    ("/opt/codedeploy-agent", "agent-path"),
])
def test_dangerous_destinations(tmp_path: Path, destination: str, code: str) -> None:
    root = revision(tmp_path, f"files:\n  - {{source: f, destination: {destination}}}\n",
                    {"f": ""})
    assert code in [f.code for f in lint_revision(root)]


def test_installing_into_an_agent_directory_from_a_parent(tmp_path: Path) -> None:
    root = revision(tmp_path, "files:\n  - {source: etc, destination: /etc}\n",
                    {"etc/pifleet/agent.toml": "", "etc/aqi.conf": ""})
    (finding,) = lint_revision(root)
    assert finding.code == "agent-path"
    assert "/etc/pifleet/agent.toml" in finding.message


def test_boot_firmware_is_fine(tmp_path: Path) -> None:
    root = revision(tmp_path, "files:\n  - {source: f, destination: /boot/firmware}\n",
                    {"f": ""})
    assert lint_revision(root) == []


def test_permission_for_something_not_installed(tmp_path: Path) -> None:
    root = revision(tmp_path, """
        files: [{source: app, destination: /opt/app}]
        permissions: [{object: /srv/other, mode: 600}]
    """, {"app/f": ""})
    assert [f.code for f in lint_revision(root)] == ["permission-unused"]


def test_permission_matching_nothing(tmp_path: Path) -> None:
    root = revision(tmp_path, """
        files: [{source: app, destination: /opt/app}]
        permissions: [{object: /opt/app, type: [directory], mode: 755}]
    """, {"app/f": ""})
    (finding,) = lint_revision(root)
    assert finding.code == "permission-matches-nothing"
    assert finding.yaml_path == "permissions[0]"


def test_install_plan_conflicts_are_errors(tmp_path: Path) -> None:
    root = revision(tmp_path, """
        files:
          - {source: a/x, destination: /opt}
          - {source: b/x, destination: /opt}
    """, {"a/x": "", "b/x": ""})
    (finding,) = lint_revision(root)
    assert (finding.code, finding.severity, finding.yaml_path) == (
        "install-plan", Severity.ERROR, "files[1]")


def test_installed_hook_scripts_are_explained(tmp_path: Path) -> None:
    root = revision(tmp_path, "files: [{source: /, destination: /opt/app}]\n" +
                    HOOK.format(loc="a.sh"), {"a.sh": SCRIPT})
    assert [f.code for f in lint_revision(root)] == ["installs-hook-script"]


def test_errors_sort_before_warnings_and_notes(tmp_path: Path) -> None:
    root = revision(tmp_path, """
        hooks:
          ApplicationStop: [{location: stop.sh}]
          AfterInstall: [{location: gone.sh}, {location: plain.sh}]
    """, {"stop.sh": SCRIPT, "plain.sh": "echo\n"})
    severities = [f.severity for f in lint_revision(root)]
    assert severities == [Severity.ERROR, Severity.WARNING, Severity.INFO]


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_hook_script_that_is_not_a_file(tmp_path: Path, kind: str) -> None:
    root = revision(tmp_path, HOOK.format(loc="a.sh"))
    if kind == "directory":
        (root / "a.sh").mkdir()
    else:
        os.mkfifo(root / "a.sh")  # reading it would block: the linter must not open it
    (finding,) = lint_revision(root)
    assert finding.code == "hook-script-missing"
    assert "not a regular file" in finding.message
