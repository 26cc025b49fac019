"""What every fleetctl command gets from the global options."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import typer

from .aws import Aws, AwsOptions
from .errors import FleetError
from .names import FleetNames


@dataclass
class CliContext:
    aws_options: AwsOptions = field(default_factory=AwsOptions)
    output: str = "table"
    fleet: str = "pifleet"
    _aws: Aws | None = None

    @property
    def aws(self) -> Aws:
        if self._aws is None:
            self._aws = Aws(self.aws_options)
        return self._aws

    @property
    def names(self) -> FleetNames:
        return FleetNames(self.fleet)

    @property
    def json(self) -> bool:
        return self.output == "json"

    def emit_json(self, value: Any) -> None:
        sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def context(ctx: typer.Context) -> CliContext:
    obj = ctx.find_root().obj
    if not isinstance(obj, CliContext):
        obj = CliContext()
        ctx.find_root().obj = obj
    return obj


def fail(error: FleetError, command: str) -> typer.Exit:
    """Print a FleetError (no traceback) and give the exit to raise."""
    typer.echo(f"fleetctl {command}: {error.message}", err=True)
    return typer.Exit(1)
