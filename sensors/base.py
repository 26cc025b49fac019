"""What every sensor driver gives: ``Reading``s, a health figure, and errors of one family."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

# Quality flags a reading may carry.
OUT_OF_RANGE = "out_of_range"  # outside what the sensor can measure: kept, but not trusted
JUMP = "jump"  # an implausible change since the last reading
WARMING_UP = "warming_up"  # taken before the sensor's warm-up ended
SIMULATED = "simulated"


class SensorError(Exception):
    """A read failed. ``transient`` errors are worth retrying (a DHT11 checksum, a timeout);
    others mean the sensor is missing or broken, and the message says what to check."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Reading:
    """One measurement: named values with their units (``{"temperature_c": 21.5}``)."""

    sensor: str
    values: Mapping[str, float]
    units: Mapping[str, str]
    timestamp: float  # epoch seconds
    flags: frozenset[str] = field(default_factory=frozenset)

    def as_dict(self) -> dict[str, object]:
        return {"sensor": self.sensor, "timestamp": self.timestamp, **dict(self.values),
                **({"flags": sorted(self.flags)} if self.flags else {})}


class Sensor(Protocol):
    """A sensor driver. ``read`` may block (a DHT11 takes a second; an SDS011 duty cycle waits
    for its warm-up), so the telemetry loop calls it from its own thread."""

    name: str

    def read(self) -> Reading: ...

    def health(self) -> dict[str, float | int | str]: ...

    def close(self) -> None: ...
