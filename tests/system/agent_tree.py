"""A Debian 12 tree with the .deb installed and the device enrolled against a sandbox on the
host, ready to boot (tests/system/test_boot.py and bench/bench_boot.py).

The enrollment goes through ``pifleet-agent enroll`` inside the tree, with a bundle shaped like
the one ``fleetctl register`` writes; the identity is an STS session (iam-session), so the
credentials hold both a secret key and a session token that must never reach the journal.
"""

from __future__ import annotations

import io
import json
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.conftest import World
from tests.support import testbed
from tests.system.conftest import apt_install

UNIT = "pifleet-agent.service"
DROP_IN_DIR = "etc/systemd/system/pifleet-agent.service.d"
BUNDLE_IN_TREE = "/root/enrollment.tar"
# Hooks write here: below /root, which is on the tree (nspawn puts a tmpfs on /tmp).
PROOF = "/root/proof.txt"


@dataclass(frozen=True)
class Enrollment:
    name: str
    arn: str
    secret_key: str
    session_token: str


def _session(world: World, name: str) -> tuple[str, dict[str, str]]:
    iam, sts = world.client("iam"), world.client("sts")
    role = iam.create_role(RoleName=f"{name}-role", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRole",
            "Principal": {"AWS": "arn:aws:iam::123456789012:root"}}]}))["Role"]
    session = sts.assume_role(RoleArn=role["Arn"], RoleSessionName=name)
    return session["AssumedRoleUser"]["Arn"], session["Credentials"]


def enrollment_bundle(world: World, name: str, target: Path,
                      **agent: object) -> Enrollment:
    """Registers and tags ``name`` in the sandbox and writes its enrollment bundle."""
    arn, creds = _session(world, name)
    cd = world.client("codedeploy")
    cd.register_on_premises_instance(instanceName=name, iamSessionArn=arn)
    cd.add_tags_to_on_premises_instances(instanceNames=[name],
                                         tags=[{"Key": "fleet", "Value": "proof"}])
    e = world.sandbox.endpoint
    with urllib.request.urlopen(f"{e.url}/_pifleet/signer.pem", timeout=10) as response:  # noqa: S310
        signer = response.read()
    # A container shares the host's clock and runs no timesyncd: nothing would ever say it is
    # synchronised (test_boot.py turns the wait back on to see it under systemd).
    settings = {"poll_interval_s": 0.5, "spec_trust_anchors": "/etc/pifleet/signer.pem",
                "wait_for_clock_sync": False, **agent}
    config = (
        "[identity]\nmode = \"iam-session\"\n"
        f"host_identifier = \"{arn}\"\n"
        "credentials_file = \"/etc/pifleet/secrets/credentials\"\n\n"
        f"[aws]\nregion = \"{e.region}\"\ncommands_endpoint = \"{e.url}\"\n"
        f"s3_endpoint = \"{e.url}\"\nsts_endpoint = \"{e.url}\"\n\n[agent]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    credentials = (f"[default]\naws_access_key_id = {creds['AccessKeyId']}\n"
                   f"aws_secret_access_key = {creds['SecretAccessKey']}\n"
                   f"aws_session_token = {creds['SessionToken']}\n")
    with tarfile.open(target, "w") as tar:
        for member, content, mode in (
                ("etc/pifleet/agent.toml", config.encode(), 0o644),
                ("etc/pifleet/secrets/credentials", credentials.encode(), 0o600),
                ("etc/pifleet/signer.pem", signer, 0o644)):
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(content), mode
            tar.addfile(info, io.BytesIO(content))
    return Enrollment(name, arn, creds["SecretAccessKey"], creds["SessionToken"])


def install_and_enroll(tree: Path, deb: Path, world: World, name: str = "pi-boot",
                       **agent: object) -> Enrollment:
    """``apt-get install ./pifleet-agent_*.deb`` then ``pifleet-agent enroll``, both inside
    ``tree`` without booting it (as on an SD card prepared before first boot)."""
    apt_install(tree, deb)
    bundle = tree / BUNDLE_IN_TREE.lstrip("/")
    enrollment = enrollment_bundle(world, name, bundle, **agent)
    testbed.run_in(tree, ["pifleet-agent", "enroll", BUNDLE_IN_TREE])
    bundle.unlink()
    return enrollment


def add_drop_in(tree: Path, name: str, text: str) -> Path:
    """A drop-in for the unit under /etc/systemd/system (the package's unit stays as built)."""
    path = tree / DROP_IN_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def revision(hooks: dict[str, str]) -> bytes:
    """A bundle installing /opt/proof/version.txt whose hooks run the given shell bodies, each
    first appending ``<event> <deployment id> <its cgroup>`` to PROOF."""
    lines = ["version: 0.0", "os: linux", "files:", "  - source: app",
             "    destination: /opt/proof", "hooks:"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for event, body in hooks.items():
            script = ("#!/bin/sh\n"
                      'echo "$LIFECYCLE_EVENT $DEPLOYMENT_ID '
                      f'$(sed -n "s/^0:://p" /proc/self/cgroup)" >> {PROOF}\n{body}\n')
            info = zipfile.ZipInfo(f"scripts/{event}.sh")
            info.external_attr = 0o100755 << 16
            zf.writestr(info, script)
            lines += [f"  {event}:", f"    - location: scripts/{event}.sh", "      timeout: 120"]
        zf.writestr("appspec.yml", "\n".join(lines) + "\n")
        zf.writestr("app/version.txt", "1")
    return buffer.getvalue()
