"""fleetctl list / show / tag / untag / deregister against the sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet.aws import Aws
from fleet.errors import FleetError, NotFound
from fleet.register import (
    RegisterOptions,
    deregister_device,
    list_devices,
    register_device,
    show_device,
    tag_device,
    untag_device,
)
from tests.unit.fleet.conftest import Fleetctl
from tests.unit.fleet.test_register import NAMES, assert_nothing_left, init_fleet


def _fleet(aws: Aws, tmp_path: Path) -> None:
    init_fleet(aws)
    register_device(aws, NAMES, "pi-1", {"site": "lab"}, bundle=tmp_path / "1.tar")
    register_device(aws, NAMES, "pi-2", {"site": "home"}, bundle=tmp_path / "2.tar",
                    options=RegisterOptions("iam-user"))
    register_device(aws, NAMES, "pi-3", {"site": "lab", "room": "a"}, bundle=tmp_path / "3.tar",
                    options=RegisterOptions("iam-user"))


def test_list_with_tag_filter_and_status(aws: Aws, tmp_path: Path) -> None:
    _fleet(aws, tmp_path)
    aws.client("codedeploy").register_on_premises_instance(
        instanceName="stranger", iamUserArn="arn:aws:iam::123456789012:user/stranger")
    assert [d.name for d in list_devices(aws, NAMES)] == ["pi-1", "pi-2", "pi-3"]
    lab = list_devices(aws, NAMES, {"site": "lab"})
    assert [(d.name, d.identity) for d in lab] == [("pi-1", "iot-cert"), ("pi-3", "iam-user")]
    assert [d.name for d in list_devices(aws, NAMES, {"site": "lab", "room": "a"})] == ["pi-3"]
    assert lab[0].registered
    deregister_device(aws, NAMES, "pi-2")
    assert "pi-2" in [d.name for d in list_devices(aws, NAMES, status="deregistered")]
    with pytest.raises(FleetError, match="registered or deregistered"):
        list_devices(aws, NAMES, status="gone")


def test_list_and_show_cli(aws: Aws, fleetctl: Fleetctl, tmp_path: Path) -> None:
    _fleet(aws, tmp_path)
    aws.client("iot-data").update_thing_shadow(
        thingName="pi-1", payload=json.dumps({"state": {"reported": {"pm25": 4}}}).encode())
    run = fleetctl("--output", "json", "list", "--tag", "site=lab")
    assert run.returncode == 0, run.stderr
    assert [d["name"] for d in json.loads(run.stdout)] == ["pi-1", "pi-3"]
    run = fleetctl("list")
    assert "pi-2" in run.stdout and "3 device(s)" in run.stdout
    run = fleetctl("show", "pi-1")
    assert run.returncode == 0, run.stderr
    assert "assumed-role/pifleet-device/" in run.stdout and "site=lab" in run.stdout
    assert '"pm25": 4' in run.stdout and "agent shadow: none" in run.stdout
    run = fleetctl("show", "nope")
    assert run.returncode == 1 and "no device nope" in run.stderr


def test_show_library(aws: Aws, tmp_path: Path) -> None:
    _fleet(aws, tmp_path)
    shown = show_device(aws, NAMES, "pi-2")
    assert shown["identity"] == "iam-user" and shown["deployments"] == []
    assert shown["tags"] == {"site": "home", "pifleet:fleet": "pifleet"}


def test_tag_and_untag(aws: Aws, fleetctl: Fleetctl, tmp_path: Path) -> None:
    _fleet(aws, tmp_path)
    assert tag_device(aws, "pi-2", {"room": "b"})["room"] == "b"
    run = fleetctl("tag", "pi-2", "room=c", "floor=1")
    assert run.returncode == 0, run.stderr
    info = aws.client("codedeploy").get_on_premises_instance(instanceName="pi-2")["instanceInfo"]
    assert {t["Key"]: t["Value"] for t in info["tags"]}["room"] == "c"
    assert untag_device(aws, "pi-2", ["room", "floor"]) == {"site": "home",
                                                             "pifleet:fleet": "pifleet"}
    with pytest.raises(NotFound, match="no tag room"):
        untag_device(aws, "pi-2", ["room"])
    with pytest.raises(FleetError, match="deregister"):
        untag_device(aws, "pi-2", ["pifleet:fleet"])
    with pytest.raises(FleetError, match="limit is 10"):
        tag_device(aws, "pi-2", {f"k{i}": "v" for i in range(9)})


def test_deregister_both_modes_removes_everything(aws: Aws, fleetctl: Fleetctl,
                                                  tmp_path: Path) -> None:
    _fleet(aws, tmp_path)
    removed = deregister_device(aws, NAMES, "pi-1")
    assert any(r.startswith("certificate ") for r in removed)
    assert "IoT thing pi-1" in removed
    run = fleetctl("deregister", "pi-2")
    assert run.returncode == 0, run.stderr
    assert "removed IAM user pi-2" in run.stdout
    run = fleetctl("--output", "json", "deregister", "pi-3", "--keep-identity")
    assert json.loads(run.stdout)["removed"][-1] == "registration of pi-3"
    assert aws.client("iam").get_user(UserName="pi-3")
    # Deregistered already: only the identity is left to remove, tolerantly.
    assert deregister_device(aws, NAMES, "pi-3")[-1] == "IAM user pi-3"
    assert deregister_device(aws, NAMES, "pi-3") == []
    assert_nothing_left(aws)
    run = fleetctl("deregister", "ghost")
    assert run.returncode == 1 and "no device ghost" in run.stderr
