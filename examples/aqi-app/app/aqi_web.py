#!/usr/bin/env python3
"""Web page with the latest DHT11 and SDS011 readings of a Raspberry Pi, and their US AQI.

GET /               HTML page (refreshes itself every 30 s)
GET /readings.json  the same data as JSON
GET /healthz        200 "ok": what the ValidateService hook polls

The readings come from a JSON file that something else (the pifleet sensor loop) rewrites; a
missing or corrupt file is shown on the page, never a crash. Standard library only, so the
revision needs nothing but the python3 of Raspberry Pi OS.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

log = logging.getLogger("aqi_web")

DEFAULT_READINGS_FILE = "/var/lib/pifleet/readings/latest.json"

# PM2.5 (24-hour) rows of the EPA AQI breakpoint table as revised in May 2024 (Good now ends at
# 9.0 µg/m³, was 12.0): (C_lo, C_hi, I_lo, I_hi, category).
PM25_BREAKPOINTS: tuple[tuple[Decimal, Decimal, int, int, str], ...] = (
    (Decimal("0.0"), Decimal("9.0"), 0, 50, "Good"),
    (Decimal("9.1"), Decimal("35.4"), 51, 100, "Moderate"),
    (Decimal("35.5"), Decimal("55.4"), 101, 150, "Unhealthy for Sensitive Groups"),
    (Decimal("55.5"), Decimal("125.4"), 151, 200, "Unhealthy"),
    (Decimal("125.5"), Decimal("225.4"), 201, 300, "Very Unhealthy"),
    (Decimal("225.5"), Decimal("325.4"), 301, 500, "Hazardous"),
)

# (key in the readings file, label, unit)
FIELDS: tuple[tuple[str, str, str], ...] = (
    ("temperature_c", "Temperature", "°C"),
    ("humidity_pct", "Humidity", "%"),
    ("pm25_ugm3", "PM2.5", "µg/m³"),
    ("pm10_ugm3", "PM10", "µg/m³"),
)


def pm25_aqi(pm25_ugm3: float) -> tuple[int, str]:
    """Return the US AQI and its category for a PM2.5 concentration in µg/m³."""
    if not math.isfinite(pm25_ugm3) or pm25_ugm3 < 0:
        raise ValueError(f"PM2.5 must be a finite number >= 0, got {pm25_ugm3!r}")
    # EPA truncates PM2.5 to 0.1 µg/m³ first; otherwise 9.05 would fall between the Good and
    # Moderate rows. Going through str() keeps binary floats such as 35.4 from becoming 35.39999,
    # and to_integral_value(), unlike quantize(), cannot overflow the context on absurd input.
    c = (Decimal(str(pm25_ugm3)) * 10).to_integral_value(rounding=ROUND_DOWN) / 10
    # Above the table, EPA's guidance is to extrapolate with the last row.
    c_lo, c_hi, i_lo, i_hi, category = next(
        (row for row in PM25_BREAKPOINTS if c <= row[1]), PM25_BREAKPOINTS[-1]
    )
    aqi = Decimal(i_hi - i_lo) / (c_hi - c_lo) * (c - c_lo) + i_lo
    return int(aqi.to_integral_value(rounding=ROUND_HALF_UP)), category


@dataclass(frozen=True)
class Snapshot:
    """What the readings file held at one request: readings (None if none yet) and problems."""

    readings: dict[str, float | str] | None
    problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        aqi = None
        if self.readings is not None and "pm25_ugm3" in self.readings:
            value, category = pm25_aqi(float(self.readings["pm25_ugm3"]))
            aqi = {"value": value, "category": category, "pollutant": "pm25"}
        return {"readings": self.readings, "aqi": aqi, "problems": list(self.problems)}


def load_snapshot(path: Path) -> Snapshot:
    """Read the readings file; anything wrong with it becomes a problem message, not an error."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Snapshot(None)
    except (OSError, ValueError, RecursionError) as exc:
        return Snapshot(None, (f"cannot read {path}: {exc}",))
    if not isinstance(raw, dict):
        return Snapshot(None, (f"{path} holds a JSON {type(raw).__name__}, not an object",))
    readings: dict[str, float | str] = {}
    problems: list[str] = []
    timestamp = raw.get("timestamp")
    if isinstance(timestamp, str):
        readings["timestamp"] = timestamp
    elif timestamp is not None:
        problems.append("timestamp ignored: not a string")
    for key, _label, _unit in FIELDS:
        value = raw.get(key)
        if value is None:
            continue
        # bool is an int subclass, json accepts NaN and Infinity, and only temperature can be < 0.
        # A tuple, not int | float, so that the python3.9 of Raspberry Pi OS 11 can run this too.
        valid = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not valid or not math.isfinite(value) or (key != "temperature_c" and value < 0):
            problems.append(f"{key} ignored: {value!r} is not a valid reading")
            continue
        readings[key] = value
    return Snapshot(readings or None, tuple(problems))


def render_html(snapshot: Snapshot) -> str:
    doc = snapshot.to_json()
    readings, aqi = doc["readings"], doc["aqi"]
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="refresh" content="30"><title>Air quality</title></head><body>',
        "<h1>Air quality</h1>",
    ]
    if readings is None:
        parts.append("<p>No readings yet.</p>")
    else:
        parts.append(f"<p>Measured at {html.escape(str(readings.get('timestamp', 'unknown')))}</p>")
        parts.append("<table>")
        for key, label, unit in FIELDS:
            shown = f"{readings[key]} {unit}" if key in readings else "—"
            parts.append(f"<tr><th>{label}</th><td>{html.escape(shown)}</td></tr>")
        parts.append("</table>")
        if aqi is not None:
            parts.append(
                f"<p>AQI (PM2.5): <strong>{aqi['value']}</strong> "
                f"({html.escape(aqi['category'])})</p>"
            )
    parts.extend(f'<p class="problem">{html.escape(p)}</p>' for p in snapshot.problems)
    parts.append("</body></html>\n")
    return "\n".join(parts)


class AQIServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], readings_file: Path) -> None:
        if ":" in address[0]:  # an IPv6 literal such as "::" needs an AF_INET6 socket
            self.address_family = socket.AF_INET6
        self.readings_file = readings_file
        super().__init__(address, AQIHandler)


class AQIHandler(BaseHTTPRequestHandler):
    server_version = "aqi-web/1.0"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
            return
        if path not in {"/", "/readings.json"}:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
            return
        snapshot = load_snapshot(cast(AQIServer, self.server).readings_file)
        if path == "/":
            self._send(HTTPStatus.OK, render_html(snapshot).encode(), "text/html; charset=utf-8")
        else:
            body = json.dumps(snapshot.to_json(), ensure_ascii=False, indent=2).encode() + b"\n"
            self._send(HTTPStatus.OK, body, "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")  # readings change; never serve stale ones
        self.end_headers()
        self.wfile.write(body)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the latest air-quality readings.")
    # String defaults go through type=, so a bad AQI_PORT is a usage error, not a traceback.
    parser.add_argument("--bind", default=os.environ.get("AQI_BIND", "0.0.0.0"))  # noqa: S104
    parser.add_argument("--port", type=_port, default=os.environ.get("AQI_PORT", "8080"))
    parser.add_argument(
        "--readings-file",
        type=Path,
        default=os.environ.get("AQI_READINGS_FILE", DEFAULT_READINGS_FILE),
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        server = AQIServer((args.bind, args.port), args.readings_file)
    except OSError as exc:
        log.error("cannot listen on %s port %d: %s", args.bind, args.port, exc)
        return 1

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s received, stopping", signal.Signals(signum).name)
        # shutdown() waits for serve_forever() to return, and that runs in this very thread.
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("serving %s on %s port %d", args.readings_file, args.bind, args.port)
    with server:
        server.serve_forever(poll_interval=0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
