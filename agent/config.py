"""``/etc/pifleet/agent.toml``: every key has a default, unknown keys are errors with their name.

The official agent's ``codedeploy.onpremises.yml`` is accepted as is, through
``[identity] onpremises_config``: its ``iam_user_arn``/keys or ``iam_session_arn``/credentials file
and ``region`` fill the identity and region.

Sensors are an array of tables, one ``[[sensors]]`` entry per sensor (``sensors.registry``):

    [[sensors]]
    name = "climate"
    kind = "dht11"
    pin = 4
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from sensors.registry import SensorSpec

DEFAULT_PATH = Path("/etc/pifleet/agent.toml")
MODES = ("iam-user", "iam-session", "iot-cert")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Identity:
    mode: str = "iot-cert"
    host_identifier: str = ""  # iam_user_arn / iam_session_arn; iot-cert: checked when set
    credentials_file: str = "/etc/pifleet/secrets/credentials"  # INI: [default] keys
    profile: str = "default"
    certificate: str = "/etc/pifleet/secrets/device.pem.crt"
    private_key: str = "/etc/pifleet/secrets/private.pem.key"
    credentials_endpoint: str = ""  # https://<prefix>.credentials.iot.<region>.amazonaws.com
    credentials_ca_bundle: str = ""  # CA of the credentials provider (AmazonRootCA1.pem)
    role_alias: str = ""
    thing_name: str = ""
    onpremises_config: str = ""  # the official agent's codedeploy.onpremises.yml


@dataclass(frozen=True)
class Aws:
    region: str = ""
    commands_endpoint: str = ""  # default https://codedeploy-commands.<region>.amazonaws.com
    s3_endpoint: str = ""
    sts_endpoint: str = ""
    proxy: str = ""  # default: HTTPS_PROXY / NO_PROXY from the environment
    ca_bundle: str = ""
    read_timeout_s: float = 80.0


@dataclass(frozen=True)
class Agent:
    poll_interval_s: float = 1.0
    deployment_root: str = "/var/lib/pifleet/deployment-root"
    status_file: str = "/var/lib/pifleet/agent-status.json"
    install_root: str = "/"  # where AppSpec destinations land; "/" except in a sandbox
    max_revisions: int = 5
    shutdown_grace_s: float = 7200.0
    wait_for_clock_sync: bool = True
    spec_trust_anchors: str = ""  # PEM CA bundle; empty: verify the signature only
    max_parallel_groups: int = 4
    agent_version: str = ""
    # The longest back-off between failed polls; the official schedule (10 ... 90 s) is scaled
    # to it, so tests and the sandbox can watch it reach the cap in seconds.
    max_backoff_s: float = 90.0


@dataclass(frozen=True)
class Deploy:
    max_bundle_bytes: int = 2 * 1024**3
    max_bundle_entries: int = 100_000
    kill_grace_s: float = 10.0
    outputs_grace_s: float = 30.0


@dataclass(frozen=True)
class Telemetry:
    enabled: bool = False
    endpoint: str = ""  # the IoT data endpoint host (<prefix>-ats.iot.<region>.amazonaws.com)
    port: int = 8883  # 443 with alpn = true where only HTTPS gets out
    alpn: bool = False
    tls: bool = True  # false only for a local test broker
    thing_name: str = ""  # default: [identity] thing_name
    client_id: str = ""  # default: the thing name
    ca_file: str = ""  # AmazonRootCA1.pem
    cert_file: str = ""  # default: [identity] certificate
    key_file: str = ""  # default: [identity] private_key
    transport: str = "paho"  # paho | crt
    outbox: str = "/var/lib/pifleet/outbox.db"
    readings_file: str = "/var/lib/pifleet/readings/latest.json"  # latest values, for local apps
    outbox_max_messages: int = 50_000
    heartbeat_s: float = 900.0
    status_interval_s: float = 60.0


@dataclass(frozen=True)
class Config:
    identity: Identity = field(default_factory=Identity)
    aws: Aws = field(default_factory=Aws)
    agent: Agent = field(default_factory=Agent)
    deploy: Deploy = field(default_factory=Deploy)
    telemetry: Telemetry = field(default_factory=Telemetry)
    sensors: tuple[SensorSpec, ...] = ()
    path: str = ""


SECTIONS: dict[str, type[Any]] = {"identity": Identity, "aws": Aws, "agent": Agent,
                                  "deploy": Deploy, "telemetry": Telemetry}
# The keys of a [[sensors]] entry and their types; name and kind are required.
SENSOR_KEYS: dict[str, type] = {"name": str, "kind": str, "pin": int, "port": str,
                                "interval_s": float, "seed": int, "fail_every": int,
                                "unplugged": bool, "stuck_value": float, "spike_every": int}
SENSOR_REQUIRED = ("name", "kind")


def load_config(path: Path = DEFAULT_PATH) -> Config:
    config = read_config(path)
    if config.identity.onpremises_config:
        config = apply_onpremises_yml(config, Path(config.identity.onpremises_config))
    return validate(config)


def drop_in_dir(path: Path) -> Path:
    """``agent.toml``'s drop-ins: ``agent.d/*.toml`` beside it, read in name order after it.
    ``pifleet-agent enroll`` writes the device's settings there, so the package's conffile is
    never touched and upgrades never ask about it."""
    return path.parent / "agent.d"


def read_config(path: Path = DEFAULT_PATH) -> Config:
    """The file and its drop-ins parsed (unknown keys and wrong types are errors) but not
    validated: what commands that need only part of it (``pifleet-agent sensors``) use."""
    drop_ins = sorted(drop_in_dir(path).glob("*.toml"))
    if not path.exists() and not drop_ins:
        raise ConfigError(f"{path} does not exist; install the pifleet-agent package or run "
                          "`pifleet-agent enroll`")
    raw: dict[str, Any] = _read_toml(path) if path.exists() else {}
    for drop_in in drop_ins:
        for name, section in _read_toml(drop_in).items():
            if isinstance(section, dict) and isinstance(raw.get(name), dict):
                raw[name] = {**raw[name], **section}  # a drop-in changes only what it sets
            else:
                raw[name] = section
    where = str(path) if not drop_ins else f"{path} (+ {len(drop_ins)} in {drop_in_dir(path)})"
    return parse_config(raw, where)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def parse_config(raw: dict[str, Any], where: str) -> Config:
    values: dict[str, Any] = {}
    for name, section in raw.items():
        if name == "sensors":
            values[name] = _sensors(section, where)
            continue
        cls = SECTIONS.get(name)
        if cls is None:
            raise ConfigError(f"{where}: unknown section [{name}]; the sections are "
                              f"{', '.join(f'[{s}]' for s in SECTIONS)}, [[sensors]]")
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: {name} must be a section ([{name}])")
        values[name] = _section(cls, section, f"{where} [{name}]")
    return Config(**values, path=where)


def _section(cls: type[Any], raw: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        f = known.get(key)
        if f is None:
            raise ConfigError(f"{where}: unknown key {key!r}; the keys are {', '.join(known)}")
        kwargs[key] = _typed(key, value, type(f.default), where)
    return cls(**kwargs)


def _typed(key: str, value: Any, expected: type, where: str) -> Any:
    """``value`` if it is an ``expected``; an int is taken for a float, a bool for nothing."""
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{where}: {key} must be a {expected.__name__}, not {value!r}")
    return value


def _sensors(raw: Any, where: str) -> tuple[SensorSpec, ...]:
    if not isinstance(raw, list) or not all(isinstance(entry, dict) for entry in raw):
        raise ConfigError(f"{where}: sensors must be an array of tables, one [[sensors]] entry "
                          "per sensor")
    specs: list[SensorSpec] = []
    for index, entry in enumerate(raw):
        here = f"{where} sensors[{index}]"
        kwargs: dict[str, Any] = {}
        for key, value in entry.items():
            expected = SENSOR_KEYS.get(key)
            if expected is None:
                raise ConfigError(f"{here}: unknown key {key!r}; the keys are "
                                  f"{', '.join(SENSOR_KEYS)}")
            kwargs[key] = _typed(key, value, expected, here)
        missing = [key for key in SENSOR_REQUIRED if key not in kwargs]
        if missing:
            raise ConfigError(f"{here}: {' and '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} required (for example "
                              "name = \"climate\", kind = \"dht11\")")
        try:
            spec = SensorSpec(**kwargs)
        except ValueError as exc:
            raise ConfigError(f"{here}: {exc}") from None
        if any(s.name == spec.name for s in specs):
            raise ConfigError(f"{here}: another sensor is already named {spec.name!r}; names "
                              "must be unique (they key the shadow document)")
        specs.append(spec)
    return tuple(specs)


def apply_onpremises_yml(config: Config, path: Path) -> Config:
    """Identity and region from the official agent's on-premises file (same keys, same rules)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise ConfigError(f"The deployment failed because the format of the following "
                          f"on-premises configuration file is invalid: {path}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"The deployment failed because the format of the following "
                          f"on-premises configuration file is invalid: {path}")
    user, session = data.get("iam_user_arn"), data.get("iam_session_arn")
    if user and session:
        raise ConfigError(f"{path}: both iam_user_arn and iam_session_arn are set; keep one")
    mode, required = (("iam-user", ("aws_access_key_id", "aws_secret_access_key", "region"))
                      if user else ("iam-session", ("aws_credentials_file", "region")))
    if not user and not session:
        raise ConfigError(f"{path}: set iam_user_arn (with keys) or iam_session_arn (with "
                          "aws_credentials_file)")
    for key in required:
        if not data.get(key):
            raise ConfigError(f"'{key}' key is required when "
                              f"'{'iam_user_arn' if user else 'iam_session_arn'}' is provided. "
                              f"({path})")
    identity = replace(config.identity, mode=mode, host_identifier=str(user or session),
                       credentials_file=str(data.get("aws_credentials_file") or path))
    return replace(config, identity=identity, aws=replace(config.aws, region=str(data["region"])))


def validate(config: Config) -> Config:
    where = config.path or "the configuration"
    ident = config.identity
    if ident.mode not in MODES:
        raise ConfigError(f"{where} [identity]: mode must be one of {', '.join(MODES)}, not "
                          f"{ident.mode!r}")
    if not config.aws.region:
        raise ConfigError(f"{where} [aws]: region is required (for example region = "
                          "\"eu-west-1\")")
    if ident.mode in ("iam-user", "iam-session") and not ident.host_identifier:
        raise ConfigError(f"{where} [identity]: host_identifier is required in {ident.mode} "
                          "mode: the IAM user or session ARN the device was registered with")
    if ident.mode == "iot-cert":
        for key in ("credentials_endpoint", "role_alias", "thing_name"):
            if not getattr(ident, key):
                raise ConfigError(f"{where} [identity]: {key} is required in iot-cert mode")
    tele = config.telemetry
    if tele.enabled:
        if not tele.endpoint or not (tele.thing_name or ident.thing_name):
            raise ConfigError(f"{where} [telemetry]: endpoint and thing_name (or [identity] "
                              "thing_name) are required when telemetry is enabled")
        if tele.transport not in ("paho", "crt"):
            raise ConfigError(f"{where} [telemetry]: transport must be paho or crt, not "
                              f"{tele.transport!r}")
    if config.agent.poll_interval_s <= 0 or config.agent.max_revisions < 1:
        raise ConfigError(f"{where} [agent]: poll_interval_s must be > 0 and max_revisions "
                          ">= 1")
    if config.agent.max_backoff_s <= 0:
        raise ConfigError(f"{where} [agent]: max_backoff_s must be > 0 (90 is the official "
                          "agent's)")
    return config


def secret_files(config: Config) -> list[str]:
    ident = config.identity
    if ident.mode == "iot-cert":
        return [ident.private_key]
    if ident.onpremises_config and ident.mode == "iam-user":
        return [ident.onpremises_config]
    return [ident.credentials_file]


def check_secret_file(path: str) -> None:
    """A secret must be a regular file, readable by its owner only, owned by root (or by the
    user the agent runs as, when it is not root: a developer's machine)."""
    try:
        # lstat: a link's target can be swapped by whoever controls the link or its directory,
        # so a secret must be the file itself.
        info = os.lstat(path)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; run `pifleet-agent enroll` with the device's "
                          "enrollment bundle") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"{path} holds secrets but is a symbolic link (to "
                          f"{_link_target(path)}); put the file itself there: run `cp "
                          f"--remove-destination \"$(readlink -f {path})\" {path}` and "
                          f"`chmod 600 {path}`")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path} is not a regular file")
    if info.st_mode & 0o077:
        raise ConfigError(f"{path} holds secrets but has mode "
                          f"{stat.S_IMODE(info.st_mode):04o}; run `chmod 600 {path}`")
    owner_ok = info.st_uid == 0 or info.st_uid == os.geteuid()
    if not owner_ok:
        raise ConfigError(f"{path} holds secrets but is owned by uid {info.st_uid}; run "
                          f"`chown root: {path}`")


def _link_target(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "an unreadable target"
