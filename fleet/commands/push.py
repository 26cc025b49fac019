"""``fleetctl push``: lint, zip, upload and register a revision (see fleet/push.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from ..context import CliContext, context, fail
from ..errors import FleetError


def register(app: typer.Typer) -> None:
    app.command(name="push")(push)


def push(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(
        help="Revision directory (appspec.yml at its root).")],
    key: Annotated[str | None, typer.Option(
        "--key", help="S3 key (default: <application>/<dir>-<UTC time>.zip).")] = None,
    ignore_hidden_files: Annotated[bool, typer.Option(
        "--ignore-hidden-files", help="Leave out files and directories starting with '.'.")
    ] = False,
    description: Annotated[str | None, typer.Option(
        "--description", help="Description registered with the revision.")] = None,
) -> None:
    """Check a revision, zip it, upload it to the fleet's bucket and register it.

    Example: fleetctl push examples/aqi-app
    """
    from ..push import LintFailed, push_revision  # noqa: PLC0415

    cli = context(ctx)
    try:
        with _progress(cli) as progress:
            pushed = push_revision(cli.aws, cli.names, directory, key=key,
                                   ignore_hidden=ignore_hidden_files, description=description,
                                   progress=progress)
    except LintFailed as exc:
        _report_lint(cli, exc)
        raise fail(exc, "push") from None
    except FleetError as exc:
        raise fail(exc, "push") from None
    except KeyboardInterrupt:
        typer.echo("fleetctl push: interrupted; nothing was registered (a multipart upload "
                   "in progress was aborted)", err=True)
        raise typer.Exit(130) from None
    if cli.json:
        cli.emit_json({"application": cli.names.application, **pushed.to_dict()})
        return
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(show_header=False, title=f"registered with application "
                  f"{cli.names.application}", title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for label, value in (("bucket", pushed.bucket), ("key", pushed.key),
                         ("version", pushed.version or "-"), ("etag", pushed.etag)):
        table.add_row(label, value)
    console = Console(soft_wrap=True, highlight=False)
    console.print(table)
    query = "&".join(f"{k}={v}" for k, v in (("versionId", pushed.version),
                                             ("etag", pushed.etag)) if v)
    console.print(f"To deploy it: fleetctl deploy 's3://{pushed.bucket}/{pushed.key}?{query}' "
                  "--group all", markup=False)


def _report_lint(cli: CliContext, exc: Any) -> None:
    """The findings, as ``fleetctl validate`` prints them (JSON on stdout with --output json)."""
    from appspec.report import render_json, render_text  # noqa: PLC0415

    name = str(exc.directory)
    if cli.json:
        sys.stdout.write(render_json(exc.findings, name, str(exc.directory / "appspec.yml"))
                         + "\n")
    else:
        typer.echo(render_text(exc.findings, name), err=True)


@contextmanager
def _progress(cli: CliContext) -> Iterator[Any]:
    """A rich progress bar on a terminal (not with --output json); else no progress."""
    if cli.json or not sys.stdout.isatty():
        yield None
        return
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        DownloadColumn,
        Progress,
        TransferSpeedColumn,
    )

    with Progress("uploading", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  transient=True) as bar:
        task = bar.add_task("upload", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
