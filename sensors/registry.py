"""Sensors from configuration: a ``SensorSpec`` per ``[[sensors]]`` entry of agent.toml, and
``open_sensor`` to turn one into a driver.

Example (agent.toml):

    [[sensors]]
    name = "climate"
    kind = "dht11"        # dht11 | sds011 | simulated-dht11 | simulated-sds011
    pin = 4               # BCM GPIO of the DHT11's DATA line
    interval_s = 60

    [[sensors]]
    name = "air"
    kind = "sds011"
    port = "/dev/ttyUSB0"
    interval_s = 300

Drivers are imported by ``open_sensor`` only, so loading the configuration costs nothing on a
Pi whose agent has no sensors.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from .base import Sensor, SensorError

SensorKind = Literal["dht11", "sds011", "simulated-dht11", "simulated-sds011"]
KINDS: tuple[str, ...] = get_args(SensorKind)
SIMULATED_KINDS = ("simulated-dht11", "simulated-sds011")
FAULTS = ("fail_every", "unplugged", "stuck_value", "spike_every")  # simulated kinds only
MAX_BCM_GPIO = 27  # the 40-pin header carries GPIO0-GPIO27


@dataclass(frozen=True)
class SensorSpec:
    """One configured sensor. ``pin`` is for a DHT11, ``port`` for an SDS011, ``seed`` and the
    faults (see ``sensors.simulated``) for simulated sensors; ``interval_s`` is how often the
    telemetry loop reads it."""

    name: str
    kind: SensorKind
    pin: int = 4
    port: str = "/dev/ttyUSB0"
    interval_s: float = 60.0
    seed: int = 0
    fail_every: int = 0
    unplugged: bool = False
    stuck_value: float | None = None
    spike_every: int = 0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must not be empty")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if not 0 <= self.pin <= MAX_BCM_GPIO:
            raise ValueError(f"pin must be a BCM GPIO number 0-{MAX_BCM_GPIO}, not {self.pin}")
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be > 0, not {self.interval_s}")
        if self.fail_every < 0 or self.spike_every < 0:
            raise ValueError("fail_every and spike_every must be >= 0 (0: never)")
        if self.kind not in SIMULATED_KINDS:
            faults = [f for f in FAULTS if getattr(self, f) != getattr(SensorSpec, f)]
            if faults:
                raise ValueError(f"{', '.join(faults)}: only simulated sensors take faults")

    @property
    def simulated(self) -> bool:
        return self.kind in SIMULATED_KINDS

    @property
    def where(self) -> str:
        """Where the sensor is attached, for listings."""
        if self.kind == "dht11":
            return f"GPIO{self.pin}"
        if self.kind == "sds011":
            return self.port
        return f"seed {self.seed}"


def open_sensor(spec: SensorSpec, *, clock: Callable[[], float] = time.time) -> Sensor:
    """The driver for ``spec``; raises ``SensorError`` when its hardware or library is missing.
    ``clock`` (epoch seconds) drives the simulated sensors."""
    if spec.kind == "dht11":
        from .dht11 import DHT11  # noqa: PLC0415 -- drivers load only when configured

        return DHT11.open(spec.pin, name=spec.name)
    if spec.kind == "sds011":
        return _open_sds011(spec)
    from .simulated import SimulatedDHT11, SimulatedSDS011  # noqa: PLC0415

    cls = SimulatedDHT11 if spec.kind == "simulated-dht11" else SimulatedSDS011
    return cls(spec.name, seed=spec.seed, clock=clock, fail_every=spec.fail_every,
               unplugged=spec.unplugged, stuck_value=spec.stuck_value,
               spike_every=spec.spike_every)


def _open_sds011(spec: SensorSpec) -> Sensor:
    # Through importlib: the SDS011 driver is a separate module, and this one must import (and
    # type-check) whether or not it is part of the build.
    try:
        module = importlib.import_module(".sds011", __package__)
    except ModuleNotFoundError as exc:
        if exc.name == f"{__package__}.sds011":
            raise SensorError(f"{spec.name}: this build has no SDS011 driver "
                              "(sensors/sds011.py)") from exc
        raise SensorError(f"{spec.name}: the SDS011 driver needs {exc.name}; install the pi "
                          "extra (pip install 'pifleet[pi]')") from exc
    sensor: Sensor = module.SDS011.open(spec.port, name=spec.name)
    return sensor


@dataclass(frozen=True)
class HardwareStatus:
    present: bool
    detail: str


def hardware_status(spec: SensorSpec, *, dev: Path = Path("/dev")) -> HardwareStatus:
    """Whether what ``spec`` needs is there, without opening it: the serial port for an SDS011
    (exists, readable and writable by this user), the DHT library and a GPIO chip for a
    DHT11."""
    if spec.simulated:
        return HardwareStatus(True, "simulated: no hardware needed")
    if spec.kind == "sds011":
        port = Path(spec.port)
        if not port.exists():
            return HardwareStatus(False, f"{port} does not exist: is the USB-serial adapter "
                                         "plugged in (see dmesg)?")
        if not os.access(port, os.R_OK | os.W_OK):
            return HardwareStatus(False, f"{port} is not readable and writable by this user: "
                                         "add it to the dialout group")
        return HardwareStatus(True, f"{port} is readable")
    problems = []
    # find_spec: importing adafruit_dht on a machine that is not a Pi prints warnings.
    if importlib.util.find_spec("adafruit_dht") is None:
        problems.append("adafruit_dht is not installed (install the pi extra and "
                        "python3-libgpiod)")
    chips = sorted(p.name for p in dev.glob("gpiochip*"))
    if not chips:
        problems.append(f"no {dev}/gpiochip*: not a Raspberry Pi, or no GPIO access")
    if problems:
        return HardwareStatus(False, "; ".join(problems))
    return HardwareStatus(True, f"adafruit_dht installed; {', '.join(chips)}")
