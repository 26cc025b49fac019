"""The command line both generators share: write the generated file, or with ``--check``
fail when the committed copy differs from a fresh render (tests run that check)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def write_or_check(output: Path, render: Callable[[], str], *, description: str,
                   argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 if {output.name} is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if output.read_text(encoding="utf-8") != text:
            sys.stderr.write(f"{output} is stale: run python {Path(sys.argv[0]).name}\n")
            return 1
        return 0
    output.write_text(text, encoding="utf-8")
    return 0
