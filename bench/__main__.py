"""``python -m bench``: every benchmark, one after the other."""

from __future__ import annotations

from . import bench_appspec

if __name__ == "__main__":
    print("== appspec")
    raise SystemExit(bench_appspec.main([]))
