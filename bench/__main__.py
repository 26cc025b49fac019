"""``python -m bench``: every benchmark, one after the other."""

from __future__ import annotations

from . import bench_appspec, bench_deploy

if __name__ == "__main__":
    print("== appspec")
    bench_appspec.main([])
    print("== deploy-local")
    raise SystemExit(bench_deploy.main([]))
