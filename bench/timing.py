"""Timing helpers shared by the benchmarks: medians of repeated runs, ratios to a baseline."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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


# --- the interface every bench/bench_*.py module shares -----------------------------------
#
# Required: ``main(argv: list[str] | None) -> int`` that, given ``--json``, prints one JSON
# object as the last thing on its standard output (``python -m bench`` runs each module as its
# own process, so one benchmark's memory, threads or sandbox never disturb the next).
# Optional, all read by ``python -m bench`` (bench/__main__.py):
#   TITLE: str               section title (default: the docstring's first line)
#   ISSUE: int               the issue that asked for the figures
#   RUNS: dict[str, list[list[str]]]   extra argv per run for "full" and "quick" (default [[]])
#   TIMEOUT_S: float         per run (default 1,200 s)
#   skip_reason() -> str | None   why it cannot run on this machine (then it is not run)
#   figures(result, argv) -> list[Figure]   the figures, targets and ratios of one run
# A module may also print {"skipped": "<reason>"} as its JSON when it finds out late.
# Prose that explains a figure lives in bench/notes/<module>.md and is carried into
# BENCHMARKS.md on every regeneration.


@dataclass(frozen=True)
class Figure:
    """One line of a benchmark's table in BENCHMARKS.md."""

    what: str
    value: str
    target: str | None = None
    met: bool | None = None
    ratio: float | None = None  # against the in-run baseline named by ``baseline``
    baseline: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"what": self.what, "value": self.value, "target": self.target, "met": self.met,
                "ratio": self.ratio, "baseline": self.baseline}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def mb(megabytes: float) -> str:
    return f"{megabytes:,.1f} MB"


def finish(*, as_json: bool, skip: str | None, run: Callable[[], dict[str, Any]],
           figures: Callable[[dict[str, Any], list[str]], list[Figure]]) -> int:
    """The end of a benchmark module's ``main``: the skip reason, or ``run()``'s result as
    JSON (what ``python -m bench`` reads), or its figures as text for a person."""
    if skip:
        if as_json:
            print(json.dumps({"skipped": skip}))
        else:
            print(f"  skipped: {skip}", file=sys.stderr)
        return 0
    result = run()
    if as_json:
        print(json.dumps(result, indent=2))
        return 0
    for figure in figures(result, []):
        ratio = f"  ({figure.ratio:.1f}x {figure.baseline})" if figure.ratio else ""
        target = (f"  target {figure.target}: {'met' if figure.met else 'NOT MET'}"
                  if figure.target else "")
        print(f"  {figure.what}: {figure.value}{ratio}{target}")
    return 0
