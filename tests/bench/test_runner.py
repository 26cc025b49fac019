"""``python -m bench`` against a package of benchmark modules written here: every bench_*.py is
picked up with nothing registered, skips and failures are recorded with their reason, targets
come out met / not met with their ratio, and notes are carried into the Markdown."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

MODULES = {
    # No figures(): the runner shows its scalars as they are.
    "bench_plain": 'import json\ndef main(argv=None):\n    print("warming up")\n'
                   '    print(json.dumps({"answer": 42, "speed_per_s": 1234.5}, indent=2))\n'
                   '    return 0\n',
    "bench_skip": 'def skip_reason():\n    return "needs root and the testbed (make testbed)"\n'
                  'def main(argv=None):\n    raise SystemExit("must not run")\n',
    "bench_late_skip": 'import json\ndef main(argv=None):\n'
                       '    print(json.dumps({"skipped": "no /dev/kvm here"}))\n    return 0\n',
    "bench_broken": 'import sys\ndef main(argv=None):\n    print("boom: the sandbox did not '
                    'start", file=sys.stderr)\n    return 3\n',
    "bench_targets": (
        'import json, sys\nfrom bench.timing import Figure\nTITLE = "Targets"\nISSUE = 5\n'
        'RUNS = {"full": [["--size", "big"]], "quick": [["--size", "small"]]}\n'
        'def figures(result, argv):\n'
        '    return [Figure("fast thing", "1.2 s", "under 2 s", True, 1.1, "bare loop"),\n'
        '            Figure("slow thing", "9 s", "under 2 s", False, 4.5, "bare loop")]\n'
        'def main(argv=None):\n    print(json.dumps({"argv": argv}))\n    return 0\n'),
}


def _package(tmp_path: Path) -> Path:
    package = tmp_path / "benchfake"
    (package / "notes").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name, body in MODULES.items():
        main = ("\nif __name__ == '__main__':\n    import sys\n"
                "    raise SystemExit(main(sys.argv[1:]))\n")
        (package / f"{name}.py").write_text(body + main)
    (package / "notes" / "bench_targets.md").write_text("Why the slow thing is slow: a note.")
    return package


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    return subprocess.run([sys.executable, "-m", "bench", "--package", "benchfake",
                           "--output", str(tmp_path / "B.md"),
                           "--results", str(tmp_path / "r.json"), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_every_module_is_run_and_reported_with_its_outcome(tmp_path: Path) -> None:
    _package(tmp_path)
    done = _run(tmp_path, "--quick")
    assert done.returncode == 1, done.stderr  # one benchmark failed
    assert "FAILED: bench_broken" in done.stdout
    results = json.loads((tmp_path / "r.json").read_text())
    runs = {e["module"]: e["runs"] for e in results["entries"]}
    assert set(runs) == set(MODULES)
    assert runs["bench_skip"][0]["status"] == "skipped"
    assert runs["bench_late_skip"][0]["reason"] == "no /dev/kvm here"
    assert runs["bench_broken"][0]["status"] == "failed"
    assert runs["bench_targets"][0]["result"] == {"argv": ["--size", "small", "--json"]}
    assert runs["bench_plain"][0]["result"] == {"answer": 42, "speed_per_s": 1234.5}
    for key in ("cpu", "cores", "ram_gib", "kernel", "python", "date", "commit"):
        assert results["machine"][key], key

    markdown = (tmp_path / "B.md").read_text()
    assert "Skipped here: needs root and the testbed (make testbed)" in markdown
    assert "Skipped here: no /dev/kvm here" in markdown
    assert "**Failed**: exit status 3: boom: the sandbox did not start" in markdown
    assert "| answer | 42 |" in markdown
    assert "| slow thing | 9 s | under 2 s | **not met** | 4.50x bare loop |" in markdown
    assert "| fast thing | 1.2 s | under 2 s | met | 1.10x bare loop |" in markdown
    assert "## Targets (issue 5)" in markdown
    assert "Command: `.venv/bin/python -m benchfake.bench_targets --size small`" in markdown
    assert "Why the slow thing is slow: a note." in markdown


def test_only_reruns_some_and_keeps_the_others(tmp_path: Path) -> None:
    package = _package(tmp_path)
    assert _run(tmp_path).returncode == 1
    first = json.loads((tmp_path / "r.json").read_text())
    (package / "bench_plain.py").write_text(
        MODULES["bench_plain"].replace("42", "43")
        + "\nif __name__ == '__main__':\n    raise SystemExit(main())\n")
    assert _run(tmp_path, "--only", "bench_plain").returncode == 0
    second = json.loads((tmp_path / "r.json").read_text())
    runs = {e["module"]: e["runs"] for e in second["entries"]}
    assert runs["bench_plain"][0]["result"]["answer"] == 43
    kept = {e["module"]: e for e in first["entries"]}
    assert runs["bench_targets"] == kept["bench_targets"]["runs"]
    assert runs["bench_targets"][0]["argv"] == ["--size", "big"]  # full mode's arguments
    # The header still describes the whole run; the re-run is named under it.
    assert (second["seconds"], second["machine"]) == (first["seconds"], first["machine"])
    assert [r["modules"] for r in second["reruns"]] == [["bench_plain"]]
    assert "Re-run since, with `--only`: bench_plain (" in (tmp_path / "B.md").read_text()


def test_an_unknown_benchmark_is_refused_by_name(tmp_path: Path) -> None:
    _package(tmp_path)
    done = _run(tmp_path, "--only", "bench_nope")
    assert done.returncode == 2
    assert "no such benchmark: bench_nope (choose from bench_broken," in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("module", sorted(p.stem for p in (REPO / "bench").glob("bench_*.py")))
def test_every_real_benchmark_has_the_one_required_entry_point(module: str) -> None:
    """main(argv) is all a module needs; the rest (ISSUE, RUNS, figures) is optional."""
    loaded = importlib.import_module(f"bench.{module}")
    assert callable(loaded.main)
    assert callable(getattr(loaded, "figures", loaded.main))


def test_render_rewrites_the_markdown_from_the_results_and_the_notes_only(tmp_path: Path) -> None:
    package = _package(tmp_path)
    assert _run(tmp_path, "--only", "bench_targets").returncode == 0
    results = (tmp_path / "r.json").read_text()
    (package / "notes" / "bench_targets.md").write_text("A note edited after the run.")
    (package / "bench_targets.py").write_text("raise SystemExit('must not be imported')\n")
    done = _run(tmp_path, "--render")
    assert done.returncode == 0, done.stderr
    assert "A note edited after the run." in (tmp_path / "B.md").read_text()
    assert (tmp_path / "r.json").read_text() == results  # nothing was run again
