"""Writes packaging/agent.toml, the conffile /etc/pifleet/agent.toml, from agent/config.py.

Every key of every section, commented out, with its default and the comment the dataclass field
carries in agent/config.py, so the shipped file never drifts from the code (a test compares).

    python packaging/gen_agent_toml.py            # rewrite packaging/agent.toml
    python packaging/gen_agent_toml.py --check    # exit 1 if it is stale
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "packaging" / "agent.toml"
sys.path.insert(0, str(ROOT))

from generated import write_or_check  # noqa: E402  (packaging/, next to this script)

from agent import config  # noqa: E402

HEADER = """\
# /etc/pifleet/agent.toml: the configuration of pifleet-agent (docs/agent.md).
#
# Every key is listed, commented out, with its default. Uncomment what you change. An unknown
# section or key, or a value of the wrong type, stops the agent with the key named.
# The agent does not start until [aws] region and the [identity] keys of its mode are set.
#
# Generated from agent/config.py by packaging/gen_agent_toml.py; do not edit in the source tree.
"""

SENSORS = """\
# Sensors: one [[sensors]] table per sensor (name and kind are required). Keys: {keys}.
# [[sensors]]
# name = "climate"
# kind = "dht11"
# pin = 4
"""


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def field_comments(cls: type[Any]) -> dict[str, str]:
    """The trailing ``# comment`` of each field line of a dataclass in agent/config.py."""
    source = Path(config.__file__).read_text(encoding="utf-8")
    lines = source.splitlines()
    comments: dict[str, str] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    line = lines[stmt.lineno - 1]
                    if "  # " in line:
                        comments[stmt.target.id] = line.split("  # ", 1)[1].strip()
    return comments


def render() -> str:
    parts = [HEADER]
    for name, cls in config.SECTIONS.items():
        comments = field_comments(cls)
        lines = [f"[{name}]"]
        for f in dataclasses.fields(cls):
            line = f"# {f.name} = {toml_value(f.default)}"
            if f.name in comments:
                line = f"{line}  # {comments[f.name]}"
            lines.append(line)
        parts.append("\n".join(lines) + "\n")
    parts.append(SENSORS.format(keys=", ".join(config.SENSOR_KEYS)))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    return write_or_check(OUTPUT, render, description=__doc__.splitlines()[0], argv=argv)


if __name__ == "__main__":
    sys.exit(main())
