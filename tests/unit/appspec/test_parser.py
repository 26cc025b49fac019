"""Top level, files and hooks: the official agent's vectors and our stricter rules."""

from __future__ import annotations

import pytest

from appspec import AppSpecInvalidError, LifecycleEvent, Severity, parse_appspec

from .support import codes, errors_of, spec_of


@pytest.mark.parametrize("text", ["", "   \n\t\n", "# only a comment\n", "~\n"],
                         ids=["empty", "whitespace", "comment", "null"])
def test_empty_appspec_is_an_error(text: str) -> None:
    with pytest.raises(AppSpecInvalidError) as info:
        parse_appspec(text)
    assert codes(list(info.value.errors)) == ["empty"]
    assert "version" in info.value.errors[0].message


@pytest.mark.parametrize("version", ["0.0", "0", "0.00", "+0.0"])
def test_version_zero_as_a_number_passes(version: str) -> None:
    assert spec_of("", header=f"version: {version}\nos: linux\n").version == 0.0


@pytest.mark.parametrize(("version", "shown"), [
    ('"0.0"', "quoted"), ("invalid", "'invalid'"), ("1.0", "1.0"), ("false", "boolean"),
    ("[0.0]", "a list"), ("", "null"),
], ids=["quoted", "word", "one", "bool-false-is-not-zero", "list", "null"])
def test_version_must_be_the_number_zero(version: str, shown: str) -> None:
    (error,) = errors_of("", header=f"version: {version}\nos: linux\n")
    assert error.code == "version"
    assert shown in error.message
    assert error.yaml_path == "version"
    assert error.position is not None and error.position.line == 1


def test_missing_version_and_os_are_both_reported() -> None:
    found = errors_of("files: []\n", header="")
    assert sorted(codes(found)) == ["os", "version"]
    assert all("missing" in f.message for f in found)


@pytest.mark.parametrize(("os_value", "needle"), [
    ("unsupported", "must be 'linux'"), ("windows", "runs on Linux"), ("Linux", "must be"),
])
def test_os_must_be_linux(os_value: str, needle: str) -> None:
    (error,) = errors_of("", header=f"version: 0.0\nos: {os_value}\n")
    assert error.code == "os"
    assert needle in error.message


def test_no_hooks_or_files_gives_empty_collections() -> None:
    spec = spec_of("")
    assert spec.hooks == ()
    assert spec.files == ()
    assert spec.permissions == ()
    assert spec.file_exists_behavior is None


@pytest.mark.parametrize("value", ["DISALLOW", "OVERWRITE", "RETAIN"])
def test_file_exists_behavior_values(value: str) -> None:
    assert spec_of(f"file_exists_behavior: {value}\n").file_exists_behavior == value


def test_file_exists_behavior_is_case_sensitive_with_a_hint() -> None:
    (error,) = errors_of("file_exists_behavior: overwrite\n")
    assert error.code == "file-exists-behavior"
    assert "Did you mean 'OVERWRITE'" in error.message
    (error,) = errors_of("file_exists_behavior: invalid\n")
    assert "DISALLOW, OVERWRITE, RETAIN" in error.message


def test_unknown_top_level_keys_are_errors_with_suggestions() -> None:
    found = errors_of("permission:\n  - object: /opt\nResources: []\n")
    assert codes(found) == ["unknown-key", "unknown-key", "wrong-platform"]
    assert "Did you mean 'permissions'" in found[0].message
    assert "ECS and Lambda" in found[2].message


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(AppSpecInvalidError) as info:
        parse_appspec("- version: 0.0\n")
    assert codes(list(info.value.errors)) == ["wrong-type"]


# --- hooks -----------------------------------------------------------------------------------

def test_single_complete_hook() -> None:
    spec = spec_of("""
        hooks:
          BeforeInstall:
            - location: test_location_1
              runas: foo
              timeout: 30
    """)
    (script,) = spec.scripts("BeforeInstall")
    assert (script.location, script.runas, script.timeout_s, script.sudo) == (
        "test_location_1", "foo", 30, False)


def test_sudo_hook() -> None:
    spec = spec_of("""
        hooks:
          AfterInstall:
            - location: test_location_1
              runas: foo
              sudo: true
              timeout: 30
    """)
    assert spec.scripts("AfterInstall")[0].sudo is True


def test_two_scripts_keep_their_order_and_defaults() -> None:
    spec = spec_of("""
        hooks:
          ApplicationStart:
            - location: test_location_1
            - location: test_location_2
              runas: foo3
              timeout: 30
    """)
    scripts = spec.scripts("ApplicationStart")
    assert [s.location for s in scripts] == ["test_location_1", "test_location_2"]
    assert [s.runas for s in scripts] == [None, "foo3"]
    assert [s.timeout_s for s in scripts] == [3600, 30]


def test_hook_totals_match_the_agent() -> None:
    spec = spec_of("""
        hooks:
          BeforeInstall: [{location: a, timeout: 300}, {location: b, timeout: 150}]
          AfterInstall: [{location: a, timeout: 300}, {location: b}]
    """)
    assert spec.total_timeout_s("BeforeInstall") == 450
    assert spec.total_timeout_s("AfterInstall") == 3900
    assert spec.total_timeout_s("ValidateService") is None


def test_empty_hook_is_ignored() -> None:
    spec = spec_of("""
        hooks:
          BeforeInstall:
          AfterInstall:
            - location: test_location
    """)
    assert spec.scripts("BeforeInstall") == ()
    assert [name for name, _ in spec.hooks] == ["AfterInstall"]


def test_location_and_runas_are_stripped() -> None:
    spec = spec_of("hooks:\n  AfterInstall:\n    - location: '  a.sh  '\n      runas: ' pi '\n")
    assert spec.scripts("AfterInstall")[0].location == "a.sh"
    assert spec.scripts("AfterInstall")[0].runas == "pi"


@pytest.mark.parametrize(("entry", "code"), [
    ("{runas: foo}", "missing-key"),
    ("{location: ''}", "wrong-type"),
    ("{location: a, timeout: abc}", "timeout"),
    ("{location: a, timeout: -1}", "timeout"),
    ("{location: a, timeout: 0}", "timeout"),
    ("{location: a, timeout: 0.5}", "timeout"),
    ("{location: a, timeout: true}", "timeout"),
    ("{location: a, sudo: maybe}", "sudo"),
    ("{location: a, runas: 'bob; rm -rf /'}", "runas"),
    ("{location: a, runas: ''}", "wrong-type"),
    ("{location: ../../etc/x}", "location-escapes"),
    ("{location: a, timout: 30}", "unknown-key"),
    ("just-a-string", "wrong-type"),
], ids=str)
def test_bad_script_entries(entry: str, code: str) -> None:
    (error,) = errors_of(f"hooks:\n  AfterInstall:\n    - {entry}\n")
    assert error.code == code
    assert error.yaml_path.startswith("hooks.AfterInstall[0]")
    assert error.position is not None and error.position.line == 5


def test_hook_must_be_a_list_with_a_hint() -> None:
    (error,) = errors_of("hooks:\n  AfterInstall:\n    location: a.sh\n")
    assert error.code == "wrong-type"
    assert "put '- ' before 'location'" in error.message


@pytest.mark.parametrize(("timeout", "seconds", "code"), [
    ("'30'", 30, "quoted-number"), ("30.9", 30, "fractional-timeout")])
def test_timeouts_the_official_agent_accepts_are_kept_with_a_warning(
        timeout: str, seconds: int, code: str) -> None:
    spec = spec_of(f"hooks:\n  AfterInstall:\n    - location: a\n      timeout: {timeout}\n")
    assert spec.scripts("AfterInstall")[0].timeout_s == seconds
    assert [f.code for f in spec.findings] == [code]
    assert spec.findings[0].severity is Severity.WARNING


def test_unknown_and_reserved_events() -> None:
    found = errors_of("""
        hooks:
          AfterInstal: []
          Install: [{location: a}]
          DownloadBundle: []
          AllowTraffic: []
    """)
    assert codes(found) == ["unknown-key", "reserved-event", "reserved-event", "reserved-event"]
    assert "Did you mean 'AfterInstall'" in found[0].message


def test_custom_events_are_allowed_when_asked_for() -> None:
    spec = parse_appspec("version: 0.0\nos: linux\nhooks:\n  Smoke:\n    - location: s.sh\n",
                         custom_events=["Smoke"])
    assert spec.scripts("Smoke")[0].location == "s.sh"


def test_all_nine_events_are_accepted() -> None:
    body = "hooks:\n" + "".join(f"  {e}: [{{location: {e}.sh}}]\n" for e in LifecycleEvent)
    spec = spec_of(body)
    assert len(spec.hooks) == 9


# --- files -----------------------------------------------------------------------------------

def test_file_mappings() -> None:
    spec = spec_of("""
        files:
          - source: test_source
            destination: /test_destination
          - source: test_source_2
            destination: /test_destination_2
    """)
    assert [(f.source, f.destination) for f in spec.files] == [
        ("test_source", "/test_destination"), ("test_source_2", "/test_destination_2")]


@pytest.mark.parametrize(("entry", "code"), [
    ("{source: test_source}", "missing-key"),
    ("{destination: /test_destination}", "missing-key"),
    ("{source: /app, destination: /opt}", "source-absolute"),
    ("{source: ../app, destination: /opt}", "source-escapes"),
    ("{source: app/../../x, destination: /opt}", "source-escapes"),
    ("{source: app, destination: opt/app}", "destination-relative"),
    ("{source: 12, destination: /opt}", "wrong-type"),
    ("{source: app, destination: /opt, mode: 644}", "unknown-key"),
])
def test_bad_file_entries(entry: str, code: str) -> None:
    (error,) = errors_of(f"files:\n  - {entry}\n")
    assert error.code == code
    assert error.yaml_path.startswith("files[0]")


def test_source_slash_means_the_whole_revision() -> None:
    assert spec_of("files:\n  - {source: /, destination: /opt/app}\n").files[0].source == "/"


def test_duplicate_file_entries_are_errors() -> None:
    (error,) = errors_of("""
        files:
          - {source: app, destination: /opt/app}
          - {source: app/, destination: /opt/app/}
    """)
    assert error.code == "duplicate-file"
    assert error.yaml_path == "files[1]"
    assert "files[0]" in error.message


# --- several errors, positions, YAML traps ---------------------------------------------------

def test_every_error_is_reported_in_file_order_with_positions() -> None:
    text = (
        "version: '0.0'\n"
        "os: windows\n"
        "files:\n"
        "  - source: /app\n"
        "hooks:\n"
        "  AfterInstall:\n"
        "    - location: a.sh\n"
        "      timeout: -3\n"
    )
    with pytest.raises(AppSpecInvalidError) as info:
        parse_appspec(text, file="rev/appspec.yml")
    found = info.value.errors
    assert [(f.code, f.position.line if f.position else 0) for f in found] == [
        ("version", 1), ("os", 2), ("missing-key", 4), ("source-absolute", 4), ("timeout", 8)]
    assert all(f.file == "rev/appspec.yml" for f in found)
    assert str(found[-1]).startswith("rev/appspec.yml:8:16: hooks.AfterInstall[0].timeout:")


def test_yaml_11_booleans_and_duplicate_keys() -> None:
    spec = spec_of("""
        hooks:
          AfterInstall:
            - location: a
              sudo: yes
          AfterInstall:
            - location: b
    """)
    assert [s.location for s in spec.scripts("AfterInstall")] == ["b"]
    (warning,) = spec.findings
    assert warning.code == "duplicate-key"
    assert "line 5" in warning.message


def test_yaml_syntax_error_has_a_position() -> None:
    with pytest.raises(AppSpecInvalidError) as info:
        parse_appspec("version: 0.0\nos: linux\nhooks: [\n")
    (error,) = info.value.errors
    assert error.code == "yaml-syntax"
    assert error.position is not None and error.position.line >= 3


def test_anchors_work_but_are_flagged_for_the_official_agent() -> None:
    spec = spec_of("""
        hooks:
          AfterInstall: &scripts
            - location: a.sh
              timeout: 30
          ApplicationStart: *scripts
    """)
    assert spec.scripts("ApplicationStart")[0].timeout_s == 30
    assert [f.code for f in spec.findings] == ["yaml-alias"]


def test_merge_keys_follow_yaml_11() -> None:
    spec = spec_of("""
        hooks:
          AfterInstall:
            - &base {location: a.sh, timeout: 30}
            - <<: *base
              location: b.sh
    """)
    assert [(s.location, s.timeout_s) for s in spec.scripts("AfterInstall")] == [
        ("a.sh", 30), ("b.sh", 30)]


def test_custom_tags_are_refused() -> None:
    (error,) = errors_of("hooks: !!python/object:os.system {}\n")
    assert error.code in {"yaml-tag", "yaml-value"}


@pytest.mark.parametrize("field", ["source", "destination"])
def test_a_line_break_in_a_path_is_an_error_naming_the_field(field: str) -> None:
    # A double-quoted "\n" is a real line break; the clean-up file is one path per line.
    paths = {"source": "/", "destination": "/opt/app"}
    paths[field] += "\\n/etc/passwd"
    found = errors_of(f"""\
        files:
          - source: "{paths['source']}"
            destination: "{paths['destination']}"
        """)
    assert codes(found) == ["line-break"]
    assert found[0].yaml_path == f"files[0].{field}"
    assert "line break" in found[0].message
