"""``fleetctl --help`` start-up time against ``python -c "import typer"`` in the same run.

Run: ``python -m bench.bench_cli_startup [--rounds 15] [--json]``. Both are fresh processes;
the figure is the median wall time. fleetctl must not import boto3, rich's help renderer or the
sandbox just to print its help.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

FLEETCTL = str(Path(sys.executable).parent / "fleetctl")


def _median_s(command: list[str], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run(rounds: int) -> dict[str, float]:
    _median_s([FLEETCTL, "--help"], 2)  # warm the page cache and .pyc files
    baseline = _median_s([sys.executable, "-c", "import typer"], rounds)
    help_s = _median_s([FLEETCTL, "--help"], rounds)
    imports = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv=['fleetctl', '--help']\n"
         "import fleet.cli\ntry:\n    fleet.cli.main()\nexcept SystemExit:\n    pass\n"
         "print(sorted({m.split('.')[0] for m in sys.modules} & {'boto3', 'botocore', 'moto'}))"],
        capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return {"import_typer_s": baseline, "fleetctl_help_s": help_s, "ratio": help_s / baseline,
            "heavy_modules_loaded": imports}  # type: ignore[dict-item]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.rounds)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"  python -c 'import typer': {result['import_typer_s'] * 1000:.0f} ms")
    print(f"  fleetctl --help:          {result['fleetctl_help_s'] * 1000:.0f} ms  "
          f"({result['ratio']:.2f}x; target at most 1.5x); heavy modules loaded: "
          f"{result['heavy_modules_loaded']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
