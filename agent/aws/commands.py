"""The CodeDeployCommand client: the four calls a host agent makes to the command plane.

AWS JSON 1.1 over :mod:`agent.aws.http`, signed with :mod:`agent.aws.sigv4`.  The service's
names (target prefix, signing name, endpoint prefix, JSON version, operations) are read from our
model, ``codedeploy-commands.json``, so the wire format has one source of truth.

Failed calls are retried like the AWS SDKs do (reference §1.4): on network errors, 5xx and
throttling, with exponential backoff and full jitter; anything else is the caller's to handle.
"""

from __future__ import annotations

import json
import logging
import platform
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from agent.aws.credentials import CredentialSource
from agent.aws.http import HttpClient, HttpError, Response
from agent.aws.model import load_commands_model
from agent.aws.sigv4 import sign

__all__ = ["AwsError", "CommandClient", "default_endpoint"]

log = logging.getLogger(__name__)

THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestThrottled",
    }
)
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 5.0
_TOO_MANY_REQUESTS = 429

# The operations this client calls; each must exist in the model (checked when one is built).
_POLL = "PollHostCommand"
_GET_SPEC = "GetDeploymentSpecification"
_ACK = "PutHostCommandAcknowledgement"
_COMPLETE = "PutHostCommandComplete"
_COMMAND_FIELDS = ("HostCommandIdentifier", "HostIdentifier", "DeploymentExecutionId",
                   "CommandName")


class AwsError(Exception):
    """An error response from the service (``__type`` and ``message`` of an AWS JSON error)."""

    def __init__(
        self, code: str, message: str, *, status: int, request_id: str | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.request_id = request_id

    @property
    def retryable(self) -> bool:
        return (
            self.status >= 500
            or self.status == _TOO_MANY_REQUESTS
            or self.code in THROTTLING_CODES
        )


@dataclass(frozen=True)
class _Service:
    endpoint_prefix: str
    signing_name: str
    target_prefix: str
    content_type: str
    operations: frozenset[str]


@cache
def _service() -> _Service:
    model = load_commands_model()
    metadata = model["metadata"]
    return _Service(
        endpoint_prefix=metadata["endpointPrefix"],
        # SigV4 signs with the endpoint prefix when a model names no signing name.
        signing_name=metadata.get("signingName") or metadata["endpointPrefix"],
        target_prefix=metadata["targetPrefix"],
        content_type=f"application/x-amz-json-{metadata['jsonVersion']}",
        operations=frozenset(op["name"] for op in model["operations"].values()),
    )


def default_endpoint(region: str) -> str:
    """The command endpoint of ``region`` (reference §1.3: no IMDS on a Pi, so the region
    alone picks the partition's domain)."""
    return f"https://{_service().endpoint_prefix}.{region}.{_domain(region)}"


def _domain(region: str) -> str:
    if region.startswith("cn-"):
        return "amazonaws.com.cn"
    if region.startswith("eusc-"):
        return "amazonaws.eu"  # the AWS European Sovereign Cloud
    return "amazonaws.com"


class CommandClient:
    def __init__(
        self,
        *,
        endpoint_url: str,
        region: str,
        credentials: CredentialSource,
        http: HttpClient,
        agent_version: str,
        max_attempts: int = 3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        service = _service()
        missing = {_POLL, _GET_SPEC, _ACK, _COMPLETE} - service.operations
        if missing:
            raise RuntimeError(f"the CodeDeployCommand model lacks {sorted(missing)}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._service = service
        self._url = endpoint_url.rstrip("/") + "/"
        self._region = region
        self._credentials = credentials
        self._http = http
        self._agent_version = agent_version
        self._max_attempts = max_attempts
        self._sleep = sleep
        self._user_agent = f"pifleet-agent/{agent_version} python/{platform.python_version()}"

    def poll_host_command(self, host_identifier: str) -> dict[str, Any] | None:
        """The next ``HostCommand`` for this host, or None when there is no work."""
        reply = self._call(_POLL, {"HostIdentifier": host_identifier})
        command = reply.get("HostCommand")
        if not isinstance(command, dict) or not command:
            return None
        # The poller and its workers read these as text; a reply without them cannot be run,
        # acknowledged or completed, so it is an error of the reply (backed off like others).
        missing = [name for name in _COMMAND_FIELDS
                   if not isinstance(command.get(name), str) or not command[name]]
        if missing:
            raise AwsError("InvalidResponse",
                           f"the service's {_POLL} reply has a HostCommand without "
                           f"{' or '.join(missing)} as text; it was not run",
                           status=200, request_id=None)
        return command

    def get_deployment_specification(
        self, execution_id: str, host_identifier: str
    ) -> dict[str, Any]:
        """``{"DeploymentSystem": ..., "DeploymentSpecification": {...}}``."""
        return self._call(
            _GET_SPEC, {"DeploymentExecutionId": execution_id, "HostIdentifier": host_identifier}
        )

    def put_host_command_acknowledgement(
        self, command_id: str, diagnostics: dict[str, str] | None
    ) -> str | None:
        """Acknowledge a command; returns the service's ``CommandStatus`` for it, if any."""
        reply = self._call(_ACK, _with_diagnostics({"HostCommandIdentifier": command_id},
                                                   diagnostics))
        status = reply.get("CommandStatus")
        return None if status is None else str(status)

    def put_host_command_complete(
        self, command_id: str, status: str, diagnostics: dict[str, str] | None
    ) -> None:
        self._call(
            _COMPLETE,
            _with_diagnostics({"HostCommandIdentifier": command_id, "CommandStatus": status},
                              diagnostics),
        )

    # -- the wire ---------------------------------------------------------------------------

    def _call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(params, separators=(",", ":")).encode()
        attempt = 1
        while True:
            try:
                return self._attempt(operation, body)
            except (AwsError, HttpError) as exc:
                retryable = isinstance(exc, HttpError) or exc.retryable
                if not retryable or attempt >= self._max_attempts:
                    raise
                delay = _backoff(attempt)
                # DEBUG: the poller reports an outage once; a line per retry would flood it.
                log.debug("%s failed (%s); attempt %d of %d in %.2f s",
                         operation, exc, attempt + 1, self._max_attempts, delay)
                self._sleep(delay)
                attempt += 1

    def _attempt(self, operation: str, body: bytes) -> dict[str, Any]:
        # Credentials are fetched per attempt: a retry may cross a refresh, and each attempt
        # needs a fresh X-Amz-Date anyway.
        credentials = self._credentials()
        headers = {
            "Content-Type": self._service.content_type,
            "X-Amz-Target": f"{self._service.target_prefix}.{operation}",
            "x-amz-codedeploy-agent-version": self._agent_version,
            "User-Agent": self._user_agent,  # sent, never signed (see sigv4.UNSIGNED_HEADERS)
        }
        signed = sign(
            "POST", self._url, headers, body, credentials=credentials, region=self._region,
            service=self._service.signing_name,
        )
        response = self._http.request("POST", self._url, headers=signed, body=body)
        if response.status == 200:
            return _reply(response)
        error = explain_skew(_error(response), time.time())
        token = credentials.session_token
        if token and token in error.message:
            # AWS echoes the canonical request in some signature errors; it holds the token.
            error = AwsError(error.code, error.message.replace(token, "<redacted>"),
                             status=error.status, request_id=error.request_id)
        raise error


def _with_diagnostics(params: dict[str, Any], diagnostics: dict[str, str] | None,
                      ) -> dict[str, Any]:
    if diagnostics is not None:
        params["Diagnostics"] = diagnostics
    return params


def _backoff(attempt: int) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))] (spreads a fleet's retries)."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    return random.uniform(0, ceiling)  # noqa: S311 - jitter, not security


def _reply(response: Response) -> dict[str, Any]:
    if not response.body.strip():
        return {}
    try:
        value = json.loads(response.body)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise AwsError("InvalidResponse", "the service's reply is not a JSON object",
                       status=response.status, request_id=_request_id(response))
    return value


def _error(response: Response) -> AwsError:
    """An AWS JSON error from a non-200 response; a body that is not one (say a proxy's HTML
    page) still gives an error with the status as its code."""
    try:
        document = json.loads(response.body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        document = {}
    # "__type" may be qualified ("com.amazon.coral.service#ThrottlingException"); the header
    # form may carry a suffix ("ThrottlingException:http://internal.amazon.com/...").
    code = str(document.get("__type") or document.get("code")
               or response.headers.get("x-amzn-errortype", "").split(":")[0])
    code = code.rpartition("#")[2] or str(response.status)
    message = str(document.get("message") or document.get("Message")
                  or f"HTTP {response.status} without an AWS error message")
    return AwsError(code, message, status=response.status, request_id=_request_id(response))


# AWS's refusal of a request signed too far from its own time, e.g. "Signature expired:
# 20260101T100000Z is now earlier than 20260101T105500Z (20260101T111000Z - 15 min.)": the
# time in brackets is the service's.
_SKEW = re.compile(r"Signature (?:expired|not yet current):.*\((\d{8}T\d{6}Z) [-+] ")


def explain_skew(error: AwsError, now: float) -> AwsError:
    """The error with what it means when the service refused our clock: by how much the device
    clock is off, and what to do. Other errors are returned as they are."""
    match = _SKEW.search(error.message)
    if match is None and error.code != "RequestTimeTooSkewed":
        return error
    hint = ("the device clock is wrong: requests are signed with the system clock; "
            "synchronise it (NTP: timedatectl set-ntp true, or check chrony/timesyncd)")
    if match is not None:
        service_time = datetime.strptime(match[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        off = service_time.timestamp() - now
        amount = f"{abs(off) / 60:.0f} min" if abs(off) >= 90 else f"{abs(off):.0f} s"
        hint = (f"the device clock is {amount} {'behind' if off > 0 else 'ahead of'} "
                f"the service's ({match[1]}); requests are signed with the system clock: "
                "synchronise it (NTP: timedatectl set-ntp true, or check chrony/timesyncd)")
    return AwsError(error.code, f"{error.message} -- {hint}", status=error.status,
                    request_id=error.request_id)


def _request_id(response: Response) -> str | None:
    return response.headers.get("x-amzn-requestid")
