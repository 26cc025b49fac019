"""Modes, ACL entries, SELinux ranges and globs: the official agent's vectors."""

from __future__ import annotations

import pytest

from appspec.permissions import (
    Ace,
    InvalidValue,
    parse_ace,
    parse_mode,
    parse_selinux_range,
    simple_glob_matches,
)

from .support import errors_of, spec_of

# --- modes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "text", "bits"), [
    ("12", "012", 0o012), ("644", "644", 0o644), ("7777", "7777", 0o7777), ("0", "000", 0),
    ("6763", "6763", 0o6763),
])
def test_mode_padding(raw: str, text: str, bits: int) -> None:
    mode = parse_mode(raw)
    assert (mode.text, mode.bits) == (text, bits)


def test_mode_6763_special_bits() -> None:
    mode = parse_mode("6763")
    assert (mode.setuid, mode.setgid, mode.sticky) == (True, True, False)


@pytest.mark.parametrize(("raw", "needle"), [
    ("12345", "5 characters"), ("12a", "'a'"), ("999", "'9'"), ("-1", "'-'"),
    ("true", "'t'"),
])
def test_bad_modes(raw: str, needle: str) -> None:
    with pytest.raises(InvalidValue, match=needle):
        parse_mode(raw)


def test_modes_in_yaml_as_the_official_agent_reads_them() -> None:
    spec = spec_of("""
        permissions:
          - {object: /a, mode: 7777}
          - {object: /b, mode: 0000}
          - {object: /c, mode: 777}
          - {object: /d, mode: 12}
          - {object: /e, mode: '0644'}
    """)
    assert [p.mode.text if p.mode else None for p in spec.permissions] == [
        "7777", "000", "777", "012", "0644"]
    assert spec.findings == ()


def test_leading_zero_mode_is_octal_in_yaml_11() -> None:
    spec = spec_of("permissions:\n  - {object: /a, mode: 0644}\n")
    assert spec.permissions[0].mode is not None
    assert spec.permissions[0].mode.text == "420"
    (warning,) = spec.findings
    assert warning.code == "mode-octal"
    assert "'mode: 644'" in warning.message


def test_leading_zero_mode_that_becomes_invalid_is_one_clear_error() -> None:
    (error,) = errors_of("permissions:\n  - {object: /a, mode: 0755}\n")
    assert error.code == "mode"
    assert "octal number 493" in error.message
    assert error.yaml_path == "permissions[0].mode"


@pytest.mark.parametrize("mode", ["12345", "12a", "[1]"])
def test_bad_modes_in_yaml_have_locations(mode: str) -> None:
    (error,) = errors_of(f"permissions:\n  - object: /a\n    mode: {mode}\n")
    assert error.yaml_path == "permissions[0].mode"
    assert error.position is not None and error.position.line == 5


# --- ACL entries -----------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "normalised"), [
    ("u:henry:7", "user:henry:rwx"),
    ("d:g:manager:rw", "default:group:manager:rw-"),
    ("d:u:bob:7", "default:user:bob:rwx"),
    ("m:0", "mask::---"),
    ("d:bob:rwx", "default:user:bob:rwx"),
    ("default::rw", "default:user::rw-"),
    ("m::7", "mask::rwx"),
    ("mask::7", "mask::rwx"),
    ("g:dev:7", "group:dev:rwx"),
    ("group:dev:7", "group:dev:rwx"),
    ("user:bob:7", "user:bob:rwx"),
    ("u:mask:7", "user:mask:rwx"),
    ("u:other:7", "user:other:rwx"),
    ("bob:0", "user:bob:---"),
    ("m:7", "mask::rwx"),
    ("mask:", "mask::---"),
    ("d:o:3", "default:other::-wx"),
    ("d:m:7", "default:mask::rwx"),
])
def test_ace_normalisation(entry: str, normalised: str) -> None:
    assert str(parse_ace(entry)) == normalised


@pytest.mark.parametrize("entry", [
    "7", "d:u:bob:7:rwx", "invalid:u:bob:7:rwx", "d:invalid:bob:7:rwx", "d:d:bob:7:rwx",
    "mask:name:rwx", "d:other:name:rwx", "x:bob:7",
])
def test_malformed_aces(entry: str) -> None:
    with pytest.raises(InvalidValue, match="is not of the form"):
        parse_ace(entry)


def test_invalid_permission_character() -> None:
    with pytest.raises(InvalidValue, match="'d' in its permissions"):
        parse_ace("user:bob:rwxd")


@pytest.mark.parametrize("entry", ["u::7", "g::7", "o:7"])
def test_base_entries_must_use_mode(entry: str) -> None:
    with pytest.raises(InvalidValue, match="set base permissions with 'mode'"):
        parse_ace(entry)
    assert parse_ace(entry, base_allowed=True).name == ""


def test_acls_in_yaml_report_each_bad_entry() -> None:
    found = errors_of("permissions:\n  - object: /a\n    acls: [ 'bob:6', 'o:7', 7, 'u:x:q' ]\n")
    assert [f.yaml_path for f in found] == [
        "permissions[0].acls[1]", "permissions[0].acls[2]", "permissions[0].acls[3]"]


# --- SELinux ranges --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "low", "high", "categories", "compressed"), [
    ("s3-s5:c0.c7,c13", 3, 5, (0, 1, 2, 3, 4, 5, 6, 7, 13), "s3-s5:c0.c7,c13"),
    ("s0:c0.c1,c15,c7.c9", 0, 0, (0, 1, 7, 8, 9, 15), "s0:c0.c1,c7.c9,c15"),
    ("s5", 5, 5, None, "s5"),
    ("s3", 3, 3, None, "s3"),
    ("s3-s7:c5,c8.c10,c17", 3, 7, (5, 8, 9, 10, 17), "s3-s7:c5,c8.c10,c17"),
    ("s0:c1023", 0, 0, (1023,), "s0:c1023"),
])
def test_selinux_ranges(text: str, low: int, high: int, categories: tuple[int, ...] | None,
                        compressed: str) -> None:
    parsed = parse_selinux_range(text)
    assert (parsed.low, parsed.high, parsed.categories) == (low, high, categories)
    assert str(parsed) == compressed


@pytest.mark.parametrize(("text", "needle"), [
    ("s3-s2:c0", "below the low one"),
    ("s3-", "empty part"),
    (":c0", "empty part"),
    ("s", "not a valid sensitivity"),
    ("s-1", "not a valid sensitivity"),
    ("sd3", "not a valid sensitivity"),
    ("d3", "not a valid sensitivity"),
    ("s0:c2.c1", "goes down"),
    ("s0:c2.", "empty part"),
    ("s0:", "empty part"),
    ("s0:c", "not a valid category"),
    ("s0:c-1", "not a valid category"),
    ("s0:c1024", "above c1023"),
    ("s0:cd3", "not a valid category"),
    ("s0:d3", "not a valid category"),
    ("s0:c1,c1", "more than once"),
    ("s0:c0.c3,c2", "more than once"),
])
def test_bad_selinux_ranges(text: str, needle: str) -> None:
    with pytest.raises(InvalidValue, match=needle):
        parse_selinux_range(text)


def test_context_in_yaml() -> None:
    spec = spec_of("""
        permissions:
          - object: /srv
            context: {name: user_u, type: unconfined_t, range: 's3-s5:c0.c7,c13'}
    """)
    context = spec.permissions[0].context
    assert context is not None
    assert (context.name, context.type, str(context.range)) == (
        "user_u", "unconfined_t", "s3-s5:c0.c7,c13")


@pytest.mark.parametrize(("context", "code", "path"), [
    ("{name: name}", "missing-key", "permissions[0].context.type"),
    ("{type: t, role: r}", "selinux-role", "permissions[0].context.role"),
    ("{type: t, range: 's3-s2'}", "selinux-range", "permissions[0].context.range"),
    ("{type: t, level: s0}", "unknown-key", "permissions[0].context.level"),
])
def test_bad_contexts(context: str, code: str, path: str) -> None:
    (error,) = errors_of(f"permissions:\n  - object: /srv\n    context: {context}\n")
    assert (error.code, error.yaml_path) == (code, path)


# --- the rest of a permission ----------------------------------------------------------------


def test_full_permission_entry() -> None:
    spec = spec_of("""
        permissions:
          - object: /test
            pattern: 'prefix*'
            except: ['*ReadMe', '*.tmp']
            type: [file]
            owner: bob
            group: dev
            mode: 6763
            acls: ['u:henry:7', 'd:g:manager:rw']
    """)
    (p,) = spec.permissions
    assert (p.object, p.pattern, p.excepts, p.types, p.owner, p.group) == (
        "/test", "prefix*", ("*ReadMe", "*.tmp"), ("file",), "bob", "dev")
    assert p.acls == (Ace("user", "henry", True, True, True),
                      Ace("group", "manager", True, True, False, default=True))


def test_permission_defaults() -> None:
    (p,) = spec_of("permissions:\n  - object: /\n    pattern: '**'\n").permissions
    assert (p.pattern, p.excepts, p.types, p.mode, p.acls, p.context) == (
        "**", (), ("file", "directory"), None, None, None)


@pytest.mark.parametrize(("entry", "code", "path"), [
    ("{mode: 644}", "missing-key", "permissions[0].object"),
    ("{object: test}", "object-relative", "permissions[0].object"),
    ("{object: /a, type: [file, link]}", "object-type", "permissions[0].type[1]"),
    ("{object: /a, type: file}", "wrong-type", "permissions[0].type"),
    ("{object: /a, owner: 1000}", "wrong-type", "permissions[0].owner"),
    ("{object: /a, except: '*.tmp'}", "wrong-type", "permissions[0].except"),
    ("{object: /a, recursive: true}", "unknown-key", "permissions[0].recursive"),
])
def test_bad_permission_entries(entry: str, code: str, path: str) -> None:
    (error,) = errors_of(f"permissions:\n  - {entry}\n")
    assert (error.code, error.yaml_path) == (code, path)


def test_pattern_with_slash_warns_that_it_never_matches() -> None:
    spec = spec_of("permissions:\n  - {object: /a, pattern: 'sub/*.sh'}\n")
    assert [f.code for f in spec.findings] == ["glob-slash"]


# --- the agent's simple glob -----------------------------------------------------------------


@pytest.mark.parametrize(("name", "pattern", "expected"), [
    ("prefix", "prefix*", True),
    ("prefix_matches", "prefix*", True),
    ("prefix/does_not_match", "prefix*", False),
    ("not_prefix", "prefix*", False),
    ("this.tmp", "*.tmp", True),
    ("this_ReadMe", "*ReadMe", True),
    ("ab", "a*b", True),
    ("a.b", "a?b", False),
    ("a?b", "a?b", True),
    ("x", "*", True),
    ("[x]", "[x]", True),
])
def test_simple_glob(name: str, pattern: str, expected: bool) -> None:
    assert simple_glob_matches(name, pattern) is expected
