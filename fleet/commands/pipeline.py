"""``fleetctl pipeline create|list|show|delete``: a CodePipeline that deploys a source to a
deployment group (the work is in fleet/pipeline.py)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..context import context, fail
from ..errors import FleetError

pipeline_app = typer.Typer(
    help="CodePipeline: deploy a source (S3 zip or CodeCommit branch) to a deployment group "
         "each time the pipeline runs.",
    no_args_is_help=True, rich_markup_mode=None)


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")


def _console() -> Any:
    from rich.console import Console  # noqa: PLC0415

    return Console(highlight=False, soft_wrap=True)


@pipeline_app.command("create")
def create(  # noqa: PLR0917  (typer options are positional parameters)
    ctx: typer.Context,
    group: Annotated[str, typer.Option(help="Deployment group the Deploy stage targets.")],
    name: Annotated[str | None, typer.Option(
        help="Pipeline name (default <fleet>-<group>).")] = None,
    source: Annotated[str | None, typer.Option(
        help="S3 source: s3://BUCKET/KEY.zip (the bucket must be versioned).")] = None,
    codecommit: Annotated[str | None, typer.Option(
        help="CodeCommit source: REPO[@BRANCH] (branch default main).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Validate and say what would change; create nothing.")] = False,
) -> None:
    """Create the pipeline, its service role and artifact store, or update them to match.

    S3 sources are not polled (PollForSourceChanges=false) and no EventBridge trigger is made:
    start it after each upload with `aws codepipeline start-pipeline-execution --name NAME`.

    Example: fleetctl pipeline create --group all --source s3://my-bucket/aqi/latest.zip
    """
    from .. import pipeline  # noqa: PLC0415

    cli = context(ctx)
    try:
        spec = pipeline.parse_source(source, codecommit)
        result = pipeline.create_pipeline(cli.aws, cli.names, group=group, source=spec,
                                          name=name, dry_run=dry_run)
    except FleetError as error:
        raise fail(error, "pipeline create") from None
    if cli.json:
        cli.emit_json(result.as_dict())
        return
    from rich.table import Table  # noqa: PLC0415

    verb = "would" if dry_run else "did"
    table = Table("resource", "name", f"{verb}", title=f"pipeline {result.name}")
    for change in result.changes:
        table.add_row(change.kind, change.name, change.action)
    console = _console()
    console.print(table)
    console.print(f"source {spec.describe()} -> {cli.names.application}/{group}")
    if isinstance(spec, pipeline.S3Source):
        console.print("S3 changes are not detected automatically (no EventBridge rule): run "
                      f"`aws codepipeline start-pipeline-execution --name {result.name}` after "
                      "each upload.")


@pipeline_app.command("list")
def list_(ctx: typer.Context) -> None:
    """List the pipelines of this account and region."""
    from .. import pipeline  # noqa: PLC0415

    cli = context(ctx)
    try:
        rows = pipeline.list_pipelines(cli.aws)
    except FleetError as error:
        raise fail(error, "pipeline list") from None
    if cli.json:
        cli.emit_json(rows)
        return
    from rich.table import Table  # noqa: PLC0415

    table = Table("name", "version", "updated")
    for row in rows:
        table.add_row(row["name"], str(row["version"]), str(row["updated"] or "-"))
    _console().print(table)


@pipeline_app.command("show")
def show(ctx: typer.Context,
         name: Annotated[str, typer.Argument(help="Pipeline name.")]) -> None:
    """Show a pipeline's stages and actions, and its state or last executions."""
    from .. import pipeline  # noqa: PLC0415

    cli = context(ctx)
    try:
        info = pipeline.show_pipeline(cli.aws, name)
    except FleetError as error:
        raise fail(error, "pipeline show") from None
    if cli.json:
        cli.emit_json(info)
        return
    from rich.table import Table  # noqa: PLC0415

    console = _console()
    console.print(f"pipeline {info['name']} (version {info['version']}), role "
                  f"{info['roleArn']}, artifacts s3://{info['artifactStore']}")
    table = Table("stage", "action", "type", "configuration", "in", "out")
    for stage in info["stages"]:
        for action in stage["actions"]:
            config = ", ".join(f"{k}={v}" for k, v in action["configuration"].items())
            table.add_row(stage["name"], action["name"], action["type"], config,
                          ",".join(action["inputs"]), ",".join(action["outputs"]))
    console.print(table)
    if info["state"] is not None:
        states = Table("stage", "status", title="state")
        for row in info["state"]:
            states.add_row(row["stage"], row["status"])
        console.print(states)
    executions = Table("execution", "status", "started", title="last executions")
    for row in info["executions"]:
        executions.add_row(str(row["id"]), str(row["status"]), str(row["started"]))
    if info["executions"]:
        console.print(executions)
    else:
        console.print("no executions yet")


@pipeline_app.command("delete")
def delete(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Pipeline name.")],
    keep_role: Annotated[bool, typer.Option(
        "--keep-role", help="Keep the pipeline's service role.")] = False,
) -> None:
    """Delete a pipeline and the service role fleetctl made for it (the bucket stays)."""
    from .. import pipeline  # noqa: PLC0415

    cli = context(ctx)
    try:
        changes = pipeline.delete_pipeline(cli.aws, cli.names, name, keep_role=keep_role)
    except FleetError as error:
        raise fail(error, "pipeline delete") from None
    if cli.json:
        cli.emit_json([c.as_dict() for c in changes])
        return
    for change in changes:
        typer.echo(f"deleted {change.kind} {change.name}")
