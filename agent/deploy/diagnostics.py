"""The diagnostics payload of a completed host command, byte-compatible with the official agent.

``{"error_code":0,"script_name":"","message":"Succeeded: ","log":""}``: compact JSON, keys in
this order. ``log`` is a tail of script output bounded to ``LOG_TAIL_BYTES`` (the service shows
at most 4 KB); the whole payload stays within ``MAX_PAYLOAD_CHARS``.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass

from .errors import DeployError, ErrorCode

LOG_TAIL_BYTES = 2048
MAX_PAYLOAD_CHARS = 8192
SUCCEEDED_MESSAGE = "Succeeded: "
NOOP_MESSAGE = "Succeeded: CompletedNoopCommand"
RESTART_MESSAGE = "Failed: Failing in-progress lifecycle event after an agent restart."


class LogTail:
    """The newest whole entries of a script log within a byte budget (oldest dropped first).

    This is the official v2 agent's rule; the Ruby agent's loop has an off-by-one that can empty
    the log when one long line arrives, which we do not copy. An entry longer than the whole
    budget is kept truncated to its last bytes rather than dropped.
    """

    def __init__(self, budget: int = LOG_TAIL_BYTES) -> None:
        self._budget = budget
        self._entries: deque[str] = deque()
        self._size = 0

    def append(self, entry: str) -> None:
        size = len(entry.encode())
        if size > self._budget:
            entry = entry.encode()[-self._budget:].decode(errors="ignore")
            size = len(entry.encode())
        self._entries.append(entry)
        self._size += size
        while self._size > self._budget:
            self._size -= len(self._entries.popleft().encode())

    def extend(self, other: LogTail) -> None:
        for entry in other._entries:
            self.append(entry)

    def text(self) -> str:
        return "".join(self._entries)


@dataclass(frozen=True)
class Diagnostics:
    error_code: ErrorCode
    script_name: str
    message: str
    log: str

    @property
    def succeeded(self) -> bool:
        return self.error_code is ErrorCode.SUCCEEDED

    @classmethod
    def success(cls, *, noop: bool = False, log: str = "") -> Diagnostics:
        return cls(ErrorCode.SUCCEEDED, "", NOOP_MESSAGE if noop else SUCCEEDED_MESSAGE, log)

    @classmethod
    def failure(cls, error: DeployError) -> Diagnostics:
        return cls(error.code, error.script_name, error.message, error.log)

    @classmethod
    def after_restart(cls) -> Diagnostics:
        return cls(ErrorCode.FAILED_AFTER_RESTART, "", RESTART_MESSAGE, "")

    def payload(self) -> str:
        """Compact JSON of at most ``MAX_PAYLOAD_CHARS``: the log, then the message, are cut."""
        log, message = self.log, self.message
        text = self._dump(message, log)
        if len(text) > MAX_PAYLOAD_CHARS:
            log = _cut_front(log, len(log) - (len(text) - MAX_PAYLOAD_CHARS))
            text = self._dump(message, log)
        while len(text) > MAX_PAYLOAD_CHARS and message:
            message = message[: max(0, len(message) - (len(text) - MAX_PAYLOAD_CHARS)) - 1]
            text = self._dump(message, log)
        return text

    def _dump(self, message: str, log: str) -> str:
        return json.dumps({"error_code": int(self.error_code), "script_name": self.script_name,
                           "message": message, "log": log}, separators=(",", ":"),
                          ensure_ascii=False)


def _cut_front(text: str, keep: int) -> str:
    """The last ``keep`` characters, minus a margin for JSON escapes that grew in the dump."""
    while keep > 0:
        candidate = text[-keep:]
        if len(json.dumps(candidate, ensure_ascii=False)) - 2 <= keep:
            return candidate
        keep -= max(1, keep // 8)
    return ""
