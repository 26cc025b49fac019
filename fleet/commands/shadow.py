"""``fleetctl shadow NAME``: a device's shadow, sensor by sensor (see fleet/shadow.py)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from ..context import context, fail
from ..errors import FleetError


def register(app: typer.Typer) -> None:
    app.command("shadow")(shadow)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _cell(value: Any) -> str:
    return "" if value is None else json.dumps(value) if not isinstance(value, str) else value


def shadow(
    ctx: typer.Context,
    thing: Annotated[str, typer.Argument(metavar="NAME", help="Device (IoT thing) name.")],
    name: Annotated[str | None, typer.Option(
        "--name", help="Named shadow (e.g. agent); default the classic shadow.")] = None,
    output: Annotated[str | None, typer.Option(help="table or json.")] = None,
) -> None:
    """Show a device's shadow: reported sensor values and their age, desired and delta.

    Example: fleetctl shadow pi-kitchen --output json
    """
    from ..shadow import get_shadow  # noqa: PLC0415

    cli = context(ctx)
    if output not in (None, "table", "json", "text"):
        raise typer.BadParameter("use table or json", param_hint="--output")
    try:
        result = get_shadow(cli.aws, thing, name)
    except FleetError as error:
        raise fail(error, "shadow") from None
    if output == "json" or (output is None and cli.json):
        cli.emit_json(result.as_dict())
        return
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    label = f"shadow {name!r}" if name else "classic shadow"
    has_desired = any(v.desired is not None for v in result.values)
    has_delta = any(v.delta is not None for v in result.values)
    columns = ["sensor", "reported"] + (["desired"] if has_desired else []) + (
        ["delta"] if has_delta else []) + ["age"]
    table = Table(*columns, title=f"{thing}: {label}, version {result.version}")
    for value in result.values:
        row = [value.key, _cell(value.reported)]
        row += [_cell(value.desired)] if has_desired else []
        row += [_cell(value.delta)] if has_delta else []
        table.add_row(*row, _age(value.age_s))
    console = Console(highlight=False, soft_wrap=True)
    if result.values:
        console.print(table)
    else:
        console.print(f"{thing}: {label} is empty (version {result.version})")
