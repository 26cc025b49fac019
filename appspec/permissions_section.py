"""Reads the ``permissions`` section into ``Permission`` values."""

from __future__ import annotations

from typing import cast

from .model import DEFAULT_PATTERN, ObjectType, Permission, SelinuxContext
from .permissions import Ace, InvalidValue, Mode, parse_ace, parse_mode, parse_selinux_range
from .reader import Collector, describe, join
from .yaml_nodes import Map, Node, Scalar

PERMISSION_KEYS = ("object", "pattern", "except", "type", "owner", "group", "mode", "acls",
                   "context")
CONTEXT_KEYS = ("name", "type", "range")
OBJECT_TYPES = ("file", "directory")


def _absent(node: Node | None) -> bool:
    return node is None or (isinstance(node, Scalar) and node.value is None)


def read_permissions(c: Collector, node: Node | None) -> tuple[Permission, ...]:
    if _absent(node):
        return ()
    seq = c.sequence(node, "permissions", what="permissions")
    if seq is None:
        return ()
    result = []
    for i, item in enumerate(seq.items):
        permission = _permission(c, item, join("permissions", i))
        if permission is not None:
            result.append(permission)
    return tuple(result)


def _permission(c: Collector, node: Node, path: str) -> Permission | None:
    entry = c.mapping(node, path, allowed=PERMISSION_KEYS, what="a permissions entry")
    if entry is None:
        return None
    before = len(c.findings)
    obj = _object(c, entry, path)
    pattern = _glob(c, entry.get("pattern"), join(path, "pattern")) or DEFAULT_PATTERN
    permission = Permission(
        object=obj or "/",
        pattern=pattern,
        excepts=_excepts(c, entry.get("except"), join(path, "except")),
        types=_types(c, entry.get("type"), join(path, "type")),
        owner=_name(c, entry.get("owner"), join(path, "owner"), "owner"),
        group=_name(c, entry.get("group"), join(path, "group"), "group"),
        mode=_mode(c, entry.get("mode"), join(path, "mode")),
        acls=_acls(c, entry.get("acls"), join(path, "acls")),
        context=_context(c, entry.get("context"), join(path, "context")),
        position=entry.position,
    )
    if len(c.errors_since(before)) or obj is None:
        return None
    return permission


def _object(c: Collector, entry: Map, path: str) -> str | None:
    node = entry.get("object")
    if node is None:
        c.error("missing-key", "this permission has no object; add the absolute path of an "
                "installed file or directory (for example 'object: /opt/app')", join(path,
                "object"), entry)
        return None
    obj = c.text(node, join(path, "object"), what="object")
    if obj is not None and not obj.startswith("/"):
        c.error("object-relative", f"object {obj!r} must be an absolute path on the Pi "
                "(the official agent would resolve it against '/')", join(path, "object"), node)
        return None
    return obj


def _glob(c: Collector, node: Node | None, path: str) -> str | None:
    if _absent(node):
        return None
    value = c.text(node, path, what="pattern")
    if value is not None and "/" in value:
        c.warning("glob-slash", f"{value!r} contains '/', but patterns are matched against "
                  "names directly under the object, so it can never match", path, node)
    return value


def _excepts(c: Collector, node: Node | None, path: str) -> tuple[str, ...]:
    if _absent(node):
        return ()
    seq = c.sequence(node, path, what="except", hint="; for one pattern write [\"*.tmp\"]")
    if seq is None:
        return ()
    return tuple(g for i, item in enumerate(seq.items)
                 if (g := _glob(c, item, join(path, i))) is not None)


def _types(c: Collector, node: Node | None, path: str) -> tuple[ObjectType, ...]:
    if _absent(node):
        return ("file", "directory")
    hint = f"; write [{node.text}]" if isinstance(node, Scalar) else ""
    seq = c.sequence(node, path, what="type", hint=hint)
    if seq is None:
        return ("file", "directory")
    types: list[ObjectType] = []
    for i, item in enumerate(seq.items):
        if isinstance(item, Scalar) and item.value in OBJECT_TYPES:
            types.append(cast(ObjectType, item.value))
        else:
            c.error("object-type", f"type entries must be 'file' or 'directory'; found "
                    f"{describe(item)}", join(path, i), item)
    if not seq.items:
        c.warning("empty-type", "type is an empty list, so this permission applies to nothing",
                  path, node)
    return tuple(types)


def _name(c: Collector, node: Node | None, path: str, what: str) -> str | None:
    if isinstance(node, Scalar) and isinstance(node.value, int) and not isinstance(node.value,
                                                                                  bool):
        c.error("wrong-type", f"{what} must be a {'user' if what == 'owner' else 'group'} name; "
                f"numeric ids like {node.text} are not looked up", path, node)
        return None
    return c.optional_text(node, path, what=what)


_MODE_BOUND = 10**12  # larger ints are never modes; refusing them early keeps int/str cheap


def _mode(c: Collector, node: Node | None, path: str) -> Mode | None:
    if _absent(node):
        return None
    if not isinstance(node, Scalar):
        c.error("wrong-type", f"mode must be a number like 644; found {describe(node)}",
                path, node)
        return None
    if isinstance(node.value, int) and abs(node.value) > _MODE_BOUND:
        c.error("mode", f"mode {node.text[:20]}... is not a file mode (three or four octal "
                "digits like 644)", path, node)
        return None
    raw = _ruby_to_s(node.value)
    octal = _yaml11_octal(node) and int(node.text, 10) != node.value
    advice = (f"mode {node.text} is read by YAML 1.1 (as by the official agent) as the octal "
              f"number {node.value}, so the mode would be {raw!r}; write "
              f"'mode: {node.text.lstrip('0') or '0'}' instead")
    try:
        mode = parse_mode(raw)
    except InvalidValue as exc:
        c.error("mode", advice if octal else str(exc), path, node)
        return None
    if octal:
        c.warning("mode-octal", advice, path, node)
    return mode


def _yaml11_octal(node: Scalar) -> bool:
    text = node.text.lstrip("+")
    return node.kind == "int" and len(text) > 1 and text.startswith("0") and text.isdigit()


def _ruby_to_s(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _acls(c: Collector, node: Node | None, path: str) -> tuple[Ace, ...] | None:
    if _absent(node):
        return None
    seq = c.sequence(node, path, what="acls")
    if seq is None:
        return None
    aces: list[Ace] = []
    for i, item in enumerate(seq.items):
        text = item.value if isinstance(item, Scalar) else None
        if not isinstance(text, str):
            c.error("acl", f"an ACL entry must be text like 'u:bob:rw'; found {describe(item)}",
                    join(path, i), item)
            continue
        try:
            aces.append(parse_ace(text))
        except InvalidValue as exc:
            c.error("acl", str(exc), join(path, i), item)
    return tuple(aces)


def _context(c: Collector, node: Node | None, path: str) -> SelinuxContext | None:
    if _absent(node):
        return None
    if isinstance(node, Map) and node.get("role") is not None:
        c.error("selinux-role", "context.role is not supported (the official agent refuses it "
                "too); remove it", join(path, "role"), node.get("role"))
    entry = c.mapping(node, path, allowed=(*CONTEXT_KEYS, "role"), what="context")
    if entry is None:
        return None
    type_node = entry.get("type")
    context_type = None
    if type_node is None:
        c.error("missing-key", "context needs a type (for example 'type: httpd_sys_content_t')",
                join(path, "type"), entry)
    else:
        context_type = c.text(type_node, join(path, "type"), what="context.type")
    name = c.optional_text(entry.get("name"), join(path, "name"), what="context.name")
    range_node = entry.get("range")
    selinux_range = None
    if not _absent(range_node):
        text = c.text(range_node, join(path, "range"), what="context.range")
        if text is not None:
            try:
                selinux_range = parse_selinux_range(text)
            except InvalidValue as exc:
                c.error("selinux-range", str(exc), join(path, "range"), range_node)
    if context_type is None:
        return None
    return SelinuxContext(context_type, name, selinux_range)
