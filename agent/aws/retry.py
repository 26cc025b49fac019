"""Retrying one call through transient failures (throttling, 5xx, a dropped connection) with
jittered exponential back-off: what STS and the IoT credentials provider need at start-up,
where one throttled answer must not stop the daemon."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_ATTEMPTS = 3
BACKOFF_BASE_S = 0.1


class Transient(Exception):
    """A failure another attempt may not have; ``retrying`` gives up with its message."""


def retrying(call: Callable[[], T], *, max_attempts: int = MAX_ATTEMPTS,
             base_s: float = BACKOFF_BASE_S,
             sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()``, again after a jittered ``base_s * 2**n`` wait each time it raises
    ``Transient``; the last ``Transient`` is re-raised with the number of attempts added."""
    attempt = 1
    while True:
        try:
            return call()
        except Transient as exc:
            if attempt >= max_attempts:
                raise Transient(f"{exc} (after {attempt} attempts)") from None
            delay = random.uniform(0, base_s * 2 ** (attempt - 1))  # noqa: S311 (jitter)
            log.debug("%s; attempt %d of %d in %.2f s", exc, attempt + 1, max_attempts, delay)
            sleep(delay)
            attempt += 1
