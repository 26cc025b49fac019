"""The CodeDeployCommand endpoint the agents poll: commands out, acknowledgements and results in.

Every call must come from the host it names: the SigV4 caller's ARN (an IAM user's, or an STS
session's) must be the registered instance's ``iamUserArn``/``iamSessionArn``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .auth import Credential
from .errors import ServiceError
from .orchestrator import complete, tick
from .specs import SigningIdentity, deployment_spec_payload, sign_spec
from .state import Deployment, HostCommand, Instance, State

Handler = Callable[[State, dict[str, Any], Credential, SigningIdentity], dict[str, Any]]


def _client_error(message: str) -> ServiceError:
    return ServiceError("ClientException", message)


def _host(state: State, host_identifier: str | None, caller: Credential, action: str) -> Instance:
    if not host_identifier:
        raise _client_error("HostIdentifier is required.")
    instance = next((i for i in state.instances.values()
                     if i.registered and i.host_identifier == host_identifier), None)
    if instance is None:
        raise _client_error(f"The host identifier {host_identifier} is not registered with "
                            "CodeDeploy as an on-premises instance; register the device (fleetctl "
                            "register) or correct the agent's identity configuration.")
    if caller.principal_arn != host_identifier:
        raise ServiceError("AccessDeniedException", f"User: {caller.principal_arn} is not "
                           f"authorized to perform: codedeploy-commands:{action} on resource: "
                           f"{host_identifier}")
    return instance


def _command(state: State, command_id: str | None, caller: Credential,
             action: str) -> HostCommand:
    command = state.commands.get(command_id or "")
    if command is None:
        raise _client_error(f"Unknown host command identifier {command_id!r}.")
    _host(state, command.host_identifier, caller, action)
    return command


def poll_host_command(state: State, p: dict[str, Any], caller: Credential,
                      _: SigningIdentity) -> dict[str, Any]:
    instance = _host(state, p.get("HostIdentifier"), caller, "PollHostCommand")
    tick(state)
    now = state.clock()
    waiting = sorted((c for c in state.commands.values()
                      if c.host_identifier == instance.host_identifier
                      and c.status == "Pending" and c.visible_at <= now),
                     key=lambda c: c.created)
    if not waiting:
        return {}
    command = waiting[0]
    command.status = "Dispatched"
    command.dispatched = now
    if state.faults.take_drop():
        return {}  # lost on the way: the service believes it delivered the command
    return {"HostCommand": {
        "HostCommandIdentifier": command.id, "HostIdentifier": command.host_identifier,
        "DeploymentExecutionId": command.execution_id, "CommandName": command.event,
        "Nonce": command.nonce}}


def get_deployment_specification(state: State, p: dict[str, Any], caller: Credential,
                                 signer: SigningIdentity) -> dict[str, Any]:
    _host(state, p.get("HostIdentifier"), caller, "GetDeploymentSpecification")
    command = next((c for c in state.commands.values()
                    if c.execution_id == p.get("DeploymentExecutionId")), None)
    if command is None or command.host_identifier != p.get("HostIdentifier"):
        raise _client_error(f"Unknown deployment execution {p.get('DeploymentExecutionId')!r} "
                            "for this host.")
    deployment = state.deployments[command.deployment_id]
    envelope = state.signed_specs.get(deployment.id)
    if envelope is None:  # the same for every host and event of the deployment: sign once
        envelope = state.signed_specs[deployment.id] = _signed_spec(deployment, signer)
    return {"DeploymentSystem": "CodeDeploy",
            "DeploymentSpecification": {"GenericEnvelope": envelope}}


def _signed_spec(deployment: Deployment, signer: SigningIdentity) -> dict[str, str]:
    s3 = deployment.revision["s3Location"]
    s3_revision = {"Bucket": s3["bucket"], "Key": s3["key"], "BundleType": s3["bundleType"]}
    if s3.get("version"):
        s3_revision["Version"] = s3["version"]
    if s3.get("eTag"):
        s3_revision["ETag"] = s3["eTag"]
    payload = deployment_spec_payload(
        deployment_id=deployment.id, deployment_group_id=deployment.group_id,
        deployment_group_name=deployment.group, application_name=deployment.application,
        revision={"RevisionType": "S3", "S3Revision": s3_revision},
        file_exists_behavior=deployment.file_exists_behavior,
        deployment_creator=deployment.creator)
    return sign_spec(payload, signer)


def _status_for_agent(command: HostCommand) -> str:
    if command.status in ("Succeeded", "Failed"):
        return command.status
    return "InProgress"


def put_host_command_acknowledgement(state: State, p: dict[str, Any], caller: Credential,
                                     _: SigningIdentity) -> dict[str, Any]:
    command = _command(state, p.get("HostCommandIdentifier"), caller,
                       "PutHostCommandAcknowledgement")
    payload = _payload(p.get("Diagnostics"))
    if isinstance(payload, dict) and isinstance(payload.get("IsCommandNoop"), bool):
        command.noop = payload["IsCommandNoop"]
    if command.status in ("Pending", "Dispatched"):
        command.status = "InProgress"
    return {"CommandStatus": _status_for_agent(command)}


def put_host_command_complete(state: State, p: dict[str, Any], caller: Credential,
                              _: SigningIdentity) -> dict[str, Any]:
    command = _command(state, p.get("HostCommandIdentifier"), caller, "PutHostCommandComplete")
    status = p.get("CommandStatus")
    if status not in ("Succeeded", "Failed"):
        raise _client_error(f"CommandStatus must be Succeeded or Failed to complete a command, "
                            f"not {status!r}.")
    payload = _payload(p.get("Diagnostics"))
    diagnostics = payload if isinstance(payload, dict) else {
        "error_code": 0 if status == "Succeeded" else 5, "script_name": "",
        "message": str(payload or ""), "log": ""}
    complete(state, command, status, diagnostics)
    return {}


def post_host_command_update(state: State, p: dict[str, Any], caller: Credential,
                             _: SigningIdentity) -> dict[str, Any]:
    command = _command(state, p.get("HostCommandIdentifier"), caller, "PostHostCommandUpdate")
    return {"CommandStatus": _status_for_agent(command)}


def _payload(envelope: Any) -> Any:
    if not isinstance(envelope, dict):
        return None
    text = envelope.get("Payload")
    if envelope.get("Format") != "JSON" or not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


HANDLERS: dict[str, Handler] = {
    "PollHostCommand": poll_host_command,
    "GetDeploymentSpecification": get_deployment_specification,
    "PutHostCommandAcknowledgement": put_host_command_acknowledgement,
    "PutHostCommandComplete": put_host_command_complete,
    "PostHostCommandUpdate": post_host_command_update,
}
