"""``python -m bench``: every bench/bench_*.py module, then BENCHMARKS.md written from the results.

Each module runs as its own process (``python -m bench.<module> --json`` plus the argv its
``RUNS`` gives for the mode), so one benchmark's memory, threads or sandbox never weigh on the
next; the interface a module shares is described in bench/timing.py. A new module needs
nothing else to be picked up.

    python -m bench                 full mode: the figures the issues ask for (~10 minutes);
                                    writes BENCHMARKS.md and bench/results.json
    python -m bench --quick         a fast check of every benchmark (~2 minutes); writes
                                    build/bench/BENCHMARKS.md and build/bench/results.json
    python -m bench --only bench_deploy,bench_laser
                                    re-run some; the others' figures are kept from the last run
    python -m bench --list          the modules, their runs and whether they can run here
    python -m bench --render        rewrite BENCHMARKS.md from bench/results.json and the notes
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from . import report
from .timing import Figure

HERE = Path(__file__).resolve().parent
DEFAULT_TIMEOUT_S = 1200.0


def package_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"no package {package!r} to find benchmarks in")
    return Path(next(iter(spec.submodule_search_locations)))


def discover(package: str = "bench") -> list[str]:
    """Every bench_*.py module of the package: a new one needs no registration."""
    return sorted(p.stem for p in package_folder(package).glob("bench_*.py"))


def runs_for(module: ModuleType, mode: str) -> list[list[str]]:
    runs: dict[str, list[list[str]]] = getattr(module, "RUNS", {})
    return runs.get(mode) or runs.get("full") or [[]]


def title_of(module: ModuleType, name: str) -> str:
    title = getattr(module, "TITLE", None)
    if title:
        return str(title)
    doc = (module.__doc__ or "").strip()
    return doc.splitlines()[0].rstrip(".") if doc else name


def last_json_object(stdout: str) -> dict[str, Any]:
    """The last JSON object printed: modules may print progress before it."""
    starts = [i for i in range(len(stdout)) if stdout[i] == "{" and (i == 0
                                                                     or stdout[i - 1] == "\n")]
    for start in reversed(starts):
        try:
            value = json.loads(stdout[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError("no JSON object at the end of its output")


def generic_figures(result: dict[str, Any]) -> list[Figure]:
    """For a module without ``figures()``: every scalar of its result, as printed."""
    rows = []
    for key, value in result.items():
        if isinstance(value, float):
            rows.append(Figure(key.replace("_", " "), f"{value:,.3g}"))
        elif isinstance(value, (int, str, bool)):
            rows.append(Figure(key.replace("_", " "), str(value)))
    return rows


def run_one(package: str, name: str, module: ModuleType, argv: list[str], *, mode: str,
            commit: str) -> dict[str, Any]:
    command = [".venv/bin/python", "-m", f"{package}.{name}", *argv]
    run: dict[str, Any] = {
        "mode": mode, "argv": argv, "command": shlex.join(command),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit,
        "status": "ok", "reason": None, "result": None, "figures": [], "seconds": 0.0}
    started = time.monotonic()
    timeout = float(getattr(module, "TIMEOUT_S", DEFAULT_TIMEOUT_S))
    try:
        process = subprocess.run([sys.executable, "-m", f"{package}.{name}", *argv, "--json"],
                                 capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        run.update(status="failed", reason=f"did not finish within {timeout:.0f} s")
        run["seconds"] = time.monotonic() - started
        return run
    run["seconds"] = time.monotonic() - started
    if process.returncode != 0:
        tail = process.stderr.strip().splitlines()[-3:]
        run.update(status="failed",
                   reason=f"exit status {process.returncode}: {' / '.join(tail)}")
        return run
    try:
        result = last_json_object(process.stdout)
    except ValueError as exc:
        run.update(status="failed", reason=str(exc))
        return run
    if "skipped" in result and len(result) == 1:
        run.update(status="skipped", reason=str(result["skipped"]))
        return run
    run["result"] = result
    figures = getattr(module, "figures", None)
    try:
        rows = figures(result, argv) if figures else generic_figures(result)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        # The raw result is kept; only its presentation failed.
        rows = generic_figures(result)
        run["reason"] = f"figures() failed ({type(exc).__name__}: {exc}); raw values shown"
    run["figures"] = [f.as_dict() for f in rows]
    return run


def run_module(package: str, name: str, mode: str, commit: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"module": name, "title": name, "issue": None, "runs": []}
    try:
        module = importlib.import_module(f"{package}.{name}")
    except Exception as exc:  # noqa: BLE001  (any import failure is reported, not fatal)
        entry["runs"].append({"mode": mode, "argv": [], "command": f"python -m {package}.{name}",
                              "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "commit": commit, "status": "failed", "seconds": 0.0,
                              "reason": f"cannot import: {type(exc).__name__}: {exc}",
                              "result": None, "figures": []})
        return entry
    doc = (module.__doc__ or "").strip().split("\n\n", 1)
    entry.update(title=title_of(module, name), issue=getattr(module, "ISSUE", None),
                 about=doc[1].strip().replace("``", "`") if len(doc) > 1 else "")
    skip = getattr(module, "skip_reason", None)
    reason = skip() if skip else None
    for argv in runs_for(module, mode):
        if reason:
            entry["runs"].append({
                "mode": mode, "argv": argv,
                "command": shlex.join([".venv/bin/python", "-m", f"{package}.{name}", *argv]),
                "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "commit": commit, "status": "skipped", "reason": reason, "result": None,
                "figures": [], "seconds": 0.0})
            continue
        print(f"== {name} {shlex.join(argv)}", flush=True)
        run = run_one(package, name, module, argv, mode=mode, commit=commit)
        print(f"   {run['status']} in {run['seconds']:.0f} s"
              + (f": {run['reason']}" if run["reason"] else ""), flush=True)
        for f in run["figures"]:
            met = {True: "  [met]", False: "  [NOT MET]", None: ""}[f["met"]]
            print(f"   {f['what']}: {f['value']}{met}", flush=True)
        entry["runs"].append(run)
    return entry


def _order(entry: dict[str, Any]) -> tuple[int, str]:
    return (entry.get("issue") or 99, entry["module"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, to check every benchmark still runs")
    parser.add_argument("--only", default="",
                        help="comma-separated modules (bench_deploy,...); others keep their "
                             "figures from the results file")
    parser.add_argument("--list", action="store_true", help="list the modules and exit")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: rewrite the Markdown from the results file and the "
                             "notes (after editing a note)")
    parser.add_argument("--output", type=Path, help="the Markdown to write")
    parser.add_argument("--results", type=Path, help="the raw results JSON to write")
    # For the runner's own tests: benchmarks from another package, on PYTHONPATH.
    parser.add_argument("--package", default="bench", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    names = discover(args.package)
    if args.list:
        for name in names:
            module = importlib.import_module(f"{args.package}.{name}")
            skip = getattr(module, "skip_reason", None)
            reason = skip() if skip else None
            runs = "; ".join(shlex.join(a) or "(no arguments)" for a in runs_for(module, mode))
            print(f"{name:22} {runs}" + (f"   [skipped here: {reason}]" if reason else ""))
        return 0
    selected = [n.strip() for n in args.only.split(",") if n.strip()] or names
    unknown = sorted(set(selected) - set(names))
    if unknown:
        parser.error(f"no such benchmark: {', '.join(unknown)} (choose from {', '.join(names)})")
    build = HERE.parent / "build" / "bench"
    output = args.output or (build / "BENCHMARKS.md" if args.quick
                             else HERE.parent / "BENCHMARKS.md")
    results_path = args.results or (build / "results.json" if args.quick
                                    else HERE / "results.json")
    if args.render:
        if not results_path.exists():
            parser.error(f"{results_path} does not exist: run the benchmarks first")
        output.write_text(report.render(json.loads(results_path.read_text()),
                                        package_folder(args.package) / "notes"))
        print(f"wrote {output} from {results_path}")
        return 0
    previous: dict[str, Any] = {}
    if args.only and results_path.exists():
        previous = json.loads(results_path.read_text())
    machine = report.machine()
    started = time.monotonic()
    fresh = [run_module(args.package, name, mode, machine["commit"]) for name in selected]
    kept = [e for e in previous.get("entries", []) if e["module"] not in selected
            and e["module"] in names]
    entries = sorted(kept + fresh, key=_order)
    seconds = time.monotonic() - started
    results: dict[str, Any] = {"machine": machine, "mode": mode, "seconds": seconds,
                               "entries": entries, "soak": previous.get("soak"), "reruns": []}
    if previous:  # the header keeps describing the whole run; the re-run is listed under it
        results.update(machine=previous["machine"], mode=previous["mode"],
                       seconds=previous["seconds"], reruns=[*previous.get("reruns", []), {
                           "modules": selected, "date": machine["date"],
                           "commit": machine["commit"], "seconds": seconds}])
    if not previous and results_path.exists():
        results["soak"] = json.loads(results_path.read_text()).get("soak")
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    output.parent.mkdir(parents=True, exist_ok=True)
    notes = package_folder(args.package) / "notes"
    output.write_text(report.render(results, notes))
    failed = [e["module"] for e in fresh for r in e["runs"] if r["status"] == "failed"]
    print(f"wrote {output} and {results_path} in {seconds / 60:.1f} minutes"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
