"""What a deployment is about: the fields of the deployment specification the engine uses.

The command plane parses these from the signed specification (``ApplicationName``,
``DeploymentGroupId``, ``Revision``...); ``deploy-local`` builds them from its options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from appspec import FileExistsBehavior

from .bundle import BundleType


class RevisionSource(StrEnum):
    S3 = "S3"
    GITHUB = "GitHub"
    LOCAL_FILE = "Local File"
    LOCAL_DIRECTORY = "Local Directory"


@dataclass(frozen=True)
class Revision:
    source: RevisionSource
    bundle_type: BundleType
    location: str | None = None  # local file or directory
    bucket: str | None = None
    key: str | None = None
    version: str | None = None
    etag: str | None = None
    commit: str | None = None
    # GitHub revisions: the fetcher builds the repository's tarball/zipball URL from these.
    account: str | None = None
    repository: str | None = None

    def environment(self) -> dict[str, str]:
        """``BUNDLE_*`` variables for hooks; like upstream, unset values are absent."""
        if self.source is RevisionSource.S3:
            values = {"BUNDLE_BUCKET": self.bucket, "BUNDLE_KEY": self.key,
                      "BUNDLE_VERSION": self.version, "BUNDLE_ETAG": self.etag}
        elif self.source is RevisionSource.GITHUB:
            values = {"BUNDLE_COMMIT": self.commit}
        else:
            values = {}
        return {k: v for k, v in values.items() if v is not None}


@dataclass(frozen=True)
class DeploymentSpec:
    deployment_id: str
    application_name: str
    deployment_group_name: str
    deployment_group_id: str
    revision: Revision
    file_exists_behavior: FileExistsBehavior = FileExistsBehavior.DISALLOW
    appspec_filename: str | None = None
    deployment_creator: str = "user"
    deployment_type: str = "IN_PLACE"
    # Extra event names a hook may use (codedeploy-local's custom events).
    custom_events: tuple[str, ...] = field(default=())

    @property
    def blue_green_rollback(self) -> bool:
        return (self.deployment_creator == "codeDeployRollback"
                and self.deployment_type == "BLUE_GREEN")
