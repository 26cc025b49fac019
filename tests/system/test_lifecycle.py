"""The pifleet-agent .deb's life in a Debian 12 system: install, upgrade from the previous build
(state, enrollment and a locally changed conffile kept; the service restarted only once the new
files are in place), remove, purge (nothing left behind), an upgrade during a deployment
(refused from outside, allowed from the deployment's own hook), a power cut during install,
a broken agent.toml after an upgrade, a purge while the service runs, and an unsupported
release.

Most tests drive dpkg in a container that is not booted (as an SD card prepared on a PC: the
maintainer scripts see no running systemd); the ones about the running service boot the tree
with systemd as PID 1. Unattended upgrades here use apt-get with
``--force-confdef --force-confold`` (UPGRADE_OPTIONS): keep what the admin changed, take the
package's new version of what they did not, never ask.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.conftest import World, fresh_world
from tests.support import testbed
from tests.support.waiting import wait_for
from tests.system.conftest import apt_install, build_deb, copy_in, offline_apt

pytestmark = pytest.mark.integration

UNIT = "pifleet-agent.service"
NEXT_VERSION = "0.1.1-1"
CONFFILE = "etc/pifleet/agent.toml"
DROP_IN = "etc/pifleet/agent.d/50-enrollment.toml"
SECRETS = "etc/pifleet/secrets"
STATE = "var/lib/pifleet"
ONGOING = f"{STATE}/deployment-root/ongoing-deployment"
UPGRADE_OPTIONS = ("-o", "Dpkg::Options::=--force-confdef",
                   "-o", "Dpkg::Options::=--force-confold")
# Appended to agent.toml in the next build: a release that changes the conffile, so the upgrade
# has to decide between the admin's file and the package's.
NEXT_CONFFILE_LINE = "# (0.1.1: this comment is new in the package's agent.toml)\n"

# A purge must leave the tree as it was before the install, except for these. Each is noise of
# dpkg/apt themselves or of the test, not the package's:
NOISE = (
    "var/lib/dpkg/",          # dpkg's database: status, available, triggers, info/ of others
    "var/log/dpkg.log",       # dpkg's log
    "var/log/apt/",           # apt's history and term logs
    "var/cache/apt/",         # apt's package caches (pkgcache.bin, srcpkgcache.bin)
    "var/lib/apt/",           # apt's extended_states (auto-installed marks)
    "var/cache/ldconfig/",    # ldconfig's cache, refreshed by dpkg's trigger
    "etc/ld.so.cache",        # same
    "root/",                  # the .deb copied in by the test, and the shell's history
)


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def next_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The next build, 0.1.1-1, whose agent.toml gained a comment line."""
    built = build_deb(tmp_path_factory.mktemp("deb-next"), NEXT_VERSION)
    tree = tmp_path_factory.mktemp("deb-next-tree")
    subprocess.run(["dpkg-deb", "-R", str(built), str(tree)], check=True)
    with (tree / CONFFILE).open("a") as conffile:
        conffile.write(NEXT_CONFFILE_LINE)
    out = tmp_path_factory.mktemp("deb-next-out") / built.name
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)], check=True,
                   capture_output=True)
    return out


def run(root: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return testbed.run_in(root, list(argv), check=check)


def upgrade(root: Path, deb: Path, *env: str,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """An unattended ``apt-get install ./new.deb``; ``env`` as NAME=VALUE (a hook's variables)."""
    inside = copy_in(root, deb, "/root/" + deb.name)
    return run(root, "env", *env, "apt-get", "install", "-y", "--no-install-recommends",
               *offline_apt(root),
               *UPGRADE_OPTIONS, inside, check=check)


def install(root: Path, deb: Path) -> subprocess.CompletedProcess[str]:
    """``apt-get install ./pifleet-agent_*.deb``, offline."""
    return apt_install(root, deb)


def said(result: subprocess.CompletedProcess[str]) -> str:
    """What apt and the maintainer scripts printed (apt runs dpkg on a pty: one stream)."""
    return result.stdout + result.stderr


def status(root: Path) -> str:
    """``<version> <dpkg status>`` of the package, e.g. ``0.1.0-1 install ok installed``."""
    return run(root, "dpkg-query", "-W", "-f", "${Version} ${Status}", "pifleet-agent",
               check=False).stdout.strip()


def write(root: Path, path: str, content: str | bytes, mode: int = 0o644) -> Path:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    target.write_bytes(content)
    target.chmod(mode)
    return target


def enroll(root: Path, world: World | None = None, name: str = "pi-lifecycle") -> None:
    """What ``pifleet-agent enroll`` leaves: the drop-in and a 0600 credentials file in a 0700
    directory. With a sandbox, the device is registered there and the agent reaches READY;
    without, its endpoint refuses connections (for tests where the service never starts)."""
    endpoint, region, anchor = "http://127.0.0.1:9", "eu-west-1", ""
    arn, key = f"arn:aws:iam::123456789012:user/{name}", {"AccessKeyId": "AKIDLIFECYCLE",
                                                         "SecretAccessKey": "not-a-secret"}
    if world is not None:
        iam, cd = world.client("iam"), world.client("codedeploy")
        arn = iam.create_user(UserName=name)["User"]["Arn"]
        key = iam.create_access_key(UserName=name)["AccessKey"]
        cd.register_on_premises_instance(instanceName=name, iamUserArn=arn)
        cd.add_tags_to_on_premises_instances(instanceNames=[name],
                                             tags=[{"Key": "fleet", "Value": "proof"}])
        endpoint, region = world.sandbox.endpoint.url, world.sandbox.endpoint.region
        with urllib.request.urlopen(f"{endpoint}/_pifleet/signer.pem",  # noqa: S310
                                    timeout=10) as response:
            write(root, "etc/pifleet/signer.pem", response.read())
        anchor = "/etc/pifleet/signer.pem"
    write(root, DROP_IN, (
        f"[identity]\nmode = \"iam-user\"\nhost_identifier = \"{arn}\"\n"
        f"credentials_file = \"/{SECRETS}/credentials\"\n\n"
        f"[aws]\nregion = \"{region}\"\ncommands_endpoint = \"{endpoint}\"\n"
        f"s3_endpoint = \"{endpoint}\"\nsts_endpoint = \"{endpoint}\"\n\n"
        f"[agent]\npoll_interval_s = 0.5\nwait_for_clock_sync = false\n"
        f"spec_trust_anchors = \"{anchor}\"\n"))
    (root / SECRETS).mkdir(mode=0o700, parents=True, exist_ok=True)
    write(root, f"{SECRETS}/credentials", f"[default]\naws_access_key_id = {key['AccessKeyId']}\n"
          f"aws_secret_access_key = {key['SecretAccessKey']}\n", 0o600)


def make_state(root: Path) -> dict[str, bytes]:
    """Run-time state as a device that has deployed and published telemetry has it: a
    deployment group's revisions, the deployment log, the status file, the SQLite telemetry
    outbox and a hook log. Returns path -> content, to compare after an upgrade."""
    group = f"{STATE}/deployment-root/dg-0f1e2d3c"
    files = {
        f"{group}/d-ABCDEF123/deployment-archive/appspec.yml": b"version: 0.0\nos: linux\n",
        f"{group}/d-ABCDEF123/logs/scripts.log": b"[stdout]installed\n",
        f"{STATE}/deployment-root/deployment-instructions/dg-0f1e2d3c_last_successful_install":
            f"/{group}/d-ABCDEF123".encode(),
        f"{STATE}/deployment-root/deployment-logs/codedeploy-agent-deployments.log":
            b"[2026-11-26 20:00:00.000] [d-ABCDEF123]Script succeeded\n",
        f"{STATE}/agent-status.json": b'{"version": "0.1.0", "state": "polling"}',
        "var/log/pifleet/hooks.log": b"AfterInstall d-ABCDEF123 ok\n",
    }
    for path, content in files.items():
        write(root, path, content)
    run(root, "python3", "-c", "import sqlite3; db = sqlite3.connect('/var/lib/pifleet/outbox.db');"
        " db.execute('create table outbox (id integer primary key, topic text, payload blob)');"
        " db.execute(\"insert into outbox (topic, payload) values ('dt/pi/telemetry', '{}')\");"
        " db.commit()")
    files[f"{STATE}/outbox.db"] = (root / STATE / "outbox.db").read_bytes()
    return files


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every path of the tree (relative) -> (file type, permission bits), without the mount
    points' contents (nspawn mounts /proc, /sys, /dev, /run and /tmp itself)."""
    found: dict[str, tuple[int, int]] = {}
    for directory, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(directory, root)
        if rel_dir in ("proc", "sys", "dev", "run", "tmp"):
            dirs[:] = []
            continue
        for name in dirs + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            found[rel + ("/" if stat.S_ISDIR(info.st_mode) else "")] = (
                stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode))
    return found


def differences(before: dict[str, tuple[int, int]],
                after: dict[str, tuple[int, int]]) -> list[str]:
    changed = [f"+ {p}" for p in after if p not in before] + \
              [f"- {p}" for p in before if p not in after] + \
              [f"~ {p} {before[p]} -> {after[p]}" for p in before
               if p in after and before[p] != after[p]]
    return sorted(line for line in changed if not line[2:].startswith(NOISE))


def package_files(root: Path) -> list[str]:
    return [line for line in run(root, "dpkg-query", "-L", "pifleet-agent").stdout.splitlines()
            if line.startswith(("/usr/lib/pifleet-agent/", "/usr/bin/", "/lib/systemd/"))]


@pytest.fixture
def installed(tree: Path, deb: Path) -> Path:
    """The previous build (0.1.0-1) installed and the device enrolled."""
    install(tree, deb)
    enroll(tree)
    return tree


# -- install, upgrade, remove, purge --------------------------------------------------------


def test_install_puts_files_in_place_and_enables_the_unit(tree: Path, deb: Path) -> None:
    result = install(tree, deb)
    assert "Setting up pifleet-agent (0.1.0-1)" in result.stdout
    assert status(tree) == "0.1.0-1 install ok installed"
    assert run(tree, "pifleet-agent", "--version").stdout.strip() == "pifleet-agent 0.1.0"
    assert (tree / CONFFILE).read_text().startswith("# /etc/pifleet/agent.toml")
    assert stat.S_IMODE((tree / CONFFILE).stat().st_mode) == 0o644
    assert (tree / "lib/systemd/system" / UNIT).is_file()
    # py3compile ran: the private tree is byte-compiled at install, nothing shipped.
    assert list((tree / "usr/lib/pifleet-agent/agent").glob("__pycache__/cli.*.pyc"))
    assert run(tree, "systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
    assert (tree / "etc/systemd/system/multi-user.target.wants" / UNIT).is_symlink()
    # State directories are the unit's (StateDirectory=, LogsDirectory=), made when it starts.
    assert not (tree / STATE).exists()


def test_upgrade_keeps_state_enrollment_and_the_admins_conffile(
        installed: Path, next_deb: Path) -> None:
    tree = installed
    state = make_state(tree)
    drop_in = (tree / DROP_IN).read_bytes()
    credentials = (tree / SECRETS / "credentials").read_bytes()
    with (tree / CONFFILE).open("a") as conffile:
        conffile.write("\n# changed by the admin\n")
    mine = (tree / CONFFILE).read_bytes()

    result = upgrade(tree, next_deb)

    assert "Unpacking pifleet-agent (0.1.1-1) over (0.1.0-1)" in result.stdout
    assert status(tree) == "0.1.1-1 install ok installed"
    for path, content in state.items():
        assert (tree / path).read_bytes() == content, path
    assert (tree / DROP_IN).read_bytes() == drop_in
    assert (tree / SECRETS / "credentials").read_bytes() == credentials
    assert stat.S_IMODE((tree / SECRETS).stat().st_mode) == 0o700
    # --force-confold: the admin's file stays, the package's new one is put beside it.
    assert (tree / CONFFILE).read_bytes() == mine
    assert (tree / f"{CONFFILE}.dpkg-dist").read_text().endswith(NEXT_CONFFILE_LINE)
    assert run(tree, "systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
    assert "WARNING" not in said(result)  # the configuration is valid


def test_upgrade_takes_the_new_conffile_when_the_admin_did_not_change_it(
        installed: Path, next_deb: Path) -> None:
    upgrade(installed, next_deb)
    assert (installed / CONFFILE).read_text().endswith(NEXT_CONFFILE_LINE)
    assert not (installed / f"{CONFFILE}.dpkg-dist").exists()


def test_remove_keeps_configuration_and_state_then_purge_leaves_nothing(
        tree: Path, deb: Path) -> None:
    before = listing(tree)
    install(tree, deb)
    enroll(tree)
    state = make_state(tree)
    shipped = package_files(tree)
    assert shipped

    run(tree, "apt-get", "remove", "-y", "pifleet-agent")
    assert status(tree) == "0.1.0-1 deinstall ok config-files"
    assert [path for path in shipped if (tree / path.lstrip("/")).is_file()] == []
    assert not (tree / "usr/lib/pifleet-agent").exists()  # py3clean removed the .pyc too
    for path in (CONFFILE, DROP_IN, f"{SECRETS}/credentials", *state):
        assert (tree / path).is_file(), f"{path} removed by a plain remove"

    run(tree, "apt-get", "purge", "-y", "pifleet-agent")
    assert status(tree) == ""
    assert differences(before, listing(tree)) == []


def test_piuparts_install_and_purge_pass_offline(tree: Path, deb: Path, tmp_path: Path) -> None:
    """Debian's own checker on the cached tree (``-e``): install, remove, purge, and its own
    leftover/broken-symlink/debsums checks. It runs ``apt-get update`` first: in a network
    namespace without network (``unshare -n``) that fails, is ignored, and the tree's lists
    are used."""
    assert shutil.which("piuparts"), "piuparts missing: dev/bootstrap.sh (dev/apt-packages.txt)"
    result = subprocess.run(
        # --ignore: piuparts itself runs logrotate over our rules, which writes logrotate's
        # status file; the package never creates it.
        ["unshare", "-n", "piuparts", "-e", str(tree), "-d", "bookworm", "--no-upgrade-test",
         "--keep-sources-list", "--ignore=/var/lib/logrotate/status", "-t", str(tmp_path),
         str(deb)],
        capture_output=True, text=True, timeout=600, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "PASS: Installation and purging test." in out
    assert "PASS: All tests." in out


# -- upgrade during a deployment ------------------------------------------------------------


def test_upgrade_refused_while_a_deployment_runs_allowed_from_its_hook(
        installed: Path, next_deb: Path) -> None:
    tree = installed
    write(tree, f"{ONGOING}/d-RUNNING42", "host-command-1")

    refused = upgrade(tree, next_deb, check=False)
    assert refused.returncode != 0
    assert "not upgrading from 0.1.0-1 to 0.1.1-1: deployment d-RUNNING42 is running" \
        in said(refused)
    assert f"/{ONGOING}/d-RUNNING42" in said(refused)
    assert "Traceback" not in said(refused)
    assert status(tree) == "0.1.0-1 install ok installed"  # the old version stays, working
    assert run(tree, "pifleet-agent", "--version").stdout.strip() == "pifleet-agent 0.1.0"

    # Another deployment's id does not count as "from its hook".
    other = upgrade(tree, next_deb, "DEPLOYMENT_ID=d-OTHER", "LIFECYCLE_EVENT=AfterInstall",
                    check=False)
    assert other.returncode != 0

    allowed = upgrade(tree, next_deb, "DEPLOYMENT_ID=d-RUNNING42", "LIFECYCLE_EVENT=AfterInstall")
    assert "upgrading from the AfterInstall hook of deployment d-RUNNING42" in said(allowed)
    assert status(tree) == "0.1.1-1 install ok installed"


def test_stale_tracking_file_does_not_block_an_upgrade(installed: Path, next_deb: Path) -> None:
    # Left by an agent that died mid-command more than a day ago: the agent itself ignores it.
    stale = write(installed, f"{ONGOING}/d-DIEDLONGAGO", "host-command-0")
    two_days_ago = time.time() - 2 * 86400
    os.utime(stale, (two_days_ago, two_days_ago))
    upgrade(installed, next_deb)
    assert status(installed) == "0.1.1-1 install ok installed"


# -- bad input ------------------------------------------------------------------------------


def test_power_cut_during_install_is_fixed_by_configure_a(tree: Path, deb: Path,
                                                          next_deb: Path) -> None:
    # Cut after unpacking: the files are there, the maintainer scripts have not run.
    run(tree, "dpkg", "--unpack", copy_in(tree, deb, "/root/" + deb.name))
    assert status(tree) == "0.1.0-1 install ok unpacked"
    run(tree, "dpkg", "--configure", "-a")
    assert status(tree) == "0.1.0-1 install ok installed"
    assert run(tree, "systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"

    # Cut in the middle of the postinst of an upgrade: dpkg dies (SIGKILL, as at a power cut)
    # while py3compile runs, leaving the package half-configured.
    write(tree, "usr/local/bin/py3compile",
          "#!/bin/sh\nkill -KILL \"$(ps -o ppid= -p \"$PPID\")\"\nsleep 60\n", 0o755)
    inside = copy_in(tree, next_deb, "/root/" + next_deb.name)
    # Not as the container's PID 1, which ignores SIGKILL.
    cut = run(tree, "sh", "-c", f"dpkg -i {inside}; exit $?", check=False)
    assert cut.returncode == 128 + 9
    assert status(tree) == "0.1.1-1 install ok half-configured"
    (tree / "usr/local/bin/py3compile").unlink()
    run(tree, "dpkg", "--configure", "-a")
    assert status(tree) == "0.1.1-1 install ok installed"
    assert run(tree, "pifleet-agent", "--version").returncode == 0
    assert list((tree / "usr/lib/pifleet-agent/agent").glob("__pycache__/cli.*.pyc"))


def test_invalid_agent_toml_does_not_fail_the_upgrade_but_is_reported(
        installed: Path, next_deb: Path) -> None:
    (installed / CONFFILE).write_text("[agent]\npoll_interval = 5\n")  # the key is poll_interval_s
    result = upgrade(installed, next_deb)
    assert status(installed) == "0.1.1-1 install ok installed"
    assert "pifleet-agent: WARNING: the configuration is invalid" in said(result)
    assert "/etc/pifleet/agent.toml" in said(result)
    assert "unknown key 'poll_interval'" in said(result)
    assert "systemctl restart pifleet-agent.service" in said(result)
    assert "Traceback" not in said(result)


def test_missing_agent_toml_after_upgrade_stays_missing_and_is_noted(
        installed: Path, next_deb: Path) -> None:
    (installed / CONFFILE).unlink()
    result = upgrade(installed, next_deb)
    assert status(installed) == "0.1.1-1 install ok installed"
    # dpkg treats a deleted conffile as the admin's choice; the agent runs on the drop-in.
    assert not (installed / CONFFILE).exists()
    assert "/etc/pifleet/agent.toml is missing" in said(result)
    assert "--force-confmiss" in said(result)
    assert "WARNING" not in said(result)


def test_unsupported_release_is_refused_with_the_reason(tmp_path: Path, deb: Path) -> None:
    try:
        base = testbed.base_tree("amd64", release="bullseye")
    except testbed.TestbedError as error:
        pytest.fail(str(error))
    with testbed.overlay(base, tmp_path / "overlay") as root:
        python = run(root, "dpkg-query", "-W", "-f", "${Version}", "python3").stdout
        assert python.startswith("3.9.")
        result = run(root, "dpkg", "-i", copy_in(root, deb, "/root/" + deb.name), check=False)
        assert result.returncode != 0
        assert "pifleet-agent depends on python3 (>= 3.11); however:" in said(result)
        assert "Version of python3 on system is 3.9" in said(result)
        assert run(root, "dpkg-query", "-W", "-f", "${Status}", "pifleet-agent",
                   check=False).stdout.strip() != "install ok installed"


# -- the running service (booted) -----------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A sandbox control plane on the host's loopback (the booted tree shares its network)."""
    with fresh_world(tmp_path, event_s=300) as w:
        yield w


@pytest.fixture
def running(tree: Path, deb: Path, world: World,
            tmp_path: Path) -> Iterator[testbed.Booted]:
    """0.1.0-1 installed, enrolled against the sandbox, booted, the agent READY."""
    install(tree, deb)
    enroll(tree, world)
    with testbed.Booted(tree, tmp_path / "boot.log") as system:
        wait_for(lambda: system.show(UNIT, "ActiveState") == "active", 120,
                 "the agent to be READY")
        yield system


def main_pid(system: testbed.Booted) -> int:
    return int(system.show(UNIT, "MainPID"))


def started_at(system: testbed.Booted) -> float:
    """When systemd started the service's current main process (epoch seconds, µs)."""
    text = system.run(["systemctl", "show", "--timestamp=us+utc", "-P",
                       "ExecMainStartTimestamp", UNIT]).stdout.strip()
    return datetime.strptime(text, "%a %Y-%m-%d %H:%M:%S.%f UTC").replace(
        tzinfo=UTC).timestamp()


def changed_at(system: testbed.Booted, *paths: str) -> float:
    """The newest inode change time of ``paths`` (when dpkg renamed them into place)."""
    code = f"import os; print(max(os.stat(p).st_ctime for p in {list(paths)!r}))"
    return float(system.run(["python3", "-c", code]).stdout)


NEW_FILES = ("/usr/lib/pifleet-agent/agent/__init__.py", "/usr/lib/pifleet-agent/agent/cli.py",
             "/usr/bin/pifleet-agent", "/lib/systemd/system/pifleet-agent.service")


def test_fresh_install_is_not_started_until_enrolled(tree: Path, deb: Path, world: World,
                                                     tmp_path: Path) -> None:
    install(tree, deb)
    with testbed.Booted(tree, tmp_path / "boot.log") as system:
        assert system.show(UNIT, "UnitFileState") == "enabled"
        assert system.show(UNIT, "ActiveState") == "inactive"
        assert system.show(UNIT, "ConditionResult") == "no"
        enroll(tree, world)
        system.run(["systemctl", "start", UNIT])  # returns once READY
        assert system.show(UNIT, "ActiveState") == "active"


def test_upgrade_restarts_the_running_service_after_the_new_files(
        running: testbed.Booted, tree: Path, next_deb: Path) -> None:
    system = running
    old = main_pid(system)
    inside = copy_in(tree, next_deb, "/root/" + next_deb.name)
    system.run(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y",
                *offline_apt(tree), *UPGRADE_OPTIONS, inside], timeout_s=300)
    # deb-systemd-invoke restart returned once the new agent was READY.
    assert system.show(UNIT, "ActiveState") == "active"
    assert main_pid(system) not in (0, old)
    assert started_at(system) > changed_at(system, *NEW_FILES)
    assert system.run(["dpkg-query", "-W", "-f", "${Version}", "pifleet-agent"]).stdout \
        == NEXT_VERSION


def test_remove_while_running_stops_the_service_and_keeps_state(
        running: testbed.Booted, tree: Path) -> None:
    system = running
    running.run(["apt-get", "remove", "-y", "pifleet-agent"], timeout_s=300)
    assert system.show(UNIT, "ActiveState") == "inactive"
    assert system.run(["pgrep", "-f", "pifleet-agent run"], check=False).stdout == ""
    for path in (CONFFILE, DROP_IN, f"{SECRETS}/credentials", f"{STATE}/agent-status.json"):
        assert (tree / path).is_file(), f"/{path} removed by a plain remove"
    assert not (tree / "usr/bin/pifleet-agent").exists()


def test_purge_while_running_stops_the_service_and_leaves_nothing(
        running: testbed.Booted, tree: Path) -> None:
    system = running
    assert (tree / STATE / "agent-status.json").is_file()
    system.run(["apt-get", "purge", "-y", "pifleet-agent"], timeout_s=300)
    assert system.show(UNIT, "ActiveState") == "inactive"
    assert system.show(UNIT, "LoadState") == "not-found"
    assert system.run(["pgrep", "-f", "pifleet-agent run"], check=False).stdout == ""
    for path in ("etc/pifleet", STATE, "var/log/pifleet", "usr/lib/pifleet-agent",
                 "usr/bin/pifleet-agent", "lib/systemd/system/" + UNIT,
                 "etc/systemd/system/multi-user.target.wants/" + UNIT,
                 "var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/" + UNIT):
        assert not (tree / path).exists(), f"/{path} left after purge"


def self_upgrade_revision(deb_inside: str) -> bytes:
    """A revision whose AfterInstall hook upgrades the agent running it (as a fleet rolls out a
    new agent through CodeDeploy) and whose ApplicationStart hook, run after that, records
    which agent process ran it and which version is installed."""
    upgrade_script = (
        "#!/bin/sh\nset -e\nexport DEBIAN_FRONTEND=noninteractive\n"
        "apt-get install -y --no-install-recommends -o Dir::Etc::SourceList=/root/offline/"
        "sources.list -o Dir::Etc::SourceParts=/root/offline "
        "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "
        f"{deb_inside} > /root/self-upgrade.log 2>&1\n"
        "date +%s.%N > /root/hook-ended\n")
    after_script = ("#!/bin/sh\necho \"$PPID $(dpkg-query -W -f '${Version}' pifleet-agent)\""
                    " > /root/application-start\n")
    appspec = ("version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: /opt/proof\n"
               "hooks:\n  AfterInstall:\n    - location: scripts/upgrade.sh\n      timeout: 300\n"
               "  ApplicationStart:\n    - location: scripts/after.sh\n      timeout: 60\n")
    return _revision(appspec, {"upgrade.sh": upgrade_script, "after.sh": after_script})


def _revision(appspec: str, scripts: dict[str, str]) -> bytes:
    """A zip revision: ``appspec.yml``, executable ``scripts/<name>`` and ``app/version.txt``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, script in scripts.items():
            info = zipfile.ZipInfo(f"scripts/{name}")
            info.external_attr = 0o100755 << 16
            zf.writestr(info, script)
        zf.writestr("appspec.yml", appspec)
        zf.writestr("app/version.txt", "1")
    return buffer.getvalue()


def test_the_agent_upgrades_itself_from_a_hook_without_deadlock(
        running: testbed.Booted, tree: Path, world: World, next_deb: Path) -> None:
    system = running
    old = main_pid(system)
    inside = copy_in(tree, next_deb, "/root/" + next_deb.name)
    offline_apt(tree)
    deployment = world.deploy(world.push("self-upgrade.zip", self_upgrade_revision(inside)))
    # A blocking restart would hang here until shutdown_grace_s (2 h).
    info = world.wait_deployment(deployment, timeout_s=240)
    journal = system.run(["journalctl", "-u", UNIT, "-o", "cat"]).stdout
    assert info["status"] == "Succeeded", f"{info}\n{journal[-4000:]}"
    log = (tree / "root/self-upgrade.log").read_text()
    assert f"upgrading from the AfterInstall hook of deployment {deployment}" in log
    assert f"restart queued: it happens once the AfterInstall hook of deployment {deployment}" \
        in log
    new = main_pid(system)
    assert new not in (0, old)
    # The new agent started after the hook had finished, and ran the rest of the deployment.
    assert started_at(system) > float((tree / "root/hook-ended").read_text())
    assert (tree / "root/application-start").read_text().split() == [str(new), NEXT_VERSION]
    assert system.show(UNIT, "ActiveState") == "active"


def waiting_revision() -> bytes:
    """A revision whose AfterInstall hook runs until the test creates /root/release."""
    script = "#!/bin/sh\nwhile [ ! -e /root/release ]; do sleep 0.2; done\n"
    appspec = ("version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: /opt/proof\n"
               "hooks:\n  AfterInstall:\n    - location: scripts/wait.sh\n      timeout: 300\n")
    return _revision(appspec, {"wait.sh": script})


def test_upgrade_from_outside_during_a_real_deployment_is_refused_then_works(
        running: testbed.Booted, tree: Path, world: World, next_deb: Path) -> None:
    system = running
    old = main_pid(system)
    deployment = world.deploy(world.push("waiting.zip", waiting_revision()))
    wait_for((tree / ONGOING / deployment).is_file, 120,
             "the agent's tracking file of the running deployment")
    argv = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y",
            *offline_apt(tree), *UPGRADE_OPTIONS, copy_in(tree, next_deb, "/root/" + next_deb.name)]
    refused = system.run(argv, check=False, timeout_s=300)
    assert refused.returncode != 0
    assert f"deployment {deployment} is running on this device" in said(refused)
    assert system.run(["dpkg-query", "-W", "-f", "${Version} ${Status}", "pifleet-agent"]
                      ).stdout == "0.1.0-1 install ok installed"
    assert main_pid(system) == old  # not restarted: the hook goes on
    (tree / "root/release").touch()
    assert world.wait_deployment(deployment, timeout_s=120)["status"] == "Succeeded"
    system.run(argv, timeout_s=300)
    assert main_pid(system) not in (0, old)
    assert system.show(UNIT, "ActiveState") == "active"


def test_invalid_agent_toml_fails_the_service_with_the_reason_in_the_journal(
        installed: Path, next_deb: Path, tmp_path: Path) -> None:
    (installed / CONFFILE).write_text("[agent]\npoll_interval = 5\n")
    upgrade(installed, next_deb)
    with testbed.Booted(installed, tmp_path / "boot.log") as system:
        def journal() -> str:
            return system.run(["journalctl", "-u", UNIT, "-o", "cat"]).stdout

        wait_for(lambda: "unknown key 'poll_interval'" in journal(), 60,
                 "the service to fail on agent.toml")
        assert "/etc/pifleet/agent.toml" in journal()
        assert "Traceback" not in journal()
        assert system.show(UNIT, "ActiveState") != "active"
        assert system.show(UNIT, "ExecMainStatus") not in ("", "0")
