"""On-premises registration and tags, through a real boto3 client against a real sandbox."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from .conftest import Fleet

USER = "arn:aws:iam::123456789012:user/pifleet/pi-{}"
SESSION = "arn:aws:sts::123456789012:assumed-role/pifleet-device/pi-{}"


def code_of(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


@pytest.fixture
def cd(fleet: Fleet) -> Any:
    return fleet.client("codedeploy")


def test_register_get_and_deregister(cd: Any) -> None:
    cd.register_on_premises_instance(instanceName="pi-1", iamUserArn=USER.format(1))
    cd.register_on_premises_instance(instanceName="pi-2", iamSessionArn=SESSION.format(2))
    info = cd.get_on_premises_instance(instanceName="pi-1")["instanceInfo"]
    assert info["iamUserArn"] == USER.format(1)
    assert info["instanceArn"].startswith(
        "arn:aws:codedeploy:us-east-1:123456789012:instance/pi-1_")
    assert "deregisterTime" not in info
    cd.deregister_on_premises_instance(instanceName="pi-1")
    info = cd.get_on_premises_instance(instanceName="pi-1")["instanceInfo"]
    assert "deregisterTime" in info
    assert cd.list_on_premises_instances(registrationStatus="Registered")["instanceNames"] == [
        "pi-2"]
    assert cd.list_on_premises_instances(registrationStatus="Deregistered")[
        "instanceNames"] == ["pi-1"]
    assert cd.list_on_premises_instances()["instanceNames"] == ["pi-1", "pi-2"]


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"iamUserArn": USER.format(1), "iamSessionArn": SESSION.format(1)},
     "MultipleIamArnsProvidedException"),
    ({}, "IamArnRequiredException"),
    ({"iamUserArn": "arn:aws:iam::123456789012:role/x"}, "InvalidIamUserArnException"),
    ({"iamSessionArn": "arn:aws:sts::1:assumed-role/x"}, "InvalidIamSessionArnException"),
])
def test_registration_errors(cd: Any, kwargs: dict[str, str], code: str) -> None:
    with pytest.raises(ClientError) as exc:
        cd.register_on_premises_instance(instanceName="pi-1", **kwargs)
    assert code_of(exc) == code


def test_uniqueness(cd: Any) -> None:
    cd.register_on_premises_instance(instanceName="pi-1", iamUserArn=USER.format(1))
    cd.register_on_premises_instance(instanceName="pi-s", iamSessionArn=SESSION.format(1))
    with pytest.raises(cd.exceptions.InstanceNameAlreadyRegisteredException):
        cd.register_on_premises_instance(instanceName="pi-1", iamUserArn=USER.format(9))
    with pytest.raises(cd.exceptions.IamUserArnAlreadyRegisteredException):
        cd.register_on_premises_instance(instanceName="pi-9", iamUserArn=USER.format(1))
    with pytest.raises(cd.exceptions.IamSessionArnAlreadyRegisteredException):
        cd.register_on_premises_instance(instanceName="pi-8", iamSessionArn=SESSION.format(1))
    # After deregistration the name and the ARN are free again.
    cd.deregister_on_premises_instance(instanceName="pi-1")
    cd.register_on_premises_instance(instanceName="pi-1", iamUserArn=USER.format(1))


def test_unknown_instances(cd: Any) -> None:
    with pytest.raises(cd.exceptions.InstanceNotRegisteredException):
        cd.get_on_premises_instance(instanceName="ghost")
    with pytest.raises(cd.exceptions.InstanceNotRegisteredException):
        cd.add_tags_to_on_premises_instances(instanceNames=["ghost"],
                                             tags=[{"Key": "a", "Value": "b"}])
    assert cd.batch_get_on_premises_instances(instanceNames=["ghost"])["instanceInfos"] == []


def test_batch_get_limit_is_25(cd: Any) -> None:
    for i in range(26):
        cd.register_on_premises_instance(instanceName=f"pi-{i}", iamUserArn=USER.format(i))
    infos = cd.batch_get_on_premises_instances(instanceNames=[f"pi-{i}" for i in range(25)])
    assert len(infos["instanceInfos"]) == 25
    with pytest.raises(cd.exceptions.BatchLimitExceededException):
        cd.batch_get_on_premises_instances(instanceNames=[f"pi-{i}" for i in range(26)])


def test_tags_filters_and_limits(cd: Any) -> None:
    for i, ring in enumerate(["canary", "stable", "stable"]):
        cd.register_on_premises_instance(instanceName=f"pi-{i}", iamUserArn=USER.format(i))
        cd.add_tags_to_on_premises_instances(
            instanceNames=[f"pi-{i}"], tags=[{"Key": "ring", "Value": ring},
                                             {"Key": "site", "Value": f"roof-{i}"}])
    def names(*filters: dict[str, str]) -> list[str]:
        return list(cd.list_on_premises_instances(tagFilters=list(filters))["instanceNames"])
    assert names({"Key": "ring", "Value": "stable", "Type": "KEY_AND_VALUE"}) == ["pi-1", "pi-2"]
    assert names({"Key": "site", "Type": "KEY_ONLY"}) == ["pi-0", "pi-1", "pi-2"]
    assert names({"Value": "roof-0", "Type": "VALUE_ONLY"}) == ["pi-0"]
    assert names({"Key": "ring", "Value": "canary", "Type": "KEY_AND_VALUE"},
                 {"Value": "roof-2", "Type": "VALUE_ONLY"}) == ["pi-0", "pi-2"]  # OR
    cd.remove_tags_from_on_premises_instances(instanceNames=["pi-0"],
                                              tags=[{"Key": "ring", "Value": "canary"}])
    assert names({"Key": "ring", "Type": "KEY_ONLY"}) == ["pi-1", "pi-2"]
    with pytest.raises(cd.exceptions.TagLimitExceededException):
        cd.add_tags_to_on_premises_instances(
            instanceNames=["pi-1"], tags=[{"Key": f"k{i}", "Value": "v"} for i in range(9)])
    with pytest.raises(cd.exceptions.InvalidTagException):
        cd.add_tags_to_on_premises_instances(instanceNames=["pi-1"],
                                             tags=[{"Key": "k" * 129, "Value": "v"}])


def test_pagination(cd: Any) -> None:
    for i in range(150):
        cd.register_on_premises_instance(instanceName=f"pi-{i:03d}", iamUserArn=USER.format(i))
    paginator = cd.get_paginator("list_on_premises_instances")
    pages = list(paginator.paginate())
    assert len(pages) == 2
    assert sum(len(p["instanceNames"]) for p in pages) == 150
    with pytest.raises(cd.exceptions.InvalidNextTokenException):
        cd.list_on_premises_instances(nextToken="garbage")
