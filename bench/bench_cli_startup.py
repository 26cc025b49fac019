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
from typing import Any

from .timing import Figure, ms

TITLE = "fleetctl start-up"
ISSUE = 7
RUNS = {"full": [["--rounds", "15"]], "quick": [["--rounds", "3"]]}

FLEETCTL = str(Path(sys.executable).parent / "fleetctl")


def _seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def run(rounds: int) -> dict[str, float]:
    for _ in range(2):  # warm the page cache and .pyc files
        _seconds([FLEETCTL, "--help"])
    typer_runs, help_runs = [], []
    for _ in range(rounds):  # interleaved: load on a shared machine hits both alike
        typer_runs.append(_seconds([sys.executable, "-c", "import typer"]))
        help_runs.append(_seconds([FLEETCTL, "--help"]))
    baseline, help_s = statistics.median(typer_runs), statistics.median(help_runs)
    imports = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv=['fleetctl', '--help']\n"
         "import fleet.cli\ntry:\n    fleet.cli.main()\nexcept SystemExit:\n    pass\n"
         "print(sorted({m.split('.')[0] for m in sys.modules} & {'boto3', 'botocore', 'moto'}))"],
        capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return {"import_typer_s": baseline, "fleetctl_help_s": help_s, "ratio": help_s / baseline,
            "heavy_modules_loaded": imports}  # type: ignore[dict-item]


def figures(result: dict[str, Any], argv: list[str]) -> list[Figure]:
    ratio = result["ratio"]
    return [
        Figure('python -c "import typer" (baseline)', ms(result["import_typer_s"])),
        Figure("fleetctl --help", ms(result["fleetctl_help_s"]), "at most 1.5x the baseline",
               ratio <= 1.5, ratio, 'python -c "import typer", interleaved in the same run'),
        Figure("heavy modules loaded by fleetctl --help", str(result["heavy_modules_loaded"]),
               "none (no boto3 for help)", result["heavy_modules_loaded"] == "[]"),
    ]


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
