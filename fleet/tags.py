"""CodeDeploy's tag-filter rule, shared by the sandbox (which selects targets with it) and
fleetctl (which checks a group selects devices before deploying)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def tag_matches(tags: Mapping[str, str], tag_filter: Mapping[str, Any]) -> bool:
    """KEY_ONLY: the key is there; VALUE_ONLY: some tag has the value; else both."""
    kind = tag_filter.get("Type") or "KEY_AND_VALUE"
    key, value = tag_filter.get("Key"), tag_filter.get("Value")
    if kind == "KEY_ONLY":
        return key in tags
    if kind == "VALUE_ONLY":
        return value in tags.values()
    return isinstance(key, str) and tags.get(key) == value and key in tags
