"""Faults the tests and the demo can inject: late or lost commands, failing events, throttling
and 5xx from the endpoints. Reached over HTTP at ``/_pifleet/faults`` or directly in-process.

Throttling and server errors hit our two services (CodeDeploy and its command plane) and the
moto-backed ones (S3, IAM, STS, IoT, iot-data) alike, each answered in its own protocol's error
format, so that a client's retry logic sees what AWS would send. A fault lasts ``seconds`` or
hits the next ``count`` matching requests; ``services`` and ``operations`` narrow it. What was
injected is counted per service and per operation (``injected``), so tests can count attempts
on the server's side.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from .errors import ServiceError, validation

# The service in a SigV4 credential scope: <key>/<date>/<region>/<service>/aws4_request.
_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/,\s]+/([^/,\s]+)/aws4_request")
_QUERY_SCOPE = re.compile(r"X-Amz-Credential=[^&]*%2F([^%&]+)%2Faws4_request")
# Signing names that differ from the names people use for the service.
_SERVICE_NAMES = {"iotdata": "iot-data"}
_QUERY_PROTOCOL = frozenset({"sts", "iam"})
_REST_JSON = frozenset({"iot", "iot-data"})
_KINDS = ("delay_commands", "drop_commands", "fail_event", "throttle", "server_error")


@dataclass
class _Rule:
    throttle: bool  # else a server error of ``status``
    status: int
    services: frozenset[str]
    operations: frozenset[str]
    until: float | None  # a window in the clock's time, or
    remaining: int | None  # the next N matching requests

    def matches(self, service: str, operation: str | None, now: float) -> bool:
        if self.services and service not in self.services:
            return False
        if self.operations and operation not in self.operations:
            return False
        if self.remaining is not None:
            return self.remaining > 0
        return self.until is not None and now < self.until


@dataclass
class Faults:
    clock: Callable[[], float] = time.time
    command_delay_s: float = 0.0  # commands become visible to hosts this much later
    drop_commands: int = 0  # the next N deliveries are lost on the way (the event times out)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)  # (instance, event)
    rules: list[_Rule] = field(default_factory=list)
    # Requests answered with an injected fault: by service, and by "service.Operation".
    injected: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def clear(self) -> None:
        with self._lock:
            self.command_delay_s = 0.0
            self.drop_commands = 0
            self.failures.clear()
            self.rules.clear()
            self.injected.clear()

    def injected_failure(self, instance: str, event: str) -> str | None:
        return self.failures.get((instance, event))

    def take_drop(self) -> bool:
        if self.drop_commands > 0:
            self.drop_commands -= 1
            return True
        return False

    def check_request(self, service: str, operation: str | None = None) -> None:
        """Raise the injected throttling or server error for a request to ``service``."""
        rule = self._take(service, operation)
        if rule is None:
            return
        if rule.throttle:
            raise ServiceError("ThrottlingException", "Rate exceeded")
        code = "ServiceUnavailableException" if rule.status == 503 else "InternalFailure"
        raise ServiceError(code, "The service is unavailable (injected fault).",
                           status=rule.status)

    def intercept(self, environ: Mapping[str, Any]) -> tuple[int, str, bytes] | None:
        """For a request going to moto: the injected error response (status, content type,
        body) in the format of its service's protocol, or None to let it through."""
        service = signed_service(environ)
        if service is None:
            return None
        rule = self._take(service, None)
        if rule is None:
            return None
        _drain(environ)
        return error_response(service, throttle=rule.throttle, status=rule.status)

    def _take(self, service: str, operation: str | None) -> _Rule | None:
        now = self.clock()
        with self._lock:
            for rule in self.rules:
                if rule.matches(service, operation, now):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    self.injected[service] += 1
                    if operation:
                        self.injected[f"{service}.{operation}"] += 1
                    return rule
        return None

    def apply(self, spec: dict[str, Any]) -> None:
        """One fault from its JSON description; unknown kinds are a ValidationException."""
        kind = spec.get("kind")
        if kind == "delay_commands":
            self.command_delay_s = float(spec.get("seconds", 0))
        elif kind == "drop_commands":
            self.drop_commands = int(spec.get("count", 1))
        elif kind == "fail_event":
            instance, event = spec.get("instance"), spec.get("event")
            if not instance or not event:
                raise validation("fail_event needs instance and event")
            self.failures[(instance, event)] = str(spec.get("message")
                                                   or f"Injected failure of {event} on "
                                                      f"{instance} (sandbox fault).")
        elif kind in ("throttle", "server_error"):
            rule = self._rule(kind, spec)
            with self._lock:
                self.rules.append(rule)
        else:
            raise validation(f"unknown fault kind {kind!r}: use {', '.join(_KINDS[:-1])} or "
                             f"{_KINDS[-1]}")

    def _rule(self, kind: str, spec: dict[str, Any]) -> _Rule:
        status = 503 if kind == "throttle" else int(spec.get("status", 500))
        if kind == "server_error" and status not in (500, 503):
            raise validation("server_error status must be 500 or 503")
        count = spec.get("count")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise validation(f"{kind} count must be a whole number >= 1, not {count!r}")
        return _Rule(throttle=kind == "throttle", status=status,
                     services=frozenset(spec.get("services") or ()),
                     operations=frozenset(spec.get("operations") or ()),
                     until=None if count is not None
                     else self.clock() + float(spec.get("seconds", 60)),
                     remaining=count)


def _drain(environ: Mapping[str, Any]) -> None:
    """Read the refused request's body: left unread, it would be parsed as the next request
    on a kept-alive connection."""
    try:
        remaining = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    stream = environ.get("wsgi.input")
    while stream is not None and remaining > 0:
        chunk = stream.read(min(remaining, 1 << 16))
        if not chunk:
            return
        remaining -= len(chunk)


def signed_service(environ: Mapping[str, Any]) -> str | None:
    """The service a SigV4-signed request is for (its credential scope); None if unsigned."""
    match = _SCOPE.search(str(environ.get("HTTP_AUTHORIZATION", "")))
    if match is None:
        match = _QUERY_SCOPE.search(str(environ.get("QUERY_STRING", "")))
    if match is None:
        return None
    return _SERVICE_NAMES.get(match[1], match[1])


def error_response(service: str, *, throttle: bool, status: int) -> tuple[int, str, bytes]:
    """What AWS answers when it throttles ``service`` or fails, in that service's protocol."""
    if service == "s3":
        # S3 throttles with 503 SlowDown; it has no 429.
        code = "SlowDown" if throttle or status == 503 else "InternalError"
        message = ("Please reduce your request rate." if code == "SlowDown"
                   else "We encountered an internal error. Please try again.")
        return (503 if throttle else status, "application/xml",
                f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>'
                f"{escape(message)}</Message><RequestId>injected</RequestId></Error>".encode())
    if service in _QUERY_PROTOCOL:
        code = ("Throttling" if throttle
                else "ServiceUnavailable" if status == 503 else "InternalFailure")
        kind = "Sender" if throttle else "Receiver"
        return (400 if throttle else status, "text/xml",
                f"<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code><Message>"
                f"Rate exceeded (injected fault)</Message></Error><RequestId>injected"
                "</RequestId></ErrorResponse>".encode())
    if throttle:
        code, status = "ThrottlingException", (429 if service in _REST_JSON else 400)
    else:
        code = "ServiceUnavailableException" if status == 503 else "InternalFailureException"
    return (status, "application/json",
            ServiceError(code, "Rate exceeded (injected fault)" if throttle
                         else "The service is unavailable (injected fault).",
                         status=status).body())
