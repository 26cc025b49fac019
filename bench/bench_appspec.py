"""How fast the AppSpec library reads, plans and lints, against PyYAML alone in the same run.

Run: ``python -m bench.bench_appspec [--json]``. The baseline is PyYAML's C loader reading the
same documents into plain Python objects; the ratio says what our positions, validation and
error collection cost on top of the YAML parse every reader must pay.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from appspec import parse_appspec, read_appspec
from appspec.lint import lint_revision
from appspec.plan import EmptyTarget, plan_install

from .timing import Figure, Timing, measure, ms

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "aqi-app"
DOCUMENTS = 1_000
TITLE = "AppSpec library"
ISSUE = 2


def typical_documents(count: int = DOCUMENTS) -> list[str]:
    """``count`` distinct, valid appspecs shaped like real ones (files, permissions, 5 hooks)."""
    base = (EXAMPLE / "appspec.yml").read_text()
    return [base.replace("timeout: 60", f"timeout: {60 + i % 500}")
            + f"# revision {i}\n" for i in range(count)]


def large_revision(root: Path, files: int = 2_000) -> Path:
    """A revision with ``files`` files in 20 directories, for the install plan."""
    app = root / "app"
    for i in range(files):
        path = app / f"d{i % 20}" / f"f{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n")
    (root / "appspec.yml").write_text(
        "version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: /opt/big\n"
        "permissions:\n  - object: /opt/big\n    pattern: '*.py'\n    mode: 644\n"
        "    type: [file]\n")
    return root


def run() -> dict[str, object]:
    docs = typical_documents()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    baseline = measure(f"PyYAML CSafeLoader, {len(docs)} documents",
                       lambda: [yaml.load(d, Loader=loader) for d in docs])  # noqa: S506
    ours = measure(f"parse_appspec, {len(docs)} documents",
                   lambda: [parse_appspec(d) for d in docs])
    lint = measure("lint_revision(examples/aqi-app), 1 call",
                   lambda: lint_revision(EXAMPLE), rounds=21)
    with tempfile.TemporaryDirectory() as tmp:
        root = large_revision(Path(tmp))
        spec = read_appspec(root)
        plan = measure("plan_install, 2,000-file revision",
                       lambda: plan_install(spec, root, target=EmptyTarget()))
    timings: list[Timing] = [baseline, ours, lint, plan]
    return {
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "yaml_c_loader": loader is not yaml.SafeLoader,
        "timings": [t.as_dict() for t in timings],
        "parse_ms_per_document": ours.median_s / len(docs) * 1000,
        "parse_ratio_to_pyyaml": ours.median_s / baseline.median_s,
    }


def figures(result: dict[str, Any], argv: list[str]) -> list[Figure]:
    base, ours, lint, plan = (t["median_s"] for t in result["timings"])
    ratio = result["parse_ratio_to_pyyaml"]
    return [
        Figure("PyYAML CSafeLoader, 1,000 typical appspecs (baseline)", ms(base)),
        Figure("parse_appspec, the same 1,000 documents", ms(ours), "well under 1 s",
               ours < 1.0),
        Figure("parse_appspec against PyYAML alone", f"{ratio:.2f}x", "at most 3x (our own)",
               ratio <= 3, ratio, "PyYAML CSafeLoader on the same documents"),
        Figure("lint_revision(examples/aqi-app), one call", ms(lint)),
        Figure("plan_install, 2,000-file revision", ms(plan)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    result = run()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"Python {result['python']} on {result['machine']}, "
          f"C YAML loader: {result['yaml_c_loader']}")
    for t in result["timings"]:  # type: ignore[attr-defined]
        print(f"  {t['name']:<45} median {t['median_s'] * 1000:8.1f} ms   "
              f"best {t['best_s'] * 1000:8.1f} ms   ({t['rounds']} rounds)")
    print(f"  parse_appspec: {result['parse_ms_per_document']:.3f} ms per document, "
          f"{result['parse_ratio_to_pyyaml']:.2f}x PyYAML's C loader alone")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
