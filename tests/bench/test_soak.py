"""``python -m bench.soak`` as a process: a real agent deploys until the (fractional) hours are
up, one CSV row per deployment with the agent's resources, and a summary that matches it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def soak(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.soak", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=180, check=False)


def test_a_short_soak_records_the_agent_after_every_deployment(tmp_path: Path) -> None:
    path = tmp_path / "soak.csv"
    # 0.001 h = 3.6 s of deploying: the loop must stop by the clock, not by a count.
    done = soak("--hours", "0.001", "--warmup", "1", "--csv", str(path), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["elapsed_s", "deployments", "failed", "rss_kib", "fds", "threads",
                             "root_kib"]
    assert [int(r["deployments"]) for r in rows] == list(range(1, len(rows) + 1))
    assert len(rows) >= 2 and summary["deployments"] == len(rows)
    assert 3.6 <= float(rows[-1]["elapsed_s"]) < 3.6 + 60  # stopped once the time was up
    assert all(r["failed"] == "0" for r in rows)
    rss = [int(r["rss_kib"]) for r in rows]
    assert all(10_000 < kib < 100_000 for kib in rss)  # a Python daemon, not this process
    assert summary["rss_max_mb"] == max(rss) / 1024
    assert all(int(r["fds"]) >= 3 and int(r["threads"]) >= 1 for r in rows)
    assert all(int(r["root_kib"]) > 0 for r in rows)  # the deployment root has revisions
    assert summary["fds_max"] == max(int(r["fds"]) for r in rows)
    assert summary["command"] == "make soak HOURS=0.001"
    # The same samples summarised again from the CSV alone give the same figures.
    again = soak("--from-csv", str(path), "--warmup", "1", "--json")
    assert again.returncode == 0, again.stderr
    resummarised = json.loads(again.stdout)
    for key in ("deployments", "rss_max_mb", "rss_kib_per_100", "fds_max", "root_kib_max"):
        assert resummarised[key] == summary[key], key


def test_hours_that_are_not_a_positive_number_are_refused_clearly() -> None:
    for value, message in (("abc", "--hours takes a number of hours such as 8 or 0.02, "
                                   "not 'abc'"),
                           ("0", "--hours must be above 0")):
        done = soak("--hours", value)
        assert done.returncode == 2
        assert message in done.stderr
        assert "Traceback" not in done.stderr
