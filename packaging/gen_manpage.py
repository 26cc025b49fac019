"""Writes packaging/pifleet-agent.1, the man page, from the agent's own argparse parsers.

Each command's section is its ``--help`` text, so the page never says something the program
does not (a test compares the committed page with a fresh render).

    python packaging/gen_manpage.py            # rewrite packaging/pifleet-agent.1
    python packaging/gen_manpage.py --check    # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "packaging" / "pifleet-agent.1"
sys.path.insert(0, str(ROOT))

from generated import write_or_check  # noqa: E402  (packaging/, next to this script)

from agent import __version__, cli  # noqa: E402

FILES = (
    ("/etc/pifleet/agent.toml", "the configuration (a conffile; every key listed, commented out)"),
    ("/etc/pifleet/agent.d/*.toml", "drop-ins read after agent.toml in name order; "
     "enroll writes 50-enrollment.toml"),
    ("/var/lib/pifleet/", "state: the deployment root (with each deployment's scripts.log and "
     "deployment-logs/codedeploy-agent-deployments.log), the status file, the telemetry outbox"),
    ("/etc/logrotate.d/pifleet-agent", "rotates the deployments log"),
)


def escape(text: str) -> str:
    """roff-safe text: backslashes doubled, a line starting with . or ' protected."""
    lines = []
    for line in text.replace("\\", "\\e").splitlines():
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """(qualified name, parser) of every command, nested ones included, in --help order."""
    found: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((name, sub))
                found.extend((f"{name} {inner}", p) for inner, p in subcommands(sub))
    return found


def render() -> str:
    os.environ["COLUMNS"] = "80"  # argparse wraps to the terminal: fix it for a stable page
    parser = cli._parser()
    parts = [
        f'.TH PIFLEET-AGENT 1 "" "pifleet-agent {__version__}" "User Commands"',
        ".SH NAME",
        "pifleet-agent \\- CodeDeploy host agent and sensor telemetry for Raspberry Pi fleets",
        ".SH SYNOPSIS",
        ".B pifleet-agent",
        "[\\fB\\-\\-version\\fR] \\fICOMMAND\\fR [\\fIoptions\\fR]",
        ".SH DESCRIPTION",
        escape(parser.description or ""),
        "It runs as the systemd service pifleet-agent.service (\\fBpifleet-agent run\\fR).",
        ".SH COMMANDS",
    ]
    for name, sub in subcommands(parser):
        parts += [f".SS {escape(name)}", ".nf", escape(sub.format_help().rstrip()), ".fi"]
    parts.append(".SH FILES")
    for path, what in FILES:
        parts += [".TP", f".I {path}", escape(what)]
    parts += [".SH SEE ALSO", "\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1)"]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    return write_or_check(OUTPUT, render, description=__doc__.splitlines()[0], argv=argv)


if __name__ == "__main__":
    sys.exit(main())
