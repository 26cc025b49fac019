"""pifleet-agent enroll: bundle -> files with their modes; unsafe bundles refused; an existing
agent.toml never overwritten."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import read_config
from agent.enroll import EnrollError, enroll

AGENT = str(Path(sys.executable).parent / "pifleet-agent")
CONFIG = ('[identity]\nmode = "iot-cert"\ncertificate = "/etc/pifleet/secrets/device.pem.crt"\n'
          'private_key = "/etc/pifleet/secrets/private.pem.key"\n[aws]\nregion = "us-east-1"\n')


def make_bundle(path: Path, extra: list[tarfile.TarInfo] | None = None,
                files: dict[str, bytes] | None = None) -> Path:
    contents = {"etc/pifleet/agent.toml": CONFIG.encode(),
                "etc/pifleet/secrets/device.pem.crt": b"CERT",
                "etc/pifleet/secrets/private.pem.key": b"KEY", **(files or {})}
    with tarfile.open(path, "w") as tar:
        for name, data in contents.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def test_enroll_writes_files_with_modes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = enroll(make_bundle(tmp_path / "b.tar"), root)
    secrets = root / "etc/pifleet/secrets"
    assert secrets.stat().st_mode & 0o777 == 0o700
    for name in ("device.pem.crt", "private.pem.key"):
        assert (secrets / name).stat().st_mode & 0o777 == 0o600
    assert (secrets / "private.pem.key").read_bytes() == b"KEY"
    config = tomllib.loads((root / "etc/pifleet/agent.d/50-enrollment.toml").read_text())
    assert config["identity"]["private_key"] == f"{root}/etc/pifleet/secrets/private.pem.key"
    assert result.drop_in == root / "etc/pifleet/agent.d/50-enrollment.toml"
    assert result.config == root / "etc/pifleet/agent.toml" and len(result.written) == 3
    assert not list(secrets.glob(".*tmp"))


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "etc/pifleet/../../x",
                                  "etc/other", "etc/pifleetx/a"])
def test_members_outside_etc_pifleet_are_refused(tmp_path: Path, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = 1
    with pytest.raises(EnrollError, match="refused"):
        enroll(make_bundle(tmp_path / "b.tar", [info]), tmp_path / "root")
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                                  tarfile.FIFOTYPE])
def test_links_and_devices_are_refused(tmp_path: Path, kind: bytes) -> None:
    info = tarfile.TarInfo("etc/pifleet/secrets/link")
    info.type, info.linkname = kind, "/etc/shadow"
    with pytest.raises(EnrollError, match="link or device"):
        enroll(make_bundle(tmp_path / "b.tar", [info]), tmp_path / "root")
    assert not (tmp_path / "root").exists()


def test_not_a_bundle(tmp_path: Path) -> None:
    bad = tmp_path / "b.tar"
    bad.write_bytes(b"not a tar")
    with pytest.raises(EnrollError, match="not a readable"):
        enroll(bad, tmp_path)
    with pytest.raises(EnrollError, match="does not exist"):
        enroll(tmp_path / "missing.tar", tmp_path)
    with pytest.raises(EnrollError, match="valid TOML"):
        enroll(make_bundle(tmp_path / "c.tar", files={"etc/pifleet/agent.toml": b"[x"}),
               tmp_path)


def test_the_conffile_is_never_written_and_the_drop_in_is_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    (root / "etc/pifleet").mkdir(parents=True)
    conffile = "# the package's conffile\n[agent]\npoll_interval_s = 7.0\n"
    (root / "etc/pifleet/agent.toml").write_text(conffile)
    status = main(["enroll", str(make_bundle(tmp_path / "b.tar")), "--root", str(root)])
    assert status == 0
    assert (root / "etc/pifleet/agent.toml").read_text() == conffile
    assert "systemctl restart pifleet-agent" in capsys.readouterr().out
    config = read_config(root / "etc/pifleet/agent.toml")
    assert config.identity.mode == "iot-cert"  # from the drop-in
    assert config.agent.poll_interval_s == 7.0  # from the conffile, kept


def test_cli_subprocess_reports_errors_without_traceback(tmp_path: Path) -> None:
    info = tarfile.TarInfo("../../escape")
    info.size = 1
    run = subprocess.run([AGENT, "enroll", str(make_bundle(tmp_path / "b.tar", [info])),
                          "--root", str(tmp_path / "root")],
                         capture_output=True, text=True, check=False, timeout=30)
    assert run.returncode == 1
    assert "refused" in run.stderr and "Traceback" not in run.stderr
