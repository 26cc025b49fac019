"""Coverage-guided fuzzing with atheris (libFuzzer): a short bounded run, not part of `make test`.

    .venv/bin/pip install atheris
    .venv/bin/python tests/security/atheris_fuzz.py spec   -max_total_time=60
    .venv/bin/python tests/security/atheris_fuzz.py bundle -max_total_time=60
    .venv/bin/python tests/security/atheris_fuzz.py sds011 -max_total_time=60

Targets and their contract (anything else raised is a crash libFuzzer reports with its input):

- ``spec``: ``parse_specification(bytes)`` raises only ``SpecificationError``;
- ``bundle``: ``unpack_bundle`` of arbitrary bytes as tar, tgz and zip raises only
  ``BundleError``, and writes nothing outside its destination's folder;
- ``sds011``: ``FrameParser``/``CommandParser`` take any bytes without raising.

The hypothesis tests in test_fuzz.py keep the findings as explicit examples.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    from agent.deploy.bundle import BundleType, UnpackLimits, unpack_bundle
    from agent.deploy.errors import BundleError
    from agent.deploy.specification import SpecificationError, parse_specification
    from sensors import sds011_protocol as sds

_WORK = Path(tempfile.mkdtemp(prefix="pifleet-atheris-"))
_LIMITS = UnpackLimits(max_bytes=4 * 1024 * 1024, max_entries=1000)
_TYPES = (BundleType.TAR, BundleType.TGZ, BundleType.ZIP)


def spec(data: bytes) -> None:
    with contextlib.suppress(SpecificationError):
        parse_specification(data)


def bundle(data: bytes) -> None:
    if not data:
        return
    kind = _TYPES[data[0] % len(_TYPES)]
    area = _WORK / "area"
    folder = area / "d"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    source = area / "bundle"
    source.write_bytes(data[1:])
    with contextlib.suppress(BundleError):
        unpack_bundle(source, kind, folder / "deployment-archive", limits=_LIMITS)
    outside = sorted(os.listdir(area))
    if outside != ["bundle", "d"]:
        raise AssertionError(f"written outside the destination's folder: {outside}")


def sds011(data: bytes) -> None:
    for parser in (sds.FrameParser(), sds.CommandParser()):
        half = len(data) // 2
        parser.feed(data[:half])
        parser.feed(data[half:])
        parser.drop_pending()


TARGETS: dict[str, Callable[[bytes], None]] = {"spec": spec, "bundle": bundle, "sds011": sds011}


def _seed_corpus() -> str:
    """Small valid inputs to start from (random bytes rarely get past a tar or zip header)."""
    import io  # noqa: PLC0415  (only the seeds need these)
    import json  # noqa: PLC0415
    import tarfile  # noqa: PLC0415
    import zipfile  # noqa: PLC0415

    corpus = _WORK / "corpus"
    corpus.mkdir()
    for number, compression in enumerate((False, True)):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz" if compression else "w") as archive:
            for name, kind, link in (("appspec.yml", tarfile.REGTYPE, ""),
                                     ("d", tarfile.DIRTYPE, ""),
                                     ("d/l", tarfile.SYMTYPE, "../appspec.yml"),
                                     ("h", tarfile.LNKTYPE, "appspec.yml")):
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, link
                info.size = 3 if kind == tarfile.REGTYPE else 0
                archive.addfile(info, io.BytesIO(b"abc") if info.size else None)
        (corpus / f"tar{number}").write_bytes(bytes([number]) + buffer.getvalue())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("appspec.yml", "version: 0.0\n")
        symlink = zipfile.ZipInfo("l")
        symlink.create_system, symlink.external_attr = 3, 0o120777 << 16
        archive.writestr(symlink, "appspec.yml")
    (corpus / "zip").write_bytes(b"\x02" + buffer.getvalue())
    (corpus / "spec").write_text(json.dumps({
        "DeploymentId": "d-1", "DeploymentGroupId": "g", "DeploymentGroupName": "n",
        "ApplicationName": "a", "Revision": {"RevisionType": "S3", "S3Revision": {
            "Bucket": "b", "Key": "k", "BundleType": "zip"}}}))
    return str(corpus)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options, e.g. "
                 "-max_total_time=60]")
    target = TARGETS[sys.argv.pop(1)]
    if not any(not arg.startswith("-") for arg in sys.argv[1:]):
        sys.argv.append(_seed_corpus())  # no corpus directory given: start from the seeds
    try:
        atheris.Setup(sys.argv, target)
        atheris.Fuzz()
    finally:
        shutil.rmtree(_WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
