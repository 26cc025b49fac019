"""``sensors.simulated``: deterministic for a seed and a clock, realistic over simulated days,
and the faults the sandbox fleet switches on."""

from __future__ import annotations

import statistics

import pytest

from sensors import JUMP, SIMULATED, SensorError
from sensors.simulated import SimulatedDHT11, SimulatedSDS011

MIDNIGHT = 1_750_032_000.0  # 2025-06-16T00:00:00Z
DAY_S = 86_400.0


class Ticks:
    """A clock that moves ``step_s`` at every read."""

    def __init__(self, start: float = MIDNIGHT, step_s: float = 300.0) -> None:
        self.now = start - step_s
        self.step_s = step_s

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


def day_of(sensor: SimulatedDHT11 | SimulatedSDS011, days: int = 1) -> list[dict[str, float]]:
    return [dict(sensor.read().values) for _ in range(int(days * DAY_S / 300))]


@pytest.mark.parametrize("cls", [SimulatedDHT11, SimulatedSDS011])
def test_the_same_seed_and_clock_give_the_same_readings(
        cls: type[SimulatedDHT11 | SimulatedSDS011]) -> None:
    first = [cls(seed=7, clock=Ticks()).read() for _ in range(3)]
    again = [cls(seed=7, clock=Ticks()).read() for _ in range(3)]
    assert first == again
    assert day_of(cls(seed=7, clock=Ticks())) == day_of(cls(seed=7, clock=Ticks()))
    assert day_of(cls(seed=7, clock=Ticks())) != day_of(cls(seed=8, clock=Ticks()))


@pytest.mark.parametrize("seed", [0, 1, 42, 1234])
def test_temperature_follows_the_day_and_humidity_moves_against_it(seed: int) -> None:
    sensor = SimulatedDHT11(seed=seed, clock=Ticks())
    for _ in range(3):
        day = day_of(sensor)
        temperatures = [v["temperature_c"] for v in day]
        humidities = [v["humidity_pct"] for v in day]
        assert 10.0 <= min(temperatures) < 15.0
        assert 25.0 < max(temperatures) <= 30.0
        assert all(20.0 <= h <= 90.0 for h in humidities)
        assert statistics.correlation(temperatures, humidities) < -0.8
        # coldest before dawn, warmest in the afternoon (UTC)
        assert temperatures.index(min(temperatures)) * 300 / 3600 < 7
        assert 12 < temperatures.index(max(temperatures)) * 300 / 3600 < 18
        # the resolution of a DHT11: whole %RH, tenths of a degree
        assert all(h == int(h) for h in humidities)
        assert all(round(t, 1) == t for t in temperatures)


def test_a_simulated_day_has_no_flags_but_simulated() -> None:
    sensor = SimulatedDHT11(seed=3, clock=Ticks())
    flags = {frozenset(sensor.read().flags) for _ in range(288)}
    assert flags == {frozenset({SIMULATED})}


@pytest.mark.parametrize("seed", [0, 5, 99])
def test_particulate_matter_is_low_with_occasional_episodes(seed: int) -> None:
    values = day_of(SimulatedSDS011(seed=seed, clock=Ticks()), days=4)
    pm25 = [v["pm25_ugm3"] for v in values]
    assert all(2.0 <= p <= 60.0 for p in pm25)
    assert all(1.2 - 0.03 <= v["pm10_ugm3"] / v["pm25_ugm3"] <= 2.0 + 0.03 for v in values)
    assert statistics.median(pm25) < 12.0
    high = [p for p in pm25 if p > 20.0]
    assert high, "four days without an episode"
    assert len(high) < len(pm25) / 10


def test_every_simulated_reading_is_flagged_and_named() -> None:
    reading = SimulatedSDS011("air", seed=1, clock=Ticks()).read()
    assert reading.sensor == "air"
    assert reading.flags == {SIMULATED}
    assert reading.units == {"pm25_ugm3": "µg/m³", "pm10_ugm3": "µg/m³"}
    assert reading.timestamp == MIDNIGHT


# -- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SimulatedDHT11, SimulatedSDS011])
def test_fail_every_makes_every_nth_read_fail_transiently(
        cls: type[SimulatedDHT11 | SimulatedSDS011]) -> None:
    sensor = cls(seed=1, clock=Ticks(), fail_every=3)
    outcomes = []
    for _ in range(7):
        try:
            sensor.read()
        except SensorError as exc:
            assert exc.transient
            outcomes.append("fail")
        else:
            outcomes.append("ok")
    assert outcomes == ["ok", "ok", "fail", "ok", "ok", "fail", "ok"]
    health = sensor.health()
    assert health["failed_measurements"] == 2
    assert health["consecutive_failures"] == 0
    assert health["read_success_ratio"] == round(5 / 7, 3)
    assert "simulated read failure" in str(health["last_error"])


@pytest.mark.parametrize("cls", [SimulatedDHT11, SimulatedSDS011])
def test_an_unplugged_sensor_always_fails_for_good(
        cls: type[SimulatedDHT11 | SimulatedSDS011]) -> None:
    sensor = cls("x", clock=Ticks(), unplugged=True)
    for _ in range(3):
        with pytest.raises(SensorError, match="simulated") as caught:
            sensor.read()
        assert not caught.value.transient
    assert sensor.health()["consecutive_failures"] == 3


def test_a_stuck_dht11_repeats_its_temperature() -> None:
    sensor = SimulatedDHT11(seed=1, clock=Ticks(), stuck_value=21.5)
    day = day_of(sensor)
    assert {v["temperature_c"] for v in day} == {21.5}
    assert len({v["humidity_pct"] for v in day}) > 5


def test_a_stuck_sds011_repeats_its_pm25() -> None:
    day = day_of(SimulatedSDS011(seed=1, clock=Ticks(), stuck_value=8.0))
    assert {v["pm25_ugm3"] for v in day} == {8.0}
    assert all(v["pm10_ugm3"] >= 8.0 for v in day)


def test_a_dht11_spike_is_flagged_as_a_jump_and_does_not_move_the_baseline() -> None:
    sensor = SimulatedDHT11(seed=1, clock=Ticks(step_s=60), spike_every=4)
    readings = [sensor.read() for _ in range(8)]
    jumps = [i for i, r in enumerate(readings) if JUMP in r.flags]
    assert jumps == [3, 7]
    assert readings[3].values["temperature_c"] - readings[2].values["temperature_c"] > 10


def test_an_sds011_spike_multiplies_the_values() -> None:
    plain = day_of(SimulatedSDS011(seed=2, clock=Ticks()), days=0.01)
    spiky = day_of(SimulatedSDS011(seed=2, clock=Ticks(), spike_every=2), days=0.01)
    assert spiky[0] == plain[0]
    assert spiky[1]["pm25_ugm3"] == pytest.approx(plain[1]["pm25_ugm3"] * 8, abs=0.5)


def test_a_closed_simulated_sensor_refuses_to_read() -> None:
    sensor = SimulatedDHT11(clock=Ticks())
    sensor.close()
    with pytest.raises(SensorError, match="after close"):
        sensor.read()


def test_fault_counts_cannot_be_negative() -> None:
    with pytest.raises(ValueError, match="fail_every"):
        SimulatedDHT11(fail_every=-1)
