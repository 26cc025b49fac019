"""The exception tree of the deployment engine; each error carries its CodeDeploy error code.

The codes are the official agent's (``hook_executor.rb``): they end up in the diagnostics the
service shows as the lifecycle event's error code.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    SUCCEEDED = 0
    SCRIPT_MISSING = 1
    SCRIPT_NOT_EXECUTABLE = 2
    SCRIPT_TIMED_OUT = 3
    SCRIPT_FAILED = 4
    UNKNOWN_ERROR = 5
    OUTPUTS_LEFT_OPEN = 6
    FAILED_AFTER_RESTART = 7


class DeployError(Exception):
    """A command failed. ``message`` says what happened and, where we can tell, what to do."""

    code: ErrorCode = ErrorCode.UNKNOWN_ERROR

    def __init__(self, message: str, *, script_name: str = "", log: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.script_name = script_name
        self.log = log


class BundleError(DeployError):
    """The bundle cannot be fetched or unpacked (missing, wrong type, corrupt, unsafe, too big)."""


class InstallError(DeployError):
    """The Install command failed (invalid AppSpec, conflicting files, a copy or chmod failed)."""


class InvalidCommandError(DeployError):
    """The command name is not one the agent knows."""


class ScriptError(DeployError):
    """A hook script failed; ``code`` says how (missing, not executable, timed out, ...)."""

    def __init__(self, code: ErrorCode, message: str, *, script_name: str, log: str = "") -> None:
        super().__init__(message, script_name=script_name, log=log)
        self.code = code
