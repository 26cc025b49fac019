"""Turns AppSpec text into an ``AppSpec`` with the official agent's semantics, strictly.

Everything the official agent rejects is an error here too. On top of that we reject what it
silently ignores or misreads (unknown keys, wrong types, unknown hook events, script locations
that leave the revision, relative destinations), because on a Pi on a roof a typo should fail
validation on the workstation, not a deployment. Every error found is reported, with its YAML
path and position.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable

from .errors import AppSpecInvalidError, Finding, Severity
from .events import AGENT_EVENTS, EVENT_TIME_LIMIT_S, SERVICE_EVENTS, LifecycleEvent
from .model import (
    DEFAULT_TIMEOUT_S,
    AppSpec,
    FileExistsBehavior,
    FileMapping,
    HookScript,
)
from .permissions_section import read_permissions
from .reader import Collector, describe, join, suggestion
from .yaml_nodes import Document, Map, Node, Scalar, load_document

TOP_LEVEL_KEYS = ("version", "os", "files", "hooks", "permissions", "file_exists_behavior")
SCRIPT_KEYS = ("location", "timeout", "runas", "sudo")
FILE_KEYS = ("source", "destination")
_RESERVED = (*AGENT_EVENTS, *SERVICE_EVENTS)
# A POSIX user name; anything else in runas would be handed to su (and, in the official agent,
# to a shell).
_DIGITS = re.compile(r"[0-9]{1,12}")
# Far above anything CodeDeploy honours (3,600 s per event, which lint checks), yet small enough
# that no value can overflow or produce a 5,000-digit message; the official agent has no bound.
MAX_TIMEOUT_S = 1_000_000_000
_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")


def parse_appspec(text: str | bytes, *, file: str | None = None,
                  custom_events: Iterable[str] = ()) -> AppSpec:
    """Parse and validate AppSpec text; raise ``AppSpecInvalidError`` listing every error.

    ``custom_events`` are extra event names allowed in ``hooks`` (``deploy-local --events``).
    Warnings are kept on the returned ``AppSpec.findings``.
    """
    blank = not text.strip()  # the official agent calls a whitespace-only file empty
    doc = load_document("" if blank else text)
    spec, findings = _Parser(doc, custom_events).parse()
    findings = sorted((f.with_file(file) if file else f for f in findings), key=_order)
    if spec is None or any(f.severity is Severity.ERROR for f in findings):
        raise AppSpecInvalidError(findings)
    return AppSpec(spec.version, spec.os, spec.files, spec.hooks, spec.permissions,
                   spec.file_exists_behavior, file, tuple(findings))


class _Parser(Collector):
    def __init__(self, doc: Document, custom_events: Iterable[str]) -> None:
        super().__init__()
        self.doc = doc
        self.findings.extend(doc.findings)
        self.events = [e.value for e in LifecycleEvent] + list(custom_events)

    def parse(self) -> tuple[AppSpec | None, list[Finding]]:
        root = self.doc.root
        if self.doc.uses_aliases:
            self.warning("yaml-alias", "this file uses YAML anchors and aliases (&name/*name); "
                         "the official agent on Ruby 3.1 or later (Raspberry Pi OS Bookworm) "
                         "refuses them, so write the values out", "", None)
        if root is None or (isinstance(root, Scalar) and root.value is None):
            if not self.findings:
                self.error("empty", "the AppSpec file is empty; it must define at least "
                           "'version: 0.0' and 'os: linux'", "", None)
            return None, self.findings
        top = self.mapping(root, "", allowed=TOP_LEVEL_KEYS, what="the AppSpec")
        if top is None:
            return None, self.findings
        self._hint_other_platforms(top)
        version = self._version(top.get("version"), top)
        os_name = self._os(top.get("os"), top)
        spec = AppSpec(
            version=version,
            os=os_name,
            files=self._files(top.get("files")),
            hooks=self._hooks(top.get("hooks")),
            permissions=read_permissions(self, top.get("permissions")),
            file_exists_behavior=self._file_exists_behavior(top.get("file_exists_behavior")),
        )
        return spec, self.findings

    def _hint_other_platforms(self, top: Map) -> None:
        for key in top.key_nodes():
            if isinstance(key.value, str) and key.value.lower() == "resources":
                self.error("wrong-platform", "'Resources' belongs to ECS and Lambda AppSpecs; "
                           "an EC2/On-Premises AppSpec uses 'files' and 'hooks'", key.text, key)

    def _version(self, node: Node | None, top: Map) -> float:
        value = node.value if isinstance(node, Scalar) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
            return 0.0
        found = "it is missing" if node is None else f"found {describe(node)}"
        hint = " (quoted, so it is text, not a number)" if _quoted(node) else ""
        self.error("version", f"version must be the number 0.0, unquoted; {found}{hint}",
                   "version", node or top)
        return 0.0

    def _os(self, node: Node | None, top: Map) -> str:
        value = node.value if isinstance(node, Scalar) else None
        if value == "linux":
            return "linux"
        if value == "windows":
            self.error("os", "os is 'windows', but pifleet-agent runs on Linux; use 'os: linux'",
                       "os", node)
        else:
            found = "it is missing" if node is None else f"found {describe(node)}"
            self.error("os", f"os must be 'linux'; {found}", "os", node or top)
        return "linux"

    def _file_exists_behavior(self, node: Node | None) -> FileExistsBehavior | None:
        if node is None or (isinstance(node, Scalar) and node.value is None):
            return None
        choices = [b.value for b in FileExistsBehavior]
        if isinstance(node, Scalar) and node.value in choices:
            return FileExistsBehavior(node.value)
        hint = suggestion(node.text, choices) if isinstance(node, Scalar) else ""
        self.error("file-exists-behavior", f"file_exists_behavior must be one of "
                   f"{', '.join(choices)}; found {describe(node)}.{hint}",
                   "file_exists_behavior", node)
        return None

    def _files(self, node: Node | None) -> tuple[FileMapping, ...]:
        if node is None or (isinstance(node, Scalar) and node.value is None):
            return ()
        seq = self.sequence(node, "files", what="files")
        if seq is None:
            return ()
        result: list[FileMapping] = []
        seen: dict[tuple[str, str], int] = {}
        for i, item in enumerate(seq.items):
            path = join("files", i)
            entry = self.mapping(item, path, allowed=FILE_KEYS, what="a files entry")
            if entry is None:
                continue
            source = self._source(entry.get("source"), path, entry)
            destination = self._destination(entry.get("destination"), path, entry)
            if source is None or destination is None:
                continue
            key = (posixpath.normpath(source), posixpath.normpath(destination))
            if key in seen:
                self.error("duplicate-file", f"this entry copies {source!r} to {destination!r} "
                           f"again (same as files[{seen[key]}]); remove one", path, entry)
                continue
            seen[key] = i
            result.append(FileMapping(source, destination, entry.position))
        return tuple(result)

    def _source(self, node: Node | None, path: str, entry: Map) -> str | None:
        path = join(path, "source")
        if node is None:
            self.error("missing-key", "this files entry has no source; add the file or folder "
                       "of the revision to copy (for example 'source: app')", path, entry)
            return None
        source = self.text(node, path, what="source")
        if source is None:
            return None
        if source.startswith("/") and source.strip("/") != "":
            self.error("source-absolute", f"source {source!r} starts with '/'; sources are "
                       f"relative to the revision root: write {source.lstrip('/')!r} "
                       "('/' alone means the whole revision)", path, node)
            return None
        if ".." in source.split("/"):
            self.error("source-escapes", f"source {source!r} contains '..'; a source must stay "
                       "inside the revision", path, node)
            return None
        return source

    def _destination(self, node: Node | None, path: str, entry: Map) -> str | None:
        path = join(path, "destination")
        if node is None:
            self.error("missing-key", "this files entry has no destination; add the absolute "
                       "folder on the Pi to copy into (for example 'destination: /opt/app')",
                       path, entry)
            return None
        destination = self.text(node, path, what="destination")
        if destination is not None and not destination.startswith("/"):
            self.error("destination-relative", f"destination {destination!r} must be an "
                       f"absolute folder on the Pi, like '/{destination.lstrip('./')}'",
                       path, node)
            return None
        return destination

    def _hooks(self, node: Node | None) -> tuple[tuple[str, tuple[HookScript, ...]], ...]:
        if node is None or (isinstance(node, Scalar) and node.value is None):
            return ()
        hooks = self.mapping(node, "hooks", allowed=(*self.events, *_RESERVED), what="hooks")
        if hooks is None:
            return ()
        result: dict[str, tuple[HookScript, ...]] = {}
        for key, value in hooks.items:
            name = key.value
            if name in _RESERVED:
                self.error("reserved-event", f"{key.text} cannot have scripts: CodeDeploy and "
                           "the agent perform it themselves. Use BeforeInstall/AfterInstall "
                           "(around Install) or ApplicationStop (before DownloadBundle).",
                           join("hooks", key.text), key)
            if not isinstance(name, str) or name not in self.events:
                continue
            if isinstance(value, Scalar) and value.value is None:
                continue  # an empty event is ignored, as upstream
            path = join("hooks", name)
            seq = self.sequence(value, path, what=f"hooks.{name}",
                                hint="; put '- ' before 'location'" if isinstance(value, Map)
                                else "")
            if seq is not None:
                result[name] = tuple(
                    s for i, item in enumerate(seq.items)
                    if (s := self._script(item, join(path, i))) is not None)
        return tuple(result.items())

    def _script(self, node: Node, path: str) -> HookScript | None:
        entry = self.mapping(node, path, allowed=SCRIPT_KEYS, what="a hook script")
        if entry is None:
            return None
        location_node = entry.get("location")
        if location_node is None:
            self.error("missing-key", "this script has no location; add the script's path "
                       "inside the revision (for example 'location: scripts/start.sh')",
                       path, entry)
            return None
        location = self.text(location_node, join(path, "location"), what="location")
        timeout = self._timeout(entry.get("timeout"), join(path, "timeout"))
        runas = self._runas(entry.get("runas"), join(path, "runas"))
        sudo = self._sudo(entry.get("sudo"), join(path, "sudo"))
        if location is not None and ".." in location.split("/"):
            self.error("location-escapes", f"location {location!r} contains '..'; hook scripts "
                       "must be inside the revision", join(path, "location"), location_node)
            return None
        if location is None or timeout is None:
            return None
        return HookScript(location, timeout, runas, sudo, entry.position,
                          timeout_given=entry.get("timeout") is not None)

    def _timeout(self, node: Node | None, path: str) -> int | None:
        if node is None or (isinstance(node, Scalar) and node.value is None):
            return DEFAULT_TIMEOUT_S
        value = node.value if isinstance(node, Scalar) else None
        seconds: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            seconds = value
        elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
            seconds = int(value)
            self.warning("quoted-number", f"timeout {value!r} is quoted; it works, but "
                         "write it as a number", path, node)
        elif isinstance(value, float) and 1 <= value <= MAX_TIMEOUT_S:
            seconds = int(value)
            self.warning("fractional-timeout", f"timeout {value} is cut to {seconds} s, "
                         "as the official agent does; use whole seconds", path, node)
        if seconds is not None and seconds > MAX_TIMEOUT_S:
            self.error("timeout", f"timeout is more than {MAX_TIMEOUT_S} s; CodeDeploy stops "
                       f"any event after {EVENT_TIME_LIMIT_S} s, so lower it", path, node)
            return None
        if seconds is None or seconds <= 0:
            self.error("timeout", f"timeout must be a positive whole number of seconds "
                       f"(default {DEFAULT_TIMEOUT_S}); found {describe(node)}", path, node)
            return None
        return seconds

    def _runas(self, node: Node | None, path: str) -> str | None:
        runas = self.optional_text(node, path, what="runas")
        if runas is not None and not _USER_NAME.fullmatch(runas):
            self.error("runas", f"runas {runas!r} is not a user name (letters, digits, '_', "
                       "'-' and '.', not starting with a digit or '-')", path, node)
            return None
        return runas

    def _sudo(self, node: Node | None, path: str) -> bool:
        if node is None or (isinstance(node, Scalar) and node.value is None):
            return False
        if isinstance(node, Scalar) and isinstance(node.value, bool):
            return node.value
        self.error("sudo", f"sudo must be true or false; found {describe(node)}", path, node)
        return False


def _order(finding: Finding) -> tuple[int, int]:
    pos = finding.position
    return (pos.line, pos.column) if pos else (0, 0)


def _quoted(node: Node | None) -> bool:
    return isinstance(node, Scalar) and node.quoted
