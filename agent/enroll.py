"""``pifleet-agent enroll BUNDLE``: install the enrollment bundle ``fleetctl register`` wrote.

The bundle is a tar of ``etc/pifleet/agent.toml``, ``etc/pifleet/secrets/*`` (certificate and
key, or an IAM user's credentials) and maybe ``etc/pifleet/credentials-ca.pem``.  Everything is
checked before anything is written: members outside ``etc/pifleet/``, links, devices and
oversized files refuse the whole bundle.  Secrets are written atomically, 0600, in a 0700
directory, owned by root when run as root.  The bundle's settings become the drop-in
``etc/pifleet/agent.d/50-enrollment.toml``: the package's conffile ``agent.toml`` is never
written, so package upgrades never ask about it, and enrolling again replaces the drop-in.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "etc/pifleet"
DROP_IN = "agent.d/50-enrollment.toml"
SECRETS = f"{PREFIX}/secrets"
MAX_FILE_BYTES = 1024 * 1024
MAX_MEMBERS = 64


class EnrollError(Exception):
    """The bundle cannot be installed; the message says why and what to do."""


@dataclass
class Enrolled:
    written: list[Path] = field(default_factory=list)
    config: Path = Path("/etc/pifleet/agent.toml")  # what `pifleet-agent run --config` reads
    drop_in: Path = Path("/etc/pifleet/agent.d/50-enrollment.toml")


def read_bundle(bundle: Path) -> dict[str, bytes]:
    """The bundle's files (path inside it -> content), refusing anything unsafe."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(bundle, mode="r:*") as tar:
            members = tar.getmembers()
            if len(members) > MAX_MEMBERS:
                raise EnrollError(f"{bundle} has {len(members)} members; an enrollment bundle "
                                  "has a handful")
            for member in members:
                name = _safe_name(member.name, bundle)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise EnrollError(f"{bundle}: {member.name} is a link or device; "
                                      "enrollment bundles hold regular files only (refused)")
                if member.size > MAX_FILE_BYTES:
                    raise EnrollError(f"{bundle}: {member.name} is {member.size} bytes, too "
                                      "big for an enrollment file (refused)")
                handle = tar.extractfile(member)
                if handle is None:
                    raise EnrollError(f"{bundle}: cannot read {member.name}")
                files[name] = handle.read()
    except FileNotFoundError:
        raise EnrollError(f"{bundle} does not exist") from None
    except (tarfile.TarError, OSError) as exc:
        raise EnrollError(f"{bundle} is not a readable enrollment bundle: {exc}") from None
    config = files.get(f"{PREFIX}/agent.toml")
    if config is None:
        raise EnrollError(f"{bundle} has no {PREFIX}/agent.toml; is it from `fleetctl "
                          "register`?")
    try:
        tomllib.loads(config.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise EnrollError(f"{bundle}: its agent.toml is not valid TOML: {exc}") from None
    return files


def _safe_name(name: str, bundle: Path) -> str:
    normal = posixpath.normpath(name)
    if (name.startswith("/") or ".." in name.split("/") or
            not (normal == PREFIX or normal.startswith(PREFIX + "/"))):
        raise EnrollError(f"{bundle}: member {name!r} is outside {PREFIX}/ (refused: an "
                          "enrollment bundle writes nothing else)")
    return normal


def enroll(bundle: Path, root: Path = Path("/")) -> Enrolled:
    """Install the bundle under ``root``; paths in agent.toml are rebased when root is not /."""
    files = read_bundle(bundle)
    etc = root / PREFIX
    secrets = root / SECRETS
    etc.mkdir(parents=True, exist_ok=True)
    secrets.mkdir(mode=0o700, exist_ok=True)
    os.chmod(secrets, 0o700)
    _own(secrets)
    result = Enrolled(config=etc / "agent.toml", drop_in=etc / DROP_IN)
    for name, content in sorted(files.items()):
        target = root / name
        if name == f"{PREFIX}/agent.toml":
            config = content
            if str(root) != "/":
                config = content.decode("utf-8").replace(
                    f'"/{PREFIX}/', f'"{root.as_posix().rstrip("/")}/{PREFIX}/').encode("utf-8")
            target = result.drop_in
            target.parent.mkdir(parents=True, exist_ok=True)
            _write(target, config, 0o644)
        elif name.startswith(SECRETS + "/"):
            if posixpath.dirname(name) != SECRETS:
                raise EnrollError(f"{bundle}: {name} is nested below {SECRETS}/ (refused)")
            _write(target, content, 0o600)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            _write(target, content, 0o644)
        result.written.append(target)
    return result


def _own(path: Path) -> None:
    if os.geteuid() == 0:
        os.chown(path, 0, 0)


def _write(path: Path, content: bytes, mode: int) -> None:
    """Temp file in the same directory (created with ``mode``), fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fchmod(out.fileno(), mode)
            if os.geteuid() == 0:
                os.fchown(out.fileno(), 0, 0)
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def next_steps(result: Enrolled) -> list[str]:
    lines = [f"wrote {path}" for path in result.written]
    lines.append(f"next: `pifleet-agent doctor --config {result.config}`, then "
                 "`systemctl restart pifleet-agent`")
    return lines
