"""The CodeDeployCommand description works as a real botocore service and ships with the agent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.config import Config
from botocore.exceptions import ParamValidationError
from botocore.loaders import Loader

import agent.aws
from agent.aws.model import API_VERSION, MODEL_FILENAME, SERVICE_NAME, load_commands_model

MODEL_PATH = Path(agent.aws.__file__).with_name(MODEL_FILENAME)
REGION = "eu-west-1"
HOST = "arn:aws:iam::123456789012:user/AWS/CodeDeploy/pi-1"
OPERATIONS = {
    "PollHostCommand",
    "GetDeploymentSpecification",
    "PutHostCommandAcknowledgement",
    "PutHostCommandComplete",
    "PostHostCommandUpdate",
}


class _Recorder:
    """A ``before-send`` handler: keeps the request and answers with a canned response, so no
    request ever leaves the process."""

    def __init__(self) -> None:
        self.requests: list[AWSPreparedRequest] = []
        self.status = 200
        self.body: bytes = b"{}"

    def __call__(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        self.requests.append(request)
        raw = _RawBody(self.body)
        return AWSResponse(
            request.url,
            self.status,
            {"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": "req-1"},
            raw,
        )


class _RawBody:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


@pytest.fixture
def client_and_recorder(tmp_path: Path) -> tuple[Any, _Recorder]:
    service_dir = tmp_path / SERVICE_NAME / API_VERSION
    service_dir.mkdir(parents=True)
    (service_dir / "service-2.json").write_bytes(MODEL_PATH.read_bytes())
    session = botocore.session.Session()
    loader = Loader(extra_search_paths=[str(tmp_path)])
    session.register_component("data_loader", loader)
    client = session.create_client(
        SERVICE_NAME,
        region_name=REGION,
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",  # noqa: S106 -- a dummy credential for signing only
        aws_session_token="token-1",  # noqa: S106
        # A canned 500 would otherwise be replayed with backoff sleeps.
        config=Config(retries={"total_max_attempts": 1}),
    )
    recorder = _Recorder()
    client.meta.events.register("before-send", recorder)
    return client, recorder


def test_metadata() -> None:
    meta = load_commands_model()["metadata"]
    assert meta == {
        "apiVersion": "2014-10-06",
        "endpointPrefix": "codedeploy-commands",
        "jsonVersion": "1.1",
        "protocol": "json",
        "protocols": ["json"],
        "serviceAbbreviation": "CodeDeployCommand",
        "serviceFullName": "AWS CodeDeploy Command Service",
        "serviceId": "CodeDeployCommand",
        "signatureVersion": "v4",
        "signingName": "codedeploy-commands",
        "targetPrefix": "CodeDeployCommandService_v20141006",
        "uid": "codedeploy-commands-2014-10-06",
    }


def test_operations_and_errors() -> None:
    model = load_commands_model()
    assert set(model["operations"]) == OPERATIONS
    for name, op in model["operations"].items():
        assert op["http"] == {"method": "POST", "requestUri": "/"}
        assert {e["shape"] for e in op["errors"]} == {"ClientException", "ServerException"}
        assert op["documentation"]
        assert op["input"]["shape"] in model["shapes"], name
    shapes = model["shapes"]
    assert shapes["ClientException"]["exception"] is True
    assert "fault" not in shapes["ClientException"]
    assert shapes["ServerException"]["fault"] is True


def test_shapes() -> None:
    shapes = load_commands_model()["shapes"]
    assert shapes["DeploymentExecutionId"]["min"] == 1
    assert shapes["DeploymentExecutionId"]["max"] == 129
    assert shapes["DeploymentExecutionId"]["pattern"] == "^[^/]+/[^/]+/[^/]+/.+$"
    assert (shapes["Format"]["min"], shapes["Format"]["max"]) == (1, 64)
    assert (shapes["Payload"]["min"], shapes["Payload"]["max"]) == (0, 8192)
    assert shapes["DeploymentCommandStatus"]["enum"] == [
        "Pending",
        "InProgress",
        "Succeeded",
        "Failed",
    ]
    nonce = shapes["HostCommandInstance"]["members"]["Nonce"]["shape"]
    assert shapes[nonce]["type"] == "long"
    assert set(shapes["HostCommandInstance"]["members"]) == {
        "HostCommandIdentifier",
        "HostIdentifier",
        "DeploymentExecutionId",
        "CommandName",
        "Nonce",
    }
    assert set(shapes["DeploymentSpecification"]["members"]) == {
        "GenericEnvelope",
        "VariantId",
        "VariantEnvelope",
    }
    assert shapes["EstimatedCompletionTime"]["type"] == "timestamp"
    assert shapes["PutHostCommandCompleteInput"]["required"] == [
        "HostCommandIdentifier",
        "CommandStatus",
    ]
    assert shapes["GetDeploymentSpecificationInput"]["required"] == [
        "DeploymentExecutionId",
        "HostIdentifier",
    ]


def test_botocore_service_model_sees_constraints(
    client_and_recorder: tuple[Any, _Recorder],
) -> None:
    client, _ = client_and_recorder
    service_model = client.meta.service_model
    assert service_model.service_id == "CodeDeployCommand"
    assert service_model.signing_name == "codedeploy-commands"
    assert set(service_model.operation_names) == OPERATIONS
    op = service_model.operation_model("GetDeploymentSpecification")
    dei = op.input_shape.members["DeploymentExecutionId"]
    assert dei.metadata["pattern"] == "^[^/]+/[^/]+/[^/]+/.+$"
    assert (dei.metadata["min"], dei.metadata["max"]) == (1, 129)
    assert [e.name for e in op.error_shapes] == ["ClientException", "ServerException"]


def test_poll_request_on_the_wire(client_and_recorder: tuple[Any, _Recorder]) -> None:
    client, recorder = client_and_recorder
    client.poll_host_command(HostIdentifier=HOST)
    (request,) = recorder.requests
    assert request.method == "POST"
    assert request.url == "http://127.0.0.1:9/"
    headers = {
        k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()
    }
    assert headers["x-amz-target"] == "CodeDeployCommandService_v20141006.PollHostCommand"
    assert headers["content-type"] == "application/x-amz-json-1.1"
    assert headers["x-amz-security-token"] == "token-1"
    assert f"/{REGION}/codedeploy-commands/aws4_request" in headers["authorization"]
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    body = request.body.decode() if isinstance(request.body, bytes) else request.body
    assert json.loads(body) == {"HostIdentifier": HOST}
    # One line with only the required member; botocore keeps json.dumps' default separators.
    assert body == json.dumps({"HostIdentifier": HOST})


def test_poll_response_with_command(client_and_recorder: tuple[Any, _Recorder]) -> None:
    client, recorder = client_and_recorder
    command = {
        "HostCommandIdentifier": "hc-1",
        "HostIdentifier": HOST,
        "DeploymentExecutionId": "a/b/c/d-123",
        "CommandName": "DownloadBundle",
        "Nonce": 7,
    }
    recorder.body = json.dumps({"HostCommand": command}).encode()
    response = client.poll_host_command(HostIdentifier=HOST)
    assert response["HostCommand"] == command
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_poll_response_without_command(client_and_recorder: tuple[Any, _Recorder]) -> None:
    client, _ = client_and_recorder
    response = client.poll_host_command(HostIdentifier=HOST)
    assert "HostCommand" not in response


def test_missing_host_identifier_is_rejected(
    client_and_recorder: tuple[Any, _Recorder],
) -> None:
    client, recorder = client_and_recorder
    with pytest.raises(ParamValidationError, match="HostIdentifier"):
        client.poll_host_command()
    with pytest.raises(ParamValidationError, match="DeploymentExecutionId"):
        client.get_deployment_specification(DeploymentExecutionId="", HostIdentifier=HOST)
    assert recorder.requests == []


def test_other_operations_serialise(client_and_recorder: tuple[Any, _Recorder]) -> None:
    client, recorder = client_and_recorder
    diagnostics = {"Format": "JSON", "Payload": '{"IsCommandNoop":false}'}
    recorder.body = b'{"CommandStatus": "InProgress"}'
    ack = client.put_host_command_acknowledgement(
        HostCommandIdentifier="hc-1", Diagnostics=diagnostics
    )
    assert ack["CommandStatus"] == "InProgress"
    recorder.body = b"{}"
    client.put_host_command_complete(
        HostCommandIdentifier="hc-1", CommandStatus="Succeeded", Diagnostics=diagnostics
    )
    client.post_host_command_update(
        HostCommandIdentifier="hc-1", EstimatedCompletionTime=1700000000
    )
    recorder.body = json.dumps(
        {
            "DeploymentSystem": "CodeDeploy",
            "DeploymentSpecification": {
                "GenericEnvelope": {"Format": "PKCS7/JSON", "Payload": "-----BEGIN PKCS7-----"}
            },
        }
    ).encode()
    spec = client.get_deployment_specification(DeploymentExecutionId="a/b/c/d", HostIdentifier=HOST)
    assert spec["DeploymentSystem"] == "CodeDeploy"
    assert spec["DeploymentSpecification"]["GenericEnvelope"]["Format"] == "PKCS7/JSON"

    targets = [r.headers["X-Amz-Target"] for r in recorder.requests]
    assert [t.decode() if isinstance(t, bytes) else t for t in targets] == [
        "CodeDeployCommandService_v20141006.PutHostCommandAcknowledgement",
        "CodeDeployCommandService_v20141006.PutHostCommandComplete",
        "CodeDeployCommandService_v20141006.PostHostCommandUpdate",
        "CodeDeployCommandService_v20141006.GetDeploymentSpecification",
    ]
    bodies = [json.loads(r.body) for r in recorder.requests]
    assert bodies[0] == {"HostCommandIdentifier": "hc-1", "Diagnostics": diagnostics}
    assert bodies[1]["CommandStatus"] == "Succeeded"
    assert bodies[2]["EstimatedCompletionTime"] == 1700000000


def test_server_exception_is_modelled(client_and_recorder: tuple[Any, _Recorder]) -> None:
    client, recorder = client_and_recorder
    recorder.status = 500
    recorder.body = b'{"__type": "ServerException", "message": "boom"}'
    with pytest.raises(client.exceptions.ServerException, match="boom"):
        client.poll_host_command(HostIdentifier=HOST)
    assert len(recorder.requests) == 1


def test_load_commands_model_equals_the_file() -> None:
    assert load_commands_model() == json.loads(MODEL_PATH.read_text("utf-8"))


def test_model_import_does_not_import_botocore() -> None:
    code = (
        "import sys\n"
        "from agent.aws.model import load_commands_model\n"
        "assert load_commands_model()['metadata']['serviceId'] == 'CodeDeployCommand'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('botocore', 'boto3')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(agent.aws.__file__).parents[2],
        timeout=30,
    )
    assert out.stdout.strip() == "[]"
