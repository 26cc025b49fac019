"""Soak: deploy in a loop to one real ``pifleet-agent run`` process and record its resources.

Run: ``python -m bench.soak --hours 8`` (``make soak HOURS=8``; fractional hours work:
``--hours 0.02`` is a 72-second check). A sandbox runs in this process; the agent polls it
every 0.05 s so deployments follow each other quickly (each is a 5-hook revision). After every
deployment one CSV row records the agent's RSS, open file descriptors, threads and the size of
its deployment root; at the end a summary gives the RSS slope per hour and per 100 deployments
(least squares, after a warm-up), the maximum, and the fd and thread ranges. ``--record`` also
stores the summary in bench/results.json and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fleet.sandbox.server import Sandbox
from fleet.sandbox.state import Timeouts
from tests.e2e.conftest import Device, World, revision_zip
from tests.support.waiting import wait_for

from . import report

HOOKS = ("ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart",
         "ValidateService")
COLUMNS = ("elapsed_s", "deployments", "failed", "rss_kib", "fds", "threads", "root_kib")
# root_kib: the agent's deployment root (archived revisions, deployment logs, instructions).
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Sample:
    elapsed_s: float
    deployments: int
    failed: int
    rss_kib: int
    fds: int
    threads: int
    root_kib: int


@dataclass(frozen=True)
class Summary:
    hours: float
    deployments: int
    failed: int
    rss_first_mb: float
    rss_last_mb: float
    rss_max_mb: float
    rss_kib_per_hour: float
    rss_kib_per_100: float
    rss_kib_per_100_last_half: float  # after any allocator warm-up has long settled
    fds_min: int
    fds_max: int
    threads_min: int
    threads_max: int
    root_kib_max: int
    warmup: int
    csv: str
    command: str


def proc_stats(pid: int) -> tuple[int, int, int]:
    """RSS (KiB), open descriptors and threads of a live process, from /proc."""
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd")), threads


def tree_kib(root: Path) -> int:
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except FileNotFoundError:  # pruned while we walked
                continue
    return total // 1024


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope; 0 when there are too few distinct points to fit a line."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return 0.0
    return statistics.linear_regression(xs, ys).slope


def summarise(samples: list[Sample], warmup: int, csv_path: Path, command: str) -> Summary:
    steady = [s for s in samples if s.deployments > warmup]
    if len(steady) < 3:  # a short check: fit what there is
        steady, warmup = samples, 0
    per_s = slope([s.elapsed_s for s in steady], [float(s.rss_kib) for s in steady])
    per_deployment = slope([float(s.deployments) for s in steady],
                           [float(s.rss_kib) for s in steady])
    last_half = [s for s in samples if s.deployments > samples[-1].deployments // 2]
    per_deployment_late = slope([float(s.deployments) for s in last_half],
                                [float(s.rss_kib) for s in last_half])
    return Summary(
        hours=samples[-1].elapsed_s / 3600, deployments=samples[-1].deployments,
        failed=samples[-1].failed, rss_first_mb=samples[0].rss_kib / 1024,
        rss_last_mb=samples[-1].rss_kib / 1024,
        rss_max_mb=max(s.rss_kib for s in samples) / 1024,
        rss_kib_per_hour=per_s * 3600, rss_kib_per_100=per_deployment * 100,
        rss_kib_per_100_last_half=per_deployment_late * 100,
        fds_min=min(s.fds for s in samples), fds_max=max(s.fds for s in samples),
        threads_min=min(s.threads for s in samples), threads_max=max(s.threads for s in samples),
        root_kib_max=max(s.root_kib for s in samples), warmup=warmup, csv=str(csv_path),
        command=command)


def soak(hours: float, csv_path: Path, *, max_deployments: int | None = None,
         warmup: int = 10, poll_interval_s: float = 0.05,
         keep_log: bool = False) -> list[Sample]:
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="pifleet-soak-") as tmp, \
            Sandbox(timeouts=Timeouts(start_s=120, event_s=300)) as sandbox, \
            csv_path.open("w", newline="") as out:
        sandbox.app.reset()
        world = World(sandbox, Path(tmp))
        world.setup_fleet()
        device = world.device("pi-soak", poll_interval_s=poll_interval_s)
        if not keep_log:  # DEBUG lines at 20 polls a second would fill the disk over hours
            device.log = Path(os.devnull)
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        device.start()
        try:
            _loop(world, device, hours, max_deployments, samples, writer=writer, out=out)
        finally:
            if device.process is not None:
                device.stop()
    return samples


def _loop(world: World, device: Device, hours: float, max_deployments: int | None,
          samples: list[Sample], *, writer: Any, out: Any) -> None:
    assert device.process is not None
    status = device.root / "status.json"
    wait_for(lambda: status.exists() and json.loads(status.read_text())["state"] == "polling",
             120, "the agent to poll")
    revision = world.push("soak/v1.zip", revision_zip({h: "true" for h in HOOKS}))
    # The agent's own files only (revisions, logs, instructions): not the test harness's.
    deployment_root = device.root / "deployment-root"
    started = time.monotonic()
    deadline = started + hours * 3600  # from the first deployment: set-up is not soak time
    done = failed = 0
    while done == 0 or (time.monotonic() < deadline
                        and (max_deployments is None or done < max_deployments)):
        info = world.wait_deployment(world.deploy(revision), timeout_s=300)
        done += 1
        failed += info["status"] != "Succeeded"
        if device.process.poll() is not None:
            raise SystemExit(f"the agent exited with status {device.process.returncode} after "
                             f"{done} deployments")
        sample = Sample(round(time.monotonic() - started, 2), done, failed,
                        *proc_stats(device.process.pid), tree_kib(deployment_root))
        samples.append(sample)
        writer.writerow(astuple_row(sample))
        out.flush()  # a soak stopped with Ctrl-C keeps every row so far


def astuple_row(sample: Sample) -> list[object]:
    values = asdict(sample)
    return [values[c] for c in COLUMNS]


def record(summary: Summary) -> Path:
    """Store the summary beside the benchmark results and regenerate BENCHMARKS.md."""
    results_path = HERE / "results.json"
    if not results_path.exists():
        raise SystemExit(f"{results_path} does not exist yet: run `make bench` first")
    results = json.loads(results_path.read_text())
    results["soak"] = {**asdict(summary),
                       "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "commit": report.git_commit()}
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    output = HERE.parent / "BENCHMARKS.md"
    output.write_text(report.render(results))
    return output


def print_summary(s: Summary) -> None:
    print(f"soak: {s.deployments} deployments ({s.failed} failed) in {s.hours:.3f} h; "
          f"CSV: {s.csv}")
    print(f"  agent RSS: first {s.rss_first_mb:.1f} MB, last {s.rss_last_mb:.1f} MB, "
          f"max {s.rss_max_mb:.1f} MB")
    print(f"  RSS slope after {s.warmup} warm-up deployments: {s.rss_kib_per_hour:+.0f} KiB "
          f"per hour, {s.rss_kib_per_100:+.0f} KiB per 100 deployments; over the last half: "
          f"{s.rss_kib_per_100_last_half:+.1f} KiB per 100 deployments")
    print(f"  open fds {s.fds_min}-{s.fds_max}, threads {s.threads_min}-{s.threads_max}, "
          f"deployment root at most {s.root_kib_max:,} KiB")


def positive_hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hours takes a number of hours such as 8 or 0.02, "
                                         f"not {text!r}") from None
    if not 0 < hours <= 24 * 14:
        raise argparse.ArgumentTypeError(f"--hours must be above 0 and at most 336 (two "
                                         f"weeks), not {text}")
    return hours


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hours", type=positive_hours,
                        help="how long to deploy for (fractions work: 0.02 is 72 s)")
    parser.add_argument("--from-csv", type=Path, metavar="CSV",
                        help="deploy nothing: summarise (and with --record, record) the "
                             "samples of an earlier soak")
    parser.add_argument("--csv", type=Path, help="where to write the samples (default: "
                                                 "build/soak/soak-<UTC time>.csv)")
    parser.add_argument("--max-deployments", type=int, help="stop after this many too")
    parser.add_argument("--warmup", type=int, default=10,
                        help="deployments left out of the slope (default 10)")
    parser.add_argument("--keep-log", action="store_true",
                        help="keep the agent's DEBUG log (large over hours)")
    parser.add_argument("--record", action="store_true",
                        help="store the summary in bench/results.json and regenerate "
                             "BENCHMARKS.md")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if args.from_csv is not None:
        return summarise_csv(args.from_csv, args.warmup, record_it=args.record,
                             as_json=args.json)
    if args.hours is None:
        parser.error("--hours is required (a number of hours such as 8 or 0.02)")
    if args.max_deployments is not None and args.max_deployments < 1:
        parser.error("--max-deployments must be at least 1")
    csv_path = args.csv or (HERE.parent / "build" / "soak"
                            / time.strftime("soak-%Y%m%dT%H%M%SZ.csv", time.gmtime()))
    command = "make soak HOURS=" + f"{args.hours:g}"
    # Ctrl-C or SIGTERM ends the loop cleanly: the agent is stopped and the summary printed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    samples: list[Sample] = []
    try:
        samples = soak(args.hours, csv_path, max_deployments=args.max_deployments,
                       warmup=args.warmup, keep_log=args.keep_log)
    except KeyboardInterrupt:
        print("soak: interrupted; summarising the samples so far", file=sys.stderr)
        samples = read_samples(csv_path)
    if not samples:
        print("soak: no deployment finished, nothing to summarise", file=sys.stderr)
        return 1
    summary = summarise(samples, args.warmup, csv_path, command)
    if args.json:
        print(json.dumps(asdict(summary), indent=2))
    else:
        print_summary(summary)
    if args.record:
        print(f"  recorded in {record(summary)}")
    return 1 if summary.failed else 0


def summarise_csv(csv_path: Path, warmup: int, *, record_it: bool, as_json: bool) -> int:
    samples = read_samples(csv_path)
    if not samples:
        print(f"soak: no samples in {csv_path} (is it a soak CSV?)", file=sys.stderr)
        return 1
    hours = samples[-1].elapsed_s / 3600
    summary = summarise(samples, warmup, csv_path, f"make soak HOURS={hours:.2g}")
    if as_json:
        print(json.dumps(asdict(summary), indent=2))
    else:
        print_summary(summary)
    if record_it:
        print(f"  recorded in {record(summary)}")
    return 0


def read_samples(csv_path: Path) -> list[Sample]:
    if not csv_path.exists():
        return []
    with csv_path.open(newline="") as f:
        return [Sample(float(r["elapsed_s"]), int(r["deployments"]), int(r["failed"]),
                       int(r["rss_kib"]), int(r["fds"]), int(r["threads"]), int(r["root_kib"]))
                for r in csv.DictReader(f)]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    raise SystemExit(main())
