"""SIGKILL of a real `pifleet-agent run` at every lifecycle event of an in-place deployment.

Promise (docs/agent.md): after the restart the interrupted event is reported Failed with code 7
(the official agent's recovery), the rest of the deployment is skipped, no script of the event
keeps running (daemons started in their own session do), the deployment-root is consistent and
the next deployment succeeds, with DISALLOW not tripping on anything the killed one left.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import pytest

from tests.support.link import Link
from tests.support.waiting import wait_for

from .conftest import IN_PLACE, Device, World, alive, group_members, revision_zip, set_aws_endpoint
from .deploy_faults import (
    RESTART_MESSAGE,
    StallingRelay,
    Traps,
    assert_nothing_in_flight,
    big_revision,
    cleanup_entries,
    deploy_ok,
    deployment_root,
    freeze_when,
    installed,
    installed_big,
    kill,
    pointer,
)

pytestmark = pytest.mark.integration
BIG = 800  # files in the revision whose Install is interrupted: about a second of copies here


@pytest.fixture
def relay(world: World) -> Iterator[StallingRelay]:
    port = int(world.sandbox.endpoint.url.rsplit(":", 1)[1])
    relay = StallingRelay(port)
    yield relay
    relay.close()


@pytest.fixture
def traps(world: World) -> Iterator[Traps]:
    traps = Traps(world.tmp / "pi-1-traps")
    yield traps
    for pid in traps.daemons():  # what the hooks deliberately left running
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("event", IN_PLACE)
def test_sigkill_at_each_event_fails_it_and_the_next_deployment_succeeds(
        world: World, relay: StallingRelay, traps: Traps, event: str) -> None:
    device = world.device("pi-1")
    set_aws_endpoint(device, "s3_endpoint", relay.url)
    device.start()
    hooks = traps.hooks()
    first = deploy_ok(world, device, "proof/v1.zip",
                      revision_zip(hooks, {"version.txt": "1", "only-v1.txt": "1"}))
    assert installed(device) == {"version.txt": "1", "only-v1.txt": "1"}

    v2_files = {"version.txt": "2", "only-v2.txt": "2"}
    hook_group: int | None = None
    if event == "DownloadBundle":
        bundle = revision_zip(hooks, {**v2_files, "blob.bin": os.urandom(4 << 20).hex()})
        relay.arm(1 << 20)  # the download holds after 1 MiB of the 8 MiB bundle
        second = world.deploy(world.push("proof/v2.zip", bundle))
        wait_for(relay.stalled.is_set, 60, "the bundle download to be held half-way")
        kill(device)
        relay.release()
    elif event == "Install":
        second = world.deploy(world.push("proof/v2.zip", big_revision(hooks, v2_files, BIG)))
        _kill_mid_copy(device, second)
    else:
        traps.arm(event)
        second = world.deploy(world.push("proof/v2.zip", revision_zip(hooks, v2_files)))
        hook_group, daemon = traps.wait_fired(event)
        _wait_recorded(device, second)
        kill(device)
        assert group_members(hook_group), "the hook should have outlived the agent"

    device.start()
    info = world.wait_deployment(second, timeout_s=120)
    assert info["status"] == "Failed"
    events = world.events(second, "pi-1")
    at = IN_PLACE.index(event)
    assert events[event]["status"] == "Failed"
    assert events[event]["diagnostics"]["message"] == RESTART_MESSAGE
    assert [events[e]["status"] for e in IN_PLACE[:at]] == ["Succeeded"] * at
    assert {events[e]["status"] for e in IN_PLACE[at + 1:]} <= {"Skipped"}
    if hook_group is not None:
        wait_for(lambda: not group_members(hook_group), 60,
                 f"the {event} hook's process group to be ended by the restarted agent")
        assert alive(daemon), "a daemon in its own session must survive the recovery"
        assert "outlived the previous agent; ending it" in device.output()

    _check_root_after_restart(device, event, first, second)
    third = deploy_ok(world, device, "proof/v3.zip",
                      big_revision(hooks, {"version.txt": "3"}, BIG if event == "Install" else 0))
    assert installed(device) == {"version.txt": "3"}  # v1's and v2's files all cleaned up
    assert pointer(device, "last_successful_install") == third
    assert_nothing_in_flight(device)
    assert device.stop() == 0


def _wait_recorded(device: Device, deployment: str) -> None:
    # The agent records the script's process group just after starting it; a kill in the
    # microseconds before that would leave the group unknown to the next start (documented).
    record = deployment_root(device) / "ongoing-hooks" / deployment
    wait_for(record.exists, 60, "the hook's process group to be recorded")


def _kill_mid_copy(device: Device, deployment: str) -> None:
    """Freeze the agent once Install has copied the first file of app/big/ and check that the
    last one is not there yet, then SIGKILL it."""
    app = device.root / "fs" / "opt" / "proof"
    first, last = app / "big" / "f00000", app / "version.txt"
    freeze_when(device, first.exists, "Install to start copying")
    assert not last.exists(), "Install finished before it could be interrupted"
    assert 0 < installed_big(device) < BIG
    kill(device)
    assert pointer(device, "most_recent_install") == deployment


def _check_root_after_restart(device: Device, event: str, first: str, second: str) -> None:
    assert_nothing_in_flight(device)
    at = IN_PLACE.index(event)
    downloaded = at > IN_PLACE.index("DownloadBundle")
    installed_ok = at > IN_PLACE.index("Install")
    assert pointer(device, "most_recent_install") == (second if downloaded else first)
    assert pointer(device, "last_successful_install") == (second if installed_ok else first)
    entries = cleanup_entries(device)
    # The clean-up list covers every file of the install the pointer names, and more only
    # when an Install was cut short (paths listed before they were created).
    version = device.root / "fs" / "opt" / "proof" / "version.txt"
    assert str(version) in entries
    for entry in entries:
        if at != IN_PLACE.index("Install"):
            assert os.path.lexists(entry), f"{entry} is listed for clean-up but missing"
    if at < IN_PLACE.index("Install"):
        assert installed(device) == {"version.txt": "1", "only-v1.txt": "1"}
    elif event == "Install":
        assert len(entries) > BIG  # listed (and fsync'd) before the first copy
        assert installed(device) == {}  # v1's files cleaned up, v2's small ones not copied yet
    else:
        assert installed(device) == {"version.txt": "2", "only-v2.txt": "2"}
    logs = deployment_root(device) / "deployment-logs" / "codedeploy-agent-deployments.log"
    assert logs.exists()


def test_restart_without_network_reports_the_interrupted_event_once_it_is_back(
        world: World, traps: Traps) -> None:
    """A Pi that lost power mid-hook boots before its Wi-Fi: the agent must not crash or lose
    the code-7 report; it ends the orphaned hook at once and reports when the link is back."""
    device = world.device("pi-1")
    link = Link(int(world.sandbox.endpoint.url.rsplit(":", 1)[1]))
    try:
        set_aws_endpoint(device, "commands_endpoint", f"http://127.0.0.1:{link.port}")
        device.start()
        hooks = traps.hooks()
        deploy_ok(world, device, "proof/v1.zip", revision_zip(hooks, {"version.txt": "1"}))
        traps.arm("ApplicationStart")
        second = world.deploy(world.push("proof/v2.zip",
                                         revision_zip(hooks, {"version.txt": "2"})))
        hook, _ = traps.wait_fired("ApplicationStart")
        _wait_recorded(device, second)
        kill(device)
        link.down()
        device.start()
        wait_for(lambda: "cannot report the interrupted command" in device.output(), 60,
                 "the agent to find the control plane unreachable")
        wait_for(lambda: not group_members(hook), 60, "the orphaned hook to be ended")
        assert device.process is not None and device.process.poll() is None
        assert world.events(second, "pi-1")["ApplicationStart"]["status"] == "InProgress"
        link.up()
        assert world.wait_deployment(second, timeout_s=120)["status"] == "Failed"
        failed = world.events(second, "pi-1")["ApplicationStart"]
        assert failed["diagnostics"]["message"] == RESTART_MESSAGE
        assert_nothing_in_flight(device)
        deploy_ok(world, device, "proof/v3.zip", revision_zip(hooks, {"version.txt": "3"}))
        assert "Traceback" not in device.output()
    finally:
        link.down()
