"""Sensor drivers (DHT11, SDS011, simulated) behind one ``Sensor`` protocol."""
