"""Diagnostics payloads: the official agent's exact JSON, bounded log tails and payload size."""

from __future__ import annotations

import json

from agent.deploy.diagnostics import (
    LOG_TAIL_BYTES,
    MAX_PAYLOAD_CHARS,
    Diagnostics,
    LogTail,
)
from agent.deploy.errors import ErrorCode, InvalidCommandError, ScriptError


def test_success_payload_is_the_official_bytes() -> None:
    assert Diagnostics.success().payload() == (
        '{"error_code":0,"script_name":"","message":"Succeeded: ","log":""}')


def test_noop_payload_is_the_official_bytes() -> None:
    assert Diagnostics.success(noop=True).payload() == (
        '{"error_code":0,"script_name":"","message":"Succeeded: CompletedNoopCommand",'
        '"log":""}')


def test_restart_payload_is_the_official_bytes() -> None:
    assert Diagnostics.after_restart().payload() == (
        '{"error_code":7,"script_name":"","message":"Failed: Failing in-progress lifecycle '
        'event after an agent restart.","log":""}')


def test_unknown_command_is_code_5() -> None:
    payload = Diagnostics.failure(InvalidCommandError("Unsupported command type: Foo.")).payload()
    assert payload == ('{"error_code":5,"script_name":"","message":"Unsupported command type: '
                       'Foo.","log":""}')


def test_script_failure_carries_its_name_and_log() -> None:
    error = ScriptError(ErrorCode.SCRIPT_FAILED, "Script at specified location: a.sh failed "
                        "with exit code 1", script_name="a.sh", log="[stdout]hi\n")
    assert json.loads(Diagnostics.failure(error).payload()) == {
        "error_code": 4, "script_name": "a.sh",
        "message": "Script at specified location: a.sh failed with exit code 1",
        "log": "[stdout]hi\n"}


def test_log_tail_keeps_newest_whole_entries_within_budget() -> None:
    tail = LogTail()
    for i in range(100):
        tail.append(f"[stdout]{i:03d}" + "x" * 88 + "\n")  # 100 bytes each
    text = tail.text()
    assert len(text.encode()) <= LOG_TAIL_BYTES
    assert len(text.encode()) == 2000  # 20 whole entries, like the official agent
    assert text.endswith("x\n") and text.startswith("[stdout]080")


def test_log_tail_keeps_the_end_of_one_huge_entry() -> None:
    tail = LogTail()
    tail.append("[stdout]" + "a" * 5000 + "END\n")
    assert tail.text().endswith("END\n")
    assert len(tail.text().encode()) <= LOG_TAIL_BYTES


def test_log_tail_never_splits_a_multibyte_character() -> None:
    tail = LogTail(budget=10)
    tail.append("é" * 20)
    assert tail.text() == "é" * 5


def test_payload_is_cut_to_the_limit_with_escapes_and_long_message() -> None:
    log = '"\\\n\x01' * 3000  # every character grows when escaped
    error = ScriptError(ErrorCode.SCRIPT_FAILED, "m" * 20000, script_name="s.sh", log=log)
    payload = Diagnostics.failure(error).payload()
    assert len(payload) <= MAX_PAYLOAD_CHARS
    decoded = json.loads(payload)
    assert decoded["error_code"] == 4 and decoded["script_name"] == "s.sh"
    assert list(decoded) == ["error_code", "script_name", "message", "log"]
