"""SDS011 laser duty cycle at the driver's defaults, measured from the emulator's laser log.

Run: ``python -m bench.bench_laser [--cycles 6] [--json]``. The real driver talks to the pty
emulator through pyserial; only the long waits (30 s warm-up, 3 s between samples, 5 minutes
between readings) go through a virtual clock, so six 5-minute cycles take a few seconds. The
figure is the time the emulator had its laser on over the elapsed (virtual) time.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from sensors.sds011 import SDS011
from sensors.sds011_emulator import Sds011Emulator

from .timing import Figure

TITLE = "SDS011 laser duty cycle"
ISSUE = 6
RUNS = {"full": [["--cycles", "6"]], "quick": [["--cycles", "2"]]}


class VirtualClock:
    """Real monotonic time plus the seconds slept: serial waits are real, long sleeps are not."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def sleep(self, seconds: float) -> None:
        self.offset += seconds


def run(cycles: int) -> dict[str, Any]:
    clock = VirtualClock()
    with Sds011Emulator(clock=clock, sleeping=True, query_mode=True) as emulator:
        sensor = SDS011.open(emulator.port, read_timeout_s=0.05, clock=clock, sleep=clock.sleep,
                             reply_timeout_s=1.0)
        try:
            duty = sensor.duty
            started = clock()
            for _ in range(cycles):
                cycle_start = clock()
                sensor.read()
                clock.sleep(duty.wait_s(cycle_start, clock()))
            elapsed = clock() - started
            laser_s = emulator.laser_on_seconds(started, clock())
        finally:
            sensor.close()
    return {"cycles": cycles, "interval_s": duty.interval_s, "warmup_s": duty.warmup_s,
            "samples": duty.samples, "elapsed_s": elapsed, "laser_on_s": laser_s,
            "duty": laser_s / elapsed, "budget": duty.laser_fraction}


def figures(result: dict[str, Any], argv: list[str]) -> list[Figure]:
    return [Figure(
        f"laser on, {result['cycles']} cycles at the defaults (a reading every "
        f"{result['interval_s']:.0f} s, {result['warmup_s']:.0f} s warm-up, "
        f"{result['samples']} samples)",
        f"{result['laser_on_s'] / result['cycles']:.0f} s per cycle: {result['duty']:.1%}",
        "at most 15 %", result["duty"] <= 0.15)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cycles", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.cycles < 1:
        parser.error("--cycles must be at least 1")
    result = run(args.cycles)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"  laser on {result['laser_on_s']:.0f} s of {result['elapsed_s']:.0f} s: "
          f"{result['duty']:.1%} (target at most 15 %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
