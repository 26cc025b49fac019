"""Builds the telemetry loop from the configuration: sensors, outbox, transport, status."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sensors import SensorError
from sensors.registry import open_sensor

from ..config import Config
from .deadband import Deadband
from .loop import SensorSchedule, Telemetry
from .outbox import Outbox
from .transport import Transport

log = logging.getLogger(__name__)
THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


def build_transport(config: Config) -> Transport:
    tele, ident = config.telemetry, config.identity
    thing = tele.thing_name or ident.thing_name
    options: dict[str, Any] = {
        "client_id": tele.client_id or thing, "ca_file": tele.ca_file or None,
        "cert_file": (tele.cert_file or ident.certificate) if tele.tls else None,
        "key_file": (tele.key_file or ident.private_key) if tele.tls else None,
        "alpn": tele.alpn}
    if tele.transport == "crt":
        from .mqtt_crt import AwsCrtTransport  # noqa: PLC0415  (optional extra)

        return AwsCrtTransport(tele.endpoint, tele.port, **options)
    from .mqtt_paho import PahoTransport  # noqa: PLC0415  (only when telemetry is on)

    return PahoTransport(tele.endpoint, tele.port, tls=tele.tls, **options)


def build_telemetry(config: Config, *,
                    status: Callable[[], Mapping[str, Any]] | None = None) -> Telemetry:
    tele = config.telemetry
    schedules = []
    for spec in config.sensors:
        try:
            schedules.append(SensorSchedule(open_sensor(spec), spec.interval_s))
        except (SensorError, OSError, ValueError) as exc:  # the others and deployments go on
            log.error("sensor %s (%s) not started: %s", spec.name, spec.kind, exc)
    outbox = Outbox(Path(tele.outbox), max_messages=tele.outbox_max_messages)
    return Telemetry(thing=tele.thing_name or config.identity.thing_name, sensors=schedules,
                     outbox=outbox, transport=build_transport(config),
                     deadband=Deadband(heartbeat_s=tele.heartbeat_s), status=status,
                     status_interval_s=tele.status_interval_s,
                     readings_file=Path(tele.readings_file) if tele.readings_file else None)


def pi_health(deployment_root: str) -> dict[str, Any]:
    """CPU temperature and free disk: what the ``agent`` shadow reports about the Pi itself."""
    health: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):  # not a Pi, or no thermal zone
        health["cpu_temperature_c"] = int(THERMAL_ZONE.read_text()) / 1000
    probe = Path(deployment_root)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    health["disk_free_mb"] = shutil.disk_usage(probe).free // 2**20
    return health
