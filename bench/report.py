"""BENCHMARKS.md written from the raw results of ``python -m bench`` and the notes beside them.

Nothing in BENCHMARKS.md is typed by hand: figures come from the results JSON, prose from
``bench/notes/`` (``intro.md`` on top, ``<module>.md`` under each benchmark, ``peers.md`` in the
Peers section), so regenerating never loses an explanation.
"""

from __future__ import annotations

import ast
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NOTES = Path(__file__).resolve().parent / "notes"
ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    """What the figures were measured on: they mean little without it."""
    cpu = platform.processor() or platform.machine()
    memory_kib = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(), "arch": platform.machine(),
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": git_commit(), "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def note(name: str, notes: Path = NOTES) -> str:
    path = notes / f"{name}.md"
    return path.read_text().strip() if path.exists() else ""


def docstring_body(path: Path) -> str:
    """A module's docstring after its first line, read without importing the module."""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    except (OSError, SyntaxError):
        return ""
    parts = doc.strip().split("\n\n", 1)  # the first paragraph is the title
    return parts[1].strip().replace("``", "`") if len(parts) > 1 else ""


def _met(value: bool | None) -> str:
    return {True: "met", False: "**not met**", None: ""}[value]


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _ratio(figure: dict[str, Any]) -> str:
    if figure.get("ratio") is None:
        return ""
    return f"{figure['ratio']:.2f}x {figure.get('baseline') or 'the baseline'}"


def render_entry(entry: dict[str, Any], notes: Path = NOTES) -> list[str]:
    issue = f" (issue {entry['issue']})" if entry.get("issue") else ""
    lines = [f"## {entry['title']}{issue}", "",
             f"Module `bench/{entry['module']}.py`.", ""]
    for run in entry["runs"]:
        lines.append(f"Command: `{run['command']}` ({run['mode']} mode, {run['seconds']:.0f} s,"
                     f" measured {run['measured_at']} at {run['commit']}).")
        lines.append("")
        if run["status"] == "skipped":
            lines += [f"Skipped here: {run['reason']}", ""]
            continue
        if run["status"] == "failed":
            lines += [f"**Failed**: {run['reason']}", ""]
            continue
        lines += ["| Figure | Result | Target | | Ratio against the in-run baseline |",
                  "|---|---|---|---|---|"]
        for f in run["figures"]:
            lines.append(f"| {_cell(f['what'])} | {_cell(f['value'])} | "
                         f"{_cell(f.get('target') or '')} | {_met(f.get('met'))} | "
                         f"{_cell(_ratio(f))} |")
        lines.append("")
    # A module without a notes file is explained by its own docstring.
    text = (note(entry["module"], notes) or entry.get("about")
            or docstring_body(notes.parent / f"{entry['module']}.py"))
    if text:
        lines += [text, ""]
    return lines


def summary(entries: list[dict[str, Any]]) -> list[str]:
    lines = ["## Summary: every target the issues set", "",
             "| Benchmark | Figure | Result | Target | |", "|---|---|---|---|---|"]
    for entry in entries:
        for run in entry["runs"]:
            if run["status"] != "ok":
                lines.append(f"| {entry['title']} | | {run['status']}: {_cell(run['reason'])}"
                             f" | | |")
                continue
            for f in run["figures"]:
                if f.get("target") is None:
                    continue
                value = f["value"]
                if f.get("ratio") is not None and not value.endswith("x"):
                    value = f"{value} ({f['ratio']:.2f}x)"
                lines.append(f"| {entry['title']} | {_cell(f['what'])} | {_cell(value)} | "
                             f"{_cell(f['target'])} | {_met(f.get('met')) or 'reported'} |")
    return [*lines, ""]


def _measured_peers(entries: dict[str, dict[str, Any]]) -> list[str]:
    """Our own figures that the peers publish too, taken from this run's results."""
    rows = []
    agent = entries.get("bench_agent")
    if agent and agent["runs"] and agent["runs"][0]["status"] == "ok":
        r = agent["runs"][0]["result"]
        rows.append(f"| pifleet-agent, idle RSS polling the sandbox | {r['idle_rss_mb']:.1f} MB |"
                    f" `bench/bench_agent.py` |")
        rows.append(f"| pifleet-agent, idle command-plane traffic | "
                    f"{r['idle_bytes_per_hour'] / 1e6:.2f} MB/hour | `bench/bench_agent.py` |")
    deploy = entries.get("bench_deploy")
    if deploy and deploy["runs"] and deploy["runs"][0]["status"] == "ok":
        r = deploy["runs"][0]["result"]
        rows.append(f"| pifleet-agent deploy-local of a 53 MB revision, peak RSS | "
                    f"{r['peak_rss_mb']:.1f} MB | `bench/bench_deploy.py` |")
    peer = entries.get("bench_peer_codedeploy")
    if peer and peer["runs"] and peer["runs"][0]["status"] == "ok":
        r = peer["runs"][0]["result"]
        per_hour = 3600 / r["idle_seconds"]
        for who, label in (("ours", f"pifleet-agent (Python {r['python']})"),
                           ("theirs", f"official CodeDeploy agent {r['theirs_version']} "
                                      f"(Ruby {r['ruby']}, {r['theirs_processes']} processes)")):
            rows.append(f"| {label}, idle RSS / CPU / traffic, same sandbox and run | "
                        f"{r[who + '_rss_mb']:.1f} MB / {r[who + '_cpu_s'] * per_hour:.0f} CPU s"
                        f" per hour / {r[who + '_bytes'] * per_hour / 1e6:.2f} MB per hour | "
                        f"`bench/bench_peer_codedeploy.py` |")
    mender = entries.get("bench_peer_mender")
    if mender and mender["runs"] and mender["runs"][0]["status"] == "ok":
        r = mender["runs"][0]["result"]
        rows.append(f"| Mender client {r['version']} daemon, idle RSS (no server reachable) / "
                    f"installed size | {r['rss_mb']:.1f} MB / {r['installed_kib'] / 1024:.1f} MB"
                    f" | `bench/bench_peer_mender.py` |")
    soak = entries.get("soak")
    if soak:
        rows.append(f"| pifleet-agent soak: RSS max / slope per 100 deployments | "
                    f"{soak['rss_max_mb']:.1f} MB / {soak['rss_kib_per_100']:+.0f} KiB | "
                    f"`{soak['command']}` |")
    if not rows:
        return []
    return ["### Measured here", "", "| | Figure | Source |", "|---|---|---|", *rows, ""]


def render_soak(soak: dict[str, Any] | None, notes: Path = NOTES) -> list[str]:
    lines = ["## Soak (issue 9)", ""]
    if soak:
        lines += [
            f"Command: `{soak['command']}` (summary recorded {soak['measured_at']} at "
            f"{soak['commit']}; samples in {Path(soak['csv']).name}, not committed).", "",
            "| Figure | Result |", "|---|---|",
            f"| deployments (failed) | {soak['deployments']:,} ({soak['failed']}) in "
            f"{soak['hours']:.2f} h |",
            f"| agent RSS first / last / max | {soak['rss_first_mb']:.1f} / "
            f"{soak['rss_last_mb']:.1f} / {soak['rss_max_mb']:.1f} MB |",
            f"| RSS slope after {soak['warmup']} warm-up deployments | "
            f"{soak['rss_kib_per_hour']:+.0f} KiB per hour, {soak['rss_kib_per_100']:+.0f} KiB "
            f"per 100 deployments; over the last half "
            f"{soak.get('rss_kib_per_100_last_half', float('nan')):+.1f} KiB per 100 |",
            f"| open fds / threads (min-max) | {soak['fds_min']}-{soak['fds_max']} / "
            f"{soak['threads_min']}-{soak['threads_max']} |",
            f"| deployment root, largest | {soak['root_kib_max']:,} KiB |", ""]
    else:
        lines += ["Not recorded yet: `python -m bench.soak --hours N --record` "
                  "stores its summary here.", ""]
    text = note("soak", notes)
    return [*lines, text, ""] if text else lines


def render(results: dict[str, Any], notes: Path = NOTES) -> str:
    m = results["machine"]
    entries = results["entries"]
    by_name = {e["module"]: e for e in entries}
    if results.get("soak"):
        by_name["soak"] = results["soak"]
    lines = [
        "# Benchmarks", "",
        "<!-- Generated by `make bench` (`python -m bench`) from bench/results.json and "
        "bench/notes/*.md. Edit the notes, not this file. -->", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Linux "
        f"{m['kernel']} ({m['arch']}), Python {m['python']}. Run: {m['date']}, commit "
        f"{m['commit']}, {results['mode']} mode, {results['seconds'] / 60:.1f} minutes in all, "
        f"load average {' / '.join(str(x) for x in m['load_average'])} at the start.", "",
    ]
    for rerun in results.get("reruns", []):
        lines += [f"Re-run since, with `--only`: {', '.join(rerun['modules'])} "
                  f"({rerun['date']}, commit {rerun['commit']}).", ""]
    intro = note("intro", notes)
    if intro:
        lines += [intro, ""]
    lines += summary(entries)
    for entry in entries:
        lines += render_entry(entry, notes)
    lines += render_soak(results.get("soak"), notes)
    lines += ["## Peers", ""]
    lines += _measured_peers(by_name)
    peers = note("peers", notes)
    if peers:
        lines += [peers, ""]
    return "\n".join(lines).rstrip() + "\n"
