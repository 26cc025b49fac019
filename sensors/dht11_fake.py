"""``FakeDHT``: a stand-in for ``adafruit_dht.DHT11`` that behaves as the library does.

It reproduces what the driver has to cope with (iot-shadows-sensors.md §5.1,
adafruit-circuitpython-dht 4.0.x): ``temperature`` and ``humidity`` each call ``measure()``,
which does nothing when called again within 2 s of the previous measurement -- the properties
then return the previous values, or None before any measurement succeeded -- and failures are
``RuntimeError`` with the library's exact messages. Tests script it; anything else that needs a
DHT11 without a Pi can give it a ``source`` function instead.

Example:
    fake = FakeDHT([(21.0, 40.0), FakeDHT.CHECKSUM, (21.5, 41.0)], clock=clock.monotonic)
    with DHT11(fake, clock=clock.monotonic, sleep=clock.sleep) as sensor:
        sensor.read()
    assert fake.exit_calls == 1
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

# A scripted measurement: (temperature °C, humidity %RH), or one of the messages below.
Measurement = tuple[float, float] | str

# The library's RuntimeError messages, verbatim.
NOT_FOUND = "DHT sensor not found, check wiring"  # fewer than 10 pulses
FULL_BUFFER = "A full buffer was not returned. Try again."  # fewer than 80 pulses
CHECKSUM = "Checksum did not validate. Try again."
UNPLAUSIBLE = "Received unplausible data. Try again."  # humidity outside 0-100
MESSAGES = (NOT_FOUND, FULL_BUFFER, CHECKSUM, UNPLAUSIBLE)
# Blinka's PulseIn when another process (a leftover libgpiod_pulsein) holds the line.
LINE_BUSY = "Unable to set line 4 to input"

DELAY_BETWEEN_READINGS_S = 2.0  # the library's own `delay_between_readings`


class FakeDHT:
    """Scripted DHT11 at the ``adafruit_dht.DHT11`` interface.

    ``script`` items are consumed one per measurement; when it runs out the sensor behaves as
    unplugged (``NOT_FOUND``). ``source``, if given, is called for each measurement instead.
    """

    NOT_FOUND = NOT_FOUND
    FULL_BUFFER = FULL_BUFFER
    CHECKSUM = CHECKSUM
    UNPLAUSIBLE = UNPLAUSIBLE
    LINE_BUSY = LINE_BUSY

    def __init__(self, script: Iterable[Measurement] = (), *,
                 source: Callable[[], Measurement] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._script: deque[Measurement] = deque(script)
        self._source = source
        self._clock = clock
        self._last_called = 0.0
        self._temperature: float | None = None
        self._humidity: float | None = None
        self.measurements = 0  # measurements actually taken (not answered from the cache)
        self.exit_calls = 0

    def measure(self) -> None:
        # The library's condition, verbatim: first call, or more than 2 s since the last one.
        now = self._clock()
        if self._last_called != 0 and now - self._last_called <= DELAY_BETWEEN_READINGS_S:
            return
        self._last_called = now
        self.measurements += 1
        if self._source is not None:
            item = self._source()
        else:
            item = self._script.popleft() if self._script else NOT_FOUND
        if isinstance(item, str):
            raise RuntimeError(item)
        self._temperature, self._humidity = item

    @property
    def temperature(self) -> float | None:
        self.measure()
        return self._temperature

    @property
    def humidity(self) -> float | None:
        self.measure()
        return self._humidity

    def exit(self) -> None:
        self.exit_calls += 1

    @property
    def remaining(self) -> int:
        """Scripted measurements not consumed yet."""
        return len(self._script)
