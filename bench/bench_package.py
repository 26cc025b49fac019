"""The .deb's installed size per architecture, and `pifleet-agent --version` under qemu vs native.

Run: ``python -m bench.bench_package [--rounds 7] [--json]`` (root and ``make testbed``). The
package is installed with apt (offline, without Recommends) into a throw-away overlay of each
Debian 12 testbed tree; the size is read from that tree's dpkg database: the .deb and everything
it pulls in that python3 does not already need (the issue's budget: 15 MB besides python3).
Start-up is timed inside the container (interpreter start and imports, no nspawn overhead):
amd64 natively, arm64 and armhf under qemu-user-static.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.support import testbed
from tests.system.conftest import apt_install, build_deb

from .timing import Figure, finish, mb, ms

TITLE = "Debian package: installed size per architecture, start-up under qemu"
ISSUE = 8
RUNS = {"full": [["--rounds", "7"]], "quick": [["--rounds", "1"]]}
TIMEOUT_S = 900.0

ARCHES = ("amd64", "arm64", "armhf")
BUDGET_MB = 15.0
# Runs inside the tree's own python3: the median wall time of fresh `pifleet-agent --version`
# processes after one warm-up (which also proves the launcher works there).
TIMER = """
import statistics, subprocess, sys, time
def once():
    start = time.perf_counter()
    subprocess.run(["pifleet-agent", "--version"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start
once()
print(statistics.median(once() for _ in range(int(sys.argv[1]))))
"""


def _dpkg_database(root: Path) -> dict[str, dict[str, str]]:
    """Installed packages of the tree at ``root``, read by the host's dpkg-query (the database
    format does not depend on the architecture, so nothing runs under qemu)."""
    fields = ("Package", "Installed-Size", "Pre-Depends", "Depends", "Provides", "Essential",
              "db:Status-Abbrev")
    listing = subprocess.run(
        ["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W",
         "-f=" + "\t".join(f"${{{field}}}" for field in fields) + "\n"],
        capture_output=True, text=True, check=True).stdout
    packages = {}
    for line in listing.splitlines():
        record = dict(zip(fields, line.split("\t"), strict=True))
        if record["db:Status-Abbrev"].startswith("ii"):
            packages[record["Package"]] = record
    return packages


def _names(field: str) -> list[list[str]]:
    """``a (>= 1) | b:any, c`` -> ``[["a", "b"], ["c"]]``: versions and arch qualifiers dropped
    (what is installed already satisfied them)."""
    return [[re.split(r"[\s(:]", alternative.strip(), maxsplit=1)[0]
             for alternative in group.split("|")]
            for group in field.split(",") if group.strip()]


def _closure(packages: dict[str, dict[str, str]], start: list[str]) -> set[str]:
    """``start`` and every installed package its Depends and Pre-Depends reach."""
    providers: dict[str, list[str]] = {}
    for name, record in packages.items():
        for group in _names(record["Provides"]):
            providers.setdefault(group[0], []).append(name)
    seen: set[str] = set()
    pending = list(start)
    while pending:
        name = pending.pop()
        if name in seen or name not in packages:
            continue
        seen.add(name)
        for group in _names(packages[name]["Pre-Depends"] + "," + packages[name]["Depends"]):
            # The first alternative that is installed (or provided) is the one in use.
            for alternative in group:
                chosen = [alternative] if alternative in packages else \
                    providers.get(alternative, [])
                if chosen:
                    pending.extend(chosen)
                    break
    return seen


def extra_packages(root: Path, package: str = "pifleet-agent") -> dict[str, int]:
    """Installed-Size (KiB) of ``package`` and of each package it pulls in that python3 does
    not, in the tree at ``root``."""
    packages = _dpkg_database(root)
    if package not in packages:
        raise ValueError(f"{package} is not installed in {root}")
    extra = _closure(packages, [package]) - _closure(packages, ["python3"])
    return {name: int(packages[name]["Installed-Size"] or 0) for name in sorted(extra)}


def python3_kib(root: Path) -> int:
    """For scale: python3 and what it pulls in beyond the Essential packages every Debian
    system has, in KiB."""
    packages = _dpkg_database(root)
    essential = [name for name, record in packages.items() if record["Essential"] == "yes"]
    extra = _closure(packages, ["python3"]) - _closure(packages, essential)
    return sum(int(packages[name]["Installed-Size"] or 0) for name in extra)


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (overlay mounts and systemd-nspawn containers)"
    for arch in ARCHES:
        try:
            testbed.base_tree(arch)
        except testbed.TestbedError as error:
            return str(error)
    return None


def _measure(arch: str, deb: Path, rounds: int, scratch: Path) -> dict[str, Any]:
    testbed.enable_foreign(arch)
    with testbed.overlay(testbed.base_tree(arch), scratch) as root:
        apt_install(root, deb)
        machine = testbed.run_in(root, ["uname", "-m"]).stdout.strip()
        version_s = float(testbed.run_in(
            root, ["python3", "-c", TIMER, str(rounds)]).stdout.split()[-1])
        extra = extra_packages(root)
        python3 = python3_kib(root)
    return {"machine": machine, "version_s": version_s, "extra_kib": sum(extra.values()),
            "packages": extra, "python3_kib": python3}


def run(rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-package-", dir="/var/tmp") as work:
        deb = build_deb(Path(work) / "deb")
        installed_size = subprocess.run(["dpkg-deb", "-f", str(deb), "Installed-Size"],
                                        capture_output=True, text=True, check=True).stdout
        deb_bytes = deb.stat().st_size
        arches = {arch: _measure(arch, deb, rounds, Path(work) / arch) for arch in ARCHES}
    return {"deb_bytes": deb_bytes, "installed_size_kib": int(installed_size),
            "rounds": rounds, "arches": arches}


def figures(result: dict[str, Any], argv: list[str]) -> list[Figure]:
    rows = [Figure(".deb file size (Architecture: all, one file for every arch)",
                   f"{result['deb_bytes'] / 1000:,.0f} kB"),
            Figure("the .deb's Installed-Size", mb(result["installed_size_kib"] / 1024))]
    for arch, measured in result["arches"].items():
        extra_mb = measured["extra_kib"] / 1024
        rows.append(Figure(f"installed besides python3, {arch} "
                           f"({', '.join(measured['packages'])})", mb(extra_mb),
                           f"at most {BUDGET_MB:g} MB", extra_mb <= BUDGET_MB))
        rows.append(Figure(f"for scale: python3 itself, {arch} (what it needs beyond the "
                           "Essential set)", mb(measured["python3_kib"] / 1024)))
    native = result["arches"]["amd64"]["version_s"]
    for arch, measured in result["arches"].items():
        how = "native" if arch == "amd64" else f"qemu-user ({measured['machine']})"
        baseline = arch == "amd64"
        rows.append(Figure(
            f"pifleet-agent --version, {arch} {how}" + (" (baseline)" if baseline else ""),
            ms(measured["version_s"]), None, None,
            None if baseline else measured["version_s"] / native,
            None if baseline else "amd64 native, same run"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    return finish(as_json=args.json, skip=skip_reason(), run=lambda: run(args.rounds),
                  figures=figures)


if __name__ == "__main__":
    raise SystemExit(main())
