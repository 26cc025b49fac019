"""Shared plumbing of the parser: collecting findings and reading typed values from nodes."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from .errors import Finding, Severity
from .yaml_nodes import Map, Node, Scalar, Seq


def describe(node: Node | None) -> str:
    """How a node reads to a person: 'a list', 'a mapping', 'the number 12', 'true', ..."""
    if node is None:
        return "nothing"
    if isinstance(node, Seq):
        return "a list"
    if isinstance(node, Map):
        return "a mapping"
    value = node.value
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return f"the boolean {node.text!r} ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"the number {node.text}"
    if isinstance(value, str):
        return f"the text {value!r}"
    return f"{node.text!r} (read as a {node.kind})"


def suggestion(word: str, choices: Iterable[str]) -> str:
    """' Did you mean X?' when a close match exists, else ''."""
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return f" Did you mean {lowered[word.lower()]!r}? Names are case-sensitive."
    close = difflib.get_close_matches(word, list(lowered.values()), n=1, cutoff=0.75)
    return f" Did you mean {close[0]!r}?" if close else ""


class Collector:
    """Accumulates findings so that every problem in a file is reported, not just the first."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def errors_since(self, index: int) -> list[Finding]:
        return [f for f in self.findings[index:] if f.severity is Severity.ERROR]

    def error(self, code: str, message: str, path: str, node: Node | None) -> None:
        self._add(code, Severity.ERROR, message, path, node)

    def warning(self, code: str, message: str, path: str, node: Node | None) -> None:
        self._add(code, Severity.WARNING, message, path, node)

    def _add(self, code: str, sev: Severity, message: str, path: str, node: Node | None) -> None:
        position = node.position if node is not None else None
        self.findings.append(Finding(code, sev, message, path, position))

    def mapping(self, node: Node | None, path: str, *, allowed: Iterable[str],
                what: str) -> Map | None:
        """``node`` as a mapping whose keys are all in ``allowed``; errors otherwise."""
        if not isinstance(node, Map):
            self.error("wrong-type", f"{what} must be a mapping (key: value lines); found "
                       f"{describe(node)}", path, node)
            return None
        allowed = tuple(allowed)
        for key in node.key_nodes():
            if not isinstance(key.value, str) or key.value not in allowed:
                self.unknown_key(key, path, allowed=allowed, what=what)
        return node

    def unknown_key(self, key: Scalar, path: str, *, allowed: tuple[str, ...],
                    what: str) -> None:
        self.error("unknown-key", f"unknown key {key.text!r} in {what}; allowed keys are "
                   f"{', '.join(allowed)}.{suggestion(key.text, allowed)}",
                   join(path, key.text), key)

    def sequence(self, node: Node | None, path: str, *, what: str, hint: str = "") -> Seq | None:
        if isinstance(node, Seq):
            return node
        self.error("wrong-type", f"{what} must be a list (lines starting with '-'); found "
                   f"{describe(node)}{hint}", path, node)
        return None

    def text(self, node: Node | None, path: str, *, what: str) -> str | None:
        """A non-empty string scalar (stripped), or None after an error."""
        if isinstance(node, Scalar) and isinstance(node.value, str):
            value = node.value.strip()
            if "\0" in value:
                self.error("nul-character", f"{what} contains a NUL character, which no path or "
                           "name can hold; remove it", path, node)
                return None
            if "\n" in value or "\r" in value:
                # Paths are kept one per line (the clean-up file): a line break in one would let
                # a revision name, and later delete, any other path.
                self.error("line-break", f"{what} contains a line break, which pifleet refuses "
                           "in paths and names; put it on one line", path, node)
                return None
            if value:
                return value
        self.error("wrong-type", f"{what} must be non-empty text; found {describe(node)}",
                   path, node)
        return None

    def optional_text(self, node: Node | None, path: str, *, what: str) -> str | None:
        if node is None or (isinstance(node, Scalar) and node.value is None):
            return None
        return self.text(node, path, what=what)


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key
