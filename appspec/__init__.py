"""The CodeDeploy AppSpec for EC2/On-Premises: model, parser, install plan and linter.

Example::

    from appspec import read_appspec, plan_install, lint_revision
    spec = read_appspec("examples/aqi-app")
    for finding in lint_revision("examples/aqi-app"):
        print(finding)
"""

from .errors import (
    AppSpecError,
    AppSpecInvalidError,
    AppSpecNotFoundError,
    Finding,
    InstallPlanError,
    Position,
    Severity,
)
from .events import LifecycleEvent
from .locate import find_appspec, read_appspec
from .model import AppSpec, FileExistsBehavior, FileMapping, HookScript, Permission
from .parser import parse_appspec

__all__ = [
    "AppSpec",
    "AppSpecError",
    "AppSpecInvalidError",
    "AppSpecNotFoundError",
    "FileExistsBehavior",
    "FileMapping",
    "Finding",
    "HookScript",
    "InstallPlanError",
    "LifecycleEvent",
    "Permission",
    "Position",
    "Severity",
    "find_appspec",
    "parse_appspec",
    "read_appspec",
]
