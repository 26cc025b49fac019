"""``fleetctl push`` against the sandbox: the zip rules of ``aws deploy push``, lint errors and
appspec.yaml refused before any upload, PutObject and 3-part multipart uploads (aborted on
errors and Ctrl-C), ETag/VersionId recorded and the revision registered, CLI output."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from fleet.aws import Aws
from fleet.cli import app
from fleet.errors import FleetError
from fleet.names import FleetNames
from fleet.push import (
    PART_SIZE,
    LintFailed,
    PushedRevision,
    bundle_files,
    push_revision,
    upload,
    write_bundle,
)
from fleet.sandbox.server import Sandbox
from fleet.setup import init_fleet

Fleetctl = Callable[..., subprocess.CompletedProcess[str]]  # the conftest's fleetctl fixture

NAMES = FleetNames()
APPSPEC = """version: 0.0
os: linux
files:
  - source: app
    destination: /opt/demo
hooks:
  ApplicationStart:
    - location: scripts/start.sh
      timeout: 60
"""


def _revision(root: Path, appspec: str = APPSPEC) -> Path:
    (root / "app").mkdir(parents=True)
    (root / "scripts").mkdir()
    (root / "appspec.yml").write_text(appspec)
    (root / "app" / "main.py").write_text("print('hi')\n")
    script = root / "scripts" / "start.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    return root


@pytest.fixture
def ready(aws: Aws) -> Aws:
    """An Aws at a reset sandbox where ``init`` has run."""
    init_fleet(aws, NAMES)
    return aws


def _modes(data: bytes) -> dict[str, int]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {i.filename: stat.S_IMODE(i.external_attr >> 16) for i in archive.infolist()}


def test_zip_rules(tmp_path: Path) -> None:
    root = _revision(tmp_path / "rev")
    (root / ".env").write_text("X=1\n")
    (root / "app" / ".hidden").mkdir()
    (root / "app" / ".hidden" / "secret").write_text("s")
    (root / "empty" / "nested").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big.txt").write_text("outside content")
    (root / "app" / "linked-dir").symlink_to(outside, target_is_directory=True)
    (root / "app" / "linked.txt").symlink_to(outside / "big.txt")
    out = io.BytesIO()
    names = write_bundle(root, out)
    assert sorted(names) == [".env", "app/.hidden/secret", "app/linked.txt", "app/main.py",
                             "appspec.yml", "scripts/start.sh"]
    modes = _modes(out.getvalue())
    assert modes["scripts/start.sh"] == 0o755 and modes["app/main.py"] == 0o644
    with zipfile.ZipFile(io.BytesIO(out.getvalue())) as archive:
        assert archive.read("app/linked.txt") == b"outside content"  # stored as content
        assert all(not n.endswith("/") for n in archive.namelist())  # no directory entries
    quiet = [n for _, n in bundle_files(root, ignore_hidden=True)]
    assert ".env" not in quiet and "app/.hidden/secret" not in quiet
    assert "appspec.yml" in quiet
    (root / "app" / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FleetError, match="symbolic link to nothing"):
        write_bundle(root, io.BytesIO())


def test_push_small_revision_is_uploaded_and_registered(ready: Aws, tmp_path: Path) -> None:
    root = _revision(tmp_path / "demo")
    seen: list[tuple[int, int]] = []
    pushed = push_revision(ready, NAMES, root, description="first",
                           progress=lambda done, total: seen.append((done, total)))
    assert isinstance(pushed, PushedRevision)
    assert pushed.bucket == NAMES.bucket(ready.account_id, "us-east-1")
    assert pushed.key.startswith("pifleet/demo-") and pushed.key.endswith("Z.zip")
    assert '"' not in pushed.etag and "-" not in pushed.etag  # a PutObject ETag
    s3 = ready.client("s3")
    head = s3.head_object(Bucket=pushed.bucket, Key=pushed.key)
    assert pushed.version and head["VersionId"] == pushed.version
    assert head["ETag"].strip('"') == pushed.etag
    body = s3.get_object(Bucket=pushed.bucket, Key=pushed.key)["Body"].read()
    assert _modes(body)["scripts/start.sh"] == 0o755
    assert seen[0][0] == 0 and seen[-1] == (len(body), len(body))
    assert pushed.revision == {"revisionType": "S3", "s3Location": {
        "bucket": pushed.bucket, "key": pushed.key, "bundleType": "zip", "eTag": pushed.etag,
        "version": pushed.version}}
    got = ready.client("codedeploy").get_application_revision(applicationName="pifleet",
                                                              revision=pushed.revision)
    assert got["revisionInfo"]["description"] == "first"


def test_multipart_upload_of_13_mb(ready: Aws, tmp_path: Path) -> None:
    root = _revision(tmp_path / "big")
    (root / "app" / "blob.bin").write_bytes(os.urandom(13 * 1024 * 1024))  # incompressible
    seen: list[int] = []
    pushed = push_revision(ready, NAMES, root, key="custom/big.zip",
                           progress=lambda done, total: seen.append(done))
    assert pushed.key == "custom/big.zip"
    assert pushed.etag.endswith("-3")  # 6 MiB + 6 MiB + the rest
    assert seen[1:4] == [PART_SIZE, 2 * PART_SIZE, seen[-1]]
    s3 = ready.client("s3")
    assert s3.head_object(Bucket=pushed.bucket, Key=pushed.key)["VersionId"] == pushed.version
    ready.client("codedeploy").get_application_revision(applicationName="pifleet",
                                                        revision=pushed.revision)


class _FailingParts:
    """The real S3 client, except that UploadPart #2 raises ``error``."""

    def __init__(self, s3: Any, error: BaseException) -> None:
        self.s3, self.error, self.aborted = s3, error, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s3, name)

    def upload_part(self, **kwargs: Any) -> Any:
        if kwargs["PartNumber"] == 2:
            raise self.error
        return self.s3.upload_part(**kwargs)

    def abort_multipart_upload(self, **kwargs: Any) -> Any:
        self.aborted = True
        return self.s3.abort_multipart_upload(**kwargs)


@pytest.mark.parametrize("error", [
    ClientError({"Error": {"Code": "InternalError", "Message": "boom"}}, "UploadPart"),
    KeyboardInterrupt(),
])
def test_failed_multipart_upload_is_aborted(ready: Aws, error: BaseException) -> None:
    s3 = ready.client("s3")
    bucket = NAMES.bucket(ready.account_id, "us-east-1")
    failing = _FailingParts(s3, error)
    size = 2 * PART_SIZE + 10
    with pytest.raises((FleetError, KeyboardInterrupt)) as raised:
        upload(failing, bucket, "k.zip", io.BytesIO(b"x" * size), size)
    if isinstance(error, ClientError):
        assert isinstance(raised.value, FleetError) and "InternalError" in raised.value.message
    assert failing.aborted
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


def test_lint_errors_stop_before_upload(ready: Aws, tmp_path: Path) -> None:
    root = _revision(tmp_path / "bad")
    (root / "scripts" / "start.sh").unlink()
    with pytest.raises(LintFailed) as raised:
        push_revision(ready, NAMES, root)
    assert any(f.code == "hook-script-missing" for f in raised.value.findings)
    bucket = NAMES.bucket(ready.account_id, "us-east-1")
    assert "Contents" not in ready.client("s3").list_objects_v2(Bucket=bucket)


def test_appspec_yaml_and_missing_appspec_are_refused(ready: Aws, tmp_path: Path) -> None:
    root = _revision(tmp_path / "yaml")
    (root / "appspec.yml").rename(root / "appspec.yaml")
    with pytest.raises(FleetError, match=r"has appspec.yaml but CodeDeploy needs appspec.yml"):
        push_revision(ready, NAMES, root)
    (root / "appspec.yaml").unlink()
    with pytest.raises(FleetError, match=r"appspec.yml was not found"):
        push_revision(ready, NAMES, root)
    with pytest.raises(FleetError, match="is not a directory"):
        push_revision(ready, NAMES, tmp_path / "nothing")


def test_push_before_init_says_run_init(aws: Aws, tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="run `fleetctl init` first"):
        push_revision(aws, NAMES, _revision(tmp_path / "demo"))


def test_cli_json_output(ready: Aws, fleetctl: Fleetctl, tmp_path: Path) -> None:
    init_fleet(ready, NAMES)  # the fleetctl fixture reset the sandbox after `ready`
    root = _revision(tmp_path / "demo")
    done = fleetctl("--region", "us-east-1", "--output", "json", "push", str(root),
                    "--description", "from the CLI")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {"application", "bucket", "key", "version", "etag", "revision"}
    assert result["application"] == "pifleet"
    assert result["revision"]["s3Location"]["eTag"] == result["etag"]
    got = ready.client("codedeploy").get_application_revision(applicationName="pifleet",
                                                              revision=result["revision"])
    assert got["revisionInfo"]["description"] == "from the CLI"


def test_cli_text_output_and_lint_report(sandbox: Sandbox, ready: Aws, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["--endpoint-url", sandbox.endpoint.url, "--region", "us-east-1"]
    root = _revision(tmp_path / "demo")
    ok = runner.invoke(app, [*base, "push", str(root), "--key", "pifleet/demo.zip",
                             "--ignore-hidden-files"])
    assert ok.exit_code == 0, ok.output
    assert "pifleet/demo.zip" in ok.stdout and "etag" in ok.stdout
    (root / "scripts" / "start.sh").unlink()
    bad = runner.invoke(app, [*base, "push", str(root)])
    assert bad.exit_code == 1
    assert "error [hook-script-missing]" in bad.stderr and "invalid" in bad.stderr
    assert "fleetctl push: " in bad.stderr and "Traceback" not in bad.stderr
    as_json = runner.invoke(app, [*base, "--output", "json", "push", str(root)])
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["valid"] is False
