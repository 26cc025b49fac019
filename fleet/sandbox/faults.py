"""Faults the tests and the demo can inject: late or lost commands, failing events, throttling
and 5xx from the endpoints. Reached over HTTP at ``/_pifleet/faults`` or directly in-process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ServiceError, validation


@dataclass
class Faults:
    clock: Callable[[], float] = time.time
    command_delay_s: float = 0.0  # commands become visible to hosts this much later
    drop_commands: int = 0  # the next N deliveries are lost on the way (the event times out)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)  # (instance, event)
    throttle_until: float = 0.0
    error_until: float = 0.0
    error_status: int = 500
    services: frozenset[str] = frozenset()  # which services the throttle/error hit; empty: all

    def clear(self) -> None:
        self.command_delay_s = 0.0
        self.drop_commands = 0
        self.failures.clear()
        self.throttle_until = self.error_until = 0.0
        self.services = frozenset()

    def injected_failure(self, instance: str, event: str) -> str | None:
        return self.failures.get((instance, event))

    def take_drop(self) -> bool:
        if self.drop_commands > 0:
            self.drop_commands -= 1
            return True
        return False

    def check_request(self, service: str) -> None:
        """Raise the injected throttling or server error for a request to ``service``."""
        if self.services and service not in self.services:
            return
        now = self.clock()
        if now < self.throttle_until:
            raise ServiceError("ThrottlingException", "Rate exceeded")
        if now < self.error_until:
            code = "ServiceUnavailableException" if self.error_status == 503 else "InternalFailure"
            raise ServiceError(code, "The service is unavailable (injected fault).",
                               status=self.error_status)

    def apply(self, spec: dict[str, Any]) -> None:
        """One fault from its JSON description; unknown kinds are a ValidationException."""
        kind = spec.get("kind")
        now = self.clock()
        services = frozenset(spec.get("services") or ())
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
        elif kind == "throttle":
            self.throttle_until = now + float(spec.get("seconds", 60))
            self.services = services
        elif kind == "server_error":
            self.error_until = now + float(spec.get("seconds", 60))
            self.error_status = int(spec.get("status", 500))
            if self.error_status not in (500, 503):
                raise validation("server_error status must be 500 or 503")
            self.services = services
        else:
            raise validation(f"unknown fault kind {kind!r}: use delay_commands, drop_commands, "
                             "fail_event, throttle or server_error")
