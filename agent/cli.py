"""The ``pifleet-agent`` command line.

argparse rather than typer/rich: this runs on the Pi next to the daemon, where start-up time and
memory matter more than colour.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appspec.report import EXIT_USAGE

from . import __version__
from .config import DEFAULT_PATH, ConfigError, load_config, read_config

if TYPE_CHECKING:
    from sensors.registry import SensorSpec

# Each command imports what it needs when it runs (PLC0415 below): the daemon (`run`) is
# measured against a memory budget and should not carry deploy-local, doctor or the linter.


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
    _daemon_parsers(commands)
    _sensors_parsers(commands)
    return parser


def _daemon_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser("run", help="run the agent daemon (what systemd starts)",
                              description="Poll CodeDeploy for this device and run its "
                                          "deployments until SIGTERM.")
    run.add_argument("--config", default=str(DEFAULT_PATH), metavar="PATH")
    run.add_argument("--log-level", default="INFO",
                     choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    status = commands.add_parser("status", help="what the daemon is doing",
                                 description="Show the daemon's state, running deployments and "
                                             "last results.")
    status.add_argument("--config", default=str(DEFAULT_PATH), metavar="PATH")
    status.add_argument("--output", choices=("text", "json"), default="text")
    doctor = commands.add_parser("doctor", help="check everything the agent needs",
                                 description="Check the configuration, secrets, clock, "
                                             "endpoint, credentials, identity, disk and power; "
                                             "exit 1 if anything fails.")
    doctor.add_argument("--config", default=str(DEFAULT_PATH), metavar="PATH")
    enroll = commands.add_parser(
        "enroll", help="install an enrollment bundle from `fleetctl register`",
        description="Unpack the device's enrollment bundle: its identity files (0600) and "
                    "its settings as /etc/pifleet/agent.d/50-enrollment.toml (the package's "
                    "agent.toml is never written).",
        epilog="Example: sudo pifleet-agent enroll pi-kitchen-01.pifleet.tar")
    enroll.add_argument("bundle", help="the NAME.pifleet.tar fleetctl register wrote")
    enroll.add_argument("--root", default="/", metavar="DIR",
                        help="install under DIR instead of / (tests, images)")


def _sensors_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sensors = commands.add_parser(
        "sensors", help="list or read the configured sensors",
        description="The sensors configured as [[sensors]] entries in agent.toml.",
        epilog="Example: pifleet-agent sensors read climate --json")
    actions = sensors.add_subparsers(dest="sensors_command", metavar="ACTION")
    listing = actions.add_parser(
        "list", help="configured sensors, and whether their hardware and library are present",
        description="List the configured sensors and check, without opening them, that what "
                    "each needs is there: the serial port (SDS011), adafruit_dht and a "
                    "/dev/gpiochip (DHT11).",
        epilog="Example: pifleet-agent sensors list")
    read = actions.add_parser(
        "read", help="take one reading from each sensor (or from NAME)",
        description="Open each configured sensor (or only NAME), take one reading and show it "
                    "with its flags and the sensor's health. Exit status: 0 all read, 1 a "
                    "sensor failed (the reason is shown), 2 usage error. A DHT11 takes a few "
                    "seconds: its measurements must be 2 s apart.",
        epilog="Example: pifleet-agent sensors read climate --json")
    read.add_argument("name", nargs="?", metavar="NAME", help="only this sensor")
    for action in (listing, read):
        action.add_argument("--config", default=str(DEFAULT_PATH), metavar="PATH")
        action.add_argument("--json", action="store_true", help="print JSON")


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
    if args.command == "run":
        return _run(args)
    if args.command == "status":
        return _status(args)
    if args.command == "doctor":
        return _doctor(args)
    if args.command == "sensors":
        return _sensors(args)
    if args.command == "enroll":
        return _enroll(args)
    from appspec.check import check_revision  # noqa: PLC0415

    result = check_revision(args.revision, filename=args.appspec_filename, output=args.output,
                            with_explanation=args.explain, previous=args.previous,
                            strict=args.strict)
    sys.stdout.write(result.text + "\n")
    return result.status


def _run(args: argparse.Namespace) -> int:
    from .service import AgentService, StartupError  # noqa: PLC0415
    from .systemd import under_systemd  # noqa: PLC0415

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s" if under_systemd()
                        else "%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return AgentService(Path(args.config)).run()
    except (ConfigError, StartupError) as exc:
        sys.stderr.write(f"pifleet-agent: {exc}\n")
        return 1


def _status(args: argparse.Namespace) -> int:
    try:
        path = Path(load_config(Path(args.config)).agent.status_file)
    except ConfigError as exc:
        sys.stderr.write(f"pifleet-agent status: {exc}\n")
        return 1
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        sys.stderr.write(f"pifleet-agent status: no status in {path}; is the daemon running? "
                         "(systemctl status pifleet-agent)\n")
        return 1
    if args.output == "json":
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return 0
    identity = document.get("identity") or {}
    lines = [f"state: {document.get('state')} (pid {document.get('pid')}, version "
             f"{document.get('version')})",
             f"identity: {identity.get('host_identifier', '?')} ({identity.get('mode', '?')})"]
    for deployment, event in (document.get("running") or {}).items():
        lines.append(f"running: {deployment} {event}")
    if document.get("last_error"):
        lines.append(f"last error: {document['last_error']}")
    for result in (document.get("last_results") or [])[-5:]:
        lines.append(f"  {result['deployment_id']} {result['event']}: code "
                     f"{result['error_code']} {result['message']}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import run_checks  # noqa: PLC0415

    failed = False
    for check in run_checks(Path(args.config)):
        sys.stdout.write(check.line() + "\n")
        failed = failed or check.status == "FAIL"
    return 1 if failed else 0


def _enroll(args: argparse.Namespace) -> int:
    from .enroll import EnrollError, enroll, next_steps  # noqa: PLC0415

    try:
        result = enroll(Path(args.bundle), Path(args.root))
    except (EnrollError, OSError) as exc:
        sys.stderr.write(f"pifleet-agent enroll: {exc}\n")
        return 1
    sys.stdout.write("\n".join(next_steps(result)) + "\n")
    return 0


def _sensors(args: argparse.Namespace) -> int:
    if args.sensors_command is None:
        sys.stderr.write("pifleet-agent sensors: say list or read (pifleet-agent sensors "
                         "--help)\n")
        return EXIT_USAGE
    try:
        # Only the [[sensors]] entries matter here: no region or identity needed.
        specs = read_config(Path(args.config)).sensors
    except ConfigError as exc:
        sys.stderr.write(f"pifleet-agent sensors: {exc}\n")
        return 1
    if args.sensors_command == "list":
        return _sensors_list(specs, args)
    return _sensors_read(specs, args)


def _sensors_list(specs: Sequence[SensorSpec], args: argparse.Namespace) -> int:
    from sensors.registry import hardware_status  # noqa: PLC0415

    rows = [(spec, hardware_status(spec)) for spec in specs]
    if args.json:
        document = {"config": args.config, "sensors": [
            {"name": spec.name, "kind": spec.kind, "where": spec.where,
             "interval_s": spec.interval_s, "present": status.present, "detail": status.detail}
            for spec, status in rows]}
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        return 0
    if not rows:
        sys.stdout.write(f"no sensors configured in {args.config}; add [[sensors]] entries "
                         "(name, kind, pin or port)\n")
        return 0
    table = [(spec.name, spec.kind, spec.where, f"every {spec.interval_s:g} s",
              f"{'ok' if status.present else 'MISSING'}: {status.detail}")
             for spec, status in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        sys.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                             strict=False))
                         + "  " + row[4] + "\n")
    return 0


def _sensors_read(specs: Sequence[SensorSpec], args: argparse.Namespace) -> int:
    from sensors import SensorError  # noqa: PLC0415
    from sensors.registry import open_sensor  # noqa: PLC0415

    if args.name is not None:
        specs = [spec for spec in specs if spec.name == args.name]
        if not specs:
            sys.stderr.write(f"pifleet-agent sensors read: no sensor named {args.name!r} in "
                             f"{args.config}\n")
            return EXIT_USAGE
    results: list[dict[str, object]] = []
    for spec in specs:
        result: dict[str, object] = {"name": spec.name, "kind": spec.kind}
        try:
            sensor = open_sensor(spec)
        except SensorError as exc:
            results.append({**result, "ok": False, "error": str(exc),
                            "transient": exc.transient})
            continue
        try:
            reading = sensor.read()
        except (SensorError, OSError) as exc:
            transient = isinstance(exc, SensorError) and exc.transient
            result.update(ok=False, error=str(exc), transient=transient)
        else:
            result.update(ok=True, reading=reading.as_dict(), units=dict(reading.units))
        finally:
            result["health"] = sensor.health()
            sensor.close()
        results.append(result)
    failed = [r for r in results if not r["ok"]]
    if args.json:
        sys.stdout.write(json.dumps({"sensors": results}, indent=2, ensure_ascii=False) + "\n")
    else:
        for r in results:
            if r["ok"]:
                sys.stdout.write(_reading_line(r) + "\n")
        for r in failed:
            error = str(r["error"])  # most drivers' messages start with the sensor's name
            name = "" if error.startswith(f"{r['name']} ") or error.startswith(
                f"{r['name']}:") else f"{r['name']}: "
            sys.stderr.write(f"pifleet-agent sensors read: {name}{error}\n")
        if not results:
            sys.stdout.write(f"no sensors configured in {args.config}\n")
    return 1 if failed else 0


def _reading_line(result: dict[str, Any]) -> str:
    reading, units = result["reading"], result["units"]
    values = " ".join(f"{key}={reading[key]:g} {unit}" for key, unit in units.items())
    flags = f" [{', '.join(reading['flags'])}]" if reading.get("flags") else ""
    health = " ".join(f"{k}={v}" for k, v in result["health"].items() if v != "")
    return f"{result['name']}: {values}{flags} ({health})"


def _deploy_local(args: argparse.Namespace) -> int:
    from appspec import FileExistsBehavior  # noqa: PLC0415

    from .deploy.bundle import BundleType  # noqa: PLC0415
    from .deploy.errors import DeployError  # noqa: PLC0415
    from .deploy.local import LocalOptions, UsageError, deploy_local, summary  # noqa: PLC0415

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
