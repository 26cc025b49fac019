"""Sensor drivers (DHT11, SDS011, simulated) behind one ``Sensor`` protocol.

Hardware libraries are imported inside the drivers, so this package works on a laptop.
"""

from .base import JUMP, OUT_OF_RANGE, SIMULATED, WARMING_UP, Reading, Sensor, SensorError

__all__ = ["JUMP", "OUT_OF_RANGE", "SIMULATED", "WARMING_UP", "Reading", "Sensor", "SensorError"]
