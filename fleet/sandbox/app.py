"""The sandbox's one WSGI application: our CodeDeploy and CodeDeployCommand services, a small
control API under ``/_pifleet/``, and moto's server for everything else (S3, IAM, STS, IoT...).

Requests are routed on ``X-Amz-Target``: ``CodeDeploy_20141006.*`` and
``CodeDeployCommandService_v20141006.*`` are ours. Every request to our services is checked
against its service model; with ``strict`` our responses are too, and a mismatch is recorded in
``shape_errors`` (the test fixtures fail on it) and answered 500 rather than sent.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

import botocore.model

from agent.aws.model import load_commands_model

from . import apps, command_service, onprem, orchestrator
from .auth import CredentialStore, verify_sigv4
from .common import codedeploy_model
from .errors import ServiceError, validation
from .shapes import ShapeChecker, ShapeMismatch
from .specs import SigningIdentity
from .state import State
from .sts_identity import StsIdentity, restore_body

log = logging.getLogger(__name__)

CODEDEPLOY_PREFIX = "CodeDeploy_20141006."
COMMANDS_PREFIX = "CodeDeployCommandService_v20141006."
COMMANDS_SIGNING_NAME = "codedeploy-commands"
MAX_BODY = 1024 * 1024
StartResponse = Callable[..., Any]
CODEDEPLOY_HANDLERS = {**onprem.HANDLERS, **apps.HANDLERS, **orchestrator.HANDLERS}


@cache
def commands_model() -> botocore.model.ServiceModel:
    return botocore.model.ServiceModel(load_commands_model(), "codedeploy-commands")


class SandboxApp:
    def __init__(self, state: State, *, credentials: CredentialStore, signer: SigningIdentity,
                 moto_app: Callable[..., Iterable[bytes]] | None = None,
                 strict: bool = False) -> None:
        self.state = state
        self.credentials = credentials
        self.signer = signer
        self.moto_app = moto_app
        self.strict = strict
        self.shape_errors: list[str] = []
        self.requests = 0
        self._codedeploy = ShapeChecker(codedeploy_model())
        self._commands = ShapeChecker(commands_model())
        # moto's STS cannot tell who holds a key the sandbox issued (IoT credentials provider).
        self.sts_identity = StsIdentity(credentials)
        # Set by Sandbox once its credentials provider exists; served at /_pifleet/.
        self.credentials_ca_pem: bytes | None = None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if path.startswith("/_pifleet/"):
            return self._control(environ, start_response, path)
        if target.startswith((CODEDEPLOY_PREFIX, COMMANDS_PREFIX)):
            status, body = self._aws_json(environ, target)
            return _respond(start_response, status, body, "application/x-amz-json-1.1")
        if self.moto_app is None:
            return _respond(start_response, 404, b'{"message": "no such service here"}')
        fault = self.state.faults.intercept(environ)
        if fault is not None:
            return _respond(start_response, fault[0], fault[2], fault[1])
        if self.sts_identity.claims(environ):
            return self._sts(environ, start_response, self.moto_app)
        return self.moto_app(environ, start_response)

    def _sts(self, environ: dict[str, Any], start_response: StartResponse,
             moto_app: Callable[..., Iterable[bytes]]) -> Iterable[bytes]:
        """GetCallerIdentity for a sandbox-issued key; other actions go on to moto."""
        try:
            body = _read_body(environ)
        except ServiceError as exc:
            return _respond(start_response, exc.status, exc.body())
        if self.sts_identity.action(environ, body) != "GetCallerIdentity":
            restore_body(environ, body)
            return moto_app(environ, start_response)
        status, reply = self.sts_identity.handle(
            body, method=environ.get("REQUEST_METHOD", "POST"),
            path_and_query=_path_and_query(environ), headers=_headers(environ),
            now=self.state.clock())
        return _respond(start_response, status, reply, "text/xml")

    # -- our JSON 1.1 services ---------------------------------------------------------

    def _aws_json(self, environ: dict[str, Any], target: str) -> tuple[int, bytes]:
        self.requests += 1
        commands = target.startswith(COMMANDS_PREFIX)
        operation = target.split(".", 1)[1]
        try:
            body = _read_body(environ)
            self.state.faults.check_request("codedeploy-commands" if commands else "codedeploy",
                                            operation)
            params = _parse_json(body)
            if commands:
                result = self._command(environ, body, operation, params)
            else:
                result = self._codedeploy_call(operation, params)
        except ServiceError as exc:
            return exc.status, exc.body()
        except ShapeMismatch as exc:
            self.shape_errors.append(str(exc))
            log.error("sandbox response does not match the model: %s", exc)
            return 500, ServiceError("InternalFailure", f"sandbox bug: {exc}").body()
        return 200, json.dumps(result).encode()

    def _codedeploy_call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        handler = CODEDEPLOY_HANDLERS.get(operation)
        if handler is None:
            raise ServiceError("UnknownOperationException",
                               f"The sandbox does not implement CodeDeploy {operation}.")
        self._codedeploy.check_input(operation, params)
        with self.state.lock:
            orchestrator.tick(self.state)
            result = handler(self.state, params)
        if self.strict:
            self._codedeploy.check_output(operation, result)
        return result

    def _command(self, environ: dict[str, Any], body: bytes, operation: str,
                 params: dict[str, Any]) -> dict[str, Any]:
        handler = command_service.HANDLERS.get(operation)
        if handler is None:
            raise ServiceError("UnknownOperationException", f"Unknown operation {operation}.")
        caller = verify_sigv4(
            environ.get("REQUEST_METHOD", "POST"), _path_and_query(environ),
            _headers(environ), body, store=self.credentials, service=COMMANDS_SIGNING_NAME,
            now=self.state.clock())
        self._commands.check_input(operation, params)
        with self.state.lock:
            result = handler(self.state, params, caller, self.signer)
        if self.strict:
            self._commands.check_output(operation, result)
        return result

    # -- the control API ----------------------------------------------------------------

    def _control(self, environ: dict[str, Any], start_response: StartResponse,
                 path: str) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if path == "/_pifleet/health":
                return _respond(start_response, 200, b'{"status": "ok"}')
            if path == "/_pifleet/signer.pem":
                return _respond(start_response, 200, self.signer.certificate_pem,
                                "application/x-pem-file")
            if path == "/_pifleet/credentials-ca.pem" and self.credentials_ca_pem:
                return _respond(start_response, 200, self.credentials_ca_pem,
                                "application/x-pem-file")
            if path == "/_pifleet/reset" and method == "POST":
                self.reset()
                return _respond(start_response, 200, b"{}")
            if path == "/_pifleet/faults" and method == "POST":
                with self.state.lock:
                    self.state.faults.apply(_parse_json(_read_body(environ)))
                return _respond(start_response, 200, b"{}")
            if path == "/_pifleet/faults" and method == "DELETE":
                with self.state.lock:
                    self.state.faults.clear()
                return _respond(start_response, 200, b"{}")
        except ServiceError as exc:
            return _respond(start_response, exc.status, exc.body())
        return _respond(start_response, 404, json.dumps(
            {"message": f"no {method} {path}; see /_pifleet/health, /reset, /faults, "
                        "/signer.pem, /credentials-ca.pem"}).encode())

    def reset(self) -> None:
        self.state.reset()
        if self.moto_app is not None:
            _call_wsgi(self.moto_app, "POST", "/moto-api/reset")


def _read_body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise validation("Content-Length is not a number") from None
    if length > MAX_BODY:
        raise ServiceError("SerializationException", f"The request body is larger than "
                                                     f"{MAX_BODY} bytes.", status=413)
    return bytes(environ["wsgi.input"].read(length)) if length else b""


def _parse_json(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError:
        raise ServiceError("SerializationException",
                           "The request body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise ServiceError("SerializationException", "The request body must be a JSON object.")
    return value


def _headers(environ: dict[str, Any]) -> dict[str, str]:
    headers = {k[5:].replace("_", "-").lower(): str(v) for k, v in environ.items()
               if k.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = environ["CONTENT_TYPE"]
    if environ.get("CONTENT_LENGTH"):
        headers["content-length"] = environ["CONTENT_LENGTH"]
    return headers


def _path_and_query(environ: dict[str, Any]) -> str:
    path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
    query = environ.get("QUERY_STRING", "")
    if "?" not in path and query:
        path = f"{path}?{query}"
    return str(path)


def _respond(start_response: StartResponse, status: int, body: bytes,
             content_type: str = "application/json") -> list[bytes]:
    reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
              413: "Payload Too Large", 429: "Too Many Requests",
              500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
    start_response(f"{status} {reason}", [("Content-Type", content_type),
                                          ("Content-Length", str(len(body)))])
    return [body]


def _call_wsgi(app: Callable[..., Iterable[bytes]], method: str, path: str) -> None:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "SERVER_NAME": "localhost",
               "SERVER_PORT": "80", "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": "http",
               "HTTP_HOST": "localhost", "CONTENT_LENGTH": "0"}
    for _ in app(environ, lambda *_: None):
        pass
