"""The pifleet-agent .deb: contents, lintian, the unit under systemd-analyze, the launcher run
from an unpacked tree with Debian's python3, and bit-reproducibility across build directories."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "packaging" / "build-deb.sh"
DEB_NAME = "pifleet-agent_0.1.0-1_all.deb"
SYSTEM_PYTHON = "/usr/bin/python3"


def _build(out: Path) -> Path:
    result = subprocess.run([str(BUILD), str(out), "amd64"], capture_output=True, text=True,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                 "PIP_PYTHON": sys.executable}, check=False)
    assert result.returncode == 0, result.stderr
    deb = out / DEB_NAME
    assert deb.is_file(), result.stdout
    return deb


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    for tool in ("dpkg-buildpackage", "dh", "dh_python3"):
        assert shutil.which(tool), f"{tool} missing: run dev/bootstrap.sh (dev/apt-packages.txt)"
    return (_build(tmp_path_factory.mktemp("deb-a")), _build(tmp_path_factory.mktemp("deb-b")))


@pytest.fixture(scope="session")
def deb(debs: tuple[Path, Path]) -> Path:
    return debs[0]


@pytest.fixture(scope="session")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def _dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True,
                          check=True).stdout


def _contents(deb: Path) -> dict[str, str]:
    """path -> mode string (``-rw-r--r--``) for every member."""
    members = {}
    for line in _dpkg_deb("--contents", str(deb)).splitlines():
        fields = line.split(maxsplit=5)
        members[fields[5].split(" -> ")[0].removeprefix(".")] = fields[0]
    return members


def test_control_fields(deb: Path) -> None:
    info = _dpkg_deb("--info", str(deb))
    assert "Architecture: all" in info
    depends = next(line for line in info.splitlines() if line.startswith(" Depends:"))
    for dep in ("python3 (>= 3.11)", "python3-yaml", "python3-serial"):
        assert dep in depends
    assert "paho" not in depends  # bundled: Debian 12's python3-paho-mqtt is 1.6
    assert "Recommends: python3-gpiozero" in info


# Every program the agent runs, and the Debian package that provides it with the relation it
# needs: a deployment cannot verify its specification without openssl (Depends); AppSpec ACLs
# and SELinux contexts are optional features (Recommends/Suggests). Essential packages and
# systemd (the unit needs it) are not declared.
AGENT_COMMANDS = {
    "openssl": ("openssl", "Depends"),
    "setfacl": ("acl", "Recommends"),
    "semanage": ("policycoreutils-python-utils", "Suggests"),
    "restorecon": ("policycoreutils-python-utils", "Suggests"),  # pulls in policycoreutils
    "systemd-run": ("systemd", None), "timedatectl": ("systemd", None),
    "su": ("util-linux", None), "chown": ("coreutils", None), "sudo": ("sudo", None),
}


def test_every_program_the_agent_runs_is_declared(deb: Path) -> None:
    sources = "\n".join(path.read_text(encoding="utf-8")
                         for path in (ROOT / "agent").rglob("*.py"))
    info = _dpkg_deb("--info", str(deb))
    relations = {field: line.split(":", 1)[1] for field in ("Depends", "Recommends", "Suggests")
                 for line in info.replace("\n  ", " ").splitlines()
                 if line.startswith(f" {field}:")}
    for command, (package, relation) in AGENT_COMMANDS.items():
        assert f'"{command}"' in sources, f"the agent no longer runs {command}: update the map"
        if relation is not None:
            assert package in relations[relation], f"{command}: {relation}: {package} missing"
    assert _dpkg_deb("--info", str(deb), "conffiles").split() == [
        "/etc/logrotate.d/pifleet-agent", "/etc/pifleet/agent.toml"]


def test_the_deployments_log_is_rotated(deb: Path, unpacked: Path) -> None:
    assert "/etc/logrotate.d/pifleet-agent" in _dpkg_deb("--info", str(deb), "conffiles").split()
    rules = (unpacked / "etc/logrotate.d/pifleet-agent").read_text()
    assert "/var/lib/pifleet/deployment-root/deployment-logs/*.log {" in rules
    assert "copytruncate" in rules and "maxsize" in rules
    if shutil.which("logrotate"):
        # -d: parse and say what would happen, change nothing; an unknown directive is an error.
        checked = subprocess.run(["logrotate", "-d", "-s", "/dev/null",
                                  str(unpacked / "etc/logrotate.d/pifleet-agent")],
                                 capture_output=True, text=True, check=False)
        assert checked.returncode == 0 and "error" not in checked.stderr, checked.stderr


def test_files_and_modes(deb: Path) -> None:
    members = _contents(deb)
    assert members["/etc/pifleet/agent.toml"] == "-rw-r--r--"
    assert members["/usr/bin/pifleet-agent"] == "-rwxr-xr-x"
    assert members["/lib/systemd/system/pifleet-agent.service"] == "-rw-r--r--"
    for path in ("/usr/lib/pifleet-agent/agent/cli.py",
                 "/usr/lib/pifleet-agent/agent/aws/codedeploy-commands.json",
                 "/usr/lib/pifleet-agent/appspec/parser.py",
                 "/usr/lib/pifleet-agent/sensors/registry.py",
                 "/usr/lib/pifleet-agent/vendor/paho/mqtt/client.py"):
        assert path in members
    assert not [p for p in members if "/fleet/" in p or "/tests/" in p or "test_" in p]
    assert not [p for p in members if "__pycache__" in p or p.endswith(".pyc")]


def test_shipped_agent_toml_is_generated_from_the_code(unpacked: Path) -> None:
    generated = subprocess.run([sys.executable, str(ROOT / "packaging" / "gen_agent_toml.py"),
                                "--check"], capture_output=True, text=True, check=False)
    assert generated.returncode == 0, generated.stderr
    shipped = (unpacked / "etc/pifleet/agent.toml").read_text(encoding="utf-8")
    assert shipped == (ROOT / "packaging" / "agent.toml").read_text(encoding="utf-8")


def test_lintian_has_no_errors_or_warnings(deb: Path) -> None:
    """Only the justified override in debian/pifleet-agent.lintian-overrides is allowed."""
    if not shutil.which("lintian"):
        pytest.fail("lintian missing: run dev/bootstrap.sh (dev/apt-packages.txt)")
    result = subprocess.run(["lintian", "--fail-on", "error,warning", str(deb)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [line for line in result.stdout.splitlines() if line.startswith(("E:", "W:"))]
    overrides = (ROOT / "packaging/debian/pifleet-agent.lintian-overrides").read_text()
    tags = [line for line in overrides.splitlines() if line and not line.startswith("#")]
    assert all(overrides.count(f"\n{tag}") == 1 for tag in tags)
    # Each override is preceded by the comment that justifies it.
    assert all(overrides.splitlines()[overrides.splitlines().index(tag) - 1].startswith("# ")
               for tag in tags)


def test_man_page_is_rendered_from_the_parsers_and_shipped(deb: Path) -> None:
    check = subprocess.run([sys.executable, str(ROOT / "packaging/gen_manpage.py"), "--check"],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    assert "/usr/share/man/man1/pifleet-agent.1.gz" in _contents(deb)
    page = (ROOT / "packaging/pifleet-agent.1").read_text(encoding="utf-8")
    for command in ("validate", "deploy-local", "run", "status", "doctor", "enroll", "sensors"):
        assert f".SS {command}\n" in page
    if shutil.which("man"):
        # man's own roff warnings (bad escapes, unknown requests) go to stderr.
        rendered = subprocess.run(
            ["man", "--warnings", "-l", str(ROOT / "packaging/pifleet-agent.1")],
            capture_output=True, text=True, check=False,
            env={"PATH": "/usr/bin:/bin", "MANWIDTH": "80", "LC_ALL": "C.UTF-8"})
        assert rendered.returncode == 0 and rendered.stderr == "", rendered.stderr
        assert "deploy-local" in rendered.stdout


def test_systemd_analyze_verify_is_silent(unpacked: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # --root: the unpacked package plus the host's units (for multi-user.target and the
    # network/time targets) and /bin/kill (ExecReload), so ExecStart is the packaged launcher.
    root = tmp_path / "root"
    shutil.copytree(unpacked, root, symlinks=True)
    shutil.copytree("/lib/systemd/system", root / "lib/systemd/system", symlinks=True,
                    dirs_exist_ok=True)
    (root / "bin").mkdir()
    shutil.copy2("/usr/bin/kill", root / "bin/kill")
    result = subprocess.run([analyze, "verify", "--man=no", f"--root={root}",
                             "pifleet-agent.service"], capture_output=True, text=True,
                            check=False)
    # verify exits 0 on "Unknown key" warnings: any output at all is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_unit_settings(unpacked: Path) -> None:
    unit = (unpacked / "lib/systemd/system/pifleet-agent.service").read_text(encoding="utf-8")
    sections: dict[str, list[str]] = {}
    current = ""
    for line in unit.splitlines():
        if line.startswith("["):
            current = line
        elif line and not line.startswith("#"):
            sections.setdefault(current, []).append(line)
    assert {"Wants=network-online.target", "After=network-online.target time-sync.target",
            "StartLimitIntervalSec=10min", "StartLimitBurst=5"} <= set(sections["[Unit]"])
    service = set(sections["[Service]"])
    assert {"Type=notify", "ExecStart=/usr/bin/pifleet-agent run",
            "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "KillMode=process",
            "StateDirectory=pifleet", "LogsDirectory=pifleet",
            "ConfigurationDirectory=pifleet"} <= service
    assert any(s.startswith("WatchdogSec=") for s in service)
    assert any(s.startswith("MemoryMax=") for s in service)
    # Off on purpose (packaging/README.md): they break hooks that install software as root.
    assert not [s for s in service if s.split("=")[0] in
                ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp",
                 "PrivateDevices")]
    # TimeoutStopSec >= the default shutdown_grace_s (7200 s): 2h5min.
    assert "TimeoutStopSec=2h5min" in service


def test_launcher_runs_with_debian_python(unpacked: Path) -> None:
    if not Path(SYSTEM_PYTHON).is_file():
        pytest.skip("no Debian /usr/bin/python3")
    launcher = unpacked / "usr/bin/pifleet-agent"
    assert launcher.read_text(encoding="utf-8").startswith(f"#!{SYSTEM_PYTHON} ")
    version = subprocess.run([str(launcher), "--version"], capture_output=True,
                             text=True, check=True, cwd="/")
    assert version.stdout.strip() == "pifleet-agent 0.1.0"
    validated = subprocess.run([SYSTEM_PYTHON, str(launcher), "validate",
                                str(ROOT / "examples" / "aqi-app")], capture_output=True,
                               text=True, check=False, cwd="/")
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "valid (0 errors" in validated.stdout
    # The bundled paho-mqtt 2.x wins over anything Debian's python3 has.
    paho = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c",
         f"import sys; sys.path[:0] = [{str(unpacked / 'usr/lib/pifleet-agent/vendor')!r}]; "
         "import paho.mqtt, paho.mqtt.client as c; print(paho.mqtt.__version__, c.__file__)"],
        capture_output=True, text=True, check=True)
    version_text, where = paho.stdout.split()
    assert version_text.startswith("2.")
    assert where.startswith(str(unpacked))


def test_two_builds_in_different_directories_are_identical(debs: tuple[Path, Path]) -> None:
    first, second = (hashlib.sha256(d.read_bytes()).hexdigest() for d in debs)
    assert first == second
