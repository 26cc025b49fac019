"""``sensors.dht11.DHT11`` against ``FakeDHT``, which behaves as adafruit_dht does (2 s cache,
the library's RuntimeError messages), on a fake clock: no sleeping, no hardware."""

from __future__ import annotations

import itertools
import sys
import types
from typing import Any

import pytest

from sensors import JUMP, OUT_OF_RANGE, SensorError
from sensors.dht11 import DHT11, FAULT_AFTER, MEASURE_GAP_S
from sensors.dht11_fake import MESSAGES, FakeDHT, Measurement

EPOCH = 1_750_000_000.0


class FakeClock:
    """Monotonic time that only moves when the code under test sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 1_000.0  # not 0: the library treats `_last_called == 0` as "never measured"
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def dht(clock: FakeClock, script: list[Measurement], **options: Any) -> tuple[DHT11, FakeDHT]:
    fake = FakeDHT(script, clock=clock.monotonic)
    sensor = DHT11(fake, clock=clock.monotonic, wall_clock=clock.wall, sleep=clock.sleep,
                   **options)
    return sensor, fake


# -- one reading -----------------------------------------------------------------------------


def test_the_first_measurement_is_thrown_away_and_the_median_of_three_reported(
        clock: FakeClock) -> None:
    sensor, fake = dht(clock, [(99.0, 99.0), (20.0, 40.0), (23.0, 44.0), (21.0, 60.0)])
    reading = sensor.read()
    assert reading.values == {"temperature_c": 21.0, "humidity_pct": 44.0}
    assert reading.units == {"temperature_c": "°C", "humidity_pct": "%"}
    assert reading.sensor == "dht11"
    assert reading.flags == frozenset()
    assert reading.timestamp == clock.wall()
    assert fake.measurements == 4 and fake.remaining == 0


def test_measurements_are_more_than_2_s_apart_so_the_library_cache_never_answers(
        clock: FakeClock) -> None:
    times: list[float] = []

    def source() -> Measurement:
        times.append(clock.now)
        return (20.0 + len(times), 40.0)

    fake = FakeDHT(source=source, clock=clock.monotonic)
    sensor = DHT11(fake, clock=clock.monotonic, wall_clock=clock.wall, sleep=clock.sleep)
    sensor.read()
    clock.advance(2.0)
    sensor.read()
    assert len(times) == 7  # 1 discarded + 3 + 3
    assert all(b - a > 2.0 for a, b in itertools.pairwise(times))
    assert all(s <= MEASURE_GAP_S for s in clock.sleeps)


def test_a_read_within_the_interval_returns_the_cached_reading(clock: FakeClock) -> None:
    sensor, fake = dht(clock, [(20.0, 40.0), (20.0, 40.0), (25.0, 50.0)], samples=1,
                       min_interval_s=10.0)
    first = sensor.read()
    clock.advance(9.0)
    assert sensor.read() is first
    assert fake.measurements == 2
    clock.advance(1.0)
    assert sensor.read().values["temperature_c"] == 25.0
    assert fake.measurements == 3


def test_the_default_interval_is_2_s(clock: FakeClock) -> None:
    sensor, _ = dht(clock, [(20.0, 40.0)] * 2 + [(22.0, 40.0)], samples=1)
    first = sensor.read()
    clock.advance(1.5)
    assert sensor.read() is first
    clock.advance(0.5)
    assert sensor.read().values["temperature_c"] == 22.0


# -- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("message", [*MESSAGES, "A full buffer was not returned.  Try again."],
                         ids=["not-found", "full-buffer", "checksum", "unplausible",
                              "two-spaces-older-release"])
def test_each_transient_library_error_is_retried(clock: FakeClock, message: str) -> None:
    sensor, fake = dht(clock, [(20.0, 40.0), message, message, (21.0, 41.0)], samples=1)
    assert sensor.read().values == {"temperature_c": 21.0, "humidity_pct": 41.0}
    assert fake.measurements == 4
    health = sensor.health()
    assert health["failed_measurements"] == 2
    assert health["consecutive_failures"] == 0
    assert health["last_error"] == " ".join(message.split())
    assert health["read_success_ratio"] == 0.5


def test_a_failure_during_the_first_read_is_retried_before_the_discard(
        clock: FakeClock) -> None:
    sensor, _ = dht(clock, [FakeDHT.CHECKSUM, (99.0, 99.0), (21.0, 41.0)], samples=1)
    assert sensor.read().values["temperature_c"] == 21.0


def test_retries_run_out_with_a_transient_error(clock: FakeClock) -> None:
    sensor, fake = dht(clock, [(20.0, 40.0)] + [FakeDHT.CHECKSUM] * 3 + [(21.0, 41.0)],
                       samples=1, retries=2)
    with pytest.raises(SensorError, match=r"no good measurement in 3 tries \(last: Checksum"
                       ) as caught:
        sensor.read()
    assert caught.value.transient
    assert fake.measurements == 4
    assert sensor.read().values["temperature_c"] == 21.0


def test_an_unknown_library_error_is_not_retried(clock: FakeClock) -> None:
    sensor, fake = dht(clock, [(20.0, 40.0), "Timed out waiting for PulseIn message",
                               (21.0, 41.0)], samples=1)
    with pytest.raises(SensorError, match="Timed out waiting for PulseIn") as caught:
        sensor.read()
    assert not caught.value.transient
    assert fake.measurements == 2


def test_five_failures_in_a_row_are_a_wiring_fault_until_a_read_succeeds(
        clock: FakeClock) -> None:
    not_found = FakeDHT.NOT_FOUND
    sensor, _ = dht(clock, [(20.0, 40.0), (20.0, 40.0)] + [not_found] * 6 + [(21.0, 41.0)],
                    samples=1, retries=3)
    sensor.read()
    clock.advance(2.0)
    with pytest.raises(SensorError) as first:  # four tries: still noise
        sensor.read()
    assert first.value.transient
    assert sensor.health()["consecutive_failures"] == 4
    for expected in (FAULT_AFTER, FAULT_AFTER + 1):  # no more retrying: the wiring is the problem
        with pytest.raises(SensorError, match=r"check wiring, pull-up, 3\.3 V") as fault:
            sensor.read()
        assert not fault.value.transient
        assert f"{expected} measurements failed in a row" in str(fault.value)
        assert sensor.health()["consecutive_failures"] == expected
    reading = sensor.read()
    assert reading.values["temperature_c"] == 21.0
    assert sensor.health()["consecutive_failures"] == 0
    assert sensor.health()["last_error"] == not_found


def test_a_busy_line_at_read_time_explains_the_leftover_helper(clock: FakeClock) -> None:
    sensor, _ = dht(clock, [FakeDHT.LINE_BUSY], pin=4)
    with pytest.raises(SensorError, match="libgpiod_pulsein") as caught:
        sensor.read()
    assert not caught.value.transient
    assert "GPIO4 is busy" in str(caught.value)


# -- flags -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "flagged"), [
    ((20.0, 40.0), False),
    ((0.0, 20.0), False),
    ((50.0, 90.0), False),
    ((51.0, 40.0), True),
    ((-1.0, 40.0), True),
    ((20.0, 19.0), True),
    ((20.0, 95.0), True),
], ids=["normal", "lowest", "highest", "too-hot", "below-zero", "too-dry", "too-humid"])
def test_values_outside_the_dht11_range_are_kept_and_flagged(
        clock: FakeClock, values: tuple[float, float], flagged: bool) -> None:
    sensor, _ = dht(clock, [values, values], samples=1)
    reading = sensor.read()
    assert reading.values == {"temperature_c": values[0], "humidity_pct": values[1]}
    assert (OUT_OF_RANGE in reading.flags) is flagged


def test_a_jump_from_the_last_good_reading_within_5_minutes_is_flagged(
        clock: FakeClock) -> None:
    script: list[Measurement] = [(20.0, 40.0), (20.0, 40.0), (30.5, 40.0), (21.0, 41.0),
                                 (21.0, 72.0), (21.0, 70.0), (35.0, 40.0)]
    sensor, _ = dht(clock, script, samples=1)
    assert sensor.read().flags == frozenset()
    clock.advance(60)
    assert sensor.read().flags == {JUMP}  # +10.5 °C in a minute
    clock.advance(60)
    assert sensor.read().flags == frozenset()  # the spike did not become the baseline
    clock.advance(60)
    assert sensor.read().flags == {JUMP}  # +31 %RH
    clock.advance(60)
    assert sensor.read().flags == frozenset()  # +29 %RH: within the limit
    clock.advance(301)
    assert sensor.read().flags == frozenset()  # +14 °C, but the last good reading is too old


# -- closing ---------------------------------------------------------------------------------


def test_close_calls_exit_once_even_when_called_twice(clock: FakeClock) -> None:
    sensor, fake = dht(clock, [])
    sensor.close()
    sensor.close()
    assert fake.exit_calls == 1
    with pytest.raises(SensorError, match="after close"):
        sensor.read()


def test_the_context_manager_calls_exit(clock: FakeClock) -> None:
    with dht(clock, [(20.0, 40.0)] * 4)[0] as sensor:
        sensor.read()
    assert sensor._backend.exit_calls == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("error", [SensorError, KeyboardInterrupt])
def test_exit_is_called_when_a_read_raises(clock: FakeClock, error: type[BaseException]) -> None:
    sensor, fake = dht(clock, [(20.0, 40.0)] + [FakeDHT.NOT_FOUND] * 4, samples=1, retries=3)
    if error is KeyboardInterrupt:  # Ctrl-C in the middle of a read: the §5.4 leftover helper
        fake = FakeDHT(source=lambda: (_ for _ in ()).throw(KeyboardInterrupt()),
                       clock=clock.monotonic)
        sensor = DHT11(fake, clock=clock.monotonic, sleep=clock.sleep)
    with pytest.raises(error), sensor:
        sensor.read()
    assert fake.exit_calls == 1


# -- DHT11.open ------------------------------------------------------------------------------


def test_open_without_the_library_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "board", None)  # None: "import board" raises ImportError
    monkeypatch.setitem(sys.modules, "adafruit_dht", None)
    with pytest.raises(SensorError) as caught:
        DHT11.open(4)
    message = str(caught.value)
    assert "install the pi extra" in message
    assert "python3-libgpiod" in message
    assert not caught.value.transient


def fake_library(monkeypatch: pytest.MonkeyPatch, make: Any) -> list[tuple[Any, bool]]:
    """``board`` and ``adafruit_dht`` as modules whose ``DHT11`` calls ``make``."""
    calls: list[tuple[Any, bool]] = []
    board = types.ModuleType("board")
    board.D4 = "pin-D4"  # type: ignore[attr-defined]
    library = types.ModuleType("adafruit_dht")

    def dht11(pin: Any, use_pulseio: bool = True) -> Any:
        calls.append((pin, use_pulseio))
        return make()

    library.DHT11 = dht11  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "board", board)
    monkeypatch.setitem(sys.modules, "adafruit_dht", library)
    return calls


def test_open_builds_the_library_sensor_on_the_board_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeDHT()
    calls = fake_library(monkeypatch, lambda: fake)
    with DHT11.open(4, use_pulseio=False, name="climate") as sensor:
        assert sensor.name == "climate"
        assert sensor.pin == 4
    assert calls == [("pin-D4", False)]
    assert fake.exit_calls == 1


def test_open_on_a_busy_line_explains_the_leftover_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    def busy() -> Any:
        raise RuntimeError("Unable to set line 4 to input")

    fake_library(monkeypatch, busy)
    with pytest.raises(SensorError) as caught:
        DHT11.open(4)
    message = str(caught.value)
    assert "Unable to set line 4 to input" in message
    assert "pgrep -a libgpiod_pulsein" in message
    assert "pkill libgpiod_pulsein" in message


def test_open_on_a_pin_the_board_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_library(monkeypatch, FakeDHT)
    with pytest.raises(SensorError, match="no pin D17"):
        DHT11.open(17)
