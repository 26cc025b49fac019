"""Copies a revision and breaks its AppSpec in the ways people do, for `make demo`.

Usage: python dev/broken_copy.py SRC DST
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

BROKEN_APPSPEC = """\
version: "0.0"            # quoted: text, not the number 0.0
os: linux
files:
  - source: /app          # sources are relative to the revision
    destination: opt/aqi  # destinations are absolute
permissions:
  - object: /opt/aqi
    mode: 0755            # YAML 1.1 reads this as octal 493
    type: file            # must be a list
hooks:
  BeforeInstall:
    - location: scripts/check_gpio.sh
      timeout: -5
  AfterInstal:            # typo
    - location: scripts/check_sensors.sh
  ApplicationStart:
    - location: scripts/start.sh   # not in the revision
      runas: "pi; reboot"
"""


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write(__doc__ or "")
        return 2
    src, dst = Path(argv[1]), Path(argv[2])
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    (dst / "appspec.yml").write_text(BROKEN_APPSPEC)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
