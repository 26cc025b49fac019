"""The wire: AWS JSON 1.1 errors for bad input, model checks, and many agents at once."""

from __future__ import annotations

import http.client
import json
import threading
from typing import Any
from urllib.parse import urlsplit

import pytest

from fleet.sandbox.common import codedeploy_model
from fleet.sandbox.errors import ServiceError
from fleet.sandbox.shapes import ShapeChecker, ShapeMismatch

from .conftest import Fleet
from .test_deployments import IN_PLACE, REVISION, run, setup_group


def post(fleet: Fleet, target: str, body: bytes) -> tuple[int, str, dict[str, Any]]:
    url = urlsplit(fleet.endpoint.url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        conn.request("POST", "/", body=body, headers={
            "X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"})
        response = conn.getresponse()
        raw = response.read()
        return response.status, response.getheader("Content-Type") or "", json.loads(raw)
    finally:
        conn.close()


@pytest.mark.parametrize(("target", "body", "code"), [
    ("CodeDeploy_20141006.ListApplications", b"{not json", "SerializationException"),
    ("CodeDeploy_20141006.ListApplications", b"[1, 2]", "SerializationException"),
    ("CodeDeploy_20141006.DoSomethingElse", b"{}", "UnknownOperationException"),
    ("CodeDeploy_20141006.GetOnPremisesInstance", b'{"instanceName": 5}',
     "SerializationException"),
    ("CodeDeploy_20141006.CreateDeploymentConfig",
     b'{"deploymentConfigName": "x", "computePlatform": "Mainframe"}', "ValidationException"),
    ("CodeDeployCommandService_v20141006.Explode", b"{}", "UnknownOperationException"),
    ("CodeDeployCommandService_v20141006.PollHostCommand", b"{}",
     "MissingAuthenticationTokenException"),
])
def test_bad_requests_get_aws_json_errors(fleet: Fleet, target: str, body: bytes,
                                          code: str) -> None:
    status, content_type, payload = post(fleet, target, body)
    assert status == 400
    assert content_type == "application/x-amz-json-1.1"
    assert payload["__type"] == code
    assert payload["message"]


def test_validation_message_names_the_member(fleet: Fleet) -> None:
    _, _, payload = post(fleet, "CodeDeploy_20141006.CreateDeploymentConfig",
                         b'{"deploymentConfigName": "x", "computePlatform": "Mainframe"}')
    assert payload["message"].startswith("1 validation error detected: Value 'Mainframe' at "
                                         "'computePlatform' failed to satisfy constraint")


def test_missing_required_member(fleet: Fleet) -> None:
    _, _, payload = post(fleet, "CodeDeploy_20141006.CreateApplication", b"{}")
    assert payload["__type"] == "ValidationException"
    assert "Value null at 'applicationName'" in payload["message"]


def test_shape_checker_catches_a_response_that_clients_would_misread() -> None:
    checker = ShapeChecker(codedeploy_model())
    checker.check_output("GetOnPremisesInstance", {"instanceInfo": {"instanceName": "pi"}})
    with pytest.raises(ShapeMismatch, match=r"unknown member 'instanceInfo\.name'"):
        checker.check_output("GetOnPremisesInstance", {"instanceInfo": {"name": "pi"}})
    with pytest.raises(ShapeMismatch, match="registerTime"):
        checker.check_output("GetOnPremisesInstance",
                             {"instanceInfo": {"registerTime": "yesterday"}})
    with pytest.raises(ServiceError, match="length less than or equal to 100"):
        checker.check_input("GetDeploymentGroup",
                            {"applicationName": "a", "deploymentGroupName": "x" * 101})


def test_control_api(fleet: Fleet) -> None:
    url = urlsplit(fleet.endpoint.url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    conn.request("GET", "/_pifleet/signer.pem")
    body = conn.getresponse().read()
    assert body.startswith(b"-----BEGIN CERTIFICATE-----")
    conn.request("POST", "/_pifleet/faults", body=b'{"kind": "explode"}')
    response = conn.getresponse()
    assert response.status == 400
    assert "unknown fault kind" in json.loads(response.read())["message"]
    conn.close()


def test_thirty_agents_polling_at_once_see_consistent_state(fleet: Fleet) -> None:
    cd = setup_group(fleet, config="CodeDeployDefault.AllAtOnce")
    hosts = [fleet.host(f"pi-{i:02d}", {"ring": "prod"}) for i in range(30)]
    deployment = cd.create_deployment(applicationName="aqi", deploymentGroupName="pis",
                                      revision=REVISION)["deploymentId"]
    errors: list[BaseException] = []
    done = threading.Event()

    def agent(index: int) -> None:
        try:
            while not done.is_set():
                hosts[index].step()
        except BaseException as exc:  # noqa: BLE001  (reported by the test below)
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(len(hosts))]
    for t in threads:
        t.start()
    try:
        info = run(fleet, [], deployment, timeout_s=60)
    finally:
        done.set()
        for t in threads:
            t.join(timeout=30)
    assert errors == []
    assert info["status"] == "Succeeded"
    assert info["deploymentOverview"]["Succeeded"] == 30
    assert all(h.seen == IN_PLACE for h in hosts)  # each event exactly once, in order
