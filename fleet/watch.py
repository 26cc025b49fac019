"""A deployment as a rich table: a row per device, a column per in-place lifecycle event
(✓ succeeded, ✗ failed, … running, - not run), its status and, for a failed script, a short
diagnostic; refreshed live while ``fleetctl deploy --wait`` watches."""

from __future__ import annotations

from typing import Any

from .aws import Aws
from .deploy import IN_PLACE_EVENTS, DeploymentStatus, TargetStatus, describe_revision, watch

SYMBOLS = {"Succeeded": "✓", "Failed": "✗", "InProgress": "…", "Pending": "-",
           "Skipped": "-", "Unknown": "?"}
HEADERS = {"ApplicationStop": "Stop", "DownloadBundle": "Download",
           "BeforeInstall": "BeforeInst", "Install": "Install", "AfterInstall": "AfterInst",
           "ApplicationStart": "Start", "ValidateService": "Validate"}
_ORDER = {"Failed": 0, "InProgress": 1, "Pending": 2, "Ready": 2, "Skipped": 3, "Succeeded": 4}


def symbol(status: str | None) -> str:
    return SYMBOLS.get(status or "Pending", "?")


def short_diagnostic(target: TargetStatus, width: int = 60) -> str:
    diagnostic = target.diagnostic
    if diagnostic is None:
        return ""
    text = f"{diagnostic.event}: {diagnostic.script or diagnostic.error_code}"
    if diagnostic.message:
        text += f": {diagnostic.message}"
    return text if len(text) <= width else text[:width - 1] + "…"


def table(status: DeploymentStatus, *, max_rows: int | None = None) -> Any:
    """The rich Table of a deployment; with ``max_rows``, the most interesting rows (failed,
    running, pending) and a count of the rest."""
    from rich.table import Table  # noqa: PLC0415

    overview = ", ".join(f"{k} {v}" for k, v in status.overview.items() if v)
    grid = Table(title=f"{status.deployment_id} → {status.group}: {status.status}"
                       + (f" ({overview})" if overview else ""),
                 caption=describe_revision(status.revision), title_justify="left")
    grid.add_column("Device", no_wrap=True)
    for event in IN_PLACE_EVENTS:
        grid.add_column(HEADERS[event], justify="center", no_wrap=True)
    grid.add_column("Status", no_wrap=True)
    grid.add_column("Diagnostic", no_wrap=True, overflow="ellipsis")
    targets = sorted(status.targets, key=lambda t: (_ORDER.get(t.status, 2), t.device))
    if max_rows is not None and len(targets) > max_rows:
        shown, hidden = targets[:max_rows], targets[max_rows:]
    else:
        shown, hidden = targets, []
    styles = {"Succeeded": "green", "Failed": "red", "InProgress": "yellow"}
    for target in shown:
        cells = [f"[{styles[s]}]{symbol(s)}[/]" if (s := target.events.get(e)) in styles
                 else symbol(s) for e in IN_PLACE_EVENTS]
        grid.add_row(target.device, *cells,
                     f"[{styles.get(target.status, 'default')}]{target.status}[/]",
                     short_diagnostic(target))
    if hidden:
        counts: dict[str, int] = {}
        for target in hidden:
            counts[target.status] = counts.get(target.status, 0) + 1
        grid.add_row(f"… {len(hidden)} more", *[""] * len(IN_PLACE_EVENTS),
                     ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), "")
    return grid


def outcome_lines(status: DeploymentStatus, *, log_lines: int = 5) -> list[str]:
    """What to say after the table: each failed script's diagnostics, the error, the rollback."""
    lines: list[str] = []
    for target in status.targets:
        diagnostic = target.diagnostic
        if diagnostic is None:
            continue
        lines.append(f"{target.device}: {diagnostic.event} failed ({diagnostic.error_code})"
                     + (f" in {diagnostic.script}" if diagnostic.script else "")
                     + (f": {diagnostic.message}" if diagnostic.message else ""))
        lines.extend(f"    {line}" for line in diagnostic.last_lines(log_lines))
    if status.error:
        lines.append(f"deployment {status.status.lower()}: {status.error.get('code', '')}: "
                     f"{status.error.get('message', '')}")
    if status.rollback_deployment_id:
        lines.append(f"rolled back by deployment {status.rollback_deployment_id} "
                     f"(`fleetctl status {status.rollback_deployment_id}`)")
    elif status.rollback.get("rollbackMessage"):
        lines.append(f"rollback: {status.rollback['rollbackMessage']}")
    return lines


def print_status(console: Any, status: DeploymentStatus, *, max_rows: int | None = None) -> None:
    console.print(table(status, max_rows=max_rows))
    for line in outcome_lines(status):
        console.print(line, markup=False, highlight=False)


def watch_live(aws: Aws, deployment_id: str, console: Any, *, timeout_s: float | None = None,
               interval_s: float = 2.0, max_rows: int = 40) -> tuple[DeploymentStatus, bool]:
    """Watch with a live table (re-drawn in place on a terminal; printed once at the end
    otherwise); returns the final status and whether the deployment ended."""
    from rich.live import Live  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    if not console.is_terminal:  # a log or a pipe: no redrawing, the table once at the end
        status, ended = watch(aws, deployment_id, timeout_s=timeout_s, interval_s=interval_s)
        console.print(table(status))
    else:
        with Live(Text(f"waiting for deployment {deployment_id}…"), console=console,
                  auto_refresh=False, transient=False) as live:
            def show(status: DeploymentStatus) -> None:
                live.update(table(status, max_rows=max_rows), refresh=True)

            status, ended = watch(aws, deployment_id, timeout_s=timeout_s,
                                  interval_s=interval_s, on_status=show)
            live.update(table(status), refresh=True)  # the whole fleet at the end
    for line in outcome_lines(status):
        console.print(line, markup=False, highlight=False)
    return status, ended
