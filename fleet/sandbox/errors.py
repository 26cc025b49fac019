"""Errors of the sandbox services, shaped as AWS JSON 1.1 errors (``__type`` + ``message``)."""

from __future__ import annotations

import json


class ServiceError(Exception):
    """An AWS error response: HTTP ``status``, ``code`` (``__type``) and ``message``."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status

    def body(self) -> bytes:
        return json.dumps({"__type": self.code, "message": self.message}).encode()


def validation(message: str) -> ServiceError:
    return ServiceError("ValidationException", message)
