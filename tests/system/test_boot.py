"""pifleet-agent.service under a real systemd: the .deb installed in a Debian 12 tree, enrolled
against a sandbox on the host, booted with ``systemd-nspawn --boot`` (systemd as PID 1).

Each test boots its own throw-away tree (overlay over the cached testbed; `make testbed`).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import World, fresh_world
from tests.support import testbed
from tests.support.waiting import wait_for
from tests.system.agent_tree import (
    PROOF,
    UNIT,
    Enrollment,
    add_drop_in,
    install_and_enroll,
    revision,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("systemd-nspawn") is None,
                       reason="booting a tree needs root and systemd-nspawn (systemd-container)"),
]
HOOKS = ("ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart",
         "ValidateService")
IN_PLACE = ["ApplicationStop", "DownloadBundle", "BeforeInstall", "Install", "AfterInstall",
            "ApplicationStart", "ValidateService"]


@dataclass
class Pi:
    tree: Path
    system: testbed.Booted
    enrollment: Enrollment

    def show(self, prop: str) -> str:
        return self.system.show(UNIT, prop)

    def journal(self, *, unit: bool = True) -> str:
        argv = ["journalctl", "--no-pager", "-o", "cat"] + (["-u", UNIT] if unit else [])
        return self.system.run(argv).stdout

    def file(self, inside: str) -> Path:
        return self.tree / inside.lstrip("/")

    def states(self) -> tuple[str, str]:
        return self.show("ActiveState"), self.show("StatusText")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with fresh_world(tmp_path) as w:
        yield w


@pytest.fixture
def boot(tree: Path, deb: Path, world: World, tmp_path: Path,
         ) -> Iterator[Callable[..., Pi]]:
    """Installs and enrolls in the test's tree, adds the given unit drop-ins, boots it."""
    booted: list[testbed.Booted] = []

    def start(drop_ins: dict[str, str] | None = None) -> Pi:
        enrollment = install_and_enroll(tree, deb, world)
        for name, text in (drop_ins or {}).items():
            add_drop_in(tree, name, text)
        system = testbed.Booted(tree, tmp_path / "boot.log")
        booted.append(system)
        system.start()
        return Pi(tree, system, enrollment)

    yield start
    for system in booted:
        system.stop()


def wait_active(pi: Pi, what: str, timeout_s: float = 60) -> None:
    wait_for(lambda: pi.show("ActiveState") == "active", timeout_s, what)


def test_the_enrolled_agent_boots_to_ready_and_says_what_it_does(boot: Callable[..., Pi],
                                                                  ) -> None:
    pi = boot()
    # Type=notify: systemd calls the unit active only once the agent sent READY=1.
    assert pi.show("Type") == "notify"
    wait_active(pi, "pifleet-agent.service to report READY")
    assert pi.show("SubState") == "running"
    assert pi.show("StatusText") == "polling"
    assert pi.show("NRestarts") == "0"
    main = pi.show("MainPID")
    assert "/usr/bin/pifleet-agent\0run" in pi.system.run(
        ["cat", f"/proc/{main}/cmdline"]).stdout
    assert f"polling as {pi.enrollment.arn} (iam-session)" in pi.journal()

    # With the clock wait on (the default on a Pi), the unit stays "activating" and says why
    # until timesyncd's flag appears; a container runs no timesyncd, so the test sets the flag.
    (pi.file("/etc/pifleet/agent.d") / "60-clock.toml").write_text(
        "[agent]\nwait_for_clock_sync = true\n")
    pi.system.run(["systemctl", "restart", "--no-block", UNIT])
    wait_for(lambda: pi.states() == ("activating", "waiting for the system clock to be "
                                     "synchronised (NTP) before signing requests: a Raspberry "
                                     "Pi has no real-time clock"),
             60, "the restarted agent to wait for clock sync")
    pi.system.run(["sh", "-c", "mkdir -p /run/systemd/timesync && "
                   "touch /run/systemd/timesync/synchronized"])
    wait_for(lambda: pi.states() == ("active", "polling"), 60, "READY after clock sync")


def test_a_deployment_through_the_service_succeeds_and_no_secret_is_logged(
        boot: Callable[..., Pi], world: World) -> None:
    # DEBUG logging: the most the agent ever writes to the journal.
    pi = boot({"90-test-debug.conf": "[Service]\nExecStart=\n"
               "ExecStart=/usr/bin/pifleet-agent run --log-level DEBUG\n"})
    wait_active(pi, "READY")
    deployment = world.deploy(world.push("proof/v1.zip", revision({h: "true" for h in HOOKS})))
    assert world.wait_deployment(deployment)["status"] == "Succeeded", pi.journal()[-3000:]
    events = world.events(deployment, pi.enrollment.name)
    assert [e for e in IN_PLACE if events[e]["status"] == "Succeeded"] == IN_PLACE
    proof = [line.split() for line in pi.file(PROOF).read_text().splitlines()]
    # Run by the booted agent, each script in its own scope; no ApplicationStop the first time.
    assert [p[0] for p in proof] == ["BeforeInstall", "AfterInstall", "ApplicationStart",
                                     "ValidateService"]
    assert {p[1] for p in proof} == {deployment}
    for event, _, cgroup in proof:
        assert re.search(rf"/system\.slice/pifleet-hook-{deployment}-{event}-[0-9a-f]{{8}}"
                         r"\.scope$", cgroup), proof
    # Each scope was collected once its script ended (nothing was left running).
    assert pi.system.run(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                          "pifleet-hook-*"]).stdout.strip() == ""
    assert pi.file("/opt/proof/version.txt").read_text() == "1"
    assert pi.show("StatusText") == "polling"

    journal = pi.journal(unit=False)
    assert pi.enrollment.arn in journal  # the grep below looks at the agent's logs
    logs = [path for where in ("/var/log/pifleet", "/var/lib/pifleet")
            for path in pi.file(where).rglob("*") if path.is_file()]
    assert any(path.name == "scripts.log" for path in logs), logs
    for secret in (pi.enrollment.secret_key, pi.enrollment.session_token):
        assert secret not in journal
        for path in logs:
            assert secret.encode() not in path.read_bytes(), path


def test_a_hung_poll_loop_is_killed_by_the_watchdog_and_restarted(boot: Callable[..., Pi],
                                                                  ) -> None:
    watchdog_s = 3
    pi = boot({"90-test-watchdog.conf": f"[Service]\nWatchdogSec={watchdog_s}s\n"
               "RestartSec=1s\n"})
    wait_active(pi, "READY")
    hung = pi.show("MainPID")
    pi.system.run(["kill", "-STOP", hung])
    wait_for(lambda: pi.show("NRestarts") == "1" and pi.show("MainPID") not in ("0", hung)
             and pi.show("ActiveState") == "active", 60, "the watchdog restart")
    journal = pi.journal()
    assert f"Watchdog timeout (limit {watchdog_s}s)!" in journal
    assert "Failed with result 'watchdog'" in journal
    # The new agent keeps the watchdog fed: still the same process two limits later.
    restarted = pi.show("MainPID")
    since = time.monotonic()
    wait_for(lambda: time.monotonic() - since > 2 * watchdog_s and
             (pi.show("MainPID"), pi.show("NRestarts")) == (restarted, "1"),
             60, "two watchdog periods without a restart")


def test_stop_during_a_hook_waits_for_it_and_keeps_the_app_it_started(
        boot: Callable[..., Pi], world: World) -> None:
    pi = boot()
    wait_active(pi, "READY")
    hooks = {h: "true" for h in HOOKS}
    hooks["ApplicationStart"] = (
        "sleep 1000 > /dev/null 2>&1 < /dev/null &\necho $! > /root/app.pid\n"
        "touch /root/started\nwhile [ ! -e /root/go ]; do sleep 0.1; done")
    deployment = world.deploy(world.push("proof/slow.zip", revision(hooks)))
    wait_for(pi.file("/root/started").exists, 60, "ApplicationStart to begin")

    pi.system.run(["systemctl", "stop", "--no-block", UNIT])
    wait_for(lambda: pi.states() == ("deactivating", "stopping: waiting for running hooks"),
             60, "the agent to stop polling and wait for the hook")
    assert world.events(deployment, pi.enrollment.name)["ApplicationStart"]["status"] \
        == "InProgress"
    pi.file("/root/go").touch()
    wait_for(lambda: pi.show("ActiveState") == "inactive", 60, "the stop to complete")
    assert pi.show("Result") == "success"
    events = world.events(deployment, pi.enrollment.name)
    assert events["ApplicationStart"]["status"] == "Succeeded"  # reported before it exited
    ran = [line.split()[0] for line in pi.file(PROOF).read_text().splitlines()]
    assert ran[-1] == "ApplicationStart"  # and the stopped agent started nothing else
    app = pi.file("/root/app.pid").read_text().strip()
    assert pi.system.run(["kill", "-0", app], check=False).returncode == 0, "the app was killed"

    # The app lives in the hook's own scope, not in the agent's service (so a later start of the
    # agent finds no left-over process in its cgroup), and outlives the agent's restart.
    scope = pi.system.run(["sed", "-n", "s/^0:://p", f"/proc/{app}/cgroup"]).stdout.strip()
    assert re.search(rf"/pifleet-hook-{deployment}-ApplicationStart-[0-9a-f]{{8}}\.scope$",
                     scope), scope
    pi.system.run(["systemctl", "start", UNIT])
    assert world.wait_deployment(deployment)["status"] == "Succeeded"
    assert pi.system.run(["kill", "-0", app], check=False).returncode == 0
    assert pi.system.run(["systemctl", "is-active", scope.rsplit("/", 1)[1]]).stdout.strip() \
        == "active"
