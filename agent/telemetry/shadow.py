"""Shadow documents and topics: reported-only updates with a clientToken, and what a rejection
means for the reading it carried (retry later, or drop and count).

Only ``reported`` is ever written: the device states what it measured and never touches
``desired``, which belongs to whoever operates the fleet.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_DOCUMENT_BYTES = 8 * 1024  # the shadow service's limit for the state document
RETRYABLE = frozenset({409, 429, 500, 503})  # version conflict, throttled, service trouble


class DocumentTooLarge(ValueError):
    """An update would exceed the shadow's 8 KB limit; it is not sent (it would be refused)."""


def shadow_prefix(thing: str, shadow: str | None = None) -> str:
    base = f"$aws/things/{thing}/shadow"
    return f"{base}/name/{shadow}" if shadow else base


def update_topic(thing: str, shadow: str | None = None) -> str:
    return f"{shadow_prefix(thing, shadow)}/update"


def reported_update(reported: Mapping[str, Any], client_token: str) -> bytes:
    document = {"state": {"reported": dict(reported)}, "clientToken": client_token}
    payload = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    if len(payload) > MAX_DOCUMENT_BYTES:
        raise DocumentTooLarge(f"the update is {len(payload)} bytes; a shadow document may be "
                               f"at most {MAX_DOCUMENT_BYTES}")
    return payload


@dataclass(frozen=True)
class Rejection:
    code: int
    message: str
    client_token: str | None

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE


def parse_rejection(payload: bytes) -> Rejection:
    try:
        body = json.loads(payload)
        return Rejection(int(body.get("code", 0)), str(body.get("message", "")),
                         body.get("clientToken"))
    except (ValueError, TypeError, AttributeError):
        return Rejection(0, payload[:200].decode(errors="replace"), None)
