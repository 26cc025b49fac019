"""fleetctl: set up, register, deploy to and watch a fleet of Raspberry Pis."""

__version__ = "0.1.0"
