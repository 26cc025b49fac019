"""deploy-local of a 2,000-file, ~50 MB revision against ``tar -xf`` + ``cp -a`` in the same run.

Run: ``python -m bench.bench_deploy [--json] [--rounds N]``. Both sides unpack the same tar
bundle and copy its files to their destination; deploy-local also plans, writes the clean-up
file, keeps modes and times and runs as a fresh process (interpreter start-up included). The
peak RSS is the deploy-local process's own (the revision has no hooks).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from .timing import Figure, mb, ms

TITLE = "Deployment engine: deploy-local"
ISSUE = 3
# tmpfs shows the CPU cost with no I/O to hide it; /var/tmp is a real disk on this machine.
RUNS = {"full": [["--rounds", "9"], ["--rounds", "9", "--dir", "/var/tmp"]],  # noqa: S108
        "quick": [["--rounds", "2"]]}

FILES = 2_000
TOTAL_BYTES = 50 * 1024 * 1024
AGENT = str(Path(sys.executable).parent / "pifleet-agent")


def make_bundle(work: Path) -> Path:
    """A revision like a real app: many small files, a few large ones, 40 directories."""
    rng = random.Random(7)
    rev = work / "revision"
    app = rev / "app"
    sizes = [rng.randint(1_000, 12_000) for _ in range(FILES - 10)]
    big = (TOTAL_BYTES - sum(sizes)) // 10
    sizes += [big] * 10
    for i, size in enumerate(sizes):
        path = app / f"pkg{i % 40}" / f"module_{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    (rev / "appspec.yml").write_text(
        "version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: /opt/bench\n")
    bundle = work / "bundle.tar"
    with tarfile.open(bundle, "w") as tar:
        tar.add(rev, arcname=".")
    return bundle


def baseline(bundle: Path, work: Path) -> float:
    unpacked, target = work / "unpacked", work / "target"
    for path in (unpacked, target):
        shutil.rmtree(path, ignore_errors=True)
    unpacked.mkdir()
    target.mkdir()
    os.sync()  # start each side with no dirty data from the other (ext4 fsync cost depends on it)
    start = time.perf_counter()
    subprocess.run(["tar", "-xf", str(bundle), "-C", str(unpacked)], check=True)
    subprocess.run(["cp", "-a", str(unpacked / "app"), str(target / "bench")], check=True)
    return time.perf_counter() - start


def deploy_local(bundle: Path, work: Path) -> tuple[float, int]:
    """Seconds and peak RSS (KiB) of one deploy-local run into a fresh root."""
    root = work / "root"
    shutil.rmtree(root, ignore_errors=True)
    os.sync()
    start = time.perf_counter()
    process = subprocess.Popen([AGENT, "deploy-local", "-l", str(bundle), "-t", "tar",
                                "--root", str(root)], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"deploy-local failed with exit status {process.returncode}")
    if len(list((root / "opt" / "bench").rglob("*.py"))) != FILES:
        raise SystemExit("deploy-local did not install every file")
    return seconds, usage.ru_maxrss


def run(rounds: int, directory: str | None = None) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="pifleet-bench-", dir=directory) as tmp:
        work = Path(tmp)
        bundle = make_bundle(work)
        base_times, ours, rss = [], [], []
        baseline(bundle, work)  # warm the page cache for both sides
        for _ in range(rounds):  # interleaved, so drift on a noisy machine hits both alike
            base_times.append(baseline(bundle, work))
            seconds, peak = deploy_local(bundle, work)
            ours.append(seconds)
            rss.append(peak)
        bundle_mb = bundle.stat().st_size / 1024 / 1024
    base, mine = statistics.median(base_times), statistics.median(ours)
    return {"files": FILES, "bundle_mb": round(bundle_mb, 1), "rounds": rounds,
            "baseline_s": base, "deploy_local_s": mine, "ratio": mine / base,
            "peak_rss_mb": max(rss) / 1024}


def _default_dir() -> str | None:
    shm = "/dev/shm"  # noqa: S108  (a benchmark scratch area, not a secret)
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def figures(result: dict[str, Any], argv: list[str]) -> list[Figure]:
    where = result["dir"] or tempfile.gettempdir()
    ratio = result["ratio"]
    return [
        Figure(f"tar -xf + cp -a (baseline), {where}", ms(result["baseline_s"])),
        Figure(f"deploy-local, {result['files']:,} files / {result['bundle_mb']} MB, {where}",
               ms(result["deploy_local_s"]), "at most 1.3x the baseline", ratio <= 1.3, ratio,
               "tar -xf + cp -a of the same bundle, interleaved"),
        Figure("peak RSS of the deploy-local process", mb(result["peak_rss_mb"]),
               "under 40 MB", result["peak_rss_mb"] < 40),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=_default_dir(),
                        help="where to work (default: /dev/shm when it exists, so disk noise "
                             "on shared machines does not swamp the difference)")
    args = parser.parse_args(argv)
    result = run(args.rounds, args.dir)
    result["dir"] = args.dir
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"  revision: {result['files']} files, {result['bundle_mb']} MB tar, "
          f"{result['rounds']} rounds (medians), in {result['dir'] or tempfile.gettempdir()}")
    print(f"  tar -xf + cp -a (baseline)   {result['baseline_s']:.3f} s")
    print(f"  pifleet-agent deploy-local   {result['deploy_local_s']:.3f} s   "
          f"ratio {result['ratio']:.2f}x (target <= 1.3x)")
    print(f"  deploy-local peak RSS        {result['peak_rss_mb']:.1f} MB (target < 40 MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
