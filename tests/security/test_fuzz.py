"""Fuzzing the parsers that read what others send: only our own error types may come out.

- the SDS011 frame parsers (bytes off a serial line): never raise, every byte accounted for;
- the deployment-specification reader (the command plane's JSON): ``SpecificationError`` only;
- the agent's reading of command-plane replies (CommandClient over real loopback HTTP, then the
  poller's checks): ``AwsError`` / ``DeployError`` only, and a command handed on is well formed;
- the sandbox's command-plane handlers (malformed bodies, signed by a registered host): AWS-style
  4xx errors only, never a 500.

The AppSpec parser has its own fuzz suite (tests/unit/appspec/test_fuzz.py). Findings are kept
as explicit ``@example``s. Bounded: ``max_examples`` per test, no deadline (a shared 2-core box).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.aws.commands import AwsError, CommandClient
from agent.aws.credentials import Credentials
from agent.aws.http import HttpClient
from agent.aws.model import load_commands_model
from agent.deploy.errors import DeployError
from agent.deploy.specification import (
    SpecificationError,
    TrustPolicy,
    parse_specification,
    read_deployment_specification,
)
from agent.poller import Poller
from fleet.sandbox.server import Sandbox
from fleet.sandbox.state import Timeouts
from sensors import sds011_protocol as sds
from tests.support.sandbox import fresh
from tests.unit.aws.loopback import Origin, Running, start_origin

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
HOST = "arn:aws:iam::123456789012:user/pifleet/pi-1"

# JSON values, small but deep enough to reach type checks at every level.
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(
    max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=20)


def keyed(keys: list[str], values: st.SearchStrategy[Any] = json_values,
          ) -> st.SearchStrategy[dict[str, Any]]:
    """Objects whose keys are mostly the ones the reader looks for."""
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), values, max_size=len(keys))


# -- SDS011 ---------------------------------------------------------------------------------------

sensor_frames = st.builds(sds.encode_measurement, st.integers(0, 65535).map(lambda n: n / 10),
                          st.integers(0, 65535).map(lambda n: n / 10), st.integers(0, 0xFFFF))
host_frames = st.builds(sds.query_data, st.integers(0, 0xFFFF))
noise = st.binary(max_size=30) | st.sampled_from([b"\xaa", b"\xaa\xc0", b"\xaa\xc5\xab",
                                                  b"\xaa\xb4"])


@FUZZ
@given(st.lists(noise | sensor_frames | host_frames, max_size=12), st.data())
def test_sds011_parsers_take_any_bytes_in_any_pieces(pieces: list[bytes], data: st.DataObject,
                                                     ) -> None:
    stream = b"".join(pieces)
    for parser, length in ((sds.FrameParser(), sds.SENSOR_FRAME_LEN),
                           (sds.CommandParser(), sds.HOST_FRAME_LEN)):
        frames = 0
        rest = stream
        while rest:
            cut = data.draw(st.integers(1, len(rest)))
            frames += len(parser.feed(rest[:cut]))
            rest = rest[cut:]
        assert parser.skipped_bytes + parser.pending + frames * length == len(stream)
        assert 0 <= parser.wanted <= length
        parser.drop_pending()
        assert parser.pending == 0


# -- the deployment specification -----------------------------------------------------------------

SPEC_KEYS = ["DeploymentId", "DeploymentGroupId", "DeploymentGroupName", "ApplicationName",
             "Revision", "AgentActionOverrides", "AppSpecFilename", "DeploymentCreator",
             "DeploymentType", "AllPossibleLifecycleEvents"]
REVISION_KEYS = ["RevisionType", "S3Revision", "GitHubRevision", "LocalRevision"]
DETAIL_KEYS = ["Bucket", "Key", "BundleType", "Version", "ETag", "Account", "Repository",
               "CommitId", "Anonymous", "OAuthToken", "Location"]
words = st.sampled_from(["S3", "GitHub", "Local File", "Local Directory", "tar", "tgz", "zip",
                         "directory", "d-ABC", "arn:aws:codedeploy:r:1:deployment/", "..", "",
                         "OVERWRITE", "retain", "AfterInstall", "b", "k"])
details = keyed(DETAIL_KEYS, words | json_values)
revisions = keyed(REVISION_KEYS, words | details | json_values)
overrides = st.fixed_dictionaries({"AgentOverrides": keyed(["FileExistsBehavior"],
                                                           words | json_values)})
specs = keyed(SPEC_KEYS, words | revisions | overrides | json_values)


def a_spec(**fields: Any) -> bytes:
    good = {"DeploymentId": "d-1", "DeploymentGroupId": "g", "DeploymentGroupName": "n",
            "ApplicationName": "a", "Revision": {"RevisionType": "S3", "S3Revision": {
                "Bucket": "b", "Key": "k", "BundleType": "zip"}}}
    return json.dumps({**good, **fields}).encode()


@FUZZ
@given(specs.map(lambda s: json.dumps(s).encode()) | st.binary(max_size=200)
       | json_values.map(lambda v: json.dumps(v).encode()))
@example(a_spec())
@example(a_spec(Revision={"RevisionType": "S3", "S3Revision": [1]}))
@example(b"\xef\xbb\xbf" + a_spec())
@example(b"[" * 100_000)
def test_the_specification_parser_raises_only_specification_errors(document: bytes) -> None:
    try:
        parse_specification(document)
    except SpecificationError as exc:
        assert str(exc)


envelopes = st.fixed_dictionaries({}, optional={
    "Format": st.sampled_from(["TEXT/JSON", "PKCS7/JSON", "JSON"]) | json_values,
    "Payload": specs.map(json.dumps) | json_values})
responses = keyed(["DeploymentSystem", "DeploymentSpecification"],
                  st.just("CodeDeploy") | keyed(["GenericEnvelope"], envelopes | json_values)
                  | json_values)


@FUZZ
@given(responses)
def test_reading_a_specification_response_raises_only_specification_errors(
        response: dict[str, Any]) -> None:
    try:
        read_deployment_specification(response, TrustPolicy(allow_unsigned=True))
    except SpecificationError as exc:
        assert str(exc)


@settings(max_examples=15, deadline=None)  # each runs openssl
@given(st.text(max_size=300) | st.just("-----BEGIN PKCS7-----\nMIIB\n-----END PKCS7-----\n"))
def test_a_garbage_signed_payload_is_a_specification_error(payload: str) -> None:
    response = {"DeploymentSystem": "CodeDeploy", "DeploymentSpecification": {
        "GenericEnvelope": {"Format": "PKCS7/JSON", "Payload": payload}}}
    with pytest.raises(SpecificationError):
        read_deployment_specification(response, TrustPolicy())


# -- the agent reading command-plane replies ------------------------------------------------------

COMMAND_KEYS = ["HostCommandIdentifier", "HostIdentifier", "DeploymentExecutionId",
                "CommandName", "Nonce"]
command_words = st.sampled_from(["hc-1", HOST, "pi-1", "exec-1", "AfterInstall", ""])
host_commands = keyed(COMMAND_KEYS, command_words | json_values)
reply_objects = keyed(["HostCommand", "CommandStatus", "DeploymentSystem",
                       "DeploymentSpecification", "__type", "message"],
                      host_commands | json_values)
bodies = (reply_objects.map(lambda r: json.dumps(r).encode()) | st.binary(max_size=60)
          | json_values.map(lambda v: json.dumps(v).encode()))
statuses = st.sampled_from([200, 200, 200, 400, 403, 404, 500, 503])


class QuietOrigin(Origin):
    """Keeps no record of requests (hypothesis prints its arguments on failure)."""

    def __repr__(self) -> str:
        return f"QuietOrigin(status={self.status}, body={self.body!r})"


@pytest.fixture(scope="module")
def origin() -> Iterator[tuple[Origin, Running]]:
    scripted = QuietOrigin()
    running = start_origin(scripted)
    yield scripted, running
    running.stop()


@pytest.fixture(scope="module")
def client(origin: tuple[Origin, Running]) -> Iterator[CommandClient]:
    with HttpClient(timeout_s=10) as http:
        yield CommandClient(endpoint_url=f"http://127.0.0.1:{origin[1].port}", region="eu-west-1",
                            credentials=lambda: Credentials("AKIDFUZZ", "fuzz-secret"),
                            http=http, agent_version="fuzz", max_attempts=1)


@settings(FUZZ, max_examples=80)  # ~45 ms a request on loopback (delayed ACKs)
@given(statuses, bodies, st.data())
@example(200, json.dumps({"HostCommand": {"HostIdentifier": HOST,
                                          "CommandName": "AfterInstall"}}).encode(), None)
@example(200, json.dumps({"HostCommand": {"HostCommandIdentifier": "hc-1", "HostIdentifier": HOST,
                                          "CommandName": "AfterInstall",
                                          "DeploymentExecutionId": ["x"]}}).encode(), None)
@example(200, json.dumps({"HostCommand": {"HostCommandIdentifier": "hc-1", "HostIdentifier": HOST,
                                          "CommandName": "AfterInstall",
                                          "DeploymentExecutionId": "e-1"}}).encode(), None)
def test_the_agent_reads_any_command_plane_reply_with_its_own_errors(
        origin: tuple[Origin, Running], client: CommandClient, status: int,
        body: bytes, data: st.DataObject | None) -> None:
    origin[0].status, origin[0].body = status, body
    origin[0].requests.clear()
    try:
        command = client.poll_host_command(HOST)
    except AwsError as exc:
        assert exc.code and exc.message
    else:
        if command is not None:
            try:
                Poller._check_command(command, HOST)  # what the poller does before a worker runs
            except DeployError as exc:
                assert "refusing it" in str(exc)
            else:
                # A worker reads these without checking again: they must be there, as text.
                for key in ("HostCommandIdentifier", "DeploymentExecutionId", "CommandName"):
                    assert isinstance(command[key], str) and command[key], command
    try:
        other = data.draw(st.sampled_from(["spec", "ack", "complete"])) if data else "spec"
        if other == "spec":
            client.get_deployment_specification("e-1", HOST)
        elif other == "ack":
            client.put_host_command_acknowledgement("hc-1", None)
        else:
            client.put_host_command_complete("hc-1", "Succeeded", None)
    except AwsError as exc:
        assert exc.code and exc.message


# -- the sandbox's command-plane handlers ---------------------------------------------------------

OPERATIONS = sorted(op for op in load_commands_model()["operations"])
REQUEST_KEYS = ["HostIdentifier", "HostCommandIdentifier", "DeploymentExecutionId",
                "CommandStatus", "Diagnostics", "Format", "Payload", "HostCommandRequestId",
                "CommandName"]


@pytest.fixture(scope="module")
def sandbox_host() -> Iterator[tuple[Sandbox, CommandClient, str]]:
    with Sandbox(strict=True, timeouts=Timeouts(start_s=60, event_s=60)) as sandbox, \
            fresh(sandbox), HttpClient(timeout_s=10) as http:
        iam = sandbox.endpoint.client("iam")
        arn = iam.create_user(UserName="pi-1", Path="/pifleet/")["User"]["Arn"]
        key = iam.create_access_key(UserName="pi-1")["AccessKey"]
        sandbox.endpoint.client("codedeploy").register_on_premises_instance(
            instanceName="pi-1", iamUserArn=arn)
        credentials = Credentials(key["AccessKeyId"], key["SecretAccessKey"])
        yield sandbox, CommandClient(endpoint_url=sandbox.endpoint.url,
                                     region=sandbox.endpoint.region,
                                     credentials=lambda: credentials, http=http,
                                     agent_version="fuzz", max_attempts=1), arn


request_values = (st.sampled_from(["", "pi-1", "Succeeded", "Failed", "JSON", "{}", "x" * 300])
                  | keyed(["Format", "Payload"], st.sampled_from(["JSON", "{", "[]", "{}"])
                          | json_values) | json_values)
request_bodies = (keyed(REQUEST_KEYS, request_values).map(lambda r: json.dumps(r).encode())
                  | st.binary(max_size=60) | json_values.map(lambda v: json.dumps(v).encode()))


SANDBOX_ANSWERS: list[str] = []


@FUZZ
@given(st.sampled_from(OPERATIONS), request_bodies, st.booleans())
@example("PutHostCommandComplete", json.dumps({"HostCommandIdentifier": "hc-x",
                                               "CommandStatus": "Failed",
                                               "Diagnostics": {"Format": "JSON",
                                                               "Payload": "[1]"}}).encode(), False)
def test_the_sandbox_answers_any_signed_body_with_an_aws_error(
        sandbox_host: tuple[Sandbox, CommandClient, str], operation: str, body: bytes,
        own_host: bool) -> None:
    sandbox, client, arn = sandbox_host
    if own_host and body.startswith(b"{") and body.endswith(b"}"):
        # Often name the registered host, so the handlers get past the caller check.
        body = body[:-1] + (b"," if body != b"{}" else b"") + \
            json.dumps({"HostIdentifier": arn})[1:].encode()
    try:
        client._attempt(operation, body)
        SANDBOX_ANSWERS.append("ok")
    except AwsError as exc:
        SANDBOX_ANSWERS.append(exc.code)
        assert 400 <= exc.status < 500, f"{operation} {body!r}: {exc.status} {exc}"
        assert exc.code != str(exc.status) and exc.message, exc  # an AWS JSON error body
    assert sandbox.app.shape_errors == []


def test_the_sandbox_fuzzing_reached_the_handlers() -> None:
    """Not only signature or serialization refusals: the fuzz above got into the handlers."""
    if not SANDBOX_ANSWERS:
        pytest.skip("run with the sandbox fuzz test")
    reached = {a for a in SANDBOX_ANSWERS if a not in ("SerializationException",
                                                       "InvalidSignatureException")}
    assert {"ok", "ClientException"} <= reached, sorted(set(SANDBOX_ANSWERS))
