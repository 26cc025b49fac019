"""Property-based and hostile-input tests of the AppSpec reader, parser and linter.

The contract under test:

- ``parse_appspec`` returns an ``AppSpec`` or raises an ``AppSpecError``, whatever text or bytes
  it is given; nothing else (``yaml.YAMLError``, ``TypeError``, ``RecursionError``, ...) escapes,
  and every finding of the error says what is wrong (a message) and, when it has a position,
  where (1-based line and column);
- hostile documents (alias bombs, deep nesting, huge files, bad encodings) are refused with a
  specific finding code in well under a second;
- valid documents, however they are written, parse to the values they contain;
- ``lint_revision`` never raises, whatever the revision directory holds.

Documents come from four sources: arbitrary text and bytes, Python structures dumped by
``yaml.safe_dump``, a small YAML writer below that produces what ``safe_dump`` never does
(anchors, aliases, ``<<`` merges, tags, YAML 1.1 words like ``0644``, ``yes`` and
``2001-12-14``, comments), and a strategy that builds correct AppSpecs.
"""

from __future__ import annotations

import json
import posixpath
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from appspec import AppSpec, AppSpecError, LifecycleEvent, Severity, parse_appspec
from appspec.lint import lint_revision
from appspec.yaml_nodes import MAX_APPSPEC_BYTES

# Hostile inputs must be refused in well under a second; this is the ceiling of "well under".
HOSTILE_TIME_LIMIT_S = 1.0

EVENTS = tuple(str(e) for e in LifecycleEvent)
RESERVED_EVENTS = ("DownloadBundle", "Install", "Start", "End", "BlockTraffic", "AllowTraffic")
# Every key the format knows, plus near misses, so that random mappings reach the validators.
KEY_NAMES = (
    "version", "os", "files", "hooks", "permissions", "file_exists_behavior",
    "source", "destination", "location", "timeout", "runas", "sudo",
    "object", "pattern", "except", "type", "owner", "group", "mode", "acls", "context",
    "name", "range", "role", "Resources", "afterinstall", "Version",
    *EVENTS, *RESERVED_EVENTS,
)

# Plain (unquoted) scalars that YAML 1.1 reads as something other than the text they look like,
# or that the validators treat specially. All of them are valid in flow and block context.
HUGE_HEX = "0x" + "f" * 4000  # an int of 4817 decimal digits: str() of it raises ValueError
HUGE_OCTAL = "0" + "7" * 4400
HUGE_DECIMAL = "9" * 4400
YAML11_PLAIN = (
    "0644", "0755", "0777", "644", "0o644", "0x1F", "0b101", "1_000", "1:30", "190:20:30",
    "0888", "+12", "-0", "0", "-1", "0.0", "0.", "-.5", "1e3", "1.5e+3", "1.0e+400", "._", "0_",
    "0b_", "0x_", ".inf", "-.Inf", ".nan", "~", "null", "NULL", "", "yes", "no", "on", "off",
    "Yes", "NO", "On", "OFF", "y", "n", "true", "False", "2001-12-14",
    "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5", "2002-02-30",
    "2001-12-14 21:59:43.10 +99:99", "=", "<<", "linux", "windows", "AfterInstall", "Install",
    "scripts/start.sh", "/opt/app", "/", "../etc", "app", "root", "pi", "u:bob:rw", "d:g:dev:5",
    "s0-s1:c0.c3", "s3-s2", "DISALLOW", "**", HUGE_HEX, HUGE_OCTAL, HUGE_DECIMAL,
)
SCALAR_TAGS = (
    "!!str", "!!int", "!!float", "!!bool", "!!null", "!!timestamp", "!!binary", "!!merge",
    "!!value", "!!map", "!!seq", "!!set", "!!python/object:os.system", "!!python/name:os.system",
    "!foo", "!", "!<tag:example.com,2000:app/x>",
)
COLLECTION_TAGS = (
    "!!map", "!!seq", "!!set", "!!omap", "!!pairs", "!!str", "!!python/object:os.system",
    "!!python/object/apply:os.system", "!foo", "!<tag:example.com,2000:app/x>",
)
# Words for the bodies of explicitly tagged scalars: what the tag's constructor chokes on.
TAG_BODIES = ("maybe", "-", "+", "abc", "0x", "0b", "1:", "2001-12-14", "yes", "AA==", "!")

Outcome = AppSpec | AppSpecError


# -- the property ---------------------------------------------------------------------------------


def parse_or_error(source: str | bytes) -> Outcome:
    """What ``parse_appspec`` gives; any exception but ``AppSpecError`` propagates (a bug)."""
    try:
        return parse_appspec(source)
    except AppSpecError as exc:
        return exc


def assert_well_formed(outcome: Outcome) -> None:
    if isinstance(outcome, AppSpec):
        assert outcome.version == 0.0
        assert outcome.os == "linux"
        assert not [f for f in outcome.findings if f.severity is Severity.ERROR]
        return
    assert outcome.errors, f"an AppSpecError without an error finding: {outcome.findings}"
    for finding in outcome.findings:
        assert finding.code
        assert finding.message.strip(), finding
        if finding.position is not None:
            assert finding.position.line >= 1, finding
            assert finding.position.column >= 1, finding
    assert str(outcome)
    assert len(json.loads(outcome.to_json())) == len(outcome.findings)


def check(source: str | bytes) -> Outcome:
    outcome = parse_or_error(source)
    assert_well_formed(outcome)
    return outcome


def timed(source: str | bytes) -> tuple[Outcome, float]:
    start = time.perf_counter()
    outcome = parse_or_error(source)
    return outcome, time.perf_counter() - start


# -- a. arbitrary text and bytes ----------------------------------------------------------------

# Everything but lone surrogates (which cannot be UTF-8 encoded; see test_lone_surrogate_...),
# control characters included.
any_char = st.characters(codec="utf-8")
YAML_TOKENS = (
    "-", "- ", ": ", ":", "? ", ",", "[", "]", "{", "}", "#", "&a", "*a", "&b ", "*b", "!", "!!",
    "|", ">", "'", '"', "%", "@", "`", "\\", " ", "  ", "\t", "\n", "\r\n", "---\n", "...\n",
    "<<: ", "version: 0.0\n", "os: linux\n", "hooks:\n", "files:\n", "permissions:\n",
    "  AfterInstall:\n", "    - location: ", "      timeout: ", "mode: ", "\ufeff", "\x00",
    *YAML11_PLAIN[:60], *SCALAR_TAGS,
)
yamlish_text = st.lists(
    st.one_of(st.sampled_from(YAML_TOKENS), st.text(any_char, max_size=4)), max_size=40
).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(any_char), yamlish_text))
def test_arbitrary_text_only_raises_appspec_error(text: str) -> None:
    check(text)


@settings(max_examples=250, deadline=None)
@given(st.one_of(
    st.binary(),
    yamlish_text.map(lambda t: t.encode()),
    yamlish_text.map(lambda t: t.encode("utf-8-sig")),
    yamlish_text.map(lambda t: t.encode("utf-16")),
    st.tuples(yamlish_text, st.binary(max_size=8), yamlish_text).map(
        lambda p: p[0].encode() + p[1] + p[2].encode()),
))
def test_arbitrary_bytes_only_raise_appspec_error(data: bytes) -> None:
    check(data)


# -- b. arbitrary structures, dumped by safe_dump -------------------------------------------------

scalar_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**300), max_value=10**300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(any_char, max_size=20),
    st.sampled_from(YAML11_PLAIN[:-3]),  # as text: safe_dump quotes what would not stay text
)
structures = st.recursive(
    scalar_values,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEY_NAMES), st.text(any_char, max_size=10)),
                        children, max_size=4),
    ),
    max_leaves=16,
)


@st.composite
def skeleton_values(draw: st.DrawFn) -> object:
    """A mostly valid AppSpec with random values at random places."""

    def pick(plausible: object) -> object:
        return draw(structures) if draw(st.integers(0, 3)) == 0 else plausible

    def entry(fields: Mapping[str, object]) -> object:
        result = {k: pick(v) for k, v in fields.items() if draw(st.integers(0, 5))}
        if not draw(st.integers(0, 5)):
            result[draw(st.sampled_from(KEY_NAMES))] = draw(structures)
        return pick(result)

    script = {"location": "scripts/start.sh", "timeout": 60, "runas": "pi", "sudo": False}
    event_keys = st.one_of(st.sampled_from(EVENTS + RESERVED_EVENTS), st.text(max_size=12))
    hooks = {draw(event_keys): pick([entry(script) for _ in range(draw(st.integers(0, 3)))])
             for _ in range(draw(st.integers(0, 4)))}
    files = [entry({"source": "app", "destination": "/opt/app"})
             for _ in range(draw(st.integers(0, 3)))]
    permissions = [entry({"object": "/opt/app", "pattern": "*.sh", "except": ["x"],
                          "type": ["file"], "owner": "pi", "group": "pi", "mode": "0644",
                          "acls": ["u:bob:rw"], "context": {"type": "t", "range": "s0"}})
                   for _ in range(draw(st.integers(0, 3)))]
    doc = {"version": pick(0.0), "os": pick("linux"), "hooks": pick(hooks),
           "files": pick(files), "permissions": pick(permissions),
           "file_exists_behavior": pick("OVERWRITE")}
    return {k: v for k, v in doc.items() if draw(st.integers(0, 4))}


@settings(max_examples=300, deadline=None)
@given(st.one_of(structures, skeleton_values()), st.sampled_from([False, True, None]),
       st.booleans())
def test_dumped_structures_only_raise_appspec_error(value: object, flow: bool | None,
                                                    unicode: bool) -> None:
    text = yaml.safe_dump(value, default_flow_style=flow, allow_unicode=unicode, sort_keys=False)
    check(text)


# -- b. hand-written YAML: anchors, aliases, merges, tags, YAML 1.1 words -------------------------


@dataclass(frozen=True)
class YScalar:
    text: str  # YAML source: plain, quoted, or tagged


@dataclass(frozen=True)
class YSeq:
    items: tuple[YNode, ...]


@dataclass(frozen=True)
class YMap:
    pairs: tuple[tuple[YNode, YNode], ...]


YNode = YScalar | YSeq | YMap


def _yaml_printable(char: str) -> bool:
    code = ord(char)
    return (0x20 <= code <= 0x7E or 0xA0 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD
            or code >= 0x10000)


def double_quoted(text: str) -> str:
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif _yaml_printable(char):
            out.append(char)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}")
    return '"' + "".join(out) + '"'


def single_quoted(text: str) -> str:
    """Raw: control characters and line breaks stay as they are (the reader may refuse them)."""
    return "'" + text.replace("'", "''") + "'"


tagged_scalars = st.builds(
    lambda tag, body: f"{tag} {body}",
    st.sampled_from(SCALAR_TAGS),
    st.one_of(st.sampled_from(TAG_BODIES + YAML11_PLAIN),
              st.text(any_char, max_size=6).map(double_quoted)),
)
scalar_texts = st.one_of(
    st.sampled_from(YAML11_PLAIN),
    st.text(any_char, max_size=12).map(double_quoted),
    st.text(any_char, max_size=12).map(single_quoted),
    tagged_scalars,
)
key_texts = st.one_of(
    st.sampled_from(KEY_NAMES),
    st.sampled_from(KEY_NAMES).map(double_quoted),
    st.text(any_char, max_size=10).map(double_quoted),
    scalar_texts,
)
y_keys: st.SearchStrategy[YNode] = st.one_of(
    key_texts.map(YScalar),
    st.lists(scalar_texts.map(YScalar), max_size=2).map(lambda xs: YSeq(tuple(xs))),
)
y_trees: st.SearchStrategy[YNode] = st.recursive(
    scalar_texts.map(YScalar),
    lambda kids: st.one_of(
        st.lists(kids, max_size=4).map(lambda xs: YSeq(tuple(xs))),
        st.lists(st.tuples(y_keys, kids), max_size=4).map(lambda ps: YMap(tuple(ps))),
    ),
    max_leaves=12,
)


def _plain(text: str) -> YScalar:
    return YScalar(text)


@st.composite
def y_skeletons(draw: st.DrawFn) -> YNode:
    """A mostly valid AppSpec as YAML nodes, with random subtrees at random places."""

    def pick(plausible: YNode) -> YNode:
        return draw(y_trees) if draw(st.integers(0, 3)) == 0 else plausible

    def entry(fields: Sequence[tuple[str, YNode]]) -> YNode:
        pairs = [(_plain(k), pick(v)) for k, v in fields if draw(st.integers(0, 5))]
        if not draw(st.integers(0, 5)):
            pairs.append((draw(y_keys), draw(y_trees)))
        return pick(YMap(tuple(pairs)))

    def some(make: Callable[[], YNode], most: int) -> YSeq:
        return YSeq(tuple(make() for _ in range(draw(st.integers(0, most)))))

    def value(*choices: str) -> YNode:
        return YScalar(draw(st.sampled_from(choices)))

    def script() -> YNode:
        return entry([("location", value("scripts/start.sh", "'a b.sh'", "/x.sh", "../x.sh")),
                      ("timeout", value("60", "0644", "'60'", "1.5", "0", "-1", ".inf", "1:30",
                                        HUGE_HEX)),
                      ("runas", value("pi", "root", "'1pi'", "yes", "~")),
                      ("sudo", value("false", "yes", "off", "'true'", "0"))])

    def permission() -> YNode:
        return entry([("object", value("/opt/app", "opt", "/")),
                      ("pattern", value("'*.sh'", "'**'", "a/b")),
                      ("except", value("['*.tmp']", "'*.tmp'", "[]")),
                      ("type", value("[file]", "[directory, file]", "file", "[]")),
                      ("owner", value("pi", "0", "root")),
                      ("group", value("pi", "'0'")),
                      ("mode", value("644", "0644", "'0644'", "4755", "0o644", "'rwx'", "8")),
                      ("acls", value("['u:bob:rw']", "['d:g:dev:r-x', 'm::rx']", "[u::rw]")),
                      ("context", value("{type: httpd_sys_content_t}", "{type: t, range: s0}",
                                        "{type: t, role: r}", "{name: x}"))])

    hooks = YMap(tuple(
        (YScalar(draw(st.one_of(st.sampled_from(EVENTS + RESERVED_EVENTS), key_texts))),
         pick(some(script, 3)))
        for _ in range(draw(st.integers(0, 4)))))
    fields = [
        ("version", value("0.0", "0", "'0.0'", "0.1", "~", "!!float 0")),
        ("os", value("linux", "windows", "Linux", "'linux'")),
        ("files", some(lambda: entry([("source", value("app", "/", "/app", "../x", "''")),
                                      ("destination", value("/opt/app", "opt/app", "/"))]), 3)),
        ("hooks", hooks),
        ("permissions", some(permission, 3)),
        ("file_exists_behavior", value("OVERWRITE", "overwrite", "RETAIN", "~")),
    ]
    return entry(fields)


class YamlWriter:
    """Writes ``YNode`` trees as YAML text, mixing block and flow style.

    ``hostile`` adds anchors (registered before their children are written, so an alias may
    point at an enclosing node: a recursive document), aliases, ``<<`` merge keys and tags on
    collections. Every choice is drawn from Hypothesis, so failures shrink.
    """

    def __init__(self, draw: st.DrawFn, *, hostile: bool) -> None:
        self.draw = draw
        self.hostile = hostile
        self.anchors: list[str] = []

    def chance(self, percent: int) -> bool:
        return self.draw(st.integers(0, 99)) < percent

    def properties(self, *, collection: bool) -> str:
        if not self.hostile:
            return ""
        parts = []
        if self.chance(12):
            name = f"a{len(self.anchors)}"
            self.anchors.append(name)
            parts.append("&" + name)
        if collection and self.chance(6):
            parts.append(self.draw(st.sampled_from(COLLECTION_TAGS)))
        return " ".join(parts)

    def alias(self) -> str | None:
        if self.hostile and self.anchors and self.chance(8):
            return "*" + self.draw(st.sampled_from(self.anchors))
        return None

    def merge_source(self) -> str | None:
        if not (self.hostile and self.chance(8)):
            return None
        if self.anchors and self.chance(60):
            names = self.draw(st.lists(st.sampled_from(self.anchors), min_size=1, max_size=3))
            return "*" + names[0] if len(names) == 1 else "[" + ", ".join(
                "*" + n for n in names) + "]"
        return self.flow(self.draw(y_trees))

    def flow(self, node: YNode) -> str:
        if (alias := self.alias()) is not None:
            return alias
        props = self.properties(collection=not isinstance(node, YScalar))
        lead = props + " " if props else ""
        if isinstance(node, YScalar):
            return lead + node.text
        if isinstance(node, YSeq):
            return lead + "[" + ", ".join(self.flow(item) for item in node.items) + "]"
        pairs = [f"{self.flow(k)}: {self.flow(v)}" for k, v in node.pairs]
        if (merge := self.merge_source()) is not None:
            pairs.insert(self.draw(st.integers(0, len(pairs))), f"<<: {merge}")
        return lead + "{" + ", ".join(pairs) + "}"

    def block(self, node: YNode, indent: int) -> tuple[str, list[str]]:
        """What follows ``key:`` or ``-`` on its line, and the lines below it."""
        if isinstance(node, YScalar) or not self._items(node) or self.chance(20):
            return " " + self.flow(node), []
        if (alias := self.alias()) is not None:
            return " " + alias, []
        props = self.properties(collection=True)
        pad = " " * indent
        lines: list[str] = []
        if isinstance(node, YSeq):
            for item in node.items:
                inline, below = self.block(item, indent + 2)
                lines += [f"{pad}-{inline}", *below]
        else:
            if (merge := self.merge_source()) is not None:
                lines.append(f"{pad}<<: {merge}")
            for key, value in node.pairs:
                inline, below = self.block(value, indent + 2)
                lines += [f"{pad}{self.flow(key)}:{inline}", *below]
        if self.chance(10):
            lines.insert(self.draw(st.integers(0, len(lines))), f"{pad}# a comment")
        return (" " + props if props else ""), lines

    @staticmethod
    def _items(node: YSeq | YMap) -> tuple[object, ...]:
        return node.items if isinstance(node, YSeq) else node.pairs

    def document(self, root: YNode) -> str:
        inline, lines = self.block(root, 0)
        head = []
        if self.chance(10):
            head.append("# pifleet revision")
        if self.chance(5):
            head.append("%YAML 1.1")
        if inline.strip() and lines:
            head.append("---" + inline)
        elif inline.strip():
            lines = ["--- " + inline.strip() if head else inline.strip()]
        elif head and head[-1].startswith("%"):
            head.append("---")
        return "\n".join([*head, *lines]) + "\n"


@st.composite
def hostile_yaml(draw: st.DrawFn) -> str:
    root = draw(st.one_of(y_skeletons(), y_trees))
    return YamlWriter(draw, hostile=True).document(root)


@settings(max_examples=400, deadline=None)
@given(hostile_yaml())
def test_hand_written_yaml_only_raises_appspec_error(text: str) -> None:
    check(text)


# -- c. valid AppSpecs round-trip -----------------------------------------------------------------

SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,11}"  # never '.' or '..'
USER = r"[A-Za-z_][A-Za-z0-9_.-]{0,15}\$?"
relative_paths = st.lists(st.from_regex(SEGMENT, fullmatch=True), min_size=1, max_size=3).map(
    "/".join)
absolute_paths = st.one_of(st.just("/"), relative_paths.map(lambda p: "/" + p))
users = st.from_regex(USER, fullmatch=True)
globs = st.from_regex(r"[A-Za-z0-9_.*-]{1,10}", fullmatch=True)
modes = st.from_regex(r"[0-7]{3,4}", fullmatch=True)
aces = st.one_of(
    st.builds(lambda d, t, n, p: f"{d}{t}:{n}:{p}",
              st.sampled_from(["", "d:", "default:"]),
              st.sampled_from(["u", "user", "g", "group"]),
              users.filter(lambda n: n not in ("m", "mask", "o", "other")),
              st.from_regex(r"[0-7]|[rwx-]{1,3}", fullmatch=True)),
    st.sampled_from(["m::rx", "mask::7", "d:o::r", "d:m::rwx"]),
)
scripts = st.fixed_dictionaries(
    {"location": relative_paths},
    optional={"timeout": st.integers(1, 10**7), "runas": users, "sudo": st.booleans()},
)
permissions = st.fixed_dictionaries(
    {"object": absolute_paths},
    optional={
        "pattern": globs,
        "except": st.lists(globs, max_size=3),
        "type": st.lists(st.sampled_from(["file", "directory"]), min_size=1, max_size=2,
                         unique=True),
        "owner": users,
        "group": users,
        "mode": modes,
        "acls": st.lists(aces, max_size=3),
        "context": st.fixed_dictionaries(
            {"type": users},
            optional={"name": users,
                      "range": st.sampled_from(["s0", "s0-s1", "s0:c0.c3", "s1:c1,c5"])}),
    },
)


def _file_key(entry: Mapping[str, str]) -> tuple[str, str]:
    return posixpath.normpath(entry["source"]), posixpath.normpath(entry["destination"])


valid_documents = st.fixed_dictionaries(
    {"version": st.just(0.0), "os": st.just("linux")},
    optional={
        "files": st.lists(st.fixed_dictionaries({"source": st.one_of(st.just("/"),
                                                                     relative_paths),
                                                 "destination": absolute_paths}),
                          max_size=4, unique_by=_file_key),
        "hooks": st.dictionaries(st.sampled_from(EVENTS), st.lists(scripts, max_size=3),
                                 max_size=9),
        "permissions": st.lists(permissions, max_size=3),
        "file_exists_behavior": st.sampled_from(["DISALLOW", "OVERWRITE", "RETAIN"]),
    },
)


def to_ynode(value: object, draw: st.DrawFn) -> YNode:
    """A Python value as YAML nodes that read back as the same value (strings always quoted)."""
    if isinstance(value, dict):
        return YMap(tuple((to_ynode(k, draw), to_ynode(v, draw)) for k, v in value.items()))
    if isinstance(value, list):
        return YSeq(tuple(to_ynode(v, draw) for v in value))
    if isinstance(value, bool):
        return YScalar(draw(st.sampled_from(["true", "yes", "on", "True"] if value
                                            else ["false", "no", "off", "False"])))
    if isinstance(value, int | float):
        return YScalar(repr(value))
    assert isinstance(value, str)
    return YScalar(draw(st.sampled_from([double_quoted(value), single_quoted(value)])))


@st.composite
def renderings(draw: st.DrawFn, doc: dict[str, Any]) -> str | bytes:
    how = draw(st.sampled_from(["safe_dump", "writer"]))
    if how == "safe_dump":
        text = yaml.safe_dump(doc, sort_keys=False,
                              default_flow_style=draw(st.sampled_from([False, True, None])),
                              indent=draw(st.integers(2, 6)), width=draw(st.integers(20, 200)),
                              explicit_start=draw(st.booleans()))
    else:
        text = YamlWriter(draw, hostile=False).document(to_ynode(doc, draw))
    if draw(st.booleans()):
        text = "# generated revision\n\n" + text
    return text.encode("utf-8-sig") if draw(st.booleans()) else text


@settings(max_examples=150, deadline=None)
@given(valid_documents, st.data())
def test_valid_appspecs_round_trip(doc: dict[str, Any], data: st.DataObject) -> None:
    source = data.draw(renderings(doc))
    spec = parse_appspec(source)

    assert [(f.source, f.destination) for f in spec.files] == [
        (f["source"], f["destination"]) for f in doc.get("files", [])]
    hooks: dict[str, list[dict[str, Any]]] = doc.get("hooks", {})
    assert [event for event, _ in spec.hooks] == list(hooks)
    assert sum(len(s) for _, s in spec.hooks) == sum(len(s) for s in hooks.values())
    for event, parsed in spec.hooks:
        assert [s.location for s in parsed] == [s["location"] for s in hooks[event]]
        assert [s.timeout_s for s in parsed] == [s.get("timeout", 3600) for s in hooks[event]]
        assert [s.runas for s in parsed] == [s.get("runas") for s in hooks[event]]
        assert [s.sudo for s in parsed] == [s.get("sudo", False) for s in hooks[event]]
    expected = doc.get("permissions", [])
    assert len(spec.permissions) == len(expected)
    for permission, raw in zip(spec.permissions, expected, strict=True):
        assert permission.object == raw["object"]
        assert (permission.mode.text if permission.mode else None) == raw.get("mode")
        assert permission.owner == raw.get("owner")
        assert permission.group == raw.get("group")
        assert permission.pattern == raw.get("pattern", "**")
        assert list(permission.excepts) == raw.get("except", [])
        assert len(permission.acls or ()) == len(raw.get("acls", []))
    assert spec.file_exists_behavior == doc.get("file_exists_behavior")
    assert not [f for f in spec.findings if f.severity is Severity.ERROR]


# -- d. hostile inputs, deterministic -------------------------------------------------------------

VALID = """\
version: 0.0
os: linux
files:
  - source: app
    destination: /opt/app
hooks:
  AfterInstall:
    - location: scripts/start.sh
      timeout: 30
"""
HEADER = "version: 0.0\nos: linux\n"


def billion_laughs() -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


def nested_lists(depth: int) -> str:
    return "[" * depth + "]" * depth


def exactly(size: int, prefix: str, fill: str = "a", suffix: str = "\n") -> str:
    return prefix + fill * (size - len(prefix.encode()) - len(suffix)) + suffix


HOSTILE: list[Any] = [
    pytest.param(billion_laughs(), {"yaml-too-large"}, id="billion-laughs-9x10"),
    pytest.param(nested_lists(200), {"yaml-too-large"}, id="nested-lists-200"),
    # libyaml refuses more than 1000 levels as a syntax error; the pure-Python loader would
    # reach the depth budget first.
    pytest.param(nested_lists(100_000), {"yaml-syntax", "yaml-too-large"},
                 id="nested-lists-100000"),
    pytest.param("{a: " * 200 + "1" + "}" * 200, {"yaml-too-large"}, id="nested-maps-200"),
    pytest.param("".join(" " * i + "k:\n" for i in range(200)), {"yaml-too-large"},
                 id="nested-block-maps-200"),
    pytest.param("&a [*a]\n", {"yaml-too-large"}, id="recursive-alias-seq"),
    pytest.param("&a {x: *a}\n", {"yaml-too-large"}, id="recursive-alias-map"),
    pytest.param(HEADER + "hooks: &h\n  AfterInstall: *h\n", {"yaml-too-large"},
                 id="recursive-alias-in-hooks"),
    pytest.param(exactly(2 * 1024 * 1024, VALID + "# "), {"yaml-too-large"}, id="2MiB-str"),
    pytest.param(exactly(2 * 1024 * 1024, VALID + "# ").encode(), {"yaml-too-large"},
                 id="2MiB-bytes"),
    pytest.param(exactly(MAX_APPSPEC_BYTES + 1, VALID + "# "), {"yaml-too-large"},
                 id="1MiB-plus-one-byte"),
    pytest.param(exactly(MAX_APPSPEC_BYTES, HEADER + "x: "), {"unknown-key"},
                 id="1MiB-single-line-key"),
    pytest.param(exactly(MAX_APPSPEC_BYTES, "", suffix=""), {"wrong-type"},
                 id="1MiB-single-line-no-newline"),
    pytest.param(exactly(MAX_APPSPEC_BYTES, HEADER + '"x', suffix='"\n'), {"yaml-syntax"},
                 id="1MiB-key-too-long"),
    pytest.param(b"version: 0.0\nos: \xff\xfe linux\n", {"yaml-encoding"}, id="invalid-utf8"),
    pytest.param(b"\xc3", {"yaml-encoding"}, id="truncated-utf8"),
    pytest.param(VALID.encode("utf-16"), {"yaml-encoding"}, id="utf16"),
    pytest.param(VALID.encode("latin-1") + "# caf\xe9\n".encode("latin-1"), {"yaml-encoding"},
                 id="latin1"),
    pytest.param(VALID + "\x00", {"yaml-syntax"}, id="nul-str"),
    pytest.param(VALID.encode() + b"\x00\x00", {"yaml-syntax"}, id="nul-bytes"),
    pytest.param("\x00" * 1000, {"yaml-syntax"}, id="only-nul"),
    pytest.param(VALID + "# \x1b[31m\n", {"yaml-syntax"}, id="escape-character"),
    pytest.param(HEADER + "x: 1\n---\ny: 2\n", {"yaml-syntax"}, id="two-documents"),
    pytest.param(HEADER + "mode: !foo 1\n", {"yaml-tag"}, id="custom-tag-scalar"),
    pytest.param(HEADER + "hooks: !foo\n  AfterInstall: []\n", {"yaml-tag"},
                 id="custom-tag-mapping"),
    pytest.param(HEADER + "files: !foo [a]\n", {"yaml-tag"}, id="custom-tag-sequence"),
    pytest.param(HEADER + "files: !!python/object/apply:os.system ['true']\n", {"yaml-tag"},
                 id="python-tag-sequence"),
    pytest.param(HEADER + "x: !!python/name:os.system ''\n", {"yaml-tag", "yaml-value"},
                 id="python-tag-scalar"),
    pytest.param(HEADER + "<<: 1\n", {"yaml-merge"}, id="merge-scalar"),
    pytest.param(HEADER + "[a]: 1\n", {"yaml-key"}, id="complex-key"),
]


@pytest.mark.parametrize(("source", "codes"), HOSTILE)
def test_hostile_input_is_refused_quickly(source: str | bytes, codes: set[str]) -> None:
    outcome, seconds = timed(source)
    assert isinstance(outcome, AppSpecError), "hostile input was accepted"
    assert_well_formed(outcome)
    found = {f.code for f in outcome.errors}
    assert found & codes, f"expected one of {codes}, found {found}"
    assert seconds < HOSTILE_TIME_LIMIT_S, f"took {seconds:.2f} s"


def test_aliases_within_the_budget_parse_with_a_warning() -> None:
    spec = check(HEADER + "hooks:\n  AfterInstall: &s\n    - location: a.sh\n"
                 "  ApplicationStart: *s\n")
    assert isinstance(spec, AppSpec)
    assert [f.code for f in spec.findings] == ["yaml-alias"]
    assert spec.scripts("AfterInstall") == spec.scripts("ApplicationStart")


@pytest.mark.parametrize("bom", ["str", "bytes"])
def test_utf8_bom_before_a_valid_appspec_parses(bom: str) -> None:
    source = "\ufeff" + VALID if bom == "str" else VALID.encode("utf-8-sig")
    assert parse_appspec(source) == parse_appspec(VALID)


def test_one_mebibyte_location_parses_quickly() -> None:
    text = exactly(MAX_APPSPEC_BYTES, VALID + "  ApplicationStart:\n    - location: s/",
                   fill="x")
    assert len(text.encode()) == MAX_APPSPEC_BYTES
    spec, seconds = timed(text)
    assert isinstance(spec, AppSpec)
    assert len(spec.scripts("ApplicationStart")[0].location) > MAX_APPSPEC_BYTES - 200
    assert seconds < HOSTILE_TIME_LIMIT_S, f"took {seconds:.2f} s"


# Inputs that once made parse_appspec raise something other than AppSpecError (bugs found by
# the properties above, now fixed). Each one must stay refused with findings.
SCRIPT = HEADER + "hooks:\n  AfterInstall:\n    - location: a.sh\n      "
PERMISSION = (HEADER + "files:\n  - source: /\n    destination: /opt\n"
              "permissions:\n  - object: /opt\n    ")
ESCAPING: list[Any] = [
    pytest.param(SCRIPT + "sudo: !!bool maybe\n", id="bool-tag-unknown-word"),  # KeyError
    pytest.param(HEADER + "files: !!int ''\n", id="int-tag-empty"),  # IndexError
    pytest.param(HEADER + "files: !!int '-'\n", id="int-tag-sign-only"),  # IndexError
    pytest.param(HEADER + "files: !!float ''\n", id="float-tag-empty"),  # IndexError
    pytest.param(HEADER + "files: !!timestamp soon\n", id="timestamp-tag-not-a-date"),
    pytest.param(SCRIPT + "timeout: .inf\n", id="timeout-infinite"),  # OverflowError
    pytest.param(SCRIPT + "timeout: 1.0e+400\n", id="timeout-overflows-to-infinite"),
    pytest.param(SCRIPT + "timeout: '\u00b2'\n", id="timeout-superscript-two"),  # ValueError
    pytest.param(SCRIPT + "timeout: '" + "9" * 5000 + "'\n", id="timeout-quoted-5000-digits"),
    pytest.param(PERMISSION + "mode: " + HUGE_OCTAL + "\n", id="mode-octal-4400-digits"),
    pytest.param(PERMISSION + "mode: " + HUGE_HEX + "\n", id="mode-hex-4000-digits"),
    pytest.param(PERMISSION + "context: {type: t, range: s" + "9" * 5000 + "}\n",
                 id="selinux-sensitivity-5000-digits"),
    pytest.param(PERMISSION + "context: {type: t, range: 's0:c" + "9" * 5000 + "'}\n",
                 id="selinux-category-5000-digits"),
    pytest.param(HEADER + "files:\n  - source: \ud800\n", id="lone-surrogate-str"),
]


@pytest.mark.parametrize("source", ESCAPING)
def test_known_escapes_are_refused_with_findings(source: str) -> None:
    outcome = check(source)
    assert isinstance(outcome, AppSpecError)


@pytest.mark.parametrize(("hooks", "expected"), [
    pytest.param("  Install: []\n  Bogus: []\n",
                 [("hooks.Bogus", "unknown-key"), ("hooks.Install", "reserved-event")],
                 id="reserved-then-unknown"),
    pytest.param("  AfterInstall:\n    - location: a.sh\n      timeout: '5'\n  Install: []\n",
                 [("hooks.AfterInstall[0].timeout", "quoted-number"),
                  ("hooks.Install", "reserved-event")],
                 id="warning-then-reserved"),
])
def test_each_hook_key_problem_is_reported_once(hooks: str,
                                                expected: list[tuple[str, str]]) -> None:
    outcome = check(HEADER + "hooks:\n" + hooks)
    assert isinstance(outcome, AppSpecError)
    assert sorted((f.yaml_path, f.code) for f in outcome.findings) == expected


# -- e. lint_revision never raises ----------------------------------------------------------------

SCRIPT_CONTENTS = (
    b"#!/bin/sh\necho ok\n",
    b"#!/bin/bash\r\necho ok\r\n",
    b"echo no shebang\n",
    b"#!/bin/sh\nsudo systemctl restart app\n",
    b"\x7fELF\x02\x01\x01",
    b"",
    b"\xff\xfe\x00",
)


@dataclass(frozen=True)
class Revision:
    appspec: str | bytes
    name: str
    entries: tuple[tuple[str, str, bytes, bool], ...]  # path, kind, content, executable
    with_previous: bool


@st.composite
def revisions(draw: st.DrawFn) -> Revision:
    doc = draw(valid_documents)
    paths = [f["source"] for f in doc.get("files", [])]
    paths += [s["location"] for group in doc.get("hooks", {}).values() for s in group]
    entries = tuple(
        (path,
         draw(st.sampled_from(["file", "file", "dir", "missing", "symlink-out", "symlink-loop"])),
         draw(st.sampled_from(SCRIPT_CONTENTS)), draw(st.booleans()))
        for path in paths)
    appspec = draw(st.one_of(renderings(doc), renderings(doc), hostile_yaml(),
                             st.text(any_char), st.binary(max_size=64)))
    name = draw(st.sampled_from(["appspec.yml", "appspec.yml", "appspec.yaml", "other.yml"]))
    return Revision(appspec, name, entries, draw(st.booleans()))


def _materialize(root: Path, entry: tuple[str, str, bytes, bool]) -> None:
    path, kind, content, executable = entry
    target = root / path.lstrip("/")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
            (target / "app.py").write_bytes(content)
        elif kind == "file":
            target.write_bytes(content)
            target.chmod(0o755 if executable else 0o644)
        elif kind == "symlink-out":
            target.symlink_to("/etc")
        elif kind == "symlink-loop":
            target.symlink_to(".")
    except OSError:
        pass  # paths of one revision may collide (a file where a directory should be)


@settings(max_examples=50, deadline=None)
@given(revisions())
def test_lint_revision_never_raises(revision: Revision) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp, "revision")
        root.mkdir()
        data = revision.appspec if isinstance(revision.appspec, bytes) else (
            revision.appspec.encode())
        (root / revision.name).write_bytes(data)
        for entry in revision.entries:
            if entry[0] not in ("/", ""):
                _materialize(root, entry)
        previous = Path(tmp, "previous")
        previous.mkdir()
        findings = lint_revision(root, previous=previous if revision.with_previous else None)
    assert isinstance(findings, list)
    for finding in findings:
        assert finding.message.strip()
        assert finding.severity in set(Severity)


@pytest.mark.parametrize("appspec", [
    # ValueError: embedded null byte, from Path.stat() in the hook script check
    pytest.param(HEADER + 'hooks:\n  AfterInstall:\n    - location: "a\\0b"\n',
                 id="nul-in-location"),
    # ValueError: an int of 4817 digits cannot be formatted into the event-timeout message
    pytest.param(SCRIPT + "timeout: " + HUGE_HEX + "\n", id="timeout-4817-digits"),
])
def test_known_lint_escapes_become_findings(appspec: str, tmp_path: Path) -> None:
    (tmp_path / "appspec.yml").write_text(appspec)
    findings = lint_revision(tmp_path)
    assert findings
