"""The deployment specification: from ``GetDeploymentSpecification`` to a ``DeploymentSpec``.

Three steps, as in the official agent (reference §2.3, §3):

``read_deployment_specification``
    Checks the response (``DeploymentSystem`` must be ``CodeDeploy``, a specification must be
    there) and hands its ``GenericEnvelope`` on.
``verify_envelope``
    ``PKCS7/JSON`` envelopes hold a PEM PKCS#7 SignedData embedding the spec JSON and the signer
    certificate. The signature is checked with the ``openssl`` command, because the agent may not
    load ``cryptography`` (memory budget) and every Pi OS image ships the command. We run::

        openssl cms -verify -binary -inform PEM -noverify                     # no anchors
        openssl cms -verify -binary -inform PEM -CAfile <anchors> \\
            -no-CApath -no-CAstore -purpose any                               # with anchors

    with the PEM on stdin and the content read from stdout. ``cms`` rather than ``smime``: it is
    OpenSSL's maintained CMS/PKCS#7 tool, reads ``-----BEGIN PKCS7-----`` PEM as is, and both
    behave the same here (checked with OpenSSL 3.0 on Debian 12). ``-binary`` keeps the JSON
    byte-exact (no S/MIME text canonicalisation). Without anchors ``-noverify`` checks the
    signature against the embedded certificate but not its chain, as the official v2 agent does
    (the Ruby agent's bundled CA chain expired years ago, §3.2). With anchors, ``-no-CApath
    -no-CAstore`` matter: with ``-CAfile`` alone OpenSSL 3 still trusts the system's
    ``/etc/ssl/certs``, so any publicly issued certificate would pass. Those two options need
    OpenSSL 3.0 or later (Raspberry Pi OS Bookworm); ``-purpose any`` because the service's
    signer certificate is not an S/MIME e-mail certificate.

    OpenSSL writes the content to stdout *before* it checks the signature, so a tampered spec
    still comes out, with a non-zero exit status. The exit status is all that counts: on failure
    stdout is thrown away and nothing is executed. (The Ruby agent ignores the verification
    result this way; we do not.)
``parse_specification``
    The payload JSON (§3.3) becomes the engine's ``DeploymentSpec``.

Every failure is a ``SpecificationError`` (error code 5); messages are the official agent's where
it has one, so a fleet's console reads the same as with the official agent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appspec import FileExistsBehavior, LifecycleEvent
from appspec.events import AGENT_EVENTS

from .bundle import BundleType
from .errors import DeployError
from .spec import DeploymentSpec, Revision, RevisionSource

__all__ = [
    "OPENSSL_TIMEOUT",
    "SIGNED_FORMAT",
    "UNSIGNED_FORMAT",
    "SpecificationError",
    "TrustPolicy",
    "parse_specification",
    "read_deployment_specification",
    "verify_envelope",
]

SIGNED_FORMAT = "PKCS7/JSON"
UNSIGNED_FORMAT = "TEXT/JSON"
# A wedged openssl must not hold the poller: the command would time out service-side anyway.
OPENSSL_TIMEOUT = 30.0
# The service model caps the payload at 8,192 characters; real specs are far smaller. The cap
# bounds what we feed openssl and json, with room for a model change.
MAX_PAYLOAD_CHARS = 64 * 1024

_S3_BUNDLE_TYPES = (BundleType.TAR, BundleType.TGZ, BundleType.ZIP)
_GITHUB_BUNDLE_TYPES = (BundleType.TAR, BundleType.ZIP)
_REVISION_KEYS = ("S3Revision", "GitHubRevision", "LocalRevision")
_EXACTLY_ONE = "Exactly one of S3Revision, GitHubRevision, or LocalRevision must be specified"
_REVISION_KEY_OF = {
    RevisionSource.S3: "S3Revision",
    RevisionSource.GITHUB: "GitHubRevision",
    RevisionSource.LOCAL_FILE: "LocalRevision",
    RevisionSource.LOCAL_DIRECTORY: "LocalRevision",
}
_SOURCES = {str(s): s for s in RevisionSource}
_STANDARD_EVENTS = frozenset(str(e) for e in LifecycleEvent) | frozenset(AGENT_EVENTS)


class SpecificationError(DeployError):
    """The deployment specification is missing, unsigned, forged or malformed."""


@dataclass(frozen=True)
class TrustPolicy:
    """How much of a deployment specification's signature to check."""

    # PEM bundle of CA certificates the signer must chain to. None checks the signature against
    # the embedded certificate only, as the official v2 agent does.
    anchors: Path | None = None
    # Accept TEXT/JSON (unsigned) envelopes: deploy-local and tests only.
    allow_unsigned: bool = False


# -- the response -------------------------------------------------------------------------------


def read_deployment_specification(response: Mapping[str, Any],
                                  policy: TrustPolicy) -> DeploymentSpec:
    """A ``GetDeploymentSpecification`` response, checked, verified and parsed."""
    system = response.get("DeploymentSystem")
    if system != "CodeDeploy":
        # Ruby interpolates nil as the empty string; keep the official text for that case too.
        raise SpecificationError(
            f"Deployment System mismatch: CodeDeploy != {'' if system is None else system}")
    specification = response.get("DeploymentSpecification")
    if specification is None:
        raise SpecificationError("Deployment Specification missing")
    if not isinstance(specification, Mapping):
        raise SpecificationError("Deployment Specification is not an object")
    return parse_specification(verify_envelope(specification.get("GenericEnvelope"), policy))


# -- the envelope -------------------------------------------------------------------------------


def verify_envelope(envelope: Mapping[str, Any] | None, policy: TrustPolicy) -> bytes:
    """The spec JSON bytes of a ``GenericEnvelope`` whose signature the policy accepts."""
    if envelope is None:
        raise SpecificationError("Provided deployment spec was nil")
    if not isinstance(envelope, Mapping):
        raise SpecificationError("Provided deployment spec is not an object")
    fmt = envelope.get("Format")
    if fmt == SIGNED_FORMAT:
        return _openssl_verify(_payload(envelope), policy.anchors)
    if fmt == UNSIGNED_FORMAT and policy.allow_unsigned:
        return _payload(envelope)
    raise SpecificationError(
        f"Unsupported DeploymentSpecification format: {'' if fmt is None else fmt}")


def _payload(envelope: Mapping[str, Any]) -> bytes:
    payload = envelope.get("Payload")
    if not isinstance(payload, str) or not payload:
        raise SpecificationError("the deployment specification envelope has no Payload")
    if len(payload) > MAX_PAYLOAD_CHARS:
        raise SpecificationError(
            f"the deployment specification is {len(payload)} characters long, more than the "
            f"{MAX_PAYLOAD_CHARS} the agent accepts; the command was refused")
    return payload.encode("utf-8")


def _openssl_verify(pem: bytes, anchors: Path | None) -> bytes:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SpecificationError(_NO_OPENSSL)
    args = [openssl, "cms", "-verify", "-binary", "-inform", "PEM"]
    if anchors is None:
        args.append("-noverify")
    else:
        # Checked here because openssl's own complaint would read like a bad signature.
        if not anchors.is_file():
            raise SpecificationError(
                f"the trust anchors file {anchors} does not exist or is not a file; point the "
                "agent at a PEM bundle of CA certificates, or configure none")
        args += ["-CAfile", str(anchors), "-no-CApath", "-no-CAstore", "-purpose", "any"]
    try:
        done = subprocess.run(args, input=pem, capture_output=True, timeout=OPENSSL_TIMEOUT,
                              check=False)
    except FileNotFoundError as exc:  # removed between which() and exec
        raise SpecificationError(_NO_OPENSSL) from exc
    except subprocess.TimeoutExpired as exc:
        raise SpecificationError(
            f"openssl took more than {OPENSSL_TIMEOUT:g} seconds to verify the deployment "
            "specification's signature; the command was refused") from exc
    except OSError as exc:
        raise SpecificationError(
            f"cannot run {openssl} to verify the deployment specification's signature: "
            f"{exc.strerror or exc}; the command was refused") from exc
    if done.returncode != 0:
        # stdout may hold the (possibly tampered) content: openssl writes it before checking.
        raise SpecificationError(
            "the deployment specification's signature does not verify: "
            f"{_openssl_reason(done.stderr, done.returncode)}; the command was refused")
    return done.stdout


_NO_OPENSSL = ("the openssl command was not found; the agent needs it to verify deployment "
               "specifications: install the openssl package (sudo apt-get install openssl)")


def _openssl_reason(stderr: bytes, returncode: int) -> str:
    """OpenSSL's first error, plus its last when that differs (the first is often low-level,
    e.g. ``invalid padding`` for a signature by another key, the last says what failed)."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line]
    errors = [_error_reason(line) for line in lines if ":error:" in line]
    if errors:
        first, last = errors[0], errors[-1]
        return first if first == last else f"{first} ({last})"
    if lines:
        return lines[0]
    return f"openssl exited with status {returncode}"


def _error_reason(line: str) -> str:
    # OpenSSL 3 error lines: <thread>:error:<code>:<library>:<function>:<reason>:<file>:<line>:
    # <data>. The reason and data are what a person can act on; the rest is source location.
    fields = line.split(":", 8)
    if len(fields) < 6:
        return line
    reason = fields[5]
    data = fields[8].strip() if len(fields) == 9 else ""
    return f"{reason}: {data}" if data else reason


# -- the payload --------------------------------------------------------------------------------


def parse_specification(data: bytes | str) -> DeploymentSpec:
    """The spec JSON (reference §3.3) as the engine's ``DeploymentSpec``; extra keys ignored."""
    try:
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
        document = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SpecificationError(f"the deployment specification is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise SpecificationError("the deployment specification is not a JSON object")
    deployment_id = _deployment_id(_required(document, "DeploymentId"))
    group_id = _required(document, "DeploymentGroupId")
    _folder_name(group_id, "DeploymentGroupId")
    return DeploymentSpec(
        deployment_id=deployment_id,
        application_name=_required(document, "ApplicationName"),
        deployment_group_name=_required(document, "DeploymentGroupName"),
        deployment_group_id=group_id,
        revision=_revision(document.get("Revision")),
        file_exists_behavior=_file_exists_behavior(document),
        # The official default is appspec.yml; None lets the engine try appspec.yml then
        # appspec.yaml, which covers it.
        appspec_filename=_optional(document, "AppSpecFilename"),
        deployment_creator=_optional(document, "DeploymentCreator") or "user",
        deployment_type=_optional(document, "DeploymentType") or "IN_PLACE",
        custom_events=_custom_events(document.get("AllPossibleLifecycleEvents")),
    )


def _required(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None or value == "":
        raise SpecificationError(f"Deployment Spec has no {name}")
    if not isinstance(value, str):
        raise SpecificationError(f"{name} in Deployment Spec must be a string, not {value!r}")
    return value


def _optional(obj: Mapping[str, Any], name: str, where: str = "Deployment Spec") -> str | None:
    value = obj.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SpecificationError(f"{name} in {where} must be a string, not {value!r}")
    return value


def _object(value: Any, name: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecificationError(f"{name} in Deployment Spec must be an object, not {value!r}")
    return value


def _deployment_id(value: str) -> str:
    if value.startswith("arn:"):
        # arn:aws:codedeploy:<region>:<account>:deployment/<id>
        _, found, short = value.partition("deployment/")
        if not found:
            raise SpecificationError(f"DeploymentId {value!r} is an ARN without deployment/<id>")
        if not short:
            raise SpecificationError("Deployment Spec has no DeploymentId")
        value = short
    _folder_name(value, "DeploymentId")
    return value


def _folder_name(value: str, name: str) -> None:
    # Both ids name folders under the deployment root; a signed spec should never hold such a
    # value, but a clear refusal here beats a path error halfway through DownloadBundle.
    if value in (".", "..") or "/" in value or "\0" in value:
        raise SpecificationError(f"{name} {value!r} in Deployment Spec cannot be a folder name")


def _file_exists_behavior(document: Mapping[str, Any]) -> FileExistsBehavior:
    overrides = _object(document.get("AgentActionOverrides"), "AgentActionOverrides")
    agent = _object(overrides.get("AgentOverrides"), "AgentActionOverrides.AgentOverrides")
    value = agent.get("FileExistsBehavior")
    if value is None:
        return FileExistsBehavior.DISALLOW
    if isinstance(value, str):
        try:
            return FileExistsBehavior(value.upper())
        except ValueError:
            pass
    raise SpecificationError(
        f"FileExistsBehavior in Deployment Spec must be DISALLOW, OVERWRITE or RETAIN, "
        f"not {value!r}")


def _custom_events(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
        raise SpecificationError(
            "AllPossibleLifecycleEvents in Deployment Spec must be a list of event names")
    # Only the extra names matter to the engine: they let hook commands and AppSpec hooks use
    # events beyond the nine standard ones. dict.fromkeys drops repeats, keeping the order.
    return tuple(dict.fromkeys(e for e in value if e not in _STANDARD_EVENTS))


def _revision(value: Any) -> Revision:
    if value is None:
        raise SpecificationError("Must specify a revison")  # sic: the official agent's typo
    if not isinstance(value, dict):
        raise SpecificationError(f"Revision in Deployment Spec must be an object, not {value!r}")
    present = [key for key in _REVISION_KEYS if value.get(key) is not None]
    if len(present) != 1:
        raise SpecificationError(_EXACTLY_ONE)
    kind = value.get("RevisionType")
    source = _SOURCES.get(kind) if isinstance(kind, str) else None
    if source is None:
        raise SpecificationError(
            f"RevisionType in Deployment Spec must be S3, GitHub, Local File or Local Directory, "
            f"not {kind!r}")
    expected = _REVISION_KEY_OF[source]
    if present[0] != expected:
        raise SpecificationError(f"{_EXACTLY_ONE} (RevisionType {source} needs {expected})")
    details = _object(value[expected], f"Revision.{expected}")
    if source is RevisionSource.S3:
        return _s3_revision(details)
    if source is RevisionSource.GITHUB:
        return _github_revision(details)
    return _local_revision(details, source)


def _s3_revision(s3: Mapping[str, Any]) -> Revision:
    where = "S3Revision"
    bucket, key = _optional(s3, "Bucket", where), _optional(s3, "Key", where)
    kind = s3.get("BundleType")
    if bucket is None or key is None or kind is None:
        raise SpecificationError(
            "S3Revision in Deployment Spec must specify Bucket, Key and BundleType")
    return Revision(RevisionSource.S3, _bundle_type(kind, _S3_BUNDLE_TYPES, where),
                    bucket=bucket, key=key, version=_optional(s3, "Version", where),
                    etag=_optional(s3, "ETag", where))


def _github_revision(github: Mapping[str, Any]) -> Revision:
    where = "GitHubRevision"
    account = _optional(github, "Account", where)
    repository = _optional(github, "Repository", where)
    commit = _optional(github, "CommitId", where)
    if account is None or repository is None or commit is None:
        raise SpecificationError(
            "GitHubRevision in Deployment Spec must specify Account, Repository and CommitId")
    # A private repository (Anonymous false) cannot be fetched without a token; the official
    # agent refuses the spec up front rather than failing at DownloadBundle.
    if github.get("Anonymous") is False and "OAuthToken" not in github:
        raise SpecificationError(
            "GitHubRevision in Deployment Spec must specify OAuthToken when Anonymous is false")
    # GitHub serves tarballs by default; the official agent assumes tar when none is given.
    kind = github.get("BundleType")
    bundle_type = BundleType.TAR if kind is None else _bundle_type(kind, _GITHUB_BUNDLE_TYPES,
                                                                   where)
    return Revision(RevisionSource.GITHUB, bundle_type, commit=commit, account=account,
                    repository=repository)


def _local_revision(local: Mapping[str, Any], source: RevisionSource) -> Revision:
    where = "LocalRevision"
    location = _optional(local, "Location", where)
    kind = local.get("BundleType")
    if location is None or kind is None:
        raise SpecificationError(
            "LocalRevision in Deployment Spec must specify Location and BundleType")
    # Only a directory revision may be a plain tree; a file must be an archive.
    allowed = (*_S3_BUNDLE_TYPES, BundleType.DIRECTORY) \
        if source is RevisionSource.LOCAL_DIRECTORY else _S3_BUNDLE_TYPES
    return Revision(source, _bundle_type(kind, allowed, where), location)


def _bundle_type(value: Any, allowed: tuple[BundleType, ...], where: str) -> BundleType:
    if isinstance(value, str) and value in allowed:
        return BundleType(value)
    names = [str(t) for t in allowed]
    listed = f"{', '.join(names[:-1])} or {names[-1]}"
    raise SpecificationError(f"BundleType in {where} must be {listed}")
