"""``fleetctl register / list / show / tag / untag / deregister``: the fleet's devices.

A thin layer over fleet/register.py (imported inside each command: boto3 is slow to load).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..context import CliContext, context, fail
from ..errors import FleetError

if TYPE_CHECKING:
    from rich.console import Console


def _console(err: bool = False) -> Console:
    from rich.console import Console  # noqa: PLC0415

    return Console(highlight=False, soft_wrap=True, stderr=err)


def _tags_text(tags: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(tags.items()))


def register_command(  # noqa: PLR0917  (typer options)
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(
        help="Device name (the CodeDeploy instance and IoT thing name).")] = None,
    tag: Annotated[list[str] | None, typer.Option(
        "--tag", help="KEY=VALUE tag (repeatable); deployment groups select devices by tag.")
    ] = None,
    identity: Annotated[str, typer.Option(
        help="iot-cert (certificate + IoT credentials provider) or iam-user.")] = "iot-cert",
    bundle: Annotated[Path | None, typer.Option(
        help="Where to write the enrollment bundle (default ./NAME.pifleet.tar; with "
             "--inventory, a directory).")] = None,
    inventory: Annotated[Path | None, typer.Option(
        help="Register every device of a CSV (name,tags,identity) or YAML file.")] = None,
    credentials_endpoint: Annotated[str | None, typer.Option(
        help="The IoT credentials endpoint URL to give devices (default: DescribeEndpoint).")
    ] = None,
    credentials_ca: Annotated[Path | None, typer.Option(
        help="CA file of the credentials endpoint, shipped in the bundle.")] = None,
) -> None:
    """Register a device (or an inventory of them) and write its enrollment bundle.

    Any failure, or Ctrl-C, removes again whatever was created. The bundle holds the device's
    secrets (mode 0600): copy it to the Pi and run `sudo pifleet-agent enroll BUNDLE`.

    Example: fleetctl register pi-kitchen-01 --tag site=home --tag room=kitchen
    """
    from ..register import RegisterFailed, RegisterOptions, parse_tags  # noqa: PLC0415

    cli = context(ctx)
    options = RegisterOptions(identity, credentials_endpoint, credentials_ca)
    try:
        if inventory is not None:
            if name is not None or tag:
                raise FleetError("give either NAME (with --tag) or --inventory, not both")
            _inventory(cli, inventory, bundle or Path.cwd(), options)
            return
        if name is None:
            raise FleetError("give the device NAME, or --inventory FILE")
        from ..register import register_device  # noqa: PLC0415

        path = bundle or Path.cwd() / f"{name}.pifleet.tar"
        if path.is_dir():
            path = path / f"{name}.pifleet.tar"
        result = register_device(cli.aws, cli.names, name, parse_tags(tag or []), bundle=path,
                                 options=options)
    except RegisterFailed as exc:
        typer.echo(f"fleetctl register: {exc.message}", err=True)
        raise typer.Exit(130 if exc.interrupted else 1) from None
    except FleetError as exc:
        raise fail(exc, "register") from None
    if cli.json:
        cli.emit_json(result.as_dict())
        return
    console = _console()
    console.print(f"[green]registered[/] {result.name} ({result.identity}) as "
                  f"{result.host_identifier}")
    console.print(f"tags: {_tags_text(result.tags)}")
    console.print(f"enrollment bundle (secrets, mode 0600): {result.bundle}")
    console.print(f"next: copy it to the Pi and run `sudo pifleet-agent enroll "
                  f"{Path(result.bundle).name}`, then delete the copy here")


def _inventory(cli: CliContext, inventory: Path, directory: Path, options: Any) -> None:
    from rich.progress import Progress  # noqa: PLC0415

    from ..register import read_inventory, register_inventory  # noqa: PLC0415

    specs = read_inventory(inventory)
    if directory.exists() and not directory.is_dir():
        raise FleetError(f"--bundle {directory} must be a directory with --inventory")
    with Progress(console=_console(err=True), transient=True,
                  disable=cli.json) as progress:
        task = progress.add_task("registering", total=len(specs))
        result = register_inventory(
            cli.aws, cli.names, specs, directory=directory, options=options,
            progress=lambda n: progress.update(task, advance=1, description=n))
    if cli.json:
        cli.emit_json(result.as_dict())
    else:
        console = _console()
        for done in result.registered:
            console.print(f"[green]registered[/] {done.name} -> {done.bundle}")
        for skipped in result.skipped:
            console.print(f"[dim]skipped[/] {skipped} (registered already, same tags)")
        for failed, why in result.failed.items():
            console.print(f"[red]failed[/] {failed}: {why}", markup=True)
        console.print(f"{len(result.registered)} registered, {len(result.skipped)} skipped, "
                      f"{len(result.failed)} failed" +
                      (" (interrupted)" if result.interrupted else ""))
    if result.interrupted:
        raise typer.Exit(130)
    if result.failed:
        raise typer.Exit(1)


def list_command(
    ctx: typer.Context,
    tag: Annotated[list[str] | None, typer.Option(
        "--tag", help="Only devices with this KEY=VALUE tag (repeatable: all of them).")] = None,
    status: Annotated[str, typer.Option(help="registered or deregistered.")] = "registered",
) -> None:
    """List the fleet's devices.

    Example: fleetctl list --tag site=home
    """
    from ..register import list_devices, parse_tags  # noqa: PLC0415

    cli = context(ctx)
    try:
        devices = list_devices(cli.aws, cli.names, parse_tags(tag or []), status)
    except FleetError as exc:
        raise fail(exc, "list") from None
    if cli.json:
        cli.emit_json([d.as_dict() for d in devices])
        return
    from rich.table import Table  # noqa: PLC0415

    table = Table("name", "identity", "tags", "registered" if status == "registered"
                  else "deregistered")
    for d in devices:
        table.add_row(d.name, d.identity, _tags_text(d.tags),
                      d.registered if status == "registered" else d.deregistered)
    console = _console()
    console.print(table)
    console.print(f"{len(devices)} device(s)")


def show_command(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Show a device: registration, tags, identity, recent deployments, shadows."""
    from ..register import show_device  # noqa: PLC0415

    cli = context(ctx)
    try:
        device = show_device(cli.aws, cli.names, name)
    except FleetError as exc:
        raise fail(exc, "show") from None
    if cli.json:
        cli.emit_json(device)
        return
    import json  # noqa: PLC0415

    console = _console()
    for key in ("name", "identity", "host_identifier", "registered", "deregistered"):
        if device.get(key):
            console.print(f"{key}: {device[key]}", markup=False)
    console.print(f"tags: {_tags_text(device['tags'])}", markup=False)
    console.print("deployments:" if device["deployments"] else "deployments: none")
    for d in device["deployments"]:
        extra = f" (failed at {d['failed_event']})" if d.get("failed_event") else ""
        console.print(f"  {d['deployment_id']} {d['group']} {d['created']}: "
                      f"{d['status']}{extra}", markup=False)
    for label, state in (device.get("shadows") or {}).items():
        text = json.dumps(state, sort_keys=True) if state is not None else "none"
        console.print(f"{label} shadow: {text}", markup=False)


def tag_command(ctx: typer.Context, name: Annotated[str, typer.Argument()],
                tags: Annotated[list[str], typer.Argument(help="KEY=VALUE ...")]) -> None:
    """Add or change tags of a device."""
    from ..register import parse_tags, tag_device  # noqa: PLC0415

    cli = context(ctx)
    try:
        now = tag_device(cli.aws, name, parse_tags(tags))
    except FleetError as exc:
        raise fail(exc, "tag") from None
    if cli.json:
        cli.emit_json({"name": name, "tags": now})
    else:
        _console().print(f"{name}: {_tags_text(now)}", markup=False)


def untag_command(ctx: typer.Context, name: Annotated[str, typer.Argument()],
                  keys: Annotated[list[str], typer.Argument(help="KEY ...")]) -> None:
    """Remove tags (by key) from a device."""
    from ..register import untag_device  # noqa: PLC0415

    cli = context(ctx)
    try:
        now = untag_device(cli.aws, name, keys)
    except FleetError as exc:
        raise fail(exc, "untag") from None
    if cli.json:
        cli.emit_json({"name": name, "tags": now})
    else:
        _console().print(f"{name}: {_tags_text(now) or 'no tags'}", markup=False)


def deregister_command(
    ctx: typer.Context, name: Annotated[str, typer.Argument()],
    keep_identity: Annotated[bool, typer.Option(
        "--keep-identity", help="Keep the IAM user or the thing and certificate.")] = False,
) -> None:
    """Deregister a device and delete its identity (IAM user, or thing and certificate)."""
    from ..register import deregister_device  # noqa: PLC0415

    cli = context(ctx)
    try:
        removed = deregister_device(cli.aws, cli.names, name, keep_identity=keep_identity)
    except FleetError as exc:
        raise fail(exc, "deregister") from None
    if cli.json:
        cli.emit_json({"name": name, "removed": removed})
        return
    console = _console()
    for item in removed:
        console.print(f"removed {item}", markup=False)
    console.print(f"on the Pi: `sudo systemctl disable --now pifleet-agent` and delete "
                  f"/etc/pifleet/secrets ({name} can no longer deploy)", markup=False)


def register(app: typer.Typer) -> None:
    app.command("register")(register_command)
    app.command("list")(list_command)
    app.command("show")(show_command)
    app.command("tag")(tag_command)
    app.command("untag")(untag_command)
    app.command("deregister")(deregister_command)
