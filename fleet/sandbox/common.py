"""Small helpers shared by the CodeDeploy handlers: modeled errors, pagination, tag matching."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import Any, TypeVar

import botocore.session

from ..tags import tag_matches
from .errors import ServiceError

__all__ = ["PAGE_SIZE", "check_batch", "codedeploy_model", "error", "page", "tag_matches"]

T = TypeVar("T")
PAGE_SIZE = 100


@cache
def codedeploy_model() -> Any:
    return botocore.session.get_session().get_service_model("codedeploy")


def error(name: str, message: str | None = None) -> ServiceError:
    """A modeled CodeDeploy error; without a message, the model's own description of it."""
    code = name if name.endswith("Exception") else name + "Exception"
    if message is None:
        doc = codedeploy_model().shape_for(code).documentation or code
        message = re.sub(r"<[^>]+>", "", doc).strip()
    return ServiceError(code, message)


def page(items: Sequence[T], token: str | None,
         size: int = PAGE_SIZE) -> tuple[list[T], str | None]:
    """Offset pagination with opaque-looking tokens; a bad token is InvalidNextTokenException."""
    start = 0
    if token:
        if not token.startswith("o-") or not token[2:].isdigit() or int(token[2:]) > len(items):
            raise error("InvalidNextToken", "The next token was specified in an invalid format.")
        start = int(token[2:])
    end = start + size
    return list(items[start:end]), (f"o-{end}" if end < len(items) else None)


def check_batch(items: Sequence[Any] | None, what: str, limit: int = 25) -> list[Any]:
    if not items:
        raise error(f"{what}Required", f"At least one {what[0].lower() + what[1:]} is required.")
    if len(items) > limit:
        raise error("BatchLimitExceeded", f"The maximum number of names or IDs allowed for this "
                                          f"request ({limit}) was exceeded.")
    return list(items)
