"""``fleetctl deploy``, ``status``, ``deployments``, ``stop`` and ``rollback``: thin commands
over fleet/deploy.py and fleet/watch.py (imported inside the commands, as is boto3)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..context import CliContext, context, fail
from ..errors import FleetError

WAIT_EXIT = {"Succeeded": 0}
TIMEOUT_EXIT = 2


def _console() -> Any:
    from rich.console import Console  # noqa: PLC0415

    return Console(highlight=False)


def _wait(cli: CliContext, deployment_id: str, timeout: float | None, interval: float) -> int:
    """Watch to the end; exit status 0 succeeded, 1 failed or stopped, 2 timed out."""
    if cli.json:
        from ..deploy import watch  # noqa: PLC0415

        status, ended = watch(cli.aws, deployment_id, timeout_s=timeout, interval_s=interval)
        cli.emit_json({**status.as_dict(), "timedOut": not ended})
    else:
        from ..watch import watch_live  # noqa: PLC0415

        console = _console()
        status, ended = watch_live(cli.aws, deployment_id, console, timeout_s=timeout,
                                   interval_s=interval)
        if not ended:
            typer.echo(f"fleetctl: gave up waiting after {timeout:g} s; deployment "
                       f"{deployment_id} is {status.status} (`fleetctl status "
                       f"{deployment_id}`)", err=True)
    if not ended:
        return TIMEOUT_EXIT
    return WAIT_EXIT.get(status.status, 1)


def _started(cli: CliContext, deployed: Any, wait: bool) -> None:
    if not (cli.json and wait):
        if cli.json:
            cli.emit_json(deployed.as_dict())
        else:
            typer.echo(deployed.deployment_id)


def deploy(  # noqa: PLR0917  (typer options are positional)
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(
        help="Revision directory (pushed first) or s3://bucket/key.zip"
             "[?versionId=..&etag=..].")],
    group: Annotated[str, typer.Option("--group", "-g", help="Deployment group.")],
    config: Annotated[str | None, typer.Option(
        "--config", help="Deployment configuration, e.g. CodeDeployDefault.AllAtOnce.")]
        = None,
    description: Annotated[str | None, typer.Option(help="Deployment description.")] = None,
    file_exists_behavior: Annotated[str | None, typer.Option(
        help="DISALLOW, OVERWRITE or RETAIN files the revision did not install.")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Watch the deployment with a live table until it ends.")] = False,
    timeout: Annotated[float | None, typer.Option(
        help="With --wait: give up after this many seconds (exit 2).")] = None,
    interval: Annotated[float, typer.Option(help="With --wait: seconds between "
                                                 "refreshes.")] = 2.0,
) -> None:
    """Deploy a revision to a group of devices; print the deployment id.

    Refuses a group that selects no registered device. With --wait, exit status 0 when the
    deployment succeeds, 1 when it fails or is stopped, 2 on --timeout.

    Example: fleetctl deploy s3://my-bucket/aqi/v2.zip --group prod --wait
    """
    cli = context(ctx)
    from ..deploy import deploy as run_deploy  # noqa: PLC0415

    try:
        deployed = run_deploy(cli.aws, cli.names, source, group, config=config,
                              description=description,
                              file_exists_behavior=file_exists_behavior)
        _started(cli, deployed, wait)
        if wait:
            raise typer.Exit(_wait(cli, deployed.deployment_id, timeout, interval))
    except FleetError as exc:
        raise fail(exc, "deploy") from None


def status(
    ctx: typer.Context,
    deployment_id: Annotated[str, typer.Argument(help="Deployment id (d-...).")],
    wait: Annotated[bool, typer.Option("--wait", help="Watch it until it ends.")] = False,
    timeout: Annotated[float | None, typer.Option(
        help="With --wait: give up after this many seconds (exit 2).")] = None,
) -> None:
    """Show a deployment: each device's lifecycle events, status and diagnostics.

    Example: fleetctl status d-ABCDEF123 --output json
    """
    cli = context(ctx)
    try:
        if wait:
            raise typer.Exit(_wait(cli, deployment_id, timeout, 2.0))
        from ..deploy import deployment_status  # noqa: PLC0415

        found = deployment_status(cli.aws, deployment_id)
        if cli.json:
            cli.emit_json(found.as_dict())
        else:
            from ..watch import print_status  # noqa: PLC0415

            print_status(_console(), found)
    except FleetError as exc:
        raise fail(exc, "status") from None


def deployments(
    ctx: typer.Context,
    group: Annotated[str | None, typer.Option("--group", "-g", help="Only this group.")]
        = None,
    status: Annotated[list[str] | None, typer.Option(
        "--status", help="Only these statuses (repeatable): InProgress, Succeeded, "
                         "Failed, Stopped, ...")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")]
        = 20,
) -> None:
    """List the fleet's deployments, newest first."""
    cli = context(ctx)
    from ..deploy import list_deployments  # noqa: PLC0415

    try:
        found = list_deployments(cli.aws, cli.names, group=group, statuses=status,
                                 limit=limit)
    except FleetError as exc:
        raise fail(exc, "deployments") from None
    if cli.json:
        cli.emit_json([d.as_dict() for d in found])
        return
    from rich.table import Table  # noqa: PLC0415

    grid = Table("Deployment", "Group", "Status", "Created", "Revision", "Creator")
    for d in found:
        grid.add_row(d.deployment_id, d.group, d.status, (d.create_time or "")[:19],
                     d.revision, d.creator)
    _console().print(grid)


def stop(
    ctx: typer.Context,
    deployment_id: Annotated[str, typer.Argument(help="Deployment id (d-...).")],
    rollback: Annotated[bool, typer.Option(
        "--rollback", help="Also roll back to the group's last successful revision.")]
        = False,
) -> None:
    """Stop a deployment in progress (optionally rolling back)."""
    cli = context(ctx)
    from ..deploy import stop as run_stop  # noqa: PLC0415

    try:
        stopped = run_stop(cli.aws, deployment_id, rollback=rollback)
    except FleetError as exc:
        raise fail(exc, "stop") from None
    if cli.json:
        cli.emit_json(stopped.as_dict())
        return
    typer.echo(f"{deployment_id}: stop {stopped.status}"
               + (f" ({stopped.message})" if stopped.message else ""))
    if stopped.rollback_deployment_id:
        typer.echo(f"rolling back with deployment {stopped.rollback_deployment_id}")


def rollback(
    ctx: typer.Context,
    group: Annotated[str, typer.Option("--group", "-g", help="Deployment group.")],
    wait: Annotated[bool, typer.Option("--wait", help="Watch it until it ends.")] = False,
    timeout: Annotated[float | None, typer.Option(
        help="With --wait: give up after this many seconds (exit 2).")] = None,
) -> None:
    """Redeploy the group's last successful revision; print the new deployment id."""
    cli = context(ctx)
    from ..deploy import rollback as run_rollback  # noqa: PLC0415

    try:
        deployed = run_rollback(cli.aws, cli.names, group)
        _started(cli, deployed, wait)
        if wait:
            raise typer.Exit(_wait(cli, deployed.deployment_id, timeout, 2.0))
    except FleetError as exc:
        raise fail(exc, "rollback") from None


def register(app: typer.Typer) -> None:
    for command in (deploy, status, deployments, stop, rollback):
        app.command()(command)
