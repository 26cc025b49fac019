"""fleetctl's commands, one module per area; each has ``register(app)`` (see fleet/cli.py)."""
