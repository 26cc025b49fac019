"""Simulated DHT11 and SDS011 for the sandbox fleet and for laptops: plausible values, no hardware.

Values are a function of the seed and the clock only (no hidden random state), so two agents
with the same seed report the same weather, a test with a fixed clock gets fixed values, and
different seeds give different sites:

- temperature follows the day, 10-30 °C (coldest about 03:00 UTC, warmest about 15:00), with a
  per-site and per-day offset; relative humidity moves against it (about 35-75 %RH);
- PM2.5 is 2-15 µg/m³ with morning and evening rush-hour bumps, plus an episode (smoke,
  fireworks, a bonfire) in about one hour in twelve, up to 60 µg/m³; PM10 is 1.2 to 2 times PM2.5;
- every value has a little noise and the resolution of the real sensor.

Faults can be switched on to exercise the telemetry path: ``fail_every`` (every Nth read raises a
transient ``SensorError``), ``unplugged`` (every read raises a non-transient one),
``stuck_value`` (the main value -- temperature, PM2.5 -- never changes) and ``spike_every``
(every Nth read is a spike: +15 °C, or eight times the PM). Every reading carries ``SIMULATED``.

Not modelled: the SDS011's warm-up and duty cycle, and the DHT11's 2 s read spacing (simulated
reads return at once).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping

from .base import OUT_OF_RANGE, SIMULATED, Reading, SensorError
from .dht11 import UNITS as DHT11_UNITS
from .dht11 import PlausibilityCheck

DAY_S = 86_400.0
HOUR_S = 3_600.0
SDS011_UNITS = {"pm25_ugm3": "µg/m³", "pm10_ugm3": "µg/m³"}
SDS011_MAX_UGM3 = 999.9  # the largest value an SDS011 frame can carry


def _rng(seed: int, *key: object) -> random.Random:
    # Seeding with a string hashes it with SHA-512: the same in every process, unlike hash().
    return random.Random(":".join(str(k) for k in (seed, *key)))  # noqa: S311 -- not crypto


def _smooth_daily(seed: int, what: str, t: float, spread: float) -> float:
    """A per-day random offset in [-spread, spread], eased from one day to the next so that
    midnight is not a step."""
    day = math.floor(t / DAY_S)
    frac = t / DAY_S - day
    today = _rng(seed, what, day).uniform(-spread, spread)
    tomorrow = _rng(seed, what, day + 1).uniform(-spread, spread)
    ease = (1 - math.cos(math.pi * frac)) / 2
    return today + (tomorrow - today) * ease


def dht11_values(seed: int, t: float) -> tuple[float, float]:
    """(°C, %RH) at epoch time ``t`` for site ``seed``, without noise: 10-30 °C, 35-75 %RH."""
    site = _rng(seed, "site").uniform(-1.5, 1.5)
    mean = 20.0 + site + _smooth_daily(seed, "temperature", t, 1.0)
    hour = (t % DAY_S) / HOUR_S
    swing = -math.cos(2 * math.pi * (hour - 3.0) / 24.0)  # -1 at 03:00, +1 at 15:00
    temperature_c = mean + 7.0 * swing
    humidity_pct = 55.0 - 2.0 * (temperature_c - mean) + _smooth_daily(seed, "humidity", t, 5.0)
    return temperature_c, humidity_pct


def pm_values(seed: int, t: float) -> tuple[float, float]:
    """(PM2.5, PM10) in µg/m³ at epoch time ``t`` for site ``seed``, without noise."""
    hour = (t % DAY_S) / HOUR_S
    rush = (math.exp(-(((hour - 8.0) / 1.5) ** 2)) + 0.8 * math.exp(-(((hour - 18.0) / 2.0) ** 2)))
    pm25 = 4.0 + _smooth_daily(seed, "pm", t, 2.0) + 7.0 * rush
    slot = math.floor(t / HOUR_S)
    episode = _rng(seed, "episode", slot)
    if episode.random() < 1 / 12:
        within = t / HOUR_S - slot
        pm25 += episode.uniform(15.0, 45.0) * math.sin(math.pi * within)  # 0 at both ends
    ratio = 1.6 + 0.35 * math.sin(2 * math.pi * t / (7 * HOUR_S) + _rng(seed, "ratio").random())
    pm25 = min(max(pm25, 2.0), 60.0)
    return pm25, pm25 * ratio


class _Simulated:
    """What both simulated sensors share: read counting, faults, health."""

    kind = ""

    def __init__(self, name: str, *, seed: int, clock: Callable[[], float], fail_every: int,
                 unplugged: bool, stuck_value: float | None, spike_every: int) -> None:
        if fail_every < 0 or spike_every < 0:
            raise ValueError("fail_every and spike_every must be >= 0 (0: never)")
        self.name = name
        self.seed = seed
        self.fail_every = fail_every
        self.unplugged = unplugged
        self.stuck_value = stuck_value
        self.spike_every = spike_every
        self._clock = clock
        self._reads = 0
        self._failures = 0
        self._consecutive_failures = 0
        self._last_error = ""
        self._closed = False

    def read(self) -> Reading:
        if self._closed:
            raise SensorError(f"{self.name}: read() after close()")
        self._reads += 1
        try:
            if self.unplugged:
                raise SensorError(f"{self.name}: {self._unplugged_message()} (simulated)")
            if self.fail_every and self._reads % self.fail_every == 0:
                raise SensorError(f"{self.name}: simulated read failure (every "
                                  f"{self.fail_every} reads)", transient=True)
        except SensorError as exc:
            self._failures += 1
            self._consecutive_failures += 1
            self._last_error = str(exc)
            raise
        self._consecutive_failures = 0
        t = self._clock()
        noise = _rng(self.seed, self.kind, "noise", repr(t))
        spike = bool(self.spike_every) and self._reads % self.spike_every == 0
        values, flags = self._values(t, noise, spike=spike)
        return Reading(sensor=self.name, values=values, units=self._units(), timestamp=t,
                       flags=flags | {SIMULATED})

    def health(self) -> dict[str, float | int | str]:
        return {"measurements": self._reads, "failed_measurements": self._failures,
                "read_success_ratio": round((self._reads - self._failures) / self._reads, 3)
                if self._reads else 1.0,
                "consecutive_failures": self._consecutive_failures,
                "last_error": self._last_error}

    def close(self) -> None:
        self._closed = True

    def _unplugged_message(self) -> str:
        raise NotImplementedError

    def _units(self) -> Mapping[str, str]:
        raise NotImplementedError

    def _values(self, t: float, noise: random.Random, *,
                spike: bool) -> tuple[dict[str, float], frozenset[str]]:
        raise NotImplementedError


class SimulatedDHT11(_Simulated):
    """A DHT11 that is not there: see the module docstring. Range and jump flags are computed
    as for a real DHT11, so a spike is flagged ``jump``."""

    kind = "dht11"

    def __init__(self, name: str = "dht11", *, seed: int = 0,
                 clock: Callable[[], float] = time.time, fail_every: int = 0,
                 unplugged: bool = False, stuck_value: float | None = None,
                 spike_every: int = 0) -> None:
        super().__init__(name, seed=seed, clock=clock, fail_every=fail_every,
                         unplugged=unplugged, stuck_value=stuck_value, spike_every=spike_every)
        self._check = PlausibilityCheck()

    def _unplugged_message(self) -> str:
        return "DHT sensor not found, check wiring, pull-up, 3.3 V"

    def _units(self) -> Mapping[str, str]:
        return DHT11_UNITS

    def _values(self, t: float, noise: random.Random, *,
                spike: bool) -> tuple[dict[str, float], frozenset[str]]:
        temperature_c, humidity_pct = dht11_values(self.seed, t)
        temperature_c += noise.uniform(-0.3, 0.3)
        humidity_pct += noise.uniform(-1.5, 1.5)
        if self.stuck_value is not None:
            temperature_c = self.stuck_value
        if spike:
            temperature_c += 15.0
        # A DHT11 reports whole %RH and tenths of a degree.
        values = {"temperature_c": round(temperature_c, 1),
                  "humidity_pct": float(round(humidity_pct))}
        return values, self._check.flags(values["temperature_c"], values["humidity_pct"], t)


class SimulatedSDS011(_Simulated):
    """An SDS011 that is not there: see the module docstring."""

    kind = "sds011"

    def __init__(self, name: str = "sds011", *, seed: int = 0,
                 clock: Callable[[], float] = time.time, fail_every: int = 0,
                 unplugged: bool = False, stuck_value: float | None = None,
                 spike_every: int = 0) -> None:
        super().__init__(name, seed=seed, clock=clock, fail_every=fail_every,
                         unplugged=unplugged, stuck_value=stuck_value, spike_every=spike_every)

    def _unplugged_message(self) -> str:
        return "no answer from the SDS011 on its serial port"

    def _units(self) -> Mapping[str, str]:
        return SDS011_UNITS

    def _values(self, t: float, noise: random.Random, *,
                spike: bool) -> tuple[dict[str, float], frozenset[str]]:
        pm25, pm10 = pm_values(self.seed, t)
        ratio = pm10 / pm25
        pm25 = min(max(pm25 * noise.uniform(0.95, 1.05), 2.0), 60.0)
        pm10 = pm25 * ratio
        if self.stuck_value is not None:
            pm25 = self.stuck_value
            pm10 = max(pm10, pm25)
        if spike:
            pm25, pm10 = pm25 * 8.0, pm10 * 8.0
        flags = frozenset({OUT_OF_RANGE}) if max(pm25, pm10) > SDS011_MAX_UGM3 else frozenset()
        # An SDS011 reports tenths of a µg/m³.
        return {"pm25_ugm3": round(pm25, 1), "pm10_ugm3": round(pm10, 1)}, flags
