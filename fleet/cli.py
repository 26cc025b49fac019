"""The ``fleetctl`` command line: a thin typer layer over the fleet and appspec libraries."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from . import __version__, commands
from .aws import AwsOptions
from .context import CliContext

app = typer.Typer(
    name="fleetctl",
    help="Set up, register, deploy to and watch a fleet of Raspberry Pis on AWS CodeDeploy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rendering it with rich imports ~60 ms of modules, and help should be instant.
    rich_markup_mode=None,
)




def _register_commands() -> None:
    """Each module of fleet/commands adds its commands; importing them stays cheap (their AWS
    and sandbox libraries are imported inside the commands)."""
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(app)


class Output(StrEnum):
    text = "text"
    json = "json"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fleetctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
    profile: Annotated[str | None, typer.Option(
        envvar="AWS_PROFILE", help="AWS CLI profile to use.")] = None,
    region: Annotated[str | None, typer.Option(
        envvar=["AWS_REGION", "AWS_DEFAULT_REGION"], help="AWS region.")] = None,
    endpoint_url: Annotated[str | None, typer.Option(
        envvar="AWS_ENDPOINT_URL", help="Send every AWS call here (e.g. the sandbox).")] = None,
    output: Annotated[str, typer.Option(help="table or json.")] = "table",
    fleet: Annotated[str, typer.Option(
        envvar="PIFLEET_FLEET", help="Fleet name: prefix of its AWS resources.")] = "pifleet",
) -> None:
    """Set up, register, deploy to and watch a fleet of Raspberry Pis on AWS CodeDeploy."""
    if output not in ("table", "json", "text"):
        raise typer.BadParameter("use table or json", param_hint="--output")
    ctx.obj = CliContext(AwsOptions(profile, region, endpoint_url),
                         "json" if output == "json" else "table", fleet)


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
    from appspec.check import check_revision  # noqa: PLC0415  (keeps --help fast)

    result = check_revision(revision, filename=appspec_filename, output=output.value,
                            with_explanation=explain, previous=previous, strict=strict)
    if output is Output.json:
        sys.stdout.write(result.text + "\n")
    else:
        from rich.console import Console  # noqa: PLC0415

        Console(highlight=False, soft_wrap=True).print(result.text, markup=False)
    raise typer.Exit(result.status)


_register_commands()


def main() -> None:
    app()
