"""``fleetctl sandbox ...``: the local control plane (see fleet/sandbox_cli.py)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from ..sandbox_cli import app as sandbox_app  # noqa: PLC0415

    app.add_typer(sandbox_app, name="sandbox")
