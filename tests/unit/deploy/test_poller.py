"""The poller's choreography with the command service, on the real engine.

The service is a recording stand-in for our own ``CommandService`` protocol (the AWS side is
exercised for real in tests/e2e); specifications are real envelopes from the sandbox's builder.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.aws.http import HttpError
from agent.deploy.errors import DeployError
from agent.deploy.executor import CommandExecutor, EngineConfig
from agent.deploy.layout import DeploymentRoot
from agent.deploy.spec import Revision
from agent.deploy.specification import TrustPolicy
from agent.poller import Poller, backoff_s
from fleet.sandbox.specs import deployment_spec_payload, unsigned_spec

HOST = "arn:aws:iam::123456789012:user/pifleet/pi-1"


def bundle(path: Path, hooks: dict[str, str]) -> Path:
    lines = ["version: 0.0", "os: linux", "hooks:"]
    with zipfile.ZipFile(path, "w") as zf:
        for event, body in hooks.items():
            info = zipfile.ZipInfo(f"scripts/{event}.sh")
            info.external_attr = 0o100755 << 16
            zf.writestr(info, f"#!/bin/sh\n{body}\n")
            lines += [f"  {event}:", f"    - location: scripts/{event}.sh"]
        zf.writestr("appspec.yml", "\n".join(lines) + "\n")
    return path


class Service:
    """Records every call; hands out queued commands; answers acks as told."""

    def __init__(self, bundle_path: Path) -> None:
        self.bundle = bundle_path
        self.queue: list[dict[str, Any]] = []
        self.calls: list[tuple[str, Any]] = []
        self.ack_answer: str | None = "InProgress"
        self.system = "CodeDeploy"
        self.unreachable = False  # completions fail as with the network down
        self.lock = threading.Lock()
        self.completed = threading.Condition(self.lock)

    def command(self, name: str, *, deployment: str = "d-1", group: str = "g-1",
                host: str = HOST) -> None:
        self.queue.append({"HostCommandIdentifier": f"hc-{deployment}-{name}",
                           "HostIdentifier": host, "CommandName": name, "Nonce": 1,
                           "DeploymentExecutionId": f"acct/{deployment}/{group}/{name}"})

    def poll_host_command(self, host_identifier: str) -> dict[str, Any] | None:
        with self.lock:
            self.calls.append(("poll", host_identifier))
            return self.queue.pop(0) if self.queue else None

    def get_deployment_specification(self, execution_id: str, host: str) -> dict[str, Any]:
        _, deployment, group, _ = execution_id.split("/")
        with self.lock:
            self.calls.append(("spec", execution_id))
        payload = deployment_spec_payload(
            deployment_id=deployment, deployment_group_id=group, deployment_group_name="pis",
            application_name="app", revision={"RevisionType": "S3", "S3Revision": {
                "Bucket": "b", "Key": "k.zip", "BundleType": "zip"}})
        return {"DeploymentSystem": self.system,
                "DeploymentSpecification": {"GenericEnvelope": unsigned_spec(payload)}}

    def put_host_command_acknowledgement(self, command_id: str,
                                         diagnostics: dict[str, str] | None) -> str | None:
        with self.lock:
            self.calls.append(("ack", (command_id, json.loads((diagnostics or {})["Payload"]))))
            return self.ack_answer

    def put_host_command_complete(self, command_id: str, status: str,
                                  diagnostics: dict[str, str] | None) -> None:
        with self.lock:
            if self.unreachable:
                raise HttpError("cannot connect to https://codedeploy-commands (test)")
            self.calls.append(("complete", (command_id, status,
                                            json.loads((diagnostics or {})["Payload"]))))
            self.completed.notify_all()

    def completions(self) -> list[Any]:
        with self.lock:
            return [c for kind, c in self.calls if kind == "complete"]

    def wait_completions(self, count: int, timeout_s: float = 20) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while len([1 for kind, _ in self.calls if kind == "complete"]) < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"only {self.calls}"
                self.completed.wait(remaining)
        return self.completions()


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Service, Poller, CommandExecutor]]:
    service = Service(bundle(tmp_path / "bundle.zip", {"BeforeInstall": "true",
                                                       "AfterInstall": "exit 3"}))

    def fetch(_: Revision, destination: Path) -> None:
        destination.write_bytes(service.bundle.read_bytes())

    executor = CommandExecutor(EngineConfig(root=DeploymentRoot(tmp_path / "root"),
                                            install_root=tmp_path / "fs"), fetch=fetch)
    poller = Poller(service, executor, host_identifier=lambda: HOST,
                    trust=TrustPolicy(allow_unsigned=True), max_parallel_groups=2)
    yield service, poller, executor
    poller.shutdown()


def test_backoff_is_the_official_schedule() -> None:
    assert [backoff_s(n) for n in range(1, 12)] == [10, 13, 17, 21, 27, 34, 44, 56, 71, 90, 90]


def test_a_command_runs_and_is_completed_once(parts: tuple[Service, Poller, Any]) -> None:
    service, poller, _ = parts
    service.command("DownloadBundle")
    assert poller.poll_once()
    (command_id, status, payload), = service.wait_completions(1)
    assert (command_id, status) == ("hc-d-1-DownloadBundle", "Succeeded")
    assert payload == {"error_code": 0, "script_name": "", "message": "Succeeded: ", "log": ""}
    kinds = [kind for kind, _ in service.calls]
    assert kinds == ["poll", "spec", "ack", "complete"]
    ack = next(c for kind, c in service.calls if kind == "ack")
    assert ack == ("hc-d-1-DownloadBundle", {"IsCommandNoop": False})


def test_a_failing_hook_is_one_failed_completion(parts: tuple[Service, Poller, Any]) -> None:
    service, poller, _ = parts
    for name in ("DownloadBundle", "Install", "AfterInstall"):
        service.command(name)
        assert poller.poll_once()
        assert poller.wait_idle(20)
    completions = service.completions()
    assert [c[1] for c in completions] == ["Succeeded", "Succeeded", "Failed"]
    assert completions[2][2]["error_code"] == 4
    assert completions[2][2]["script_name"] == "scripts/AfterInstall.sh"


def test_each_event_is_one_line_in_the_log(parts: tuple[Service, Poller, Any],
                                           caplog: pytest.LogCaptureFixture) -> None:
    service, poller, _ = parts
    with caplog.at_level(logging.INFO, logger="agent.poller"):
        for name in ("DownloadBundle", "Install", "AfterInstall"):
            service.command(name)
            assert poller.poll_once()
            assert poller.wait_idle(20)
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.poller"]
    assert [line.split(" in ")[0] for line in lines] == [
        "deployment d-1: DownloadBundle started", "deployment d-1: DownloadBundle succeeded",
        "deployment d-1: Install started", "deployment d-1: Install succeeded",
        "deployment d-1: AfterInstall started", "deployment d-1: AfterInstall failed"]
    assert "(error code 4)" in lines[-1]
    assert [r.levelno for r in caplog.records][-1] == logging.WARNING


def test_noop_is_acknowledged_as_such(parts: tuple[Service, Poller, Any]) -> None:
    service, poller, _ = parts
    service.command("ApplicationStop")  # first deployment: nothing to stop
    poller.poll_once()
    service.wait_completions(1)
    ack = next(c for kind, c in service.calls if kind == "ack")
    assert ack[1] == {"IsCommandNoop": True}
    assert service.completions()[0][2]["message"] == "Succeeded: CompletedNoopCommand"


@pytest.mark.parametrize(("answer", "noop", "completions"), [
    ("Succeeded", True, []),
    ("Failed", True, [("Succeeded", "Succeeded: CompletedNoopCommand")]),
    ("Failed", False, []),
])
def test_ack_answers_are_honoured(parts: tuple[Service, Poller, Any], answer: str, noop: bool,
                                  completions: list[tuple[str, str]]) -> None:
    service, poller, _ = parts
    service.ack_answer = answer
    service.command("ApplicationStop" if noop else "DownloadBundle")
    poller.poll_once()
    assert poller.wait_idle(20)
    assert [(c[1], c[2]["message"]) for c in service.completions()] == completions


def test_a_bad_specification_fails_without_acknowledging(
        parts: tuple[Service, Poller, Any]) -> None:
    service, poller, _ = parts
    service.system = "WackyDeployer"
    service.command("DownloadBundle")
    poller.poll_once()
    (_, status, payload), = service.wait_completions(1)
    assert status == "Failed"
    assert payload == {"error_code": 5, "script_name": "", "log": "",
                       "message": "Deployment System mismatch: CodeDeploy != WackyDeployer"}
    assert "ack" not in [kind for kind, _ in service.calls]


@pytest.mark.parametrize(("target", "accepted"), [
    (HOST, True), ("pifleet/pi-1", True),  # the official substring rule
    ("arn:aws:iam::123456789012:user/pifleet", True),  # ends at a component boundary
    ("arn:aws:iam::123456789012:user/pifleet/pi-2", False), ("", False),
    # pifleet's tightening: pi-1's host must not run a command for pi- (or pi-10 for pi-1).
    ("arn:aws:iam::123456789012:user/pifleet/pi-", False), ("user/pifl", False)])
def test_commands_for_another_host_are_refused(parts: tuple[Service, Poller, Any],
                                               target: str, accepted: bool) -> None:
    service, poller, _ = parts
    service.command("DownloadBundle", host=target)
    if accepted:
        assert poller.poll_once()
    else:
        with pytest.raises(DeployError, match="refusing it"):
            poller.poll_once()
        assert "spec" not in [kind for kind, _ in service.calls]


def test_an_interrupted_command_is_reported_with_code_7(
        parts: tuple[Service, Poller, CommandExecutor]) -> None:
    service, poller, executor = parts
    executor.tracker.begin("d-9", "hc-interrupted")
    assert poller.recover() == "d-9"
    (command_id, status, payload), = service.completions()
    assert (command_id, status, payload["error_code"]) == ("hc-interrupted", "Failed", 7)
    assert poller.recover() is None


def test_an_interrupted_command_unreported_at_start_is_reported_by_the_loop(
        parts: tuple[Service, Poller, CommandExecutor]) -> None:
    """No network at start-up (a Pi booting after a power cut): no crash, the tracking file
    stays (another restart still knows), and the first poll that gets through reports it."""
    service, poller, executor = parts
    executor.tracker.begin("d-9", "hc-interrupted")
    service.unreachable = True
    assert poller.recover() == "d-9"
    assert executor.tracker.in_flight() == ["d-9"]
    with pytest.raises(HttpError):
        poller.poll_once()  # the loop backs off on this
    assert service.completions() == []
    service.unreachable = False
    assert not poller.poll_once()
    (command_id, status, payload), = service.completions()
    assert (command_id, status, payload["error_code"]) == ("hc-interrupted", "Failed", 7)
    assert executor.tracker.in_flight() == []
    assert not poller.poll_once()
    assert len(service.completions()) == 1


def test_one_group_at_a_time_but_groups_in_parallel(tmp_path: Path) -> None:
    spans = tmp_path / "spans"
    spans.mkdir()
    body = f'echo "$(date +%s.%N) $DEPLOYMENT_ID start" >> {spans}/log; sleep 0.4; ' \
           f'echo "$(date +%s.%N) $DEPLOYMENT_ID end" >> {spans}/log'
    service = Service(bundle(tmp_path / "b.zip", {"BeforeInstall": body}))

    def fetch(_: Revision, destination: Path) -> None:
        destination.write_bytes(service.bundle.read_bytes())

    executor = CommandExecutor(EngineConfig(root=DeploymentRoot(tmp_path / "root"),
                                            install_root=tmp_path / "fs"), fetch=fetch)
    poller = Poller(service, executor, host_identifier=lambda: HOST,
                    trust=TrustPolicy(allow_unsigned=True), max_parallel_groups=3)
    try:
        for deployment, group in (("d-a", "g-1"), ("d-b", "g-1"), ("d-c", "g-2")):
            service.command("DownloadBundle", deployment=deployment, group=group)
            poller.poll_once()
        assert poller.wait_idle(20)
        for deployment, group in (("d-a", "g-1"), ("d-b", "g-1"), ("d-c", "g-2")):
            service.command("BeforeInstall", deployment=deployment, group=group)
            poller.poll_once()
        assert poller.wait_idle(20)
    finally:
        poller.shutdown()
    times: dict[str, dict[str, float]] = {}
    for line in (spans / "log").read_text().splitlines():
        stamp, deployment, what = line.split()
        times.setdefault(deployment, {})[what] = float(stamp)

    def overlap(x: str, y: str) -> bool:
        return times[x]["start"] < times[y]["end"] and times[y]["start"] < times[x]["end"]

    assert not overlap("d-a", "d-b")  # same group: one after the other
    assert overlap("d-a", "d-c") or overlap("d-b", "d-c")  # another group runs alongside


def test_the_loop_backs_off_and_recovers(parts: tuple[Service, Poller, Any]) -> None:
    service, poller, _ = parts
    failures = [RuntimeError("endpoint unreachable")]
    original = service.poll_host_command

    def flaky(host: str) -> dict[str, Any] | None:
        if failures:
            raise failures.pop()
        return original(host)

    service.poll_host_command = flaky  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while poller.activity.state != "backing off":  # set last, after the error count
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert poller.activity.consecutive_errors == 1
        assert poller.activity.last_error == "endpoint unreachable"
        poller.wake()  # skip the 10 s back-off
        while poller.activity.consecutive_errors:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert poller.activity.state == "polling"
    finally:
        stop.set()
        poller.wake()
        thread.join(timeout=10)
    assert not thread.is_alive()
