"""The ``pifleet-agent`` command line.

argparse rather than typer/rich: this runs on the Pi next to the daemon, where start-up time and
memory matter more than colour.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from appspec.check import check_revision
from appspec.report import EXIT_USAGE

from . import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pifleet-agent",
        description="CodeDeploy-compatible host agent and sensor telemetry for Raspberry Pis.",
    )
    parser.add_argument("--version", action="version", version=f"pifleet-agent {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    validate = commands.add_parser(
        "validate",
        help="validate and lint a revision's AppSpec",
        description="Validate and lint the AppSpec of a revision directory. Exit status: 0 "
                    "valid, 1 errors found (or warnings with --strict), 2 usage error.",
        epilog="Example: pifleet-agent validate /opt/revisions/aqi-app --output json",
    )
    validate.add_argument("revision", help="revision directory (holds appspec.yml)")
    validate.add_argument("--appspec-filename", metavar="NAME",
                          help="AppSpec file name, if not appspec.yml or appspec.yaml")
    validate.add_argument("--output", choices=("text", "json"), default="text")
    validate.add_argument("--explain", action="store_true",
                          help="also say what a deployment would do, event by event")
    validate.add_argument("--previous", metavar="DIR",
                          help="previous revision, to flag changed ApplicationStop scripts")
    validate.add_argument("--strict", action="store_true", help="fail on warnings too")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    result = check_revision(args.revision, filename=args.appspec_filename, output=args.output,
                            with_explanation=args.explain, previous=args.previous,
                            strict=args.strict)
    sys.stdout.write(result.text + "\n")
    return result.status


if __name__ == "__main__":
    sys.exit(main())
