"""Is the system clock trustworthy? A Pi has no real-time clock: until NTP has synchronised it,
it may be hours or years off, and every SigV4 signature would be refused."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

# systemd-timesyncd touches this once it has synchronised the clock.
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")


def clock_synchronized() -> bool | None:
    """True/False when the system can tell; None when it cannot (no timesyncd, chrony, ...)."""
    if TIMESYNCD_FLAG.exists():
        return True
    timedatectl = shutil.which("timedatectl")
    if timedatectl is None:
        return None
    try:
        result = subprocess.run([timedatectl, "show", "--property=NTPSynchronized", "--value"],
                                capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = result.stdout.strip()
    if result.returncode != 0 or value not in ("yes", "no"):
        return None
    return value == "yes"
