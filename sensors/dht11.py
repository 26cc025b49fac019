"""DHT11 temperature/humidity sensor on one GPIO line, read through adafruit-circuitpython-dht.

The library does the bit timing; this driver makes its readings trustworthy
(iot-shadows-sensors.md §5): it never touches the sensor more than once per 2 s, throws away the
first measurement after start, retries the library's transient errors, reports the median of a
few good measurements, flags values outside what a DHT11 can measure or that jumped, turns a run
of failures into a "check the wiring" fault, and always calls the library's ``exit()``.

``adafruit_dht`` and ``board`` are imported by ``DHT11.open`` only, so this module imports on a
laptop; tests give ``DHT11`` a ``FakeDHT`` (``sensors.dht11_fake``) instead.
"""

from __future__ import annotations

import importlib
import logging
import statistics
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from .base import JUMP, OUT_OF_RANGE, Reading, SensorError

log = logging.getLogger(__name__)

# The library's RuntimeErrors that are part of normal operation (10-50 % of reads fail on a
# healthy sensor): worth another try. Anything else is reported as it is, without retrying.
TRANSIENT_MESSAGES = frozenset({
    "DHT sensor not found, check wiring",
    "A full buffer was not returned. Try again.",
    "Checksum did not validate. Try again.",
    "Received unplausible data. Try again.",
})
NO_VALUE = "the library returned no value"  # a property answered None: no measurement yet
RETRYABLE = TRANSIENT_MESSAGES | {NO_VALUE}

# The library answers from its cache when measured again within 2 s (`delay_between_readings`,
# compared with `>`), silently repeating the previous values -- or None. Waiting a little longer
# than that before every measurement is what makes a retry or a second sample a new measurement.
MEASURE_GAP_S = 2.1

FAULT_AFTER = 5  # failed measurements in a row that mean wiring, not noise (§5.3)
TEMPERATURE_RANGE_C = (0.0, 50.0)  # the DHT11's rated ranges (§5.3)
HUMIDITY_RANGE_PCT = (20.0, 90.0)
JUMP_TEMPERATURE_C = 10.0  # more than this since the last good reading ...
JUMP_HUMIDITY_PCT = 30.0
JUMP_WINDOW_S = 300.0  # ... taken less than this ago is not weather

UNITS = {"temperature_c": "°C", "humidity_pct": "%"}


class DHTBackend(Protocol):
    """What ``adafruit_dht.DHT11`` offers: each property measures (or answers from the 2 s
    cache) and raises ``RuntimeError`` when the measurement fails; ``exit()`` releases the line
    and stops the ``libgpiod_pulsein`` helper process."""

    @property
    def temperature(self) -> float | None: ...

    @property
    def humidity(self) -> float | None: ...

    def exit(self) -> None: ...


class PlausibilityCheck:
    """Range and jump flags for DHT11 values; shared with ``SimulatedDHT11`` so simulated
    readings are judged as real ones are."""

    def __init__(self) -> None:
        self._last_good: tuple[float, float, float] | None = None  # (°C, %RH, monotonic time)

    def flags(self, temperature_c: float, humidity_pct: float, now: float) -> frozenset[str]:
        flags: set[str] = set()
        if not (TEMPERATURE_RANGE_C[0] <= temperature_c <= TEMPERATURE_RANGE_C[1]
                and HUMIDITY_RANGE_PCT[0] <= humidity_pct <= HUMIDITY_RANGE_PCT[1]):
            flags.add(OUT_OF_RANGE)
        if self._last_good is not None:
            last_t, last_rh, at = self._last_good
            if now - at <= JUMP_WINDOW_S and (abs(temperature_c - last_t) > JUMP_TEMPERATURE_C
                                              or abs(humidity_pct - last_rh) > JUMP_HUMIDITY_PCT):
                flags.add(JUMP)
        # A flagged value is not a baseline: one spike must not flag the return to normal. A
        # real step change stops being flagged once the window has passed.
        if not flags:
            self._last_good = (temperature_c, humidity_pct, now)
        return frozenset(flags)


class DHT11:
    """DHT11 temperature/humidity sensor.

    Wiring: VCC to 3.3 V (pin 1), DATA to a GPIO (GPIO4 = pin 7) with a 4.7-10 kΩ pull-up to
    3.3 V unless the breakout has one, GND to pin 6. Keep the cable short.

    Example:
        with DHT11.open(4) as sensor:
            reading = sensor.read()  # blocks a few seconds: 2 s between measurements
            print(reading.values["temperature_c"], reading.values["humidity_pct"])
            print(sensor.health())

    ``read`` returns the cached ``Reading`` when called within ``min_interval_s`` of the last
    one; otherwise it takes ``samples`` good measurements (retrying each up to ``retries``
    times) and reports their median. ``clock`` is monotonic seconds, ``wall_clock`` gives the
    reading's timestamp, ``sleep`` waits; all three are injectable for tests.
    """

    def __init__(self, backend: DHTBackend, *, name: str = "dht11", pin: int | None = None,
                 min_interval_s: float = 2.0, retries: int = 3, samples: int = 3,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if retries < 0 or samples < 1:
            raise ValueError("retries must be >= 0 and samples >= 1")
        self.name = name
        self.pin = pin
        self.min_interval_s = min_interval_s
        self.retries = retries
        self.samples = samples
        self._backend = backend
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._check = PlausibilityCheck()
        self._primed = False  # the first measurement after start has been thrown away
        self._last_measure_at: float | None = None
        self._cached: Reading | None = None
        self._cached_at = 0.0
        self._closed = False
        self._measurements = 0
        self._failures = 0
        self._consecutive_failures = 0
        self._last_error = ""

    @classmethod
    def open(cls, pin: int = 4, *, use_pulseio: bool = True, name: str = "dht11") -> DHT11:
        """The DHT11 on BCM GPIO ``pin`` through ``adafruit_dht``; ``use_pulseio=False``
        bit-bangs in Python instead of starting the ``libgpiod_pulsein`` helper (more failed
        reads, no helper process: the fallback on a Pi 5 if PulseIn times out)."""
        where = f"{name} (DHT11 on GPIO{pin})"
        try:
            # importlib: no stubs needed, and nothing is imported before a DHT11 is wanted.
            board = importlib.import_module("board")
            adafruit_dht = importlib.import_module("adafruit_dht")
        except ImportError as exc:
            raise SensorError(
                f"{where}: the DHT library is not installed ({exc}); install the pi extra "
                "(pip install 'pifleet[pi]') and python3-libgpiod (sudo apt install "
                "python3-libgpiod)") from exc
        except (NotImplementedError, RuntimeError, OSError) as exc:  # Blinka: unknown board
            raise SensorError(f"{where}: this machine is not a supported board ({exc})") from exc
        board_pin = getattr(board, f"D{pin}", None)
        if board_pin is None:
            raise SensorError(f"{where}: the board has no pin D{pin}; give the BCM GPIO number "
                              "of the DATA line (GPIO4 is header pin 7)")
        try:
            backend: DHTBackend = adafruit_dht.DHT11(board_pin, use_pulseio=use_pulseio)
        except RuntimeError as exc:
            if "Unable to set line" in str(exc):
                raise SensorError(line_busy_message(where, pin, exc)) from exc
            raise SensorError(f"{where}: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise SensorError(f"{where}: cannot open the line: {exc}") from exc
        return cls(backend, name=name, pin=pin)

    # -- Sensor ------------------------------------------------------------------------------

    def read(self) -> Reading:
        if self._closed:
            raise SensorError(f"{self.name}: read() after close()")
        if self._cached is not None and self._clock() - self._cached_at < self.min_interval_s:
            return self._cached
        temperatures: list[float] = []
        humidities: list[float] = []
        while len(temperatures) < self.samples:
            temperature_c, humidity_pct = self._good_measurement()
            temperatures.append(temperature_c)
            humidities.append(humidity_pct)
        temperature_c = float(statistics.median(temperatures))
        humidity_pct = float(statistics.median(humidities))
        now = self._clock()
        reading = Reading(sensor=self.name,
                          values={"temperature_c": temperature_c, "humidity_pct": humidity_pct},
                          units=UNITS, timestamp=self._wall_clock(),
                          flags=self._check.flags(temperature_c, humidity_pct, now))
        self._cached, self._cached_at = reading, now
        return reading

    def health(self) -> dict[str, float | int | str]:
        ok = self._measurements - self._failures
        return {"measurements": self._measurements,
                "failed_measurements": self._failures,
                "read_success_ratio": round(ok / self._measurements, 3)
                if self._measurements else 1.0,
                "consecutive_failures": self._consecutive_failures,
                "last_error": self._last_error}

    def close(self) -> None:
        """Release the line: without ``exit()`` the ``libgpiod_pulsein`` helper keeps it and
        the next start fails with "Unable to set line" (§5.4). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._backend.exit()
        except (RuntimeError, OSError) as exc:
            log.warning("%s: exit() failed (%s); if the next start says the line is busy, "
                        "stop the leftover helper: sudo pkill libgpiod_pulsein", self.name,
                        exc)

    def __enter__(self) -> DHT11:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        # Also on KeyboardInterrupt/SystemExit, which `except Exception` would miss.
        self.close()

    # -- measuring -----------------------------------------------------------------------------

    def _good_measurement(self) -> tuple[float, float]:
        """One new, good measurement, retrying transient failures; raises ``SensorError``."""
        retried = 0
        while True:
            try:
                values = self._measure()
            except RuntimeError as exc:
                message = " ".join(str(exc).split())  # older releases put two spaces in
                self._failed(message)
                if "Unable to set line" in message:
                    raise SensorError(line_busy_message(self.name, self.pin, exc)) from exc
                if self._consecutive_failures >= FAULT_AFTER:
                    raise SensorError(
                        f"{self.name}: {self._consecutive_failures} measurements failed in a "
                        f"row (last: {message}); check wiring, pull-up, 3.3 V",
                        transient=False) from exc
                if message not in RETRYABLE:
                    raise SensorError(f"{self.name}: {message}") from exc
                if retried >= self.retries:
                    raise SensorError(f"{self.name}: no good measurement in {retried + 1} "
                                      f"tries (last: {message})", transient=True) from exc
                retried += 1
                continue
            self._consecutive_failures = 0
            if not self._primed:
                # The DHT11 answers with the measurement it took the previous time it was
                # triggered, which after a restart can be minutes or days old.
                self._primed = True
                continue
            return values

    def _measure(self) -> tuple[float, float]:
        if self._last_measure_at is not None:
            wait = MEASURE_GAP_S - (self._clock() - self._last_measure_at)
            if wait > 0:
                self._sleep(wait)
        self._last_measure_at = self._clock()
        self._measurements += 1
        # One measurement: `temperature` measures, `humidity` answers from the library's cache.
        temperature_c = self._backend.temperature
        humidity_pct = self._backend.humidity
        if temperature_c is None or humidity_pct is None:
            raise RuntimeError(NO_VALUE)
        return float(temperature_c), float(humidity_pct)

    def _failed(self, message: str) -> None:
        self._failures += 1
        self._consecutive_failures += 1
        self._last_error = message


def line_busy_message(where: str, pin: int | None, exc: BaseException) -> str:
    gpio = f"GPIO{pin}" if pin is not None else "the DHT11's line"
    return (f"{where}: {gpio} is busy ({exc}). Usually a libgpiod_pulsein helper left over "
            "from a DHT program that did not call exit() (killed, or stopped with Ctrl-C) still "
            "holds it: find it with `pgrep -a libgpiod_pulsein` and stop it with `sudo pkill "
            "libgpiod_pulsein` (or `sudo kill <pid>`), then start again. Otherwise another "
            "program (gpiozero, a dtoverlay=dht11 line in /boot/firmware/config.txt) owns the "
            "pin.")
