"""``agent.config``: the TOML file, the official on-premises yml, validation and secret files."""

from __future__ import annotations

import os
import pwd
from dataclasses import fields
from pathlib import Path

import pytest

from agent.config import (
    SECTIONS,
    Agent,
    Aws,
    Config,
    ConfigError,
    Deploy,
    Identity,
    check_secret_file,
    load_config,
    parse_config,
    secret_files,
    validate,
)

IOT = ('[identity]\nmode = "iot-cert"\ncredentials_endpoint = "https://creds.example"\n'
       'role_alias = "pifleet-device"\nthing_name = "pi-1"\n')
REGION = '[aws]\nregion = "eu-west-1"\n'


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


# -- defaults and parsing ------------------------------------------------------------------


def test_an_empty_file_has_every_default_but_needs_a_region(tmp_path: Path) -> None:
    config = parse_config({}, "x.toml")
    assert config == Config(path="x.toml")
    assert config.identity.mode == "iot-cert"
    assert config.identity.credentials_file == "/etc/pifleet/secrets/credentials"
    assert config.aws.read_timeout_s == 80.0
    assert config.agent.poll_interval_s == 1.0
    assert config.agent.max_revisions == 5
    assert config.agent.wait_for_clock_sync is True
    assert config.deploy.max_bundle_bytes == 2 * 1024**3
    message = error(write(tmp_path, ""))
    assert str(tmp_path / "agent.toml") in message
    assert "[aws]: region is required" in message


def test_the_smallest_iot_configuration_loads(tmp_path: Path) -> None:
    path = write(tmp_path, IOT + REGION)
    config = load_config(path)
    assert config.path == str(path)
    assert config.identity.role_alias == "pifleet-device"
    assert config.aws.region == "eu-west-1"
    assert config.agent == Agent()
    assert config.deploy == Deploy()


# A value of the right type for every key of every section (all differ from the defaults).
def _sample(default: object, key: str) -> object:
    if isinstance(default, bool):
        return not default
    if isinstance(default, float):
        return default + 1.5
    if isinstance(default, int):
        return default + 3
    return f"/custom/{key}"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def test_every_key_of_every_section_is_read(tmp_path: Path) -> None:
    expected: dict[str, dict[str, object]] = {}
    text = ""
    for name, cls in SECTIONS.items():
        values = {f.name: _sample(f.default, f.name) for f in fields(cls)}
        if name == "identity":
            values["mode"] = "iam-user"
        if name == "telemetry":
            values["transport"] = "crt"  # validated: only paho or crt
        expected[name] = values
        text += f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())
    config = load_config(write(tmp_path, text.replace(
        'onpremises_config = "/custom/onpremises_config"\n', "")))
    expected["identity"]["onpremises_config"] = ""
    for name, values in expected.items():
        section = getattr(config, name)
        for key, value in values.items():
            assert getattr(section, key) == value, (name, key)
            assert type(getattr(section, key)) is type(value), (name, key)


def test_an_int_is_accepted_where_a_float_is_expected(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, IOT + REGION + "read_timeout_s = 5\n"
                                                        "[agent]\npoll_interval_s = 2\n"))
    assert config.aws.read_timeout_s == 5.0
    assert isinstance(config.aws.read_timeout_s, float)
    assert config.agent.poll_interval_s == 2.0
    assert isinstance(config.agent.poll_interval_s, float)


@pytest.mark.parametrize(("section", "line", "expected"), [
    ("agent", "poll_interval_s = true", "poll_interval_s must be a float, not True"),
    ("agent", 'max_revisions = "5"', "max_revisions must be a int, not '5'"),
    ("agent", "max_revisions = 5.0", "max_revisions must be a int, not 5.0"),
    ("agent", "max_revisions = false", "max_revisions must be a int, not False"),
    ("agent", 'wait_for_clock_sync = "no"', "wait_for_clock_sync must be a bool, not 'no'"),
    ("agent", "wait_for_clock_sync = 0", "wait_for_clock_sync must be a bool, not 0"),
    ("deploy", 'kill_grace_s = "10"', "kill_grace_s must be a float, not '10'"),
    ("aws", "region = 1", "region must be a str, not 1"),
    ("identity", "thing_name = []", "thing_name must be a str, not []"),
])
def test_a_value_of_the_wrong_type_names_file_section_and_key(
        tmp_path: Path, section: str, line: str, expected: str) -> None:
    path = write(tmp_path, f"[{section}]\n{line}\n")
    assert error(path) == f"{path} [{section}]: {expected}"


def test_an_unknown_section_lists_the_sections(tmp_path: Path) -> None:
    path = write(tmp_path, IOT + REGION + "[telemetri]\ninterval = 5\n")
    assert error(path) == (f"{path}: unknown section [telemetri]; the sections are [identity], "
                           "[aws], [agent], [deploy], [telemetry], [[sensors]]")


def test_a_key_outside_a_section_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'region = "eu-west-1"\n')
    assert error(path) == f"{path}: unknown section [region]; the sections are [identity], " \
                          "[aws], [agent], [deploy], [telemetry], [[sensors]]"


def test_a_section_that_is_not_a_table_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^f.toml: aws must be a section \(\[aws\]\)$"):
        parse_config({"aws": "eu-west-1"}, "f.toml")


@pytest.mark.parametrize("cls", [Identity, Aws, Agent, Deploy])
def test_an_unknown_key_lists_the_keys_of_its_section(tmp_path: Path, cls: type) -> None:
    name = next(n for n, c in SECTIONS.items() if c is cls)
    path = write(tmp_path, f"[{name}]\nno_such_key = 1\n")
    message = error(path)
    keys = ", ".join(f.name for f in fields(cls))
    assert message == f"{path} [{name}]: unknown key 'no_such_key'; the keys are {keys}"


def test_a_missing_file_says_how_to_install_one(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert error(path) == (f"{path} does not exist; install the pifleet-agent package or run "
                           "`pifleet-agent enroll`")


def test_invalid_toml_names_the_file_and_the_place(tmp_path: Path) -> None:
    path = write(tmp_path, "[aws]\nregion = eu-west-1\n")
    message = error(path)
    assert message.startswith(f"{path} is not valid TOML: ")
    assert "line 2" in message


def test_a_file_that_is_not_utf8_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b"[aws]\nregion = \"\xff\"\n")
    assert error(path).startswith(f"cannot read {path}: ")


# -- validation per mode ---------------------------------------------------------------------


def test_validate_requires_a_region_in_every_mode() -> None:
    for mode in ("iam-user", "iam-session", "iot-cert"):
        config = Config(identity=Identity(mode=mode, host_identifier="arn:x",
                                          credentials_endpoint="https://e", role_alias="r",
                                          thing_name="t"), path="a.toml")
        with pytest.raises(ConfigError, match=r"^a.toml \[aws\]: region is required"):
            validate(config)
        assert validate(Config(identity=config.identity, aws=Aws(region="eu-west-1"))) \
            .identity.mode == mode


@pytest.mark.parametrize("mode", ["iam-user", "iam-session"])
def test_iam_modes_require_the_host_identifier(mode: str) -> None:
    config = Config(identity=Identity(mode=mode), aws=Aws(region="eu-west-1"), path="a.toml")
    with pytest.raises(ConfigError) as caught:
        validate(config)
    assert str(caught.value).startswith(
        f"a.toml [identity]: host_identifier is required in {mode} mode")


@pytest.mark.parametrize("missing", ["credentials_endpoint", "role_alias", "thing_name"])
def test_iot_cert_mode_requires_endpoint_alias_and_thing(tmp_path: Path, missing: str) -> None:
    lines = [line for line in IOT.splitlines() if not line.startswith(missing)]
    path = write(tmp_path, "\n".join(lines) + "\n" + REGION)
    assert error(path) == f"{path} [identity]: {missing} is required in iot-cert mode"


def test_iot_cert_mode_does_not_require_a_host_identifier(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, IOT + REGION)).identity.host_identifier == ""


def test_an_unknown_mode_lists_the_modes(tmp_path: Path) -> None:
    path = write(tmp_path, '[identity]\nmode = "iam-role"\n' + REGION)
    assert error(path) == (f"{path} [identity]: mode must be one of iam-user, iam-session, "
                           "iot-cert, not 'iam-role'")


@pytest.mark.parametrize("line", ["poll_interval_s = 0", "poll_interval_s = -1.0",
                                  "max_revisions = 0"])
def test_poll_interval_and_max_revisions_must_be_positive(tmp_path: Path, line: str) -> None:
    path = write(tmp_path, IOT + REGION + f"[agent]\n{line}\n")
    assert "[agent]: poll_interval_s must be > 0 and max_revisions >= 1" in error(path)


# -- the official codedeploy.onpremises.yml --------------------------------------------------


def with_onpremises(tmp_path: Path, yml: str) -> Path:
    onprem = write(tmp_path, yml, "codedeploy.onpremises.yml")
    onprem.chmod(0o600)
    return write(tmp_path, f'[identity]\nonpremises_config = "{onprem}"\n')


def test_the_official_iam_user_test_vector(tmp_path: Path) -> None:
    # The official agent's own test data for an IAM user.
    path = with_onpremises(tmp_path, "---\nregion: us-east-test\naws_access_key_id: linuxkey\n"
                                     "aws_secret_access_key: linuxsecretkey\n"
                                     "iam_user_arn: test:arn\n")
    config = load_config(path)
    assert config.identity.mode == "iam-user"
    assert config.identity.host_identifier == "test:arn"
    assert config.aws.region == "us-east-test"
    onprem = str(tmp_path / "codedeploy.onpremises.yml")
    assert config.identity.onpremises_config == onprem
    assert secret_files(config) == [onprem]


def test_an_iam_session_onpremises_file(tmp_path: Path) -> None:
    path = with_onpremises(
        tmp_path, "region: eu-west-1\naws_credentials_file: /etc/codedeploy-agent/creds\n"
                  "iam_session_arn: arn:aws:sts::123456789012:assumed-role/pis/pi-1\n")
    config = load_config(path)
    assert config.identity.mode == "iam-session"
    assert config.identity.host_identifier == "arn:aws:sts::123456789012:assumed-role/pis/pi-1"
    assert config.identity.credentials_file == "/etc/codedeploy-agent/creds"
    assert config.aws.region == "eu-west-1"
    assert secret_files(config) == ["/etc/codedeploy-agent/creds"]


def test_the_onpremises_region_wins_over_the_toml_one(tmp_path: Path) -> None:
    onprem = write(tmp_path, "region: us-east-test\naws_access_key_id: k\n"
                             "aws_secret_access_key: s\niam_user_arn: test:arn\n", "op.yml")
    path = write(tmp_path, f'[identity]\nonpremises_config = "{onprem}"\n[aws]\n'
                           'region = "eu-west-1"\n')
    assert load_config(path).aws.region == "us-east-test"


def test_both_arns_are_refused(tmp_path: Path) -> None:
    path = with_onpremises(tmp_path, "region: r\naws_access_key_id: k\n"
                                     "aws_secret_access_key: s\niam_user_arn: test:arn\n"
                                     "iam_session_arn: arn:session\naws_credentials_file: /c\n")
    message = error(path)
    assert "both iam_user_arn and iam_session_arn are set" in message
    assert "codedeploy.onpremises.yml" in message


def test_neither_arn_is_refused(tmp_path: Path) -> None:
    path = with_onpremises(tmp_path, "region: r\n")
    assert "set iam_user_arn (with keys) or iam_session_arn" in error(path)


@pytest.mark.parametrize(("yml", "key", "mode"), [
    ("aws_secret_access_key: s\niam_user_arn: test:arn\nregion: r\n",
     "aws_access_key_id", "iam_user_arn"),
    ("aws_access_key_id: k\niam_user_arn: test:arn\nregion: r\n",
     "aws_secret_access_key", "iam_user_arn"),
    ("aws_access_key_id: k\naws_secret_access_key: s\niam_user_arn: test:arn\n",
     "region", "iam_user_arn"),
    ("iam_session_arn: arn:s\nregion: r\n", "aws_credentials_file", "iam_session_arn"),
    ("iam_session_arn: arn:s\naws_credentials_file: /c\n", "region", "iam_session_arn"),
])
def test_a_missing_key_gives_the_official_message(tmp_path: Path, yml: str, key: str,
                                                  mode: str) -> None:
    message = error(with_onpremises(tmp_path, yml))
    assert message.startswith(f"'{key}' key is required when '{mode}' is provided.")


@pytest.mark.parametrize("yml", ["region: [unclosed\n", "just a string\n", "- a\n- list\n", ""])
def test_an_invalid_onpremises_file_gives_the_official_message(tmp_path: Path,
                                                               yml: str) -> None:
    message = error(with_onpremises(tmp_path, yml))
    assert message == ("The deployment failed because the format of the following on-premises "
                       f"configuration file is invalid: {tmp_path / 'codedeploy.onpremises.yml'}")


def test_a_missing_onpremises_file(tmp_path: Path) -> None:
    missing = tmp_path / "codedeploy.onpremises.yml"
    path = write(tmp_path, f'[identity]\nonpremises_config = "{missing}"\n')
    assert error(path) == f"cannot read {missing}: No such file or directory"


# -- secret files ----------------------------------------------------------------------------


def test_secret_files_per_mode() -> None:
    ident = Identity(credentials_file="/s/credentials", private_key="/s/key.pem",
                     onpremises_config="")
    assert secret_files(Config(identity=ident)) == ["/s/key.pem"]
    for mode in ("iam-user", "iam-session"):
        assert secret_files(Config(identity=Identity(
            mode=mode, credentials_file="/s/credentials"))) == ["/s/credentials"]


def test_a_0600_secret_is_accepted(tmp_path: Path) -> None:
    secret = write(tmp_path, "[default]\n", "credentials")
    secret.chmod(0o600)
    check_secret_file(str(secret))
    secret.chmod(0o400)
    check_secret_file(str(secret))


@pytest.mark.parametrize(("mode", "shown"), [(0o644, "0644"), (0o640, "0640"), (0o604, "0604")])
def test_a_secret_readable_by_others_is_refused_with_the_fix(tmp_path: Path, mode: int,
                                                             shown: str) -> None:
    secret = write(tmp_path, "[default]\n", "credentials")
    secret.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        check_secret_file(str(secret))
    assert str(caught.value) == (f"{secret} holds secrets but has mode {shown}; run "
                                 f"`chmod 600 {secret}`")


def test_a_directory_is_not_a_secret_file(tmp_path: Path) -> None:
    directory = tmp_path / "credentials"
    directory.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match=r"is not a regular file$"):
        check_secret_file(str(directory))


def test_a_symlinked_secret_is_refused_with_the_fix(tmp_path: Path) -> None:
    real = write(tmp_path, "[default]\n", "real-credentials")
    real.chmod(0o600)
    link = tmp_path / "credentials"
    link.symlink_to(real)
    with pytest.raises(ConfigError) as caught:
        check_secret_file(str(link))
    assert str(caught.value) == (
        f"{link} holds secrets but is a symbolic link (to {real}); put the file itself there: "
        f"run `cp --remove-destination \"$(readlink -f {link})\" {link}` and "
        f"`chmod 600 {link}`")


def test_a_missing_secret_says_to_enroll(tmp_path: Path) -> None:
    missing = tmp_path / "credentials"
    with pytest.raises(ConfigError) as caught:
        check_secret_file(str(missing))
    assert str(caught.value) == (f"{missing} does not exist; run `pifleet-agent enroll` with "
                                 "the device's enrollment bundle")


def test_a_secret_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    nobody = pwd.getpwnam("nobody").pw_uid
    secret = write(tmp_path, "[default]\n", "credentials")
    secret.chmod(0o600)
    os.chown(secret, nobody, -1)
    with pytest.raises(ConfigError) as caught:
        check_secret_file(str(secret))
    assert str(caught.value) == (f"{secret} holds secrets but is owned by uid {nobody}; run "
                                 f"`chown root: {secret}`")
    os.chown(secret, 0, -1)
    check_secret_file(str(secret))
