"""Timing helpers shared by the benchmarks: medians of repeated runs, ratios to a baseline."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    name: str
    median_s: float
    best_s: float
    rounds: int

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "median_s": self.median_s, "best_s": self.best_s,
                "rounds": self.rounds}


def measure(name: str, work: Callable[[], object], *, rounds: int = 7) -> Timing:
    """Run ``work`` once to warm up, then ``rounds`` times; report the median and the best."""
    work()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        samples.append(time.perf_counter() - start)
    return Timing(name, statistics.median(samples), min(samples), rounds)
