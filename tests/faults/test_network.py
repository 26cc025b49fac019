"""Network faults against real `pifleet-agent run` processes on the sandbox: the control plane
unreachable long enough for the back-off to reach its cap, and the S3 download of a bundle cut
part way. (The MQTT broker's outage is in test_mqtt_outage.py.)"""

from __future__ import annotations

import os
import time
from itertools import pairwise

import pytest

from tests.faults.conftest import World, revision_zip, set_aws_endpoint
from tests.faults.support_net import cpu_seconds, pid, sandbox_port, status
from tests.support.link import Link
from tests.support.waiting import wait_for

CAP_S = 2.0          # [agent] max_backoff_s: the official 10 ... 90 s schedule scaled to 2 s
INTERVAL_S = 0.2     # [agent] poll_interval_s
TRIES_PER_POLL = 3   # the command client's attempts per call (each a new TCP connection)
# The command client's jitter between its tries (0.1 + 0.2 s at most), plus room for a loaded
# machine (two shared cores) to be late; never room for a poll to come early.
LATE_S = 0.3 + 1.5
# The official agent's back-off after 1..10 failed polls, in seconds; [agent] max_backoff_s
# scales it (written out here rather than taken from agent.poller, which is under test).
OFFICIAL_S = [10, 13, 17, 21, 27, 34, 44, 56, 71, 90]
STARTED = "polling failed, backing off"
RECOVERED = "polling works again"


def expected_s(failures: int) -> float:
    """From the start of one failed poll to the next: the poll interval plus the back-off."""
    return INTERVAL_S + OFFICIAL_S[min(failures, 10) - 1] * CAP_S / 90


def poll_starts(attempts: list[float]) -> list[float]:
    """The first connection of each complete failed poll (each poll tries three times)."""
    whole = len(attempts) - len(attempts) % TRIES_PER_POLL
    return attempts[0:whole:TRIES_PER_POLL]


def test_control_plane_outage_backs_off_to_the_cap_without_busy_looping_and_recovers(
        world: World) -> None:
    link = Link(sandbox_port(world))
    device = world.device("pi-offline", max_backoff_s=CAP_S, poll_interval_s=INTERVAL_S)
    set_aws_endpoint(device, "commands_endpoint", f"http://127.0.0.1:{link.port}")
    device.start()
    try:
        wait_for(lambda: status(device).get("state") == "polling", 30, "the agent to poll")
        cpu_before = cpu_seconds(pid(device))
        cut = time.monotonic()
        link.refuse()
        # A deployment created while the device is offline waits for it.
        deployment = world.deploy(world.push("offline.zip", revision_zip({"AfterInstall": ""})))

        # Ten back-offs take the schedule to its cap; two more show it stays there.
        polls_to_see = 12
        wait_for(lambda: len(poll_starts(link.attempts_since(cut))) >= polls_to_see + 1,
                 sum(expected_s(n) + LATE_S for n in range(1, 13)),
                 f"{polls_to_see} back-offs")
        outage_s = time.monotonic() - cut
        cpu_used = cpu_seconds(pid(device)) - cpu_before
        during = status(device)
        restored = time.monotonic()
        link.up()
        first_after = wait_for(lambda: link.attempts_since(restored), CAP_S + 30,
                               "a poll after the link came back")[0]
        info = world.wait_deployment(deployment, 60)
    finally:
        link.down()
    starts = poll_starts(link.attempts_since(cut))[:polls_to_see + 1]
    gaps = [b - a for a, b in pairwise(starts)]
    for n, gap in enumerate(gaps, start=1):
        expected = expected_s(n)
        assert expected <= gap + 0.05 <= expected + LATE_S, (
            f"back-off {n} lasted {gap:.2f} s, expected {expected:.2f} s: {gaps}")
    assert all(abs(g - (CAP_S + INTERVAL_S)) < LATE_S for g in gaps[9:]), gaps
    # No busy loop: sleeping between attempts, not spinning (well under 10 % of one core).
    assert cpu_used < 0.1 * outage_s, f"{cpu_used:.2f} s of CPU in a {outage_s:.0f} s outage"
    assert during["state"] == "backing off"
    assert during["consecutive_errors"] == 10
    assert "connection reset" in during["last_error"] or "closed" in during["last_error"]
    # Back within one capped interval (plus the poll interval) of the network's return.
    assert first_after - restored <= CAP_S + INTERVAL_S + 0.5
    assert info["status"] == "Succeeded", info.get("errorInformation")
    log = device.output()
    assert log.count(STARTED) == 1, "the outage must be logged once, not per attempt"
    assert log.count(RECOVERED) == 1
    assert log.index(STARTED) < log.index(RECOVERED)
    assert f"AfterInstall {deployment}" in (device.root / "proof.txt").read_text()


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_a_bundle_download_cut_part_way_resumes_and_fetches_little_more_than_the_bundle(
        world: World, fraction: float) -> None:
    # Random (incompressible, stored) content: the bundle's size is what crosses the wire.
    bundle = revision_zip({"AfterInstall": ""}, {"payload.hex": os.urandom(1 << 20).hex()})
    link = Link(sandbox_port(world))
    device = world.device("pi-flaky")
    set_aws_endpoint(device, "s3_endpoint", f"http://127.0.0.1:{link.port}")
    # The first connection to S3 breaks off after this share of the bundle (headers included).
    link.cut_after(int(len(bundle) * fraction))
    device.start()
    try:
        deployment = world.deploy(world.push("big.zip", bundle))
        info = world.wait_deployment(deployment, 90)
    finally:
        link.down()
    assert info["status"] == "Succeeded", info.get("errorInformation")
    assert link.cuts == 1, "the download was never cut: the test proves nothing"
    assert len(link.attempts) == 2, f"{len(link.attempts)} GETs for one cut"
    assert link.downstream_bytes <= 1.1 * len(bundle), (
        f"{link.downstream_bytes} bytes fetched for a {len(bundle)}-byte bundle")
    log = device.output()
    assert log.count("retrying in") == 1, "the cut should be retried exactly once"
    assert f"AfterInstall {deployment}" in (device.root / "proof.txt").read_text()


def test_a_bundle_download_reset_part_way_resumes_with_a_ranged_get(world: World) -> None:
    """An RST rather than an early end: what the device had received but not yet read is gone
    (the kernel drops it), so only the second GET's size is asserted: the rest, not all."""
    bundle = revision_zip({"AfterInstall": ""}, {"payload.hex": os.urandom(1 << 20).hex()})
    link = Link(sandbox_port(world))
    device = world.device("pi-reset")
    set_aws_endpoint(device, "s3_endpoint", f"http://127.0.0.1:{link.port}")
    link.cut_after(len(bundle) // 2, reset=True)
    device.start()
    try:
        deployment = world.deploy(world.push("big.zip", bundle))
        info = world.wait_deployment(deployment, 90)
    finally:
        link.down()
    assert info["status"] == "Succeeded", info.get("errorInformation")
    assert link.cuts == 1
    assert len(link.downstream) == 2, link.downstream
    assert link.downstream[1] < len(bundle), "the retry fetched the whole bundle again"
