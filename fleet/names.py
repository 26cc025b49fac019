"""The names of a fleet's AWS resources, all derived from the fleet name (``--fleet``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import FleetError

_FLEET = re.compile(r"[a-z0-9][a-z0-9-]{1,30}[a-z0-9]")
DEFAULT_FLEET = "pifleet"
DEFAULT_GROUP = "all"
# Tags every device gets, besides the user's: which fleet it belongs to.
FLEET_TAG = "pifleet:fleet"


@dataclass(frozen=True)
class FleetNames:
    fleet: str = DEFAULT_FLEET

    def __post_init__(self) -> None:
        if not _FLEET.fullmatch(self.fleet):
            raise FleetError(f"fleet name {self.fleet!r} must be 3-32 lower-case letters, "
                             "digits and '-' (it becomes part of bucket and role names)")

    @property
    def application(self) -> str:
        return self.fleet

    def bucket(self, account_id: str, region: str) -> str:
        return f"{self.fleet}-artifacts-{account_id}-{region}"

    @property
    def service_role(self) -> str:
        return f"{self.fleet}-codedeploy"

    @property
    def device_role(self) -> str:
        return f"{self.fleet}-device"

    @property
    def role_alias(self) -> str:
        return f"{self.fleet}-device"

    @property
    def iot_policy(self) -> str:
        return f"{self.fleet}-device"

    @property
    def iam_path(self) -> str:
        return f"/{self.fleet}/"

    def group(self, name: str = DEFAULT_GROUP) -> str:
        return name
