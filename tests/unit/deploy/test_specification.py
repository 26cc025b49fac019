"""Deployment specifications: real PKCS#7 verification through openssl, and payload parsing.

Envelopes are signed as the sandbox signs them (fleet.sandbox.specs, the same shape as the
service's); the vectors of the official deployment_specification_test are ported by behaviour.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from agent.deploy.bundle import BundleType
from agent.deploy.errors import DeployError, ErrorCode
from agent.deploy.executor import CommandExecutor, EngineConfig
from agent.deploy.layout import DeploymentRoot
from agent.deploy.spec import DeploymentSpec, Revision, RevisionSource
from agent.deploy.specification import (
    SpecificationError,
    TrustPolicy,
    parse_specification,
    read_deployment_specification,
    verify_envelope,
)
from appspec import FileExistsBehavior
from fleet.sandbox.specs import (
    SigningIdentity,
    deployment_spec_payload,
    sign_spec,
    spec_json,
    unsigned_spec,
)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

S3: dict[str, Any] = {"RevisionType": "S3",
                      "S3Revision": {"Bucket": "b", "Key": "app.zip", "BundleType": "zip",
                                     "Version": "v1", "ETag": "e1"}}
REFUSED = "the deployment specification's signature does not verify: "


def payload(**overrides: Any) -> dict[str, Any]:
    doc = deployment_spec_payload(deployment_id="d-ABCDEFGHI", deployment_group_id="g-1",
                                  deployment_group_name="pi", application_name="app",
                                  revision=S3)
    doc.update(overrides)
    return doc


def parse(**overrides: Any) -> DeploymentSpec:
    return parse_specification(json.dumps(payload(**overrides)))


def without(*keys: str) -> DeploymentSpec:
    doc = payload()
    for key in keys:
        del doc[key]
    return parse_specification(json.dumps(doc))


def error(fn: Any, *args: Any) -> str:
    with pytest.raises(SpecificationError) as info:
        fn(*args)
    return info.value.message


@pytest.fixture(scope="module")
def identity() -> SigningIdentity:
    return SigningIdentity.generate()


@pytest.fixture(scope="module")
def envelope(identity: SigningIdentity) -> dict[str, str]:
    return sign_spec(payload(), identity)


@pytest.fixture(scope="module")
def anchors(identity: SigningIdentity, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("anchors") / "signer.pem"
    path.write_bytes(identity.certificate_pem)
    return path


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("other") / "other-ca.pem"
    path.write_bytes(SigningIdentity.generate("another CA").certificate_pem)
    return path


def der_of(pem: str) -> bytes:
    return base64.b64decode("".join(line for line in pem.splitlines()
                                    if not line.startswith("-----")))


def pem_of(der: bytes) -> str:
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "\n".join(["-----BEGIN PKCS7-----", *lines, "-----END PKCS7-----", ""])


# -- the envelope -------------------------------------------------------------------------------


def test_signed_spec_verifies_without_anchors(envelope: dict[str, str]) -> None:
    data = verify_envelope(envelope, TrustPolicy())
    assert data == spec_json(payload()).encode()


def test_signed_spec_verifies_against_its_own_certificate(envelope: dict[str, str],
                                                          anchors: Path) -> None:
    assert verify_envelope(envelope, TrustPolicy(anchors=anchors)) == spec_json(payload()).encode()


def test_signer_not_issued_by_the_anchors_is_refused(envelope: dict[str, str],
                                                     other_ca: Path) -> None:
    message = error(verify_envelope, envelope, TrustPolicy(anchors=other_ca))
    assert message.startswith(REFUSED)
    assert "certificate verify error" in message
    assert message.endswith("; the command was refused")


def test_anchors_do_not_fall_back_to_the_system_trust_store(
        envelope: dict[str, str], identity: SigningIdentity, other_ca: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With -CAfile alone, OpenSSL 3 still trusts its default cert directory: put the signer
    # there and check that only the configured anchors count.
    subject_hash = subprocess.run(
        ["openssl", "x509", "-hash", "-noout"], input=identity.certificate_pem,
        capture_output=True, check=True).stdout.decode().strip()
    (tmp_path / f"{subject_hash}.0").write_bytes(identity.certificate_pem)
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    assert error(verify_envelope, envelope, TrustPolicy(anchors=other_ca)).startswith(REFUSED)


def test_tampered_content_is_refused(envelope: dict[str, str]) -> None:
    der = bytearray(der_of(envelope["Payload"]))
    at = der.index(b'"DeploymentGroupName":"pi"') + len(b'"DeploymentGroupName":"')
    der[at] = ord("P")  # openssl still prints this content; it must not come back
    tampered = {"Format": "PKCS7/JSON", "Payload": pem_of(bytes(der))}
    message = error(verify_envelope, tampered, TrustPolicy())
    assert message == REFUSED + "verification failure (content verify error); " \
        "the command was refused"


def test_signature_by_another_key_than_the_embedded_certificate_is_refused(
        identity: SigningIdentity) -> None:
    cert = x509.load_pem_x509_certificate(identity.certificate_pem)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = (pkcs7.PKCS7SignatureBuilder().set_data(spec_json(payload()).encode())
              .add_signer(cert, other_key, hashes.SHA256())
              .sign(serialization.Encoding.PEM, [pkcs7.PKCS7Options.Binary]))
    message = error(verify_envelope, {"Format": "PKCS7/JSON", "Payload": forged.decode()},
                    TrustPolicy())
    assert message.startswith(REFUSED)
    assert "verification failure" in message


def test_garbage_payload_is_refused() -> None:
    message = error(verify_envelope, {"Format": "PKCS7/JSON", "Payload": "{}"}, TrustPolicy())
    assert message.startswith(REFUSED)
    assert "no start line" in message


def test_unsigned_json_only_when_allowed() -> None:
    env = unsigned_spec(payload())
    assert error(verify_envelope, env, TrustPolicy()) == \
        "Unsupported DeploymentSpecification format: TEXT/JSON"
    assert verify_envelope(env, TrustPolicy(allow_unsigned=True)) == spec_json(payload()).encode()


@pytest.mark.parametrize(("env", "message"), [
    (None, "Provided deployment spec was nil"),
    ({"Format": "XML", "Payload": "<x/>"}, "Unsupported DeploymentSpecification format: XML"),
    ({"Payload": "{}"}, "Unsupported DeploymentSpecification format: "),
    ({"Format": None, "Payload": "{}"}, "Unsupported DeploymentSpecification format: "),
    ({"Format": "PKCS7/JSON"}, "the deployment specification envelope has no Payload"),
])
def test_envelope_errors(env: dict[str, Any] | None, message: str) -> None:
    assert error(verify_envelope, env, TrustPolicy(allow_unsigned=True)) == message


def test_oversized_payload_is_refused_before_openssl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", pytest.fail)
    env = {"Format": "PKCS7/JSON", "Payload": "A" * (64 * 1024 + 1)}
    assert "more than the 65536" in error(verify_envelope, env, TrustPolicy())


def test_missing_openssl_says_what_to_install(envelope: dict[str, str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    assert "install the openssl package" in error(verify_envelope, envelope, TrustPolicy())


def test_openssl_that_hangs_is_bounded(envelope: dict[str, str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def hang(args: list[str], **kwargs: Any) -> None:
        seen.update(kwargs)
        raise subprocess.TimeoutExpired(args, kwargs["timeout"])

    monkeypatch.setattr(subprocess, "run", hang)
    assert "more than 30 seconds" in error(verify_envelope, envelope, TrustPolicy())
    assert seen["timeout"] == 30


def test_missing_anchors_file_is_a_configuration_error(envelope: dict[str, str],
                                                       tmp_path: Path) -> None:
    message = error(verify_envelope, envelope, TrustPolicy(anchors=tmp_path / "nope.pem"))
    assert "trust anchors file" in message
    assert not message.startswith(REFUSED)


# -- the response -------------------------------------------------------------------------------


def test_response_is_verified_and_parsed(envelope: dict[str, str]) -> None:
    response = {"DeploymentSystem": "CodeDeploy",
                "DeploymentSpecification": {"GenericEnvelope": envelope, "VariantId": "x"}}
    assert read_deployment_specification(response, TrustPolicy()) == parse()


@pytest.mark.parametrize(("response", "message"), [
    ({"DeploymentSystem": "WackyDeployer", "DeploymentSpecification": {}},
     "Deployment System mismatch: CodeDeploy != WackyDeployer"),
    ({"DeploymentSpecification": {}}, "Deployment System mismatch: CodeDeploy != "),
    ({"DeploymentSystem": "CodeDeploy"}, "Deployment Specification missing"),
    ({"DeploymentSystem": "CodeDeploy", "DeploymentSpecification": None},
     "Deployment Specification missing"),
    ({"DeploymentSystem": "CodeDeploy", "DeploymentSpecification": {}},
     "Provided deployment spec was nil"),
])
def test_response_errors(response: dict[str, Any], message: str) -> None:
    assert error(read_deployment_specification, response, TrustPolicy()) == message


def test_errors_report_code_5() -> None:
    err = SpecificationError("x")
    assert isinstance(err, DeployError)
    assert err.code is ErrorCode.UNKNOWN_ERROR


# -- the payload --------------------------------------------------------------------------------


def test_full_spec() -> None:
    assert parse(AppSpecFilename="deploy/appspec.yml") == DeploymentSpec(
        deployment_id="d-ABCDEFGHI", application_name="app", deployment_group_name="pi",
        deployment_group_id="g-1",
        revision=Revision(RevisionSource.S3, BundleType.ZIP, bucket="b", key="app.zip",
                          version="v1", etag="e1"),
        file_exists_behavior=FileExistsBehavior.DISALLOW, appspec_filename="deploy/appspec.yml",
        deployment_creator="user", deployment_type="IN_PLACE", custom_events=())


def test_bytes_and_defaults() -> None:
    spec = parse_specification(json.dumps(
        {k: v for k, v in payload().items()
         if k not in ("DeploymentCreator", "DeploymentType", "AgentActionOverrides")}).encode())
    assert (spec.deployment_creator, spec.deployment_type) == ("user", "IN_PLACE")
    assert spec.file_exists_behavior is FileExistsBehavior.DISALLOW
    assert spec.appspec_filename is None


def test_arn_deployment_id_is_shortened() -> None:
    arn = "arn:aws:codedeploy:us-west-2:123412341234:deployment/d-1A2B3C4D5"
    assert parse(DeploymentId=arn).deployment_id == "d-1A2B3C4D5"
    uuid = "4fa3b9c2-5d8e-4e10-9f6a-2b7c0d1e3f45"
    assert parse(DeploymentId=f"arn:aws:codedeploy:region:account:deployment/{uuid}") \
        .deployment_id == uuid


@pytest.mark.parametrize("field", ["DeploymentId", "DeploymentGroupId", "DeploymentGroupName",
                                   "ApplicationName"])
def test_required_fields(field: str) -> None:
    message = f"Deployment Spec has no {field}"
    assert error(without, field) == message
    assert error(lambda: parse(**{field: None})) == message
    assert error(lambda: parse(**{field: ""})) == message


@pytest.mark.parametrize("bad", ["..", "a/b", "arn:aws:codedeploy:r:a:deployment/../x"])
def test_ids_that_cannot_be_folders(bad: str) -> None:
    assert "cannot be a folder name" in error(lambda: parse(DeploymentId=bad))
    assert "cannot be a folder name" in error(lambda: parse(DeploymentGroupId=bad))


@pytest.mark.parametrize(("value", "expected"), [
    ("DISALLOW", FileExistsBehavior.DISALLOW),
    ("overwrite", FileExistsBehavior.OVERWRITE),
    ("Retain", FileExistsBehavior.RETAIN),
])
def test_file_exists_behavior(value: str, expected: FileExistsBehavior) -> None:
    overrides = {"AgentOverrides": {"FileExistsBehavior": value}}
    assert parse(AgentActionOverrides=overrides).file_exists_behavior is expected


@pytest.mark.parametrize("overrides", [None, {}, {"AgentOverrides": None},
                                       {"AgentOverrides": {}}])
def test_file_exists_behavior_default(overrides: Any) -> None:
    spec = parse(AgentActionOverrides=overrides)
    assert spec.file_exists_behavior is FileExistsBehavior.DISALLOW


def test_invalid_file_exists_behavior() -> None:
    overrides = {"AgentOverrides": {"FileExistsBehavior": "CLOBBER"}}
    assert "must be DISALLOW, OVERWRITE or RETAIN" in error(
        lambda: parse(AgentActionOverrides=overrides))


def test_creator_and_type_pass_through() -> None:
    spec = parse(DeploymentCreator="codeDeployRollback", DeploymentType="BLUE_GREEN")
    assert spec.blue_green_rollback


def test_extra_fields_are_ignored() -> None:
    assert parse(NewServiceField={"a": 1}, GitHubAccessToken="t",
                 Revision={**S3, "Extra": True}) == parse()


def test_custom_events_are_the_non_standard_ones() -> None:
    events = ["Start", "ApplicationStop", "DownloadBundle", "BeforeInstall", "Install",
              "MigrateDatabase", "AfterInstall", "ApplicationStart", "ValidateService",
              "MigrateDatabase", "End"]
    assert parse(AllPossibleLifecycleEvents=events).custom_events == \
        ("Start", "MigrateDatabase", "End")
    assert error(lambda: parse(AllPossibleLifecycleEvents="ApplicationStop")) == \
        "AllPossibleLifecycleEvents in Deployment Spec must be a list of event names"


def test_not_json() -> None:
    assert error(parse_specification, b"{nope").startswith(
        "the deployment specification is not JSON: ")
    assert error(parse_specification, b"\xff\xfe").startswith(
        "the deployment specification is not JSON: ")
    assert error(parse_specification, "[" * 100_000).startswith(
        "the deployment specification is not JSON: ")
    assert error(parse_specification, "[1]") == "the deployment specification is not a JSON object"


# -- revisions ----------------------------------------------------------------------------------

S3_INCOMPLETE = "S3Revision in Deployment Spec must specify Bucket, Key and BundleType"
EXACTLY_ONE = "Exactly one of S3Revision, GitHubRevision, or LocalRevision must be specified"
GITHUB = {"Account": "acme", "Repository": "pi-app", "CommitId": "0123abcd"}


def revision(value: Any) -> Revision:
    return parse(Revision=value).revision


def test_missing_revision_keeps_the_official_typo() -> None:
    assert error(without, "Revision") == "Must specify a revison"
    assert error(revision, None) == "Must specify a revison"


@pytest.mark.parametrize("missing", ["Bucket", "Key", "BundleType"])
def test_s3_revision_needs_bucket_key_and_bundle_type(missing: str) -> None:
    s3 = {k: v for k, v in S3["S3Revision"].items() if k != missing}
    assert error(revision, {"RevisionType": "S3", "S3Revision": s3}) == S3_INCOMPLETE


@pytest.mark.parametrize("kind", ["tar", "tgz", "zip"])
def test_s3_bundle_types(kind: str) -> None:
    rev = revision({"RevisionType": "S3",
                    "S3Revision": {"Bucket": "b", "Key": "k", "BundleType": kind}})
    assert rev == Revision(RevisionSource.S3, BundleType(kind), bucket="b", key="k")
    assert rev.environment() == {"BUNDLE_BUCKET": "b", "BUNDLE_KEY": "k"}


@pytest.mark.parametrize("kind", ["rar", "directory", "ZIP"])
def test_s3_bad_bundle_type(kind: str) -> None:
    s3 = {"Bucket": "b", "Key": "k", "BundleType": kind}
    assert error(revision, {"RevisionType": "S3", "S3Revision": s3}) == \
        "BundleType in S3Revision must be tar, tgz or zip"


@pytest.mark.parametrize("value", [
    {"RevisionType": "S3"},
    {"RevisionType": "S3", "S3Revision": S3["S3Revision"], "GitHubRevision": GITHUB},
    {"RevisionType": "S3", "S3Revision": S3["S3Revision"],
     "LocalRevision": {"Location": "/x", "BundleType": "tar"}},
])
def test_exactly_one_revision(value: dict[str, Any]) -> None:
    assert error(revision, value) == EXACTLY_ONE


def test_revision_type_must_match_its_revision() -> None:
    message = error(revision, {"RevisionType": "GitHub", "S3Revision": S3["S3Revision"]})
    assert message.startswith(EXACTLY_ONE)
    assert "RevisionType GitHub needs GitHubRevision" in message
    assert "RevisionType in Deployment Spec must be S3, GitHub" in error(
        revision, {"RevisionType": "CodeCommit", "S3Revision": S3["S3Revision"]})


def test_github_revision() -> None:
    rev = revision({"RevisionType": "GitHub", "GitHubRevision": GITHUB})
    assert rev == Revision(RevisionSource.GITHUB, BundleType.TAR, commit="0123abcd",
                           account="acme", repository="pi-app")
    assert rev.environment() == {"BUNDLE_COMMIT": "0123abcd"}
    zipped = revision({"RevisionType": "GitHub", "GitHubRevision": {**GITHUB, "BundleType": "zip"}})
    assert zipped.bundle_type is BundleType.ZIP


def test_github_revision_errors() -> None:
    assert error(revision, {"RevisionType": "GitHub",
                            "GitHubRevision": {"Account": "a", "Repository": "r"}}) == \
        "GitHubRevision in Deployment Spec must specify Account, Repository and CommitId"
    assert error(revision, {"RevisionType": "GitHub",
                            "GitHubRevision": {**GITHUB, "BundleType": "tgz"}}) == \
        "BundleType in GitHubRevision must be tar or zip"
    private = {**GITHUB, "Anonymous": False}
    assert "OAuthToken" in error(revision, {"RevisionType": "GitHub", "GitHubRevision": private})
    assert revision({"RevisionType": "GitHub",
                     "GitHubRevision": {**private, "OAuthToken": "t"}}).commit == "0123abcd"


def test_local_revisions() -> None:
    assert revision({"RevisionType": "Local File",
                     "LocalRevision": {"Location": "/tmp/app.tgz", "BundleType": "tgz"}}) == \
        Revision(RevisionSource.LOCAL_FILE, BundleType.TGZ, "/tmp/app.tgz")
    assert revision({"RevisionType": "Local Directory",
                     "LocalRevision": {"Location": "/srv/app", "BundleType": "directory"}}) == \
        Revision(RevisionSource.LOCAL_DIRECTORY, BundleType.DIRECTORY, "/srv/app")
    assert error(revision, {"RevisionType": "Local File",
                            "LocalRevision": {"Location": "/srv/app",
                                              "BundleType": "directory"}}) == \
        "BundleType in LocalRevision must be tar, tgz or zip"
    assert error(revision, {"RevisionType": "Local File",
                            "LocalRevision": {"BundleType": "tar"}}) == \
        "LocalRevision in Deployment Spec must specify Location and BundleType"


# -- the engine takes the result ----------------------------------------------------------------


def test_engine_accepts_the_spec_and_its_custom_events(tmp_path: Path) -> None:
    spec = parse(AllPossibleLifecycleEvents=["ApplicationStop", "MigrateDatabase"])
    executor = CommandExecutor(EngineConfig(root=DeploymentRoot(tmp_path / "root")))
    assert executor.is_noop("DownloadBundle", spec) is False
    archive = executor.layout.deployment(spec.deployment_group_id, spec.deployment_id).archive
    archive.mkdir(parents=True)
    (archive / "appspec.yml").write_text(
        "version: 0.0\nos: linux\nhooks:\n  MigrateDatabase:\n    - location: migrate.sh\n")
    (archive / "migrate.sh").write_text("#!/bin/sh\n")
    assert executor.scripts_for("MigrateDatabase", spec) == ("migrate.sh",)
    assert executor.is_noop("MigrateDatabase", spec) is False
    plain = parse()
    assert executor.is_noop("MigrateDatabase", plain) is True  # unknown without the event list
