"""``fleetctl init``: create or update the fleet's AWS resources (see fleet/setup.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..context import context, fail
from ..errors import FleetError


def register(app: typer.Typer) -> None:
    app.command(name="init")(init)


def init(  # noqa: PLR0917  (typer passes options positionally)
    ctx: typer.Context,
    group: Annotated[list[str] | None, typer.Option(
        "--group", help="Deployment group to create or update (repeatable; default: all).")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(
        "--tag", help="Devices the groups select: KEY=VALUE or KEY, repeatable, any matches "
                      "(default: pifleet:fleet=<fleet>).")] = None,
    config: Annotated[str, typer.Option(
        "--config", help="Deployment configuration of the groups.")
    ] = "CodeDeployDefault.OneAtATime",
    no_rollback: Annotated[bool, typer.Option(
        "--no-rollback", help="Do not roll back automatically when a deployment fails.")
    ] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Show what would be created or updated; change nothing.")] = False,
) -> None:
    """Create or update everything a fleet needs: artifact bucket, CodeDeploy application,
    roles, IoT role alias and policy, deployment groups. Safe to run again.

    Example: fleetctl init --group canary --tag ring=canary --dry-run
    """
    from ..setup import InitOptions, TagFilter, init_fleet  # noqa: PLC0415

    cli = context(ctx)
    try:
        options = InitOptions(groups=tuple(group or ("all",)),
                              tags=tuple(TagFilter.parse(t) for t in tag or ()),
                              deployment_config=config, rollback=not no_rollback)
        steps = init_fleet(cli.aws, cli.names, options, dry_run=dry_run)
    except FleetError as exc:
        raise fail(exc, "init") from None
    if cli.json:
        cli.emit_json({"fleet": cli.fleet, "dry_run": dry_run,
                       "steps": [s.to_dict() for s in steps]})
        return
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    title = f"fleet {cli.fleet}" + (" (dry run: nothing changed)" if dry_run else "")
    table = Table(title=title, title_justify="left")
    for column in ("resource", "name", "action", "detail"):
        table.add_column(column)
    styles = {"create": "green", "update": "yellow", "unchanged": "dim"}
    for s in steps:
        verb = s.action if not dry_run or s.action == "unchanged" else f"would {s.action}"
        table.add_row(s.resource, s.name, f"[{styles[s.action]}]{verb}[/]", s.detail)
    Console(soft_wrap=True).print(table)
