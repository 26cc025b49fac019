"""pifleet-agent: the on-device CodeDeploy host agent and sensor telemetry daemon."""

__version__ = "0.1.0"
