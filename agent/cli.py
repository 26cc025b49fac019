"""The ``pifleet-agent`` command line.

argparse rather than typer/rich: this runs on the Pi next to the daemon, where start-up time and
memory matter more than colour.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from appspec import FileExistsBehavior
from appspec.check import check_revision
from appspec.report import EXIT_USAGE

from . import __version__
from .deploy.bundle import BundleType
from .deploy.errors import DeployError
from .deploy.local import LocalOptions, UsageError, deploy_local, summary


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
    _deploy_local_parser(commands)
    return parser


def _deploy_local_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    local = commands.add_parser(
        "deploy-local",
        help="run a deployment of a local revision on this machine",
        description="Run a whole CodeDeploy deployment of a local bundle on this machine, as "
                    "the official codedeploy-local does, with the same options. Exit status: "
                    "0 succeeded, 1 an event failed, 2 usage error.",
        epilog="Example: pifleet-agent deploy-local -l examples/aqi-app --root /tmp/pi",
    )
    local.add_argument("-l", "--bundle-location", default=".", metavar="PATH",
                       help="bundle file or revision directory (default: current directory)")
    local.add_argument("-t", "--type", default="directory",
                       choices=("tgz", "tar", "zip", "directory"), help="bundle type")
    local.add_argument("-b", "--file-exists-behavior", default="DISALLOW",
                       choices=("DISALLOW", "OVERWRITE", "RETAIN"),
                       help="what to do with files already at a destination (the AppSpec's "
                            "file_exists_behavior wins)")
    local.add_argument("-g", "--deployment-group", default="default-local-deployment-group",
                       metavar="ID", help="deployment group id: the folder in the "
                                          "deployment-root")
    local.add_argument("-d", "--deployment-group-name", default="LocalFleet", metavar="NAME")
    local.add_argument("-a", "--application-name", metavar="NAME",
                       help="default: the bundle location")
    local.add_argument("-e", "--events", metavar="E1,E2",
                       help="comma-separated events to run (DownloadBundle and Install are "
                            "always run); names not in CodeDeploy are custom events")
    local.add_argument("-A", "--appspec-filename", metavar="NAME",
                       help="AppSpec file name, if not appspec.yml or appspec.yaml")
    local.add_argument("--root", metavar="DIR",
                       help="put the deployment-root in DIR/deployment-root and install "
                            "destinations under DIR (so /opt/app lands in DIR/opt/app); runs "
                            "without root privileges. Default: the real system.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "deploy-local":
        return _deploy_local(args)
    result = check_revision(args.revision, filename=args.appspec_filename, output=args.output,
                            with_explanation=args.explain, previous=args.previous,
                            strict=args.strict)
    sys.stdout.write(result.text + "\n")
    return result.status


def _deploy_local(args: argparse.Namespace) -> int:
    options = LocalOptions(
        bundle_location=args.bundle_location,
        bundle_type=BundleType(args.type),
        file_exists_behavior=FileExistsBehavior(args.file_exists_behavior),
        deployment_group_id=args.deployment_group,
        deployment_group_name=args.deployment_group_name,
        application_name=args.application_name,
        events=tuple(e.strip() for e in args.events.split(",") if e.strip())
        if args.events else None,
        appspec_filename=args.appspec_filename,
        root=Path(args.root) if args.root else None,
    )
    try:
        result = deploy_local(options, out=sys.stdout)
    except UsageError as exc:
        sys.stderr.write(f"pifleet-agent deploy-local: {exc.message}\n")
        return EXIT_USAGE
    except (DeployError, ValueError) as exc:
        sys.stderr.write(f"pifleet-agent deploy-local: {exc}\n")
        return 1
    sys.stdout.write(summary(result) + "\n")
    return 0 if result.succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
