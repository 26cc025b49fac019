"""A scripted CodeDeploy host: speaks the command protocol through a real botocore client built
from our CodeDeployCommand model, and answers each lifecycle event as told (succeed, fail,
never answer). Tests and the benchmark use it where a whole pifleet-agent is not the point.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import botocore.session
from botocore.config import Config
from botocore.loaders import Loader

from agent.aws.model import API_VERSION, SERVICE_NAME, load_commands_model

if TYPE_CHECKING:
    from .server import Endpoint

SUCCESS = {"error_code": 0, "script_name": "", "message": "Succeeded: ", "log": ""}


@cache
def _model_dir() -> str:
    root = Path(tempfile.mkdtemp(prefix="pifleet-model-"))
    target = root / SERVICE_NAME / API_VERSION
    target.mkdir(parents=True)
    (target / "service-2.json").write_text(json.dumps(load_commands_model()))
    return str(root)


def commands_client(endpoint_url: str, region: str, access_key_id: str, secret_access_key: str,
                    session_token: str | None = None, *, retries: int = 1) -> Any:
    session = botocore.session.Session()
    session.register_component("data_loader", Loader(extra_search_paths=[_model_dir()]))
    return session.create_client(
        SERVICE_NAME, region_name=region, endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
        config=Config(retries={"total_max_attempts": retries}, read_timeout=10,
                      connect_timeout=5, max_pool_connections=2))


@dataclass
class ScriptedHost:
    """``behaviour`` maps an event name to "succeed" (default), "fail" or "hang"."""

    client: Any
    host_identifier: str
    behaviour: dict[str, str] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    specs: list[dict[str, Any]] = field(default_factory=list)

    def step(self) -> str | None:
        """Poll once and handle the command, if any; returns its name."""
        reply = self.client.poll_host_command(HostIdentifier=self.host_identifier)
        command = reply.get("HostCommand")
        if not command:
            return None
        name = str(command["CommandName"])
        self.seen.append(name)
        spec = self.client.get_deployment_specification(
            DeploymentExecutionId=command["DeploymentExecutionId"],
            HostIdentifier=self.host_identifier)
        self.specs.append(spec)
        action = self.behaviour.get(name, "succeed")
        ack = self.client.put_host_command_acknowledgement(
            HostCommandIdentifier=command["HostCommandIdentifier"],
            Diagnostics={"Format": "JSON", "Payload": json.dumps({"IsCommandNoop": False})})
        if ack.get("CommandStatus") in ("Succeeded", "Failed") or action == "hang":
            return name
        if action == "fail":
            status, diagnostics = "Failed", {
                "error_code": 4, "script_name": f"scripts/{name}.sh",
                "message": f"Script at specified location: scripts/{name}.sh failed with exit "
                           "code 1", "log": "[stderr]scripted failure\n"}
        else:
            status, diagnostics = "Succeeded", SUCCESS
        self.client.put_host_command_complete(
            HostCommandIdentifier=command["HostCommandIdentifier"], CommandStatus=status,
            Diagnostics={"Format": "JSON",
                         "Payload": json.dumps(diagnostics, separators=(",", ":"))})
        return name


def register_host(endpoint: Endpoint, name: str, tags: dict[str, str] | None = None,
                  **behaviour: str) -> ScriptedHost:
    """An IAM user with a key, registered (and tagged) as an on-premises instance, answering
    host commands as ``behaviour`` says: what a test needs to stand in for one Pi."""
    iam, codedeploy = endpoint.client("iam"), endpoint.client("codedeploy")
    arn = iam.create_user(UserName=name, Path="/pifleet/")["User"]["Arn"]
    key = iam.create_access_key(UserName=name)["AccessKey"]
    codedeploy.register_on_premises_instance(instanceName=name, iamUserArn=arn)
    if tags:
        codedeploy.add_tags_to_on_premises_instances(
            instanceNames=[name], tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    client = commands_client(endpoint.url, endpoint.region, key["AccessKeyId"],
                             key["SecretAccessKey"])
    return ScriptedHost(client, arn, dict(behaviour))
