"""Sensor telemetry: the reporting loop, shadow documents, the outbox and MQTT transports."""
