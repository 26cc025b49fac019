"""The one Architecture: all .deb on arm64 and armhf: installed in Debian 12 trees of those
architectures and run there under qemu-user-static (`pifleet-agent --version`, `validate` and two
`deploy-local`s of examples/aqi-app with every hook), and the facts the supported-boards statement
in packaging/README.md rests on (no native code in the .deb, `make deb ARCH=` gives one file,
Debian's armhf is ARMv7, the agent on qemu's model of each Raspberry Pi core).

Each architecture's tree is installed once (module scope) and shared by its tests; about 30 s
per architecture on a 2-core machine.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.bench_package import extra_packages
from tests.support import testbed
from tests.system.conftest import ROOT, apt_install

pytestmark = pytest.mark.integration

APP = ROOT / "examples" / "aqi-app"
APP_IN_TREE = "/root/aqi-app"
# What `uname -m` says when qemu-user runs the tree's binaries.
MACHINE = {"arm64": "aarch64", "armhf": "armv7l"}
STATE = "var/lib/pifleet/deployment-root"
DEPLOYMENTS_LOG = f"{STATE}/deployment-logs/codedeploy-agent-deployments.log"
# The issue's budget for what the package adds to a system that already has python3.
EXTRA_BUDGET_KIB = 15 * 1024


def _timed(root: Path, argv: list[str], what: str, arch: str,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    result = testbed.run_in(root, argv, check=check)
    # Shown with `pytest -rP`: how slow emulation is, per step.
    print(f"{arch}: {what}: {time.monotonic() - started:.1f} s")
    return result


@pytest.fixture(scope="module", params=["arm64", "armhf"])
def installed(request: pytest.FixtureRequest, deb: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(arch, root): a throw-away tree of ``arch`` with the .deb installed by apt, offline and
    without Recommends (a board without sensors), and the example revision copied in."""
    arch: str = request.param
    base = testbed.base_tree(arch)
    testbed.enable_foreign(arch)
    scratch = tmp_path_factory.mktemp(f"overlay-{arch}")
    with testbed.overlay(base, scratch) as root:
        started = time.monotonic()
        result = apt_install(root, deb)
        print(f"{arch}: apt-get install: {time.monotonic() - started:.1f} s")
        assert "Setting up pifleet-agent" in result.stdout, result.stdout
        shutil.copytree(APP, root / APP_IN_TREE.lstrip("/"), symlinks=True)
        yield arch, root


def test_runs_emulated(installed: tuple[str, Path]) -> None:
    arch, root = installed
    machine = _timed(root, ["uname", "-m"], "uname -m", arch).stdout.strip()
    assert machine == MACHINE[arch]
    # The launcher's interpreter is the tree's own python3, a binary of that architecture.
    interpreter = (root / "usr/bin/pifleet-agent").read_text().splitlines()[0]
    assert interpreter == "#!/usr/bin/python3 -I"
    elf = subprocess.run(["readelf", "-h", str((root / "usr/bin/python3").resolve())],
                         capture_output=True, text=True, check=True).stdout
    assert {"arm64": "AArch64", "armhf": "ARM"}[arch] in re.search(
        r"Machine:\s*(.*)", elf).group(1)  # type: ignore[union-attr]


# qemu's models of the cores in each Raspberry Pi, and whether the agent (Debian's python3) must
# run there: arm64 on every 64-bit Pi's core; Debian's armhf (ARMv7) on a Pi 2's Cortex-A7 but
# not on the ARM1176 of a Pi 1 / Zero / Zero W, where it dies with SIGILL (132 = 128 + 4).
PI_CORES = {
    "arm64": {"cortex-a53": 0, "cortex-a72": 0, "cortex-a76": 0},  # Pi 3 / Zero 2 W, 4, 5
    "armhf": {"cortex-a7": 0, "arm1176": 132},  # Pi 2 v1.1; Pi 1, Zero, Zero W
}


def test_runs_on_each_pi_core(installed: tuple[str, Path]) -> None:
    arch, root = installed
    # QEMU_CPU reaches qemu through the environment binfmt_misc starts it with.
    loop = "; ".join(f'QEMU_CPU={cpu} pifleet-agent --version; echo "{cpu} exit $?"'
                     for cpu in PI_CORES[arch])
    result = _timed(root, ["bash", "-c", loop], f"--version on {len(PI_CORES[arch])} cores",
                    arch)
    exits = dict(re.findall(r"^([\w-]+) exit (\d+)$", result.stdout, re.MULTILINE))
    assert {cpu: int(code) for cpu, code in exits.items()} == PI_CORES[arch], \
        result.stdout + result.stderr
    if 132 in PI_CORES[arch].values():
        assert "Illegal instruction" in result.stderr, result.stderr


def test_version(installed: tuple[str, Path], deb: Path) -> None:
    arch, root = installed
    upstream = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True,
                              text=True, check=True).stdout.strip().rsplit("-", 1)[0]
    result = _timed(root, ["pifleet-agent", "--version"], "pifleet-agent --version", arch)
    assert result.stdout.strip() == f"pifleet-agent {upstream}"


def test_validate(installed: tuple[str, Path]) -> None:
    arch, root = installed
    result = _timed(root, ["pifleet-agent", "validate", APP_IN_TREE], "validate", arch)
    assert result.stdout.strip().endswith(f"{APP_IN_TREE}: valid (0 errors, 0 warnings, 1 note)")
    broken = root / "root/broken-app"
    shutil.copytree(APP, broken, symlinks=True)
    appspec = broken / "appspec.yml"
    appspec.write_text(appspec.read_text().replace("timeout: 60", "timeout: sixty", 1))
    bad = _timed(root, ["pifleet-agent", "validate", "/root/broken-app"], "validate (invalid)",
                 arch, check=False)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert re.search(r"appspec\.yml:\d+:\d+: error \[timeout\]", bad.stdout), bad.stdout
    assert "Traceback" not in bad.stderr


def _free_port() -> int:
    # nspawn without --private-network shares the host's network: the app's port must be free
    # on the host too.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _events_by_deployment(log: str) -> dict[str, list[str]]:
    events: dict[str, list[str]] = {}
    for deployment, event in re.findall(r"\[(d-[A-Z0-9]+-local)\]LifecycleEvent - (\w+)", log):
        events.setdefault(deployment, []).append(event)
    return events


def test_deploy_local_runs_every_hook(installed: tuple[str, Path]) -> None:
    """Two deployments as root on the tree's real paths, in one container so that the app the
    first starts is still running when the second's ApplicationStop (the previous revision's
    stop_app.sh) stops it."""
    arch, root = installed
    port = _free_port()
    deploy = f"pifleet-agent deploy-local -l {APP_IN_TREE}"
    result = _timed(root, ["env", "AQI_SIMULATED=1", "AQI_NO_SYSTEMD=1", f"AQI_PORT={port}",
                           "AQI_BIND=127.0.0.1", "bash", "-c", f"{deploy} && {deploy}"],
                    "two deploy-locals", arch, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(re.findall(r"^Local deployment d-\w+-local succeeded", result.stdout,
                          re.MULTILINE)) == 2, result.stdout

    events = _events_by_deployment((root / DEPLOYMENTS_LOG).read_text())
    assert list(events.values()) == [
        ["BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService"],
        ["ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart",
         "ValidateService"]], events
    log = (root / DEPLOYMENTS_LOG).read_text()
    assert len(re.findall(rf"validate_app: http://127\.0\.0\.1:{port}/healthz answered 200",
                          log)) == 2, log
    assert re.search(r"stop_app: stopped aqi_web\.py \(pid \d+, SIGTERM\)", log), log
    assert "check_sensors: /opt/aqi/aqi_web.py installed (Python 3.11" in log, log

    for name in ("aqi_web.py", "aqi-web.service"):
        installed_file = root / "opt/aqi" / name
        assert installed_file.read_bytes() == (APP / "app" / name).read_bytes()
        assert installed_file.stat().st_mode & 0o7777 == 0o644
    second = list(events)[1]
    last = (root / STATE / "deployment-instructions"
            / "default-local-deployment-group_last_successful_install").read_text()
    assert last == f"/{STATE}/default-local-deployment-group/{second}"


def test_installed_size_within_budget(installed: tuple[str, Path]) -> None:
    """What the package adds beside python3 (itself, python3-yaml, python3-serial and what they
    pull in that python3 does not), from the tree's dpkg database: at most 15 MB."""
    arch, root = installed
    extra = extra_packages(root)
    assert {"pifleet-agent", "python3-yaml", "python3-serial"} <= set(extra), extra
    assert "python3" not in extra and "libc6" not in extra, extra
    assert sum(extra.values()) <= EXTRA_BUDGET_KIB, f"{arch}: {extra}"


def test_deb_has_no_native_code(deb: Path, tmp_path: Path) -> None:
    """What makes one .deb right for every architecture: no ELF file, no extension module."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.name == "cli.py" for path in files)
    native = [str(path.relative_to(tmp_path)) for path in files
              if path.read_bytes()[:4] == b"\x7fELF" or ".so" in path.suffixes]
    assert native == []


def _make_deb(arch: str) -> subprocess.CompletedProcess[str]:
    # -o deps: the suite already runs inside what dev/bootstrap.sh prepared.
    return subprocess.run(["make", "--no-print-directory", "-o", "deps", "deb", f"ARCH={arch}"],
                          cwd=ROOT, capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                               "HOME": os.environ.get("HOME", "/root")})


def test_make_deb_is_one_file_for_every_arch() -> None:
    digests = {}
    for arch in ("amd64", "arm64", "armhf"):
        result = _make_deb(arch)
        assert result.returncode == 0, result.stderr
        built = ROOT / result.stdout.split()[-1]
        assert built.parent == ROOT / "dist" and built.name.endswith("_all.deb"), result.stdout
        digests[arch] = hashlib.sha256(built.read_bytes()).hexdigest()
    assert len(set(digests.values())) == 1, digests


def test_make_deb_refuses_an_unknown_arch() -> None:
    result = _make_deb("i386")
    assert result.returncode != 0
    assert "build-deb: ARCH must be amd64, arm64 or armhf, not 'i386'" in result.stderr
    assert "Traceback" not in result.stderr


def test_debian_armhf_is_armv7() -> None:
    """Debian's armhf userland (the tree's python3) is built for ARMv7: it cannot run on the
    ARMv6 boards (Pi 1, Zero, Zero W), which need Raspberry Pi OS's own armhf."""
    python = (testbed.base_tree("armhf") / "usr/bin/python3").resolve()
    attributes = subprocess.run(["readelf", "-A", str(python)], capture_output=True, text=True,
                                check=True).stdout
    assert re.search(r"Tag_CPU_arch: v7\b", attributes), attributes
