"""Reads YAML into a small tree of positioned nodes with YAML 1.1 scalar semantics.

The official agent reads appspec files with Ruby's YAML 1.1 loader, so ``mode: 0644`` is the
octal number 420 and ``sudo: yes`` is true. PyYAML's resolver has the same semantics; we keep its
resolved values *and* the raw text and position of every scalar, so that validation can say
where a value is and the linter can spot YAML 1.1 traps.

Deliberately refused: anchor/alias bombs (a budget on expanded nodes and on depth), files over
``MAX_APPSPEC_BYTES``, complex (non-scalar) keys and custom tags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from .errors import Finding, Position, Severity

MAX_APPSPEC_BYTES = 1024 * 1024
MAX_NODES = 100_000
MAX_DEPTH = 64

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # C parser: ~10x
_STD_TAG_PREFIX = "tag:yaml.org,2002:"
_MERGE_TAG = _STD_TAG_PREFIX + "merge"


@dataclass(frozen=True, slots=True)
class Scalar:
    value: object
    text: str
    tag: str
    quoted: bool
    position: Position

    @property
    def kind(self) -> str:
        return self.tag.removeprefix(_STD_TAG_PREFIX)


@dataclass(frozen=True, slots=True)
class Seq:
    items: tuple[Node, ...]
    position: Position


@dataclass(frozen=True, slots=True)
class Map:
    """A mapping whose keys are scalars; for duplicate keys the last one wins, as in Ruby."""

    items: tuple[tuple[Scalar, Node], ...]
    position: Position

    def get(self, key: str) -> Node | None:
        found: Node | None = None
        for k, v in self.items:
            if k.value == key:
                found = v
        return found

    def key_nodes(self) -> list[Scalar]:
        return [k for k, _ in self.items]


Node = Scalar | Seq | Map


@dataclass
class Document:
    """The parsed tree (None for an empty document) and what loading noticed on the way."""

    root: Node | None
    findings: list[Finding] = field(default_factory=list)
    uses_aliases: bool = False


def _position(mark: yaml.Mark | None) -> Position:
    if mark is None:
        return Position(1, 1)
    return Position(mark.line + 1, mark.column + 1)


class _TreeBuilder:
    def __init__(self, loader: yaml.SafeLoader) -> None:
        self._loader = loader
        self._budget = MAX_NODES
        self._seen: set[int] = set()
        self.findings: list[Finding] = []
        self.uses_aliases = False

    def build(self, node: yaml.Node, depth: int = 0) -> Node:
        self._budget -= 1
        if self._budget < 0 or depth > MAX_DEPTH:
            raise _TooLarge(node)
        if id(node) in self._seen:
            self.uses_aliases = True
        self._seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _STD_TAG_PREFIX + "seq":
                raise _BadTag(node)
            items = tuple(self.build(n, depth + 1) for n in node.value)
            return Seq(items, _position(node.start_mark))
        if isinstance(node, yaml.MappingNode):
            if node.tag != _STD_TAG_PREFIX + "map":
                raise _BadTag(node)
            return self._mapping(node, depth)
        raise _BadTag(node)

    def _scalar(self, node: yaml.ScalarNode) -> Scalar:
        pos = _position(node.start_mark)
        if not node.tag.startswith(_STD_TAG_PREFIX):
            raise _BadTag(node)
        try:
            value = self._loader.construct_object(node, deep=True)
        except Exception as exc:
            # PyYAML's constructors of explicitly tagged scalars (!!bool maybe, !!int '') raise
            # KeyError, IndexError, AttributeError... on malformed bodies: all mean "unreadable".
            raise _BadScalar(node, (str(exc).splitlines() or [type(exc).__name__])[0]) from exc
        return Scalar(value, str(node.value), node.tag, node.style in ("'", '"'), pos)

    def _mapping(self, node: yaml.MappingNode, depth: int) -> Map:
        explicit: list[tuple[Scalar, Node]] = []
        merged: list[tuple[Scalar, Node]] = []
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE_TAG:
                merged.extend(self._merge_items(value_node, depth))
                continue
            key = self.build(key_node, depth + 1)
            if not isinstance(key, Scalar):
                raise _BadKey(key_node)
            explicit.append((key, self.build(value_node, depth + 1)))
        self._note_duplicates(explicit)
        explicit_keys = {_hashable(k.value) for k, _ in explicit}
        items = [kv for kv in merged if _hashable(kv[0].value) not in explicit_keys] + explicit
        return Map(tuple(items), _position(node.start_mark))

    def _merge_items(self, node: yaml.Node, depth: int) -> list[tuple[Scalar, Node]]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        items: list[tuple[Scalar, Node]] = []
        for source in reversed(sources):  # earlier sources win, so they go last
            built = self.build(source, depth + 1)
            if not isinstance(built, Map):
                raise _BadMerge(source)
            items.extend(built.items)
        return items

    def _note_duplicates(self, items: list[tuple[Scalar, Node]]) -> None:
        first: dict[object, Scalar] = {}
        for key, _ in items:
            h = _hashable(key.value)
            if h in first:
                self.findings.append(
                    Finding(
                        "duplicate-key",
                        Severity.WARNING,
                        f"key {key.text!r} appears again here (first at line "
                        f"{first[h].position.line}); the later value wins and the earlier one "
                        "is ignored, as in the official agent. Remove one of them.",
                        position=key.position,
                    )
                )
            else:
                first[h] = key


def _hashable(value: object) -> object:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


class _LoadProblem(Exception):
    def __init__(self, node: yaml.Node, detail: str = "") -> None:
        super().__init__(detail)
        self.node = node
        self.detail = detail


class _TooLarge(_LoadProblem):
    pass


class _BadTag(_LoadProblem):
    pass


class _BadScalar(_LoadProblem):
    pass


class _BadKey(_LoadProblem):
    pass


class _BadMerge(_LoadProblem):
    pass


_PROBLEM_TEXT: dict[type[_LoadProblem], tuple[str, str]] = {
    _TooLarge: (
        "yaml-too-large",
        f"the YAML expands to more than {MAX_NODES} nodes or nests deeper than {MAX_DEPTH} "
        "levels (an alias bomb?); an AppSpec needs neither. Write the document out plainly.",
    ),
    _BadTag: ("yaml-tag", "custom YAML tags are not allowed in an AppSpec; remove the tag"),
    _BadScalar: ("yaml-value", "this value cannot be read"),
    _BadKey: ("yaml-key", "a mapping key must be a plain name, not a list or a mapping"),
    _BadMerge: ("yaml-merge", "a '<<' merge key must refer to a mapping"),
}


def load_document(text: str | bytes) -> Document:
    """Parse one YAML document; syntax and structure problems become error findings."""
    if isinstance(text, str):
        try:
            encoded = text.encode()
        except UnicodeEncodeError as exc:
            return Document(None, [_error("yaml-encoding",
                                          f"the text holds a lone surrogate (character "
                                          f"{exc.start}), which is not Unicode; fix the source")])
    size = len(encoded if isinstance(text, str) else text)
    if size > MAX_APPSPEC_BYTES:
        return Document(None, [_error("yaml-too-large", f"the file is {size} bytes; an AppSpec "
                                      f"may be at most {MAX_APPSPEC_BYTES} bytes")])
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return Document(None, [_error("yaml-encoding",
                                          f"the file is not UTF-8 (byte {exc.start}); save it "
                                          "as UTF-8")])
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Document(None)
        builder = _TreeBuilder(loader)
        root = builder.build(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        return Document(None, [_error("yaml-syntax", f"invalid YAML: {what}", mark)])
    except yaml.YAMLError as exc:
        return Document(None, [_error("yaml-syntax", f"invalid YAML: {exc}")])
    except _LoadProblem as exc:
        code, message = _PROBLEM_TEXT[type(exc)]
        if exc.detail:
            message = f"{message}: {exc.detail}"
        return Document(None, [_error(code, message, exc.node.start_mark)])
    except RecursionError:
        return Document(None, [_error("yaml-too-large", "the YAML nests too deeply")])
    finally:
        loader.dispose()
    return Document(root, builder.findings, builder.uses_aliases)


def _error(code: str, message: str, mark: yaml.Mark | None = None) -> Finding:
    return Finding(code, Severity.ERROR, message,
                   position=_position(mark) if mark is not None else None)
