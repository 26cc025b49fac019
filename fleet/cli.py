"""The ``fleetctl`` command line: a thin typer layer over the fleet and appspec libraries."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from appspec.check import check_revision

from . import __version__
from .sandbox_cli import app as sandbox_app

app = typer.Typer(
    name="fleetctl",
    help="Set up, register, deploy to and watch a fleet of Raspberry Pis on AWS CodeDeploy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


app.add_typer(sandbox_app, name="sandbox")


class Output(StrEnum):
    text = "text"
    json = "json"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fleetctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Set up, register, deploy to and watch a fleet of Raspberry Pis on AWS CodeDeploy."""


@app.command()
def validate(
    revision: Annotated[Path, typer.Argument(help="Revision directory (holds appspec.yml).")],
    appspec_filename: Annotated[str | None, typer.Option(
        help="AppSpec file name, if not appspec.yml or appspec.yaml.")] = None,
    output: Annotated[Output, typer.Option(help="Report format.")] = Output.text,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Also say what a deployment would do, event by event.")] = False,
    previous: Annotated[Path | None, typer.Option(
        help="Previous revision, to flag changed ApplicationStop scripts.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on warnings too.")] = False,
) -> None:
    """Validate and lint the AppSpec of a revision directory.

    Exit status: 0 valid, 1 errors found (or warnings with --strict), 2 usage error.

    Example: fleetctl validate examples/aqi-app --explain
    """
    result = check_revision(revision, filename=appspec_filename, output=output.value,
                            with_explanation=explain, previous=previous, strict=strict)
    if output is Output.json:
        sys.stdout.write(result.text + "\n")
    else:
        Console(highlight=False, soft_wrap=True).print(result.text, markup=False)
    raise typer.Exit(result.status)


def main() -> None:
    app()
