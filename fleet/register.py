"""Devices: register (with rollback), list, show, tag, untag and deregister on-prem instances.

Two identities:

- ``iot-cert`` (default): an IoT thing and certificate; the device exchanges the certificate for
  short-lived credentials of the fleet's device role at the IoT credentials provider, and is
  registered with the session ARN those credentials carry
  (``arn:<partition>:sts::<acct>:assumed-role/<device role>/<certificateId>``).
- ``iam-user``: an IAM user with an access key that may only read the fleet's bucket (the
  ``aws deploy register`` model, without its flaws: rollback, no secret on stdout).

Every function takes an :class:`~fleet.aws.Aws` and returns data; the CLI prints it.  Secrets
only ever go into the enrollment bundle, a 0600 tar for ``pifleet-agent enroll``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from .aws import Aws, aws_errors
from .errors import Conflict, FleetError, NotFound
from .names import FLEET_TAG, FleetNames

IDENTITIES = ("iot-cert", "iam-user")
MAX_TAGS = 10  # per instance, the pifleet:fleet tag included
BATCH = 25  # BatchGetOnPremisesInstances
POLICY_NAME = "pifleet-bundle-read"
ETC = "etc/pifleet"
SECRETS = f"{ETC}/secrets"
_INSTANCE = re.compile(r"[A-Za-z0-9+=,.@_-]{1,100}")
_THING = re.compile(r"[A-Za-z0-9:_-]{1,128}")


# -- validation ---------------------------------------------------------------------------------


def validate_name(name: str, identity: str = "iot-cert") -> None:
    """CodeDeploy's instance-name rules, plus IoT's thing-name or IAM's user-name rules."""
    if identity not in IDENTITIES:
        raise FleetError(f"identity {identity!r} is not one of {', '.join(IDENTITIES)}")
    if not _INSTANCE.fullmatch(name):
        raise FleetError(f"device name {name!r} must be 1-100 letters, digits and + = , . @ _ -")
    if name.startswith("i-"):
        raise FleetError(f"device name {name!r} must not start with 'i-' (CodeDeploy keeps that "
                         "for EC2 instance ids)")
    if identity == "iot-cert" and not _THING.fullmatch(name):
        raise FleetError(f"device name {name!r} cannot be an IoT thing name: use letters, "
                         "digits, '_' and '-' only (or --identity iam-user)")
    if identity == "iam-user" and len(name) > 64:
        raise FleetError(f"device name {name!r} is longer than 64 characters, the limit of "
                         "IAM user names")


def parse_tags(pairs: list[str]) -> dict[str, str]:
    """``K=V`` arguments as a dict; a malformed or repeated key is an error."""
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FleetError(f"tag {pair!r} must be KEY=VALUE (for example site=lab)")
        if key in tags:
            raise FleetError(f"tag key {key!r} is given twice")
        tags[key] = value
    return tags


def validate_tags(tags: dict[str, str]) -> None:
    if FLEET_TAG in tags:
        raise FleetError(f"the tag {FLEET_TAG} is set by fleetctl (from --fleet); leave it out")
    if len(tags) > MAX_TAGS - 1:
        raise FleetError(f"{len(tags)} tags: a device may have at most {MAX_TAGS - 1} of yours "
                         f"(the {MAX_TAGS}th is {FLEET_TAG})")
    for key, value in tags.items():
        if not 1 <= len(key) <= 128:
            raise FleetError(f"tag key {key[:20]!r}... is longer than 128 characters")
        if len(value) > 256:
            raise FleetError(f"the value of tag {key!r} is longer than 256 characters")


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


# -- rollback -----------------------------------------------------------------------------------


class RegisterFailed(FleetError):
    """Registration failed (or was interrupted) and what it created was removed again."""

    def __init__(self, message: str, rolled_back: list[str], *, interrupted: bool = False,
                 leftovers: list[str] | None = None) -> None:
        self.rolled_back = rolled_back
        self.interrupted = interrupted
        self.leftovers = leftovers or []
        text = message
        if rolled_back:
            text += "; rolled back: " + ", ".join(rolled_back)
        if self.leftovers:
            text += "; COULD NOT remove (delete by hand): " + ", ".join(self.leftovers)
        super().__init__(text)


@dataclass
class Undo:
    """What was created so far, undone in reverse; steps whose target is gone count as done."""

    steps: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    def add(self, what: str, action: Callable[[], None]) -> None:
        self.steps.append((what, action))

    def run(self) -> tuple[list[str], list[str]]:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        done, failed = [], []
        for what, action in reversed(self.steps):
            try:
                action()
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if re.search(r"NotFound|NoSuch|NotRegistered|DoesNotExist", code):
                    done.append(what)
                else:
                    failed.append(f"{what} ({code})")
            except (BotoCoreError, OSError) as exc:
                failed.append(f"{what} ({exc})")
            else:
                done.append(what)
        self.steps.clear()
        return done, failed


@contextmanager
def _rolling_back(name: str) -> Iterator[Undo]:
    undo = Undo()
    try:
        yield undo
    except KeyboardInterrupt:
        done, failed = undo.run()
        raise RegisterFailed(f"registering {name} was interrupted", done, interrupted=True,
                             leftovers=failed) from None
    except FleetError as exc:
        done, failed = undo.run()
        raise RegisterFailed(exc.message, done, leftovers=failed) from None
    except BaseException:
        undo.run()  # a bug or SystemExit: still leave nothing behind
        raise


# -- register -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterOptions:
    identity: str = "iot-cert"
    credentials_endpoint: str | None = None  # override DescribeEndpoint (a sandbox)
    credentials_ca: Path | None = None  # the credentials provider's CA, shipped in the bundle


@dataclass(frozen=True)
class Registered:
    name: str
    identity: str
    host_identifier: str  # the IAM user or session ARN CodeDeploy knows the device by
    tags: dict[str, str]
    bundle: str
    thing_name: str = ""
    certificate_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "identity": self.identity,
                "host_identifier": self.host_identifier, "tags": self.tags,
                "bundle": self.bundle, "thing_name": self.thing_name,
                "certificate_id": self.certificate_id}


def register_device(aws: Aws, names: FleetNames, name: str, tags: dict[str, str], *,
                    bundle: Path, options: RegisterOptions | None = None) -> Registered:
    """Create the identity, register and tag the instance, write the enrollment bundle; on any
    failure or Ctrl-C remove what was created (RegisterFailed says what)."""
    options = options or RegisterOptions()
    validate_name(name, options.identity)
    validate_tags(tags)
    if bundle.exists():
        raise Conflict(f"{bundle} exists already (an enrollment bundle holds secrets: fleetctl "
                       "does not overwrite one); move it away or pass --bundle")
    if not bundle.parent.is_dir():
        raise FleetError(f"cannot write {bundle}: {bundle.parent} is not a directory")
    ca_pem = b""
    if options.credentials_ca is not None:
        try:
            ca_pem = options.credentials_ca.read_bytes()
        except OSError as exc:
            raise FleetError(f"cannot read --credentials-ca {options.credentials_ca}: "
                             f"{exc.strerror}") from None
    all_tags = {**tags, FLEET_TAG: names.fleet}
    if options.identity == "iam-user":
        return _register_iam_user(aws, names, name, all_tags, bundle)
    return _register_iot_cert(aws, names, name, all_tags, bundle=bundle, options=options,
                              ca_pem=ca_pem)


def _register_iot_cert(aws: Aws, names: FleetNames, name: str, tags: dict[str, str], *,
                       bundle: Path, options: RegisterOptions, ca_pem: bytes) -> Registered:
    iot, cd = aws.client("iot"), aws.client("codedeploy")
    role_name = aws.remembered(f"device-role:{names.fleet}",
                               lambda: _prerequisites(aws, names))

    def endpoint(kind: str) -> str:
        with aws_errors("finding the IoT endpoints (iot:DescribeEndpoint)"):
            return str(iot.describe_endpoint(endpointType=kind)["endpointAddress"])

    data_host = aws.remembered("iot:Data-ATS", lambda: endpoint("iot:Data-ATS"))
    creds_url = options.credentials_endpoint or "https://" + aws.remembered(
        "iot:CredentialProvider", lambda: endpoint("iot:CredentialProvider"))
    with aws_errors(f"looking for the IoT thing {name}"):
        try:
            iot.describe_thing(thingName=name)
        except iot.exceptions.ResourceNotFoundException:
            pass
        else:
            raise Conflict(f"the IoT thing {name} exists already; `fleetctl deregister {name}` "
                           "removes a device's thing, or choose another name")
    with _rolling_back(name) as undo:
        with aws_errors(f"creating the IoT thing {name}"):
            iot.create_thing(thingName=name)
        undo.add(f"IoT thing {name}", lambda: iot.delete_thing(thingName=name))
        with aws_errors("creating the device certificate (iot:CreateKeysAndCertificate)"):
            cert = iot.create_keys_and_certificate(setAsActive=True)
        cert_arn, cert_id = cert["certificateArn"], cert["certificateId"]
        undo.add(f"certificate {cert_id[:12]}", lambda: _delete_certificate(iot, cert_id))
        with aws_errors(f"attaching the IoT policy {names.iot_policy}"):
            iot.attach_policy(policyName=names.iot_policy, target=cert_arn)
        undo.add(f"policy attachment {names.iot_policy}",
                 lambda: iot.detach_policy(policyName=names.iot_policy, target=cert_arn))
        with aws_errors(f"attaching the certificate to the thing {name}"):
            iot.attach_thing_principal(thingName=name, principal=cert_arn)
        undo.add(f"certificate attachment to {name}",
                 lambda: iot.detach_thing_principal(thingName=name, principal=cert_arn))
        arn = (f"arn:{aws.partition()}:sts::{aws.account_id}:assumed-role/{role_name}/"
               f"{cert_id}")
        _register_and_tag(cd, undo, name, tags, iamSessionArn=arn)
        identity = {"mode": "iot-cert", "host_identifier": arn,
                    "certificate": f"/{SECRETS}/device.pem.crt",
                    "private_key": f"/{SECRETS}/private.pem.key",
                    "credentials_endpoint": creds_url,
                    "credentials_ca_bundle": f"/{ETC}/credentials-ca.pem" if ca_pem else "",
                    "role_alias": names.role_alias, "thing_name": name}
        files = {f"{SECRETS}/device.pem.crt": cert["certificatePem"].encode(),
                 f"{SECRETS}/private.pem.key": cert["keyPair"]["PrivateKey"].encode()}
        if ca_pem:
            files[f"{ETC}/credentials-ca.pem"] = ca_pem
        telemetry = {"enabled": False, "endpoint": data_host, "thing_name": name}
        _write_bundle(undo, bundle, agent_toml(aws, identity, telemetry), files)
    return Registered(name, "iot-cert", arn, tags, str(bundle), name, cert_id)


def _prerequisites(aws: Aws, names: FleetNames) -> str:
    """The device role's name, once the role alias and IoT policy ``fleetctl init`` creates
    are known to exist."""
    iot = aws.client("iot")
    try:
        with aws_errors(f"looking for the role alias {names.role_alias}"):
            alias = iot.describe_role_alias(roleAlias=names.role_alias)["roleAliasDescription"]
        with aws_errors(f"looking for the IoT policy {names.iot_policy}"):
            iot.get_policy(policyName=names.iot_policy)
    except NotFound as exc:
        raise FleetError(f"{exc.message}; the fleet {names.fleet!r} is not set up: run "
                         f"`fleetctl --fleet {names.fleet} init` first") from None
    return str(alias["roleArn"]).rsplit("/", 1)[-1]


def _delete_certificate(iot: Any, cert_id: str) -> None:
    iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
    iot.delete_certificate(certificateId=cert_id, forceDelete=True)


def _register_iam_user(aws: Aws, names: FleetNames, name: str, tags: dict[str, str],
                       bundle: Path) -> Registered:
    iam, cd = aws.client("iam"), aws.client("codedeploy")
    bucket = names.bucket(aws.account_id, aws.region)
    with _rolling_back(name) as undo:
        try:
            with aws_errors(f"creating the IAM user {name}"):
                user = iam.create_user(Path=names.iam_path, UserName=name)["User"]
        except FleetError as exc:
            if "EntityAlreadyExists" in exc.message:
                raise Conflict(f"the IAM user {name} exists already; `fleetctl deregister "
                               f"{name}` removes a device's user, or choose another name"
                               ) from None
            raise
        undo.add(f"IAM user {name}", lambda: iam.delete_user(UserName=name))
        with aws_errors(f"creating an access key for {name}"):
            key = iam.create_access_key(UserName=name)["AccessKey"]
        key_id = key["AccessKeyId"]
        undo.add(f"access key {key_id}",
                 lambda: iam.delete_access_key(UserName=name, AccessKeyId=key_id))
        with aws_errors(f"giving {name} read access to s3://{bucket}"):
            iam.put_user_policy(UserName=name, PolicyName=POLICY_NAME,
                                PolicyDocument=json.dumps(bucket_read_policy(aws, bucket)))
        undo.add(f"inline policy {POLICY_NAME}",
                 lambda: iam.delete_user_policy(UserName=name, PolicyName=POLICY_NAME))
        arn = user["Arn"]
        _register_and_tag(cd, undo, name, tags, iamUserArn=arn)
        identity = {"mode": "iam-user", "host_identifier": arn,
                    "credentials_file": f"/{SECRETS}/credentials"}
        credentials = (f"[default]\naws_access_key_id = {key_id}\n"
                       f"aws_secret_access_key = {key['SecretAccessKey']}\n")
        _write_bundle(undo, bundle, agent_toml(aws, identity, None),
                      {f"{SECRETS}/credentials": credentials.encode()})
    return Registered(name, "iam-user", arn, tags, str(bundle))


def bucket_read_policy(aws: Aws, bucket: str) -> dict[str, Any]:
    arn = f"arn:{aws.partition()}:s3:::{bucket}"
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion"],
         "Resource": f"{arn}/*"},
        {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
         "Resource": arn}]}


def _register_and_tag(cd: Any, undo: Undo, name: str, tags: dict[str, str],
                      **arn: str) -> None:
    with aws_errors(f"registering the on-premises instance {name}"):
        cd.register_on_premises_instance(instanceName=name, **arn)
    undo.add(f"registration of {name}",
             lambda: cd.deregister_on_premises_instance(instanceName=name))
    with aws_errors(f"tagging {name}"):
        cd.add_tags_to_on_premises_instances(instanceNames=[name], tags=_tag_list(tags))
    undo.add(f"tags of {name}", lambda: cd.remove_tags_from_on_premises_instances(
        instanceNames=[name], tags=_tag_list(tags)))


# -- the enrollment bundle ----------------------------------------------------------------------


def agent_toml(aws: Aws, identity: dict[str, str], telemetry: dict[str, Any] | None) -> str:
    """The device's agent.toml; with --endpoint-url (the sandbox) the agent's endpoints too."""
    lines = ["# Written by fleetctl register; installed by `pifleet-agent enroll`.", "",
             "[identity]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in identity.items()]
    lines += ["", "[aws]", f"region = {json.dumps(aws.region)}"]
    url = aws.options.endpoint_url
    if url:
        lines += [f"{k} = {json.dumps(url)}"
                  for k in ("commands_endpoint", "s3_endpoint", "sts_endpoint")]
    if telemetry is not None:
        lines += ["", "# Set enabled = true once [[sensors]] are configured.", "[telemetry]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in telemetry.items()]
    return "\n".join(lines) + "\n"


def _member(name: str, data: bytes | None, mode: int) -> tuple[tarfile.TarInfo, io.BytesIO | None]:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.uid, info.gid = mode, int(time.time()), 0, 0
    info.uname = info.gname = "root"
    if data is None:
        info.type = tarfile.DIRTYPE
        return info, None
    info.size = len(data)
    return info, io.BytesIO(data)


def bundle_bytes(agent_config: str, files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in (_member(ETC, None, 0o755), _member(SECRETS, None, 0o700),
                           _member(f"{ETC}/agent.toml", agent_config.encode(), 0o644)):
            tar.addfile(info, data)
        for path, content in sorted(files.items()):
            tar.addfile(*_member(path, content, 0o600 if path.startswith(SECRETS) else 0o644))
    return buffer.getvalue()


def _write_bundle(undo: Undo, path: Path, agent_config: str, files: dict[str, bytes]) -> None:
    data = bundle_bytes(agent_config, files)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise FleetError(f"cannot write the enrollment bundle {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FleetError(f"cannot write the enrollment bundle {path}: {exc.strerror}") from None
    undo.add(f"bundle {path}", lambda: path.unlink(missing_ok=True))


# -- inventory ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    tags: dict[str, str]
    identity: str = "iot-cert"


@dataclass
class InventoryResult:
    registered: list[Registered] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"registered": [r.as_dict() for r in self.registered], "skipped": self.skipped,
                "failed": self.failed, "interrupted": self.interrupted}


def read_inventory(path: Path) -> list[DeviceSpec]:
    """CSV (header name,tags,identity; tags "k=v;k=v") or YAML (a list of {name, tags: {k: v},
    identity}); every entry validated before anything is called."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetError(f"cannot read the inventory {path}: {exc.strerror}") from None
    if path.suffix.lower() in (".yml", ".yaml"):
        specs = _yaml_inventory(text, path)
    else:
        specs = _csv_inventory(text, path)
    seen: set[str] = set()
    for spec in specs:
        try:
            validate_name(spec.name, spec.identity)
            validate_tags(spec.tags)
        except FleetError as exc:
            raise FleetError(f"{path}: {exc.message}") from None
        if spec.name in seen:
            raise FleetError(f"{path}: {spec.name} is listed twice")
        seen.add(spec.name)
    return specs


def _csv_inventory(text: str, path: Path) -> list[DeviceSpec]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "name" not in reader.fieldnames:
        raise FleetError(f"{path}: the CSV needs a header line: name,tags,identity")
    specs = []
    for line, row in enumerate(reader, start=2):
        tags_text = (row.get("tags") or "").strip()
        try:
            tags = parse_tags([t.strip() for t in tags_text.split(";") if t.strip()])
        except FleetError as exc:
            raise FleetError(f"{path} line {line}: {exc.message}") from None
        specs.append(DeviceSpec((row.get("name") or "").strip(), tags,
                                (row.get("identity") or "").strip() or "iot-cert"))
    return specs


def _yaml_inventory(text: str, path: Path) -> list[DeviceSpec]:
    import yaml  # noqa: PLC0415

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FleetError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, list):
        raise FleetError(f"{path}: expected a list of devices ({{name, tags, identity}})")
    specs = []
    for index, entry in enumerate(data):
        tags = entry.get("tags") or {} if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or \
                not isinstance(tags, dict):
            raise FleetError(f"{path} entry {index}: needs name (text) and tags (a mapping)")
        specs.append(DeviceSpec(entry["name"], {str(k): str(v) for k, v in tags.items()},
                                str(entry.get("identity") or "iot-cert")))
    return specs


def register_inventory(aws: Aws, names: FleetNames, specs: list[DeviceSpec], *,
                       directory: Path, options: RegisterOptions | None = None,
                       progress: Callable[[str], None] | None = None) -> InventoryResult:
    """Register each device not registered yet; skip those registered identically; fail (and go
    on) for those registered differently.  Ctrl-C rolls back the device in progress and stops."""
    options = options or RegisterOptions()
    directory.mkdir(parents=True, exist_ok=True)
    result = InventoryResult()
    for spec in specs:
        try:
            existing = _instance(aws, spec.name)
            if existing is not None:
                differences = _differences(existing, spec, names)
                if differences:
                    raise Conflict(f"registered differently ({differences}); `fleetctl "
                                   f"deregister {spec.name}` first, or fix the inventory")
                result.skipped.append(spec.name)
                continue
            result.registered.append(register_device(
                aws, names, spec.name, spec.tags, bundle=directory / f"{spec.name}.pifleet.tar",
                options=RegisterOptions(spec.identity, options.credentials_endpoint,
                                options.credentials_ca)))
        except RegisterFailed as exc:
            result.failed[spec.name] = exc.message
            if exc.interrupted:
                result.interrupted = True
                break
        except FleetError as exc:
            result.failed[spec.name] = exc.message
        except KeyboardInterrupt:
            result.failed[spec.name] = "interrupted"
            result.interrupted = True
            break
        finally:
            if progress is not None:
                progress(spec.name)
    return result


def _differences(info: dict[str, Any], spec: DeviceSpec, names: FleetNames) -> str:
    problems = []
    if identity_kind(info) != spec.identity:
        problems.append(f"identity {identity_kind(info)}, not {spec.identity}")
    tags = tags_of(info)
    wanted = {**spec.tags, FLEET_TAG: names.fleet}
    if tags != wanted:
        problems.append("tags " + _tags_text(tags) + ", not " + _tags_text(wanted))
    return "; ".join(problems)


def _tags_text(tags: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items())) or "none"


# -- reading ------------------------------------------------------------------------------------


def identity_kind(info: dict[str, Any]) -> str:
    if info.get("iamUserArn"):
        return "iam-user"
    arn = str(info.get("iamSessionArn") or "")
    return "iot-cert" if arn else "unknown"


def tags_of(info: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in info.get("tags") or []}


def _instance(aws: Aws, name: str) -> dict[str, Any] | None:
    """The instance's info if it is registered now, else None."""
    cd = aws.client("codedeploy")
    try:
        with aws_errors(f"looking up {name}"):
            info: dict[str, Any] = cd.get_on_premises_instance(instanceName=name)["instanceInfo"]
    except NotFound:
        return None
    return None if info.get("deregisterTime") else info


def get_device(aws: Aws, name: str) -> dict[str, Any]:
    cd = aws.client("codedeploy")
    try:
        with aws_errors(f"looking up {name}"):
            return dict(cd.get_on_premises_instance(instanceName=name)["instanceInfo"])
    except NotFound:
        raise NotFound(f"no device {name} is registered; `fleetctl list` shows the fleet's "
                       "devices") from None


@dataclass(frozen=True)
class Device:
    name: str
    identity: str
    host_identifier: str
    tags: dict[str, str]
    registered: str
    deregistered: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "identity": self.identity,
                "host_identifier": self.host_identifier, "tags": self.tags,
                "registered": self.registered, "deregistered": self.deregistered}


def _device(info: dict[str, Any]) -> Device:
    def when(key: str) -> str:
        value: Any = info.get(key)
        return str(value.isoformat(timespec="seconds")) if value is not None else ""

    return Device(info["instanceName"], identity_kind(info),
                  str(info.get("iamUserArn") or info.get("iamSessionArn") or ""),
                  tags_of(info), when("registerTime"), when("deregisterTime"))


def list_devices(aws: Aws, names: FleetNames, tags: dict[str, str] | None = None,
                 status: str = "registered") -> list[Device]:
    """The fleet's devices with all of ``tags``; deregistered ones have lost their tags, so
    with ``status="deregistered"`` the fleet and tag filters cannot apply."""
    tags = tags or {}
    if status not in ("registered", "deregistered"):
        raise FleetError(f"status {status!r} must be registered or deregistered")
    cd = aws.client("codedeploy")
    wanted = {**tags, FLEET_TAG: names.fleet} if status == "registered" else {}
    filters = [{"Key": k, "Value": v, "Type": "KEY_AND_VALUE"}
               for k, v in (tags or {FLEET_TAG: names.fleet}).items()]
    request: dict[str, Any] = {"registrationStatus": status.capitalize()}
    if status == "registered":
        request["tagFilters"] = filters
    instance_names: list[str] = []
    with aws_errors("listing on-premises instances"):
        for page in cd.get_paginator("list_on_premises_instances").paginate(**request):
            instance_names += page.get("instanceNames", [])
        infos: list[dict[str, Any]] = []
        for start in range(0, len(instance_names), BATCH):
            infos += cd.batch_get_on_premises_instances(
                instanceNames=instance_names[start:start + BATCH]).get("instanceInfos", [])
    devices = [_device(info) for info in infos
               if all(tags_of(info).get(k) == v for k, v in wanted.items())]
    return sorted(devices, key=lambda d: d.name)


def show_device(aws: Aws, names: FleetNames, name: str) -> dict[str, Any]:
    """Registration, tags, identity, the device's part in the application's last 5
    deployments, and its classic and ``agent`` shadows (None when there is none)."""
    info = get_device(aws, name)
    device = _device(info).as_dict()
    device["deployments"] = _recent_deployments(aws, names, name)
    device["shadows"] = _shadows(aws, name) if device["identity"] == "iot-cert" else {}
    return device


def _recent_deployments(aws: Aws, names: FleetNames, name: str) -> list[dict[str, Any]]:
    from botocore.exceptions import ClientError  # noqa: PLC0415

    cd = aws.client("codedeploy")
    try:
        with aws_errors(f"listing the deployments of {names.application}"):
            ids = cd.list_deployments(applicationName=names.application).get(
                "deployments", [])
            infos = []
            for start in range(0, len(ids), BATCH):
                infos += cd.batch_get_deployments(
                    deploymentIds=ids[start:start + BATCH]).get("deploymentsInfo", [])
    except NotFound:
        return []  # no application yet: `fleetctl init` not run, nothing deployed
    infos.sort(key=lambda d: str(d.get("createTime", "")), reverse=True)
    found = []
    for deployment in infos[:5]:
        row = {"deployment_id": deployment["deploymentId"],
               "group": deployment.get("deploymentGroupName", ""),
               "deployment_status": deployment.get("status", ""),
               "created": str(deployment.get("createTime", "")), "status": "not a target"}
        try:
            targets = cd.batch_get_deployment_targets(
                deploymentId=deployment["deploymentId"], targetIds=[name]).get(
                "deploymentTargets", [])
        except ClientError:
            targets = []  # this device was not one of its targets
        for target in targets:
            instance = target.get("instanceTarget") or {}
            row["status"] = instance.get("status", "")
            failed = [e for e in instance.get("lifecycleEvents", [])
                      if e.get("status") == "Failed"]
            if failed:
                row["failed_event"] = failed[0].get("lifecycleEventName", "")
        found.append(row)
    return found


def _shadows(aws: Aws, name: str) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    try:
        if aws.options.endpoint_url:
            data = aws.client("iot-data")
        else:
            with aws_errors("finding the IoT data endpoint"):
                host = aws.client("iot").describe_endpoint(
                    endpointType="iot:Data-ATS")["endpointAddress"]
            data = aws.session.client("iot-data", region_name=aws.region,
                                      endpoint_url=f"https://{host}")
    except FleetError:
        return {}
    shadows: dict[str, Any] = {}
    for label, extra in (("classic", {}), ("agent", {"shadowName": "agent"})):
        try:
            payload = data.get_thing_shadow(thingName=name, **extra)["payload"].read()
            shadows[label] = json.loads(payload).get("state")
        except (ClientError, BotoCoreError, ValueError):
            shadows[label] = None
    return shadows


# -- tag, untag, deregister ---------------------------------------------------------------------


def tag_device(aws: Aws, name: str, tags: dict[str, str]) -> dict[str, str]:
    validate_tags(tags)
    info = get_device(aws, name)
    merged = {**tags_of(info), **tags}
    if len(merged) > MAX_TAGS:
        raise FleetError(f"{name} would have {len(merged)} tags; the limit is {MAX_TAGS}: "
                         "untag some first")
    with aws_errors(f"tagging {name}"):
        aws.client("codedeploy").add_tags_to_on_premises_instances(
            instanceNames=[name], tags=_tag_list(tags))
    return merged


def untag_device(aws: Aws, name: str, keys: list[str]) -> dict[str, str]:
    if FLEET_TAG in keys:
        raise FleetError(f"{FLEET_TAG} says which fleet {name} belongs to; `fleetctl "
                         "deregister` removes a device from its fleet")
    current = tags_of(get_device(aws, name))
    missing = [k for k in keys if k not in current]
    if missing:
        raise NotFound(f"{name} has no tag {', '.join(missing)} (its tags: "
                       f"{_tags_text(current)})")
    with aws_errors(f"removing tags from {name}"):
        aws.client("codedeploy").remove_tags_from_on_premises_instances(
            instanceNames=[name], tags=[{"Key": k, "Value": current[k]} for k in keys])
    return {k: v for k, v in current.items() if k not in keys}


def deregister_device(aws: Aws, names: FleetNames, name: str, *,
                      keep_identity: bool = False) -> list[str]:
    """Untag and deregister; then (unless ``keep_identity``) remove the IAM user or the thing and
    certificate.  Whatever is already gone is skipped; the list says what was removed."""
    cd = aws.client("codedeploy")
    info = get_device(aws, name)
    removed: list[str] = []
    if not info.get("deregisterTime"):
        tags = info.get("tags") or []
        with aws_errors(f"deregistering {name}"):
            if tags:
                cd.remove_tags_from_on_premises_instances(instanceNames=[name], tags=tags)
                removed.append(f"tags {_tags_text(tags_of(info))}")
            cd.deregister_on_premises_instance(instanceName=name)
        removed.append(f"registration of {name}")
    if keep_identity:
        return removed
    if info.get("iamUserArn"):
        removed += _remove_user(aws, str(info["iamUserArn"]).rsplit("/", 1)[-1])
    elif info.get("iamSessionArn"):
        cert_id = str(info["iamSessionArn"]).rsplit("/", 1)[-1]
        removed += _remove_thing(aws, names, name, cert_id)
    return removed


def _tolerant(doing: str, action: Callable[[], Any]) -> bool:
    """Run ``action``; False if what it acts on is already gone."""
    try:
        with aws_errors(doing):
            action()
    except NotFound:
        return False
    return True


def _remove_user(aws: Aws, user: str) -> list[str]:
    iam = aws.client("iam")
    removed = []
    try:
        with aws_errors(f"listing what the IAM user {user} has"):
            policies = iam.list_user_policies(UserName=user).get("PolicyNames", [])
            keys = iam.list_access_keys(UserName=user).get("AccessKeyMetadata", [])
    except NotFound:
        return []
    for policy in policies:
        if _tolerant(f"deleting the policy {policy} of {user}",
                     partial(iam.delete_user_policy, UserName=user, PolicyName=policy)):
            removed.append(f"inline policy {policy}")
    for key in keys:
        key_id = key["AccessKeyId"]
        if _tolerant(f"deleting the access key {key_id}",
                     partial(iam.delete_access_key, UserName=user, AccessKeyId=key_id)):
            removed.append(f"access key {key_id}")
    if _tolerant(f"deleting the IAM user {user}", lambda: iam.delete_user(UserName=user)):
        removed.append(f"IAM user {user}")
    return removed


def _remove_thing(aws: Aws, names: FleetNames, thing: str, cert_id: str) -> list[str]:
    iot = aws.client("iot")
    removed = []
    cert_arn = ""
    try:
        with aws_errors(f"looking up the certificate {cert_id}"):
            cert_arn = iot.describe_certificate(certificateId=cert_id)[
                "certificateDescription"]["certificateArn"]
    except NotFound:
        pass
    if cert_arn:
        if _tolerant(f"detaching the policy {names.iot_policy}",
                     lambda: iot.detach_policy(policyName=names.iot_policy, target=cert_arn)):
            removed.append(f"policy attachment {names.iot_policy}")
        if _tolerant(f"detaching the certificate from {thing}",
                     lambda: iot.detach_thing_principal(thingName=thing, principal=cert_arn)):
            removed.append(f"certificate attachment to {thing}")
        if _tolerant(f"deleting the certificate {cert_id}",
                     lambda: _delete_certificate(iot, cert_id)):
            removed.append(f"certificate {cert_id[:12]}")
    if _tolerant(f"deleting the IoT thing {thing}", lambda: iot.delete_thing(thingName=thing)):
        removed.append(f"IoT thing {thing}")
    return removed
