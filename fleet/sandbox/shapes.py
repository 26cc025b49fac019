"""Checks JSON requests and responses against a botocore-format service model.

Requests that break the model get the errors AWS gives (``ValidationException`` with its
"N validation errors detected" wording, ``SerializationException`` for wrong JSON types);
responses that break it raise ``ShapeMismatch``, which the sandbox turns into a test failure in
strict mode. Either way a handler cannot drift from what real clients parse.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from botocore.model import ListShape, MapShape, ServiceModel, Shape, StructureShape

from .errors import ServiceError


class ShapeMismatch(AssertionError):
    """A response of ours does not match the service model (a bug in the sandbox)."""


class ShapeChecker:
    def __init__(self, model: ServiceModel) -> None:
        self.model = model

    def check_input(self, operation: str, params: Any) -> None:
        shape = self.model.operation_model(operation).input_shape
        if shape is None:
            return
        problems = list(_walk(shape, params, "", request=True))
        types = [p for p in problems if p[0] == "type"]
        if types:
            raise ServiceError("SerializationException", types[0][1])
        if problems:
            count = len(problems)
            noun = "error" if count == 1 else "errors"
            raise ServiceError("ValidationException",
                               f"{count} validation {noun} detected: "
                               + "; ".join(p[1] for p in problems))

    def check_output(self, operation: str, result: Any) -> None:
        shape = self.model.operation_model(operation).output_shape
        if shape is None:
            if result not in ({}, None):
                raise ShapeMismatch(f"{operation} has no output, but returned {result!r}")
            return
        problems = list(_walk(shape, result, "", request=False))
        if problems:
            raise ShapeMismatch(f"{operation} response: " + "; ".join(p[1] for p in problems))


def _walk(shape: Shape, value: Any, path: str, *, request: bool) -> Iterator[tuple[str, str]]:
    where = path or shape.name
    if value is None:
        return
    kind = shape.type_name
    if isinstance(shape, StructureShape):
        yield from _structure(shape, value, path, request=request)
    elif isinstance(shape, ListShape):
        if not isinstance(value, list):
            yield "type", f"Expected a list at '{where}'"
            return
        yield from _bounds(shape, len(value), value, where, "length")
        for i, item in enumerate(value):
            yield from _walk(shape.member, item, f"{where}.{i + 1}", request=request)
    elif isinstance(shape, MapShape):
        if not isinstance(value, dict):
            yield "type", f"Expected an object at '{where}'"
            return
        for key, item in value.items():
            yield from _walk(shape.key, key, f"{where}.key", request=request)
            yield from _walk(shape.value, item, f"{where}.{key}", request=request)
    elif kind == "string":
        yield from _string(shape, value, where)
    elif kind in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            yield "type", f"Expected a whole number at '{where}', not {type(value).__name__}"
            return
        yield from _bounds(shape, value, value, where, "value")
    elif kind in ("float", "double"):
        if not isinstance(value, int | float) or isinstance(value, bool):
            yield "type", f"Expected a number at '{where}'"
    elif kind == "boolean":
        if not isinstance(value, bool):
            yield "type", f"Expected true or false at '{where}'"
    elif kind == "timestamp":
        # JSON 1.1 timestamps are epoch seconds.
        if not isinstance(value, int | float) or isinstance(value, bool):
            yield "type", f"Expected a timestamp (epoch seconds) at '{where}'"
    elif kind == "blob" and not isinstance(value, str):
        yield "type", f"Expected base64 text at '{where}'"


def _structure(shape: StructureShape, value: Any, path: str, *,
               request: bool) -> Iterator[tuple[str, str]]:
    if not isinstance(value, dict):
        yield "type", f"Expected an object at '{path or shape.name}'"
        return
    for name in shape.required_members:
        if value.get(name) is None:
            yield ("value", f"Value null at '{_join(path, name)}' failed to satisfy constraint: "
                            "Member must not be null")
    for name, item in value.items():
        member = shape.members.get(name)
        if member is None:
            if not request:  # AWS ignores unknown request members; our responses must not have any
                yield "value", f"unknown member '{_join(path, name)}'"
            continue
        yield from _walk(member, item, _join(path, name), request=request)


def _string(shape: Shape, value: Any, where: str) -> Iterator[tuple[str, str]]:
    if not isinstance(value, str):
        yield "type", f"Expected text at '{where}', not {type(value).__name__}"
        return
    yield from _bounds(shape, len(value), value, where, "length")
    enum = shape.enum
    if enum and value not in enum:
        yield ("value", f"Value '{value}' at '{where}' failed to satisfy constraint: Member must "
                        f"satisfy enum value set: [{', '.join(enum)}]")
    pattern = shape.metadata.get("pattern")
    if pattern and not re.search(pattern, value):
        yield ("value", f"Value '{value}' at '{where}' failed to satisfy constraint: Member must "
                        f"satisfy regular expression pattern: {pattern}")


def _bounds(shape: Shape, size: int, value: Any, where: str,
            what: str) -> Iterator[tuple[str, str]]:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    shown = value if not isinstance(value, list | dict) else "[...]"
    if low is not None and size < low:
        yield ("value", f"Value '{shown}' at '{where}' failed to satisfy constraint: Member must "
                        f"have {what} greater than or equal to {low}")
    if high is not None and size > high:
        yield ("value", f"Value '{shown}' at '{where}' failed to satisfy constraint: Member must "
                        f"have {what} less than or equal to {high}")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
