"""The sd_notify protocol (READY, STATUS, WATCHDOG, STOPPING) without libsystemd.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op, so the same daemon runs by hand.
"""

from __future__ import annotations

import os
import socket


def notify(*fields: str) -> bool:
    """Send ``KEY=value`` lines to systemd; False when not running under a notify service."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
        except OSError:
            return False
    return True


def watchdog_interval_s() -> float | None:
    """Half the unit's WatchdogSec= (systemd's advice), or None when there is no watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


def under_systemd() -> bool:
    return bool(os.environ.get("INVOCATION_ID") or os.environ.get("NOTIFY_SOCKET"))
