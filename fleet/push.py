"""``fleetctl push``: lint a revision directory, zip it, upload it to the fleet's bucket and
register it with CodeDeploy -- ``aws deploy push`` with its rules (reference
fleet-cli-and-moto.md §1.5), plus the AppSpec lint first and no orphaned multipart uploads.

Zip rules (as ``aws deploy push``): ``appspec.yml`` must be at the root (``appspec.yaml`` is
refused: the agent looks for ``appspec.yml``); hidden files and directories are included unless
``ignore_hidden``; symlinked directories are dropped; symlinked files are stored with their
target's content; empty directories are not stored; Unix modes are kept in ``external_attr`` so
hook scripts stay executable.

Upload: below 6 MiB one PutObject; from 6 MiB multipart with 6 MiB parts, aborted on any error
or interrupt.  The ETag is stored without quotes and the bucket's VersionId is kept.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from appspec.errors import Finding, Severity

from . import __version__
from .aws import Aws, aws_errors
from .errors import FleetError, NotFound
from .names import FleetNames

PART_SIZE = 6 * 1024 * 1024
APPSPEC = "appspec.yml"
# (bytes sent so far, total bytes); called as the upload goes.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PushedRevision:
    bucket: str
    key: str
    version: str | None
    etag: str
    revision: dict[str, Any]  # as CodeDeploy takes it: {revisionType: S3, s3Location: {...}}

    def to_dict(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "key": self.key, "version": self.version,
                "etag": self.etag, "revision": self.revision}


class LintFailed(FleetError):
    """The revision's AppSpec has errors; ``findings`` has all of them (and the warnings)."""

    def __init__(self, directory: Path, findings: Sequence[Finding]) -> None:
        errors = sum(1 for f in findings if f.severity is Severity.ERROR)
        super().__init__(f"{directory}: {errors} AppSpec error{'s' if errors != 1 else ''}; "
                         f"fix {'them' if errors != 1 else 'it'} (see `fleetctl validate "
                         f"{directory}`) and push again")
        self.directory = directory
        self.findings = tuple(findings)


def check_revision_dir(directory: Path) -> None:
    """The directory exists, has appspec.yml at its root and lints without errors."""
    from appspec.lint import lint_revision  # noqa: PLC0415

    if not directory.is_dir():
        raise FleetError(f"{directory} is not a directory; pass the revision directory "
                         "(the one holding appspec.yml)")
    if not (directory / APPSPEC).is_file():
        if (directory / "appspec.yaml").is_file():
            raise FleetError(f"{directory} has appspec.yaml but CodeDeploy needs appspec.yml "
                             "at the root of the bundle (the agent looks only for that name); "
                             f"rename it: mv {directory / 'appspec.yaml'} "
                             f"{directory / APPSPEC}")
        raise FleetError(f"{directory / APPSPEC} was not found; a revision needs appspec.yml "
                         "at its root (fleetctl validate explains the format)")
    findings = lint_revision(directory)
    if any(f.severity is Severity.ERROR for f in findings):
        raise LintFailed(directory, findings)


def bundle_files(directory: Path, *, ignore_hidden: bool = False) -> list[tuple[Path, str]]:
    """(file, name in the archive) for every file the bundle holds, in a stable order."""
    root = Path(os.path.abspath(directory))
    files: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, topdown=True):
        here = Path(dirpath)
        # os.walk lists symlinked directories in dirnames but (followlinks=False) never
        # enters them: they are dropped, as aws deploy push does.
        dirnames[:] = sorted(d for d in dirnames if not (ignore_hidden and d.startswith(".")))
        for name in sorted(filenames):
            if ignore_hidden and name.startswith("."):
                continue
            path = here / name
            if not path.exists():
                raise FleetError(f"{path} is a symbolic link to nothing ({os.readlink(path)}); "
                                 "remove it or point it at a file")
            files.append((path, path.relative_to(root).as_posix()))
    return files


def write_bundle(directory: Path, out: IO[bytes], *, ignore_hidden: bool = False) -> list[str]:
    """Zip the revision into ``out``; the archive names."""
    names = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, allowZip64=True,
                         strict_timestamps=False) as archive:
        for path, arcname in bundle_files(directory, ignore_hidden=ignore_hidden):
            # ZipInfo.from_file stats through symlinks: the target's content and mode.
            archive.write(path, arcname)
            names.append(arcname)
    return names


def default_key(names: FleetNames, directory: Path, now: dt.datetime | None = None) -> str:
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{names.application}/{Path(os.path.abspath(directory)).name}-{stamp}.zip"


def push_revision(aws: Aws, names: FleetNames, directory: Path, *, key: str | None = None,
                  ignore_hidden: bool = False, description: str | None = None,
                  progress: Progress | None = None) -> PushedRevision:
    """Lint, zip, upload and register a revision directory; what was registered."""
    directory = Path(directory)
    check_revision_dir(directory)
    bucket = names.bucket(aws.account_id, aws.region)
    key = key or default_key(names, directory)
    if description is None:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        description = f"Uploaded by fleetctl {__version__} {now} UTC"
    with tempfile.TemporaryFile() as bundle:
        write_bundle(directory, bundle, ignore_hidden=ignore_hidden)
        size = bundle.tell()
        bundle.seek(0)
        uploaded = upload(aws.client("s3"), bucket, key, bundle, size, progress=progress)
    etag = str(uploaded["ETag"]).replace('"', "")
    version = uploaded.get("VersionId")
    location: dict[str, Any] = {"bucket": bucket, "key": key, "bundleType": "zip", "eTag": etag}
    if version:
        location["version"] = version
    revision = {"revisionType": "S3", "s3Location": location}
    with aws_errors(f"registering s3://{bucket}/{key} with application {names.application}"):
        aws.client("codedeploy").register_application_revision(
            applicationName=names.application, description=description, revision=revision)
    return PushedRevision(bucket, key, version, etag, revision)


def upload(s3: Any, bucket: str, key: str, body: IO[bytes], size: int, *,
           progress: Progress | None = None) -> dict[str, Any]:
    """PutObject below PART_SIZE, multipart from it; the response (ETag, VersionId)."""
    doing = f"uploading to s3://{bucket}/{key}"
    if progress:
        progress(0, size)
    try:
        with aws_errors(doing):
            if size < PART_SIZE:
                response: dict[str, Any] = s3.put_object(Bucket=bucket, Key=key, Body=body)
            else:
                response = _multipart(s3, bucket, key, body, size, progress=progress)
    except NotFound as exc:
        if "NoSuchBucket" in exc.message:
            raise FleetError(f"{doing}: the bucket {bucket} does not exist; run `fleetctl "
                             "init` first (with the same --fleet and --region)") from None
        raise
    if progress:
        progress(size, size)
    return response


def _multipart(s3: Any, bucket: str, key: str, body: IO[bytes], size: int, *,
               progress: Progress | None) -> dict[str, Any]:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    try:
        parts = []
        sent = 0
        for number in range(1, (size + PART_SIZE - 1) // PART_SIZE + 1):
            data = body.read(PART_SIZE)
            part = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id,
                                  PartNumber=number, Body=data)
            parts.append({"PartNumber": number, "ETag": part["ETag"]})
            sent += len(data)
            if progress:
                progress(sent, size)
        return dict(s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}))
    except BaseException:  # errors and Ctrl-C alike: leave no half-uploaded parts behind
        with contextlib.suppress(Exception):  # the original error is the one to report
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
