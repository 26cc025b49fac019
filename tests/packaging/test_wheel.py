"""fleetctl on a workstation: the wheel installed into a fresh virtualenv gives `fleetctl` and
`pifleet-agent` launchers that run from anywhere and import the installed copy, not this
checkout (the .deb covers the Pi; a workstation uses `pipx install pifleet-*.whl`)."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding only the wheel; its dependencies (boto3, typer, rich...) come
    from this venv's site-packages through a .pth, so the test stays offline."""
    work = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: the build backend comes from the dev extra, not from an index.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "--disable-pip-version-check", "-w", str(work),
                    str(ROOT)], check=True, capture_output=True)
    (wheel,) = work.glob("pifleet-*.whl")
    target = work / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(target / "bin/python"),
                    "install", "-q", "--no-deps", "--no-index", "--disable-pip-version-check",
                    str(wheel)], check=True, capture_output=True)
    site = next((target / "lib").glob("python3.*/site-packages"))
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and p.is_dir()
                and (p / "boto3").is_dir())
    # A plain path line: the dependencies, but not this checkout's editable-install finder.
    (site / "zz-test-deps.pth").write_text(f"{deps}\n")
    return target


def _run(venv_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv_dir / "bin" / argv[0]), *argv[1:]], capture_output=True,
                          text=True, cwd="/", env={"PATH": "/usr/bin:/bin", "HOME": "/root"},
                          check=False)


def test_launchers_name_the_installed_interpreter(installed: Path) -> None:
    for script in ("fleetctl", "pifleet-agent"):
        shebang = (installed / "bin" / script).read_text().splitlines()[0]
        assert shebang == f"#!{installed}/bin/python", shebang
        assert str(ROOT) not in (installed / "bin" / script).read_text()


def test_fleetctl_runs_from_anywhere_on_the_installed_copy(installed: Path) -> None:
    version = _run(installed, "fleetctl", "--version")
    assert (version.returncode, version.stdout.strip()) == (0, "fleetctl 0.1.0"), version.stderr
    where = _run(installed, "python", "-c", "import fleet, agent; print(fleet.__file__); "
                 "print(agent.__file__)")
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(installed)) for line in where.stdout.split()), where.stdout
    checked = _run(installed, "fleetctl", "validate", str(ROOT / "examples/aqi-app"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_agent_model_file_is_in_the_wheel(installed: Path) -> None:
    # The daemon reads its command-plane model from package data: missing data = no agent.
    loaded = _run(installed, "python", "-c", "from agent.aws import model; "
                  "print(len(model.load_commands_model()['operations']))")
    assert loaded.returncode == 0, loaded.stderr
    assert int(loaded.stdout) >= 5
