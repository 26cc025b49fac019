"""The clock: a Raspberry Pi has no real-time clock, so after boot it can be an hour (or years)
off until NTP has synchronised it, and AWS refuses requests signed more than 5 minutes away
from its own time.

Two real `pifleet-agent run` processes on the sandbox:

* the system says the clock is not synchronised yet: the agent waits (STATUS, status file, one
  log line), sends nothing, and starts polling once it is;
* the system cannot tell (no timesyncd, as in a container) and the clock is an hour off: the
  service refuses every signature, and the agent says so once, in words (by how much, what to
  do), backs off on its schedule instead of retrying at once, and recovers when the clock is
  right.

The agent's clock is the real one; the hour is put between it and the service by moving the
sandbox's clock (``state.clock``), which is what SigV4 verification compares with. The
synchronisation state comes from ``timedatectl``, which this machine (no systemd) cannot
answer: a stand-in on PATH answers from a file the test writes, as timedatectl answers from
timesyncd.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.faults.conftest import World, revision_zip
from tests.faults.support_net import status
from tests.support.waiting import wait_for

HOUR_S = 3600.0
CAP_S = 1.0
WAITING = "waiting for the system clock to be synchronised"


def fake_timedatectl(bin_dir: Path, answer: Path) -> None:
    """``timedatectl show --property=NTPSynchronized --value`` answering from ``answer``."""
    bin_dir.mkdir()
    script = bin_dir / "timedatectl"
    script.write_text(f'#!/bin/sh\ncat "{answer}"\n')
    script.chmod(0o755)


def test_an_unsynchronised_clock_makes_the_agent_wait_and_say_so_then_start(
        world: World) -> None:
    answer = world.tmp / "ntp-synchronized"
    answer.write_text("no\n")
    fake_timedatectl(world.tmp / "bin", answer)
    device = world.device("pi-boot", wait_for_clock_sync=True)
    device.env["PATH"] = f"{world.tmp / 'bin'}:{os.environ['PATH']}"
    # After boot, before NTP: the clock is an hour behind the world's.
    world.sandbox.state.clock = lambda: time.time() + HOUR_S
    requests_before = world.sandbox.app.requests
    device.start()
    wait_for(lambda: status(device).get("state") == "waiting for clock sync", 30,
             "the agent to say it waits for the clock")
    # A few of the agent's checks (every 2 s) go by without a single request being signed.
    waited_from = time.monotonic()
    wait_for(lambda: time.monotonic() - waited_from > 5, 10, "five seconds of waiting")
    assert world.sandbox.app.requests == requests_before, "signed requests with a wrong clock"
    assert device.process is not None and device.process.poll() is None

    # NTP steps the clock and timesyncd says so.
    world.sandbox.state.clock = time.time
    answer.write_text("yes\n")
    wait_for(lambda: status(device).get("state") == "polling", 30, "the agent to start polling")
    deployment = world.deploy(world.push("app.zip", revision_zip({"AfterInstall": ""})))
    assert world.wait_deployment(deployment, 60)["status"] == "Succeeded"
    log = device.output()
    assert log.count(WAITING) == 1, "the wait must be said once, not per check"
    assert "InvalidSignatureException" not in log
    assert "Traceback" not in log


def test_a_clock_an_hour_off_is_explained_once_backs_off_and_recovers(world: World) -> None:
    device = world.device("pi-skewed", wait_for_clock_sync=True, max_backoff_s=CAP_S)
    # No timedatectl answer here (no systemd): the agent cannot tell, so it goes on.
    world.sandbox.state.clock = lambda: time.time() + HOUR_S
    requests_before = world.sandbox.app.requests
    device.start()
    wait_for(lambda: status(device).get("consecutive_errors", 0) >= 6, 60,
             "six refused polls")
    refused = status(device)
    world.sandbox.state.clock = time.time
    requests = world.sandbox.app.requests - requests_before
    polls = device.output().count("polling failed (")  # one DEBUG line per failed poll
    wait_for(lambda: status(device).get("state") == "polling", 30, "the agent to recover")
    deployment = world.deploy(world.push("app.zip", revision_zip({"AfterInstall": ""})))
    assert world.wait_deployment(deployment, 60)["status"] == "Succeeded"

    assert refused["state"] == "backing off"
    assert "the device clock is 60 min behind the service's" in refused["last_error"]
    assert "synchronise it (NTP" in refused["last_error"]
    # A refused signature is not retried at once: one request per poll, on the back-off
    # schedule (and one poll in flight at most when the requests were counted).
    assert polls <= requests <= polls + 1
    log = device.output()
    warnings = [line for line in log.splitlines() if " WARNING " in line]
    said = [line for line in warnings if "Signature expired" in line]
    assert len(said) == 1, f"one message for the whole episode, not one per attempt: {said}"
    assert "the device clock is 60 min behind" in said[0]
    assert log.count("polling works again") == 1
    assert "Traceback" not in log
