"""Values of the ``permissions`` section: modes, ACL entries, SELinux ranges, simple globs.

Each parser follows the official agent's rules (padding of modes, the ``u:``/``d:`` short forms of
ACL entries, the SELinux range grammar) and raises ``InvalidValue`` with a message a user can act
on. Nothing here touches the filesystem.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

MAX_SELINUX_CATEGORY = 1023

AceType = Literal["user", "group", "mask", "other"]


class InvalidValue(ValueError):
    """A value that breaks its field's grammar; the message says what is allowed."""


@dataclass(frozen=True, slots=True)
class Mode:
    """A permission mode as the official agent keeps it: 3 or 4 octal digits, as text."""

    text: str

    @property
    def bits(self) -> int:
        return int(self.text, 8)

    @property
    def setuid(self) -> bool:
        return bool(self.bits & 0o4000)

    @property
    def setgid(self) -> bool:
        return bool(self.bits & 0o2000)

    @property
    def sticky(self) -> bool:
        return bool(self.bits & 0o1000)

    def __str__(self) -> str:
        return self.text


def parse_mode(raw: str) -> Mode:
    """Pad to 3 characters with zeros; at most 4 characters, each 0-7 (``12`` -> ``012``)."""
    text = raw.rjust(3, "0")
    if len(text) > 4:
        raise InvalidValue(
            f"mode {raw!r} is {len(raw)} characters long; a mode has 1 to 4 octal digits "
            "(for example 644, 0755 quoted, or 2775)"
        )
    for char in text:
        if char not in "01234567":
            raise InvalidValue(
                f"mode {raw!r} contains {char!r}; a mode has only the digits 0-7 "
                "(for example 644 or 755)"
            )
    return Mode(text)


@dataclass(frozen=True, slots=True)
class Ace:
    """One ACL entry, normalised: ``[default:]<type>:<name>:<rwx>``."""

    type: AceType
    name: str = ""
    read: bool = False
    write: bool = False
    execute: bool = False
    default: bool = False

    def __str__(self) -> str:
        perms = ("r" if self.read else "-") + ("w" if self.write else "-")
        perms += "x" if self.execute else "-"
        return ("default:" if self.default else "") + f"{self.type}:{self.name}:{perms}"


_TYPE_WORDS: dict[str, AceType] = {
    "u": "user", "user": "user", "g": "group", "group": "group",
    "m": "mask", "mask": "mask", "o": "other", "other": "other",
}
_DEFAULT_WORDS = ("d", "default")


def parse_ace(entry: str, *, base_allowed: bool = False) -> Ace:
    """Parse ``[d|default:][u|user|g|group|m|mask|o|other:]<name>:<perm>``.

    ``perm`` is one octal digit or letters from ``rwx-``. Base entries (no name, not default,
    not mask) are refused unless ``base_allowed``: the ``mode`` field sets those.
    """
    bad = InvalidValue(
        f"ACL entry {entry!r} is not of the form [d:][u|g|m|o:]name:perm "
        "(for example 'u:bob:rw', 'd:g:dev:r-x', 'm::rx')"
    )
    parts = entry.split(":")
    if not 2 <= len(parts) <= 4:
        raise bad
    perm, name_part, *prefix = reversed(parts)
    default = False
    ace_type: AceType | None = None
    if len(prefix) == 2:
        if prefix[1] not in _DEFAULT_WORDS:
            raise bad
        default = True
    if prefix:
        word = prefix[0]
        if word in _DEFAULT_WORDS and not default:
            default = True
        elif word in _TYPE_WORDS:
            ace_type = _TYPE_WORDS[word]
        else:
            raise bad
    name = name_part
    if name_part in ("m", "mask", "o", "other"):
        if ace_type is None:
            ace_type, name = _TYPE_WORDS[name_part], ""
        else:
            name = _TYPE_WORDS[name_part]
    if ace_type is None:
        ace_type = "user"
    if ace_type in ("mask", "other") and name:
        raise bad
    if not base_allowed and not default and ace_type != "mask" and not name:
        raise InvalidValue(
            f"ACL entry {entry!r} is a base entry (no user or group name); set base permissions "
            "with 'mode' instead, or name a user or group"
        )
    read, write, execute = _parse_perm(entry, perm)
    return Ace(ace_type, name, read, write, execute, default)


def _parse_perm(entry: str, perm: str) -> tuple[bool, bool, bool]:
    if len(perm) == 1 and perm in "01234567":
        bits = int(perm)
        return bool(bits & 4), bool(bits & 2), bool(bits & 1)
    for char in perm:
        if char not in "rwx-":
            raise InvalidValue(
                f"ACL entry {entry!r} has {char!r} in its permissions; use one octal digit "
                "(0-7) or the letters r, w, x and -"
            )
    return "r" in perm, "w" in perm, "x" in perm


def full_acl(aces: Sequence[Ace], mode_bits: int) -> list[str]:
    """The complete ACL that ``setfacl --set`` needs, completing ``aces`` from a file's mode.

    Base entries come from the file's current mode; a mask is added when named entries exist
    without one; default base entries (and a default mask) when any default entry exists.
    """
    u, g, o = (mode_bits >> 6) & 7, (mode_bits >> 3) & 7, mode_bits & 7
    extra = [_ace_bits("user", u), _ace_bits("group", g), _ace_bits("other", o)]
    named = [a for a in aces if not a.default and a.name]
    if named and not any(not a.default and a.type == "mask" for a in aces):
        extra.append(_ace_bits("mask", g))
    defaults = [a for a in aces if a.default]
    if defaults:
        if not any(a.type == "user" and not a.name for a in defaults):
            extra.append(_ace_bits("user", u, default=True))
        default_group = next((a for a in defaults if a.type == "group" and not a.name), None)
        if default_group is None:
            default_group = _ace_bits("group", g, default=True)
            extra.append(default_group)
        if not any(a.type == "other" for a in defaults):
            extra.append(_ace_bits("other", o, default=True))
        if any(a.name for a in defaults) and not any(a.type == "mask" for a in defaults):
            extra.append(Ace("mask", "", default_group.read, default_group.write,
                             default_group.execute, default=True))
    return [str(a) for a in [*aces, *extra]]


def _ace_bits(ace_type: AceType, bits: int, *, default: bool = False) -> Ace:
    return Ace(ace_type, "", bool(bits & 4), bool(bits & 2), bool(bits & 1), default)


@dataclass(frozen=True, slots=True)
class SelinuxRange:
    """``s<low>[-s<high>][:c<a>[.c<b>](,...)]``, categories kept sorted and expanded."""

    low: int
    high: int
    categories: tuple[int, ...] | None = None

    def __str__(self) -> str:
        text = f"s{self.low}" + (f"-s{self.high}" if self.high != self.low else "")
        if self.categories is None:
            return text
        return text + ":" + ",".join(_compress(self.categories))


def _compress(categories: Sequence[int]) -> Iterable[str]:
    start = prev = categories[0]
    for cat in [*categories[1:], None]:
        if cat is not None and cat == prev + 1:
            prev = cat
            continue
        yield f"c{start}" if start == prev else f"c{start}.c{prev}"
        if cat is not None:
            start = prev = cat


def _split(text: str, sep: str, whole: str) -> list[str]:
    parts = text.split(sep, 1)
    if any(p == "" for p in parts):
        raise InvalidValue(f"SELinux range {whole!r}: {text!r} has an empty part around {sep!r}")
    return parts


_LEVEL = re.compile(r"[0-9]{1,9}")  # bounded: no 5,000-digit int() on hostile input


def _number(text: str, prefix: str, whole: str) -> int:
    digits = text[1:]
    if not text.startswith(prefix) or not _LEVEL.fullmatch(digits):
        kind = "sensitivity" if prefix == "s" else "category"
        raise InvalidValue(
            f"SELinux range {whole!r}: {text!r} is not a valid {kind} "
            f"(write {prefix} followed by a number, like {prefix}0)"
        )
    return int(digits)


def parse_selinux_range(text: str) -> SelinuxRange:
    """Parse an MLS range the way the official agent does (``s3-s2`` and ``c1024`` are errors)."""
    parts = _split(text, ":", text)
    levels = _split(parts[0], "-", text)
    low = _number(levels[0], "s", text)
    high = _number(levels[1], "s", text) if len(levels) == 2 else low
    if high < low:
        raise InvalidValue(
            f"SELinux range {text!r}: the high sensitivity s{high} is below the low one s{low}"
        )
    if len(parts) == 1:
        return SelinuxRange(low, high)
    categories: list[int] = []
    for item in parts[1].split(","):
        if "." in item:
            a, b = (_category(c, text) for c in _split(item, ".", text))
            if b < a:
                raise InvalidValue(f"SELinux range {text!r}: category range {item!r} goes down")
            categories.extend(range(a, b + 1))
        else:
            categories.append(_category(item, text))
    if len(set(categories)) != len(categories):
        raise InvalidValue(f"SELinux range {text!r} lists a category more than once")
    return SelinuxRange(low, high, tuple(sorted(categories)))


def _category(text: str, whole: str) -> int:
    value = _number(text, "c", whole)
    if value > MAX_SELINUX_CATEGORY:
        raise InvalidValue(
            f"SELinux range {whole!r}: category {text!r} is above c{MAX_SELINUX_CATEGORY}"
        )
    return value


def simple_glob_matches(name: str, pattern: str) -> bool:
    """The agent's glob: only ``*`` is special and a name with ``/`` never matches."""
    if "/" in name:
        return False
    regex = ".*".join(re.escape(piece) for piece in pattern.split("*"))
    return re.fullmatch(regex, name, flags=re.DOTALL) is not None
