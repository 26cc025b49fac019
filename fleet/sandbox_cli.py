"""``fleetctl sandbox``: the local control plane, for trying pifleet without an AWS account."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer

DEFAULT_REGION = "us-east-1"

app = typer.Typer(help="Run a local stand-in for CodeDeploy, S3, IAM, STS and IoT.",
                  no_args_is_help=True, rich_markup_mode=None)
DEFAULT_PORT = 4567


@app.command()
def up(
    port: Annotated[int, typer.Option(help="Loopback port; 0 takes any free one.")
                    ] = DEFAULT_PORT,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    region: Annotated[str, typer.Option(help="Region the sandbox answers as.")
                      ] = DEFAULT_REGION,
    output: Annotated[str, typer.Option(help="text or json.")] = "text",
    event_timeout: Annotated[float, typer.Option(
        help="Seconds a lifecycle event may run (CodeDeploy: 3600).")] = 3600.0,
    start_timeout: Annotated[float, typer.Option(
        help="Seconds an agent has to pick up an event (CodeDeploy: 300).")] = 300.0,
    broker: Annotated[bool, typer.Option(
        help="Also run mosquitto with the shadow service for device telemetry.")] = True,
) -> None:
    """Run the sandbox in the foreground until Ctrl-C or `fleetctl sandbox down`.

    Prints the endpoint, region and credentials to point boto3, the AWS CLI and
    pifleet-agent at (with --output json, one JSON object).

    Example: fleetctl sandbox up --port 0 --output json
    """
    from .sandbox import control  # noqa: PLC0415  (keeps fleetctl --help fast)

    if output not in ("text", "json"):
        raise typer.BadParameter("use text or json", param_hint="--output")
    from .sandbox.state import Timeouts  # noqa: PLC0415  (only when one is started)

    try:
        sandbox = control.start(host=host, port=port, region=region,
                                timeouts=Timeouts(start_s=start_timeout, event_s=event_timeout))
    except control.SandboxError as exc:
        typer.echo(f"fleetctl sandbox up: {exc}", err=True)
        raise typer.Exit(1) from None
    endpoint = sandbox.endpoint
    try:
        ca_path = control.write_credentials_ca(sandbox)
    except OSError as exc:
        sandbox.stop()
        typer.echo(f"fleetctl sandbox up: cannot write the credentials provider's CA: {exc}",
                   err=True)
        raise typer.Exit(1) from None
    mqtt = control.start_broker(sandbox) if broker else None
    info = {**endpoint.as_dict(), "pid": os.getpid(),
            "signer_certificate_url": f"{endpoint.url}/_pifleet/signer.pem",
            "credentials_endpoint": sandbox.credentials_endpoint,
            "credentials_ca": str(ca_path),
            "credentials_ca_url": f"{endpoint.url}/_pifleet/credentials-ca.pem",
            "mqtt_host": mqtt.host if mqtt else None, "mqtt_port": mqtt.port if mqtt else None}
    if output == "json":
        sys.stdout.write(json.dumps(info) + "\n")
    else:
        typer.echo(f"pifleet sandbox listening on {endpoint.url} (region {endpoint.region})")
        for key, value in endpoint.env().items():
            typer.echo(f"  export {key}={value}")
        typer.echo(f"IoT credentials provider (agent credentials_endpoint): "
                   f"{sandbox.credentials_endpoint}")
        typer.echo(f"  its CA (agent credentials_ca_bundle): {ca_path}")
        if mqtt is not None:
            typer.echo(f"MQTT broker with the shadow service (agent [telemetry]): "
                       f"{mqtt.host}:{mqtt.port}, plain TCP")
        typer.echo("Stop it with Ctrl-C or `fleetctl sandbox down`.")
    sys.stdout.flush()
    try:
        control.run_foreground(sandbox, info)
    except control.SandboxError as exc:
        typer.echo(f"fleetctl sandbox up: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        ca_path.unlink(missing_ok=True)
        if mqtt is not None:
            mqtt.stop()


@app.command()
def down() -> None:
    """Stop the sandbox started by `fleetctl sandbox up` in another shell."""
    from .sandbox import control  # noqa: PLC0415  (keeps fleetctl --help fast)

    try:
        info = control.stop_running()
    except control.SandboxError as exc:
        typer.echo(f"fleetctl sandbox down: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"stopped the sandbox at {info.get('endpoint_url')} (pid {info.get('pid')})")


@app.command()
def status(output: Annotated[str, typer.Option(help="text or json.")] = "text") -> None:
    """Say whether a sandbox is running and where (exit 1 if none)."""
    from .sandbox import control  # noqa: PLC0415  (keeps fleetctl --help fast)

    info = control.read_state()
    if info is None:
        typer.echo("no sandbox is running", err=True)
        raise typer.Exit(1)
    if output == "json":
        sys.stdout.write(json.dumps(info) + "\n")
    else:
        typer.echo(f"sandbox running at {info['endpoint_url']} (pid {info['pid']})")


@app.command()
def devices(
    count: Annotated[int, typer.Argument(help="How many simulated Pis to start.")] = 3,
    root: Annotated[str, typer.Option(help="Where their files live.")] = "",
    tag: Annotated[list[str] | None, typer.Option(
        help="K=V tag for every device (repeatable).")] = None,
    first: Annotated[int, typer.Option(help="Number of the first device (pi-N).")] = 1,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the devices under --root.")
                    ] = False,
    output: Annotated[str, typer.Option(help="text or json.")] = "text",
) -> None:
    """Start simulated Pis against the running sandbox: each a real pifleet-agent process with an
    iot-cert identity (registered and enrolled like a real one), simulated sensors and telemetry.

    Run `fleetctl init` first. Example: fleetctl sandbox devices 3 --tag ring=demo
    """
    from pathlib import Path  # noqa: PLC0415

    from .errors import FleetError  # noqa: PLC0415
    from .sandbox import control  # noqa: PLC0415
    from .sandbox.devices import start_devices, stop_devices  # noqa: PLC0415

    directory = Path(root) if root else control.state_file().parent / "devices"
    if stop:
        stopped = stop_devices(directory)
        typer.echo(f"stopped {len(stopped)} device(s): {', '.join(stopped) or 'none'}")
        return
    info = control.read_state()
    if info is None:
        typer.echo("fleetctl sandbox devices: no sandbox is running; start one with "
                   "`fleetctl sandbox up`", err=True)
        raise typer.Exit(1)
    tags = dict(t.split("=", 1) for t in (tag or []) if "=" in t)
    try:
        started = start_devices(info, count, directory, tags=tags, first=first)
    except FleetError as exc:
        typer.echo(f"fleetctl sandbox devices: {exc.message}", err=True)
        raise typer.Exit(1) from None
    if output == "json":
        sys.stdout.write(json.dumps([d.as_dict() for d in started]) + "\n")
        return
    for device in started:
        typer.echo(f"{device.name}: pifleet-agent pid {device.pid}, files in {device.home}, "
                   f"app port {device.app_port}")
    typer.echo(f"Stop them with `fleetctl sandbox devices --stop --root {directory}`.")
