"""When a reading is worth sending: a value moved more than its deadband, the quality flags
changed, or nothing was sent for ``heartbeat_s`` (so a quiet sensor never looks dead)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from sensors import Reading

# Below the sensors' own resolution or noise: DHT11 1 °C / 1 %RH, SDS011 0.1 µg/m³ but noisy.
DEFAULT_THRESHOLDS: dict[str, float] = {"temperature_c": 0.5, "humidity_pct": 2.0,
                                        "pm25_ugm3": 1.0, "pm10_ugm3": 1.0}
DEFAULT_HEARTBEAT_S = 900.0


class Deadband:
    def __init__(self, *, thresholds: Mapping[str, float] | None = None,
                 heartbeat_s: float = DEFAULT_HEARTBEAT_S,
                 clock: Callable[[], float] = time.time) -> None:
        self._thresholds = dict(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
        self._heartbeat_s = heartbeat_s
        self._clock = clock
        self._last: dict[str, tuple[Reading, float]] = {}

    def should_send(self, reading: Reading) -> bool:
        previous = self._last.get(reading.sensor)
        if previous is None:
            return True
        last, sent_at = previous
        if self._clock() - sent_at >= self._heartbeat_s or last.flags != reading.flags:
            return True
        if set(last.values) != set(reading.values):
            return True
        return any(abs(value - last.values[name]) >= self._thresholds.get(name, 0.0)
                   for name, value in reading.values.items())

    def sent(self, reading: Reading) -> None:
        self._last[reading.sensor] = (reading, self._clock())
