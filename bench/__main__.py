"""``python -m bench``: every benchmark, one after the other."""

from __future__ import annotations

from . import bench_agent, bench_appspec, bench_deploy, bench_outbox, bench_sandbox, bench_telemetry

if __name__ == "__main__":
    print("== appspec")
    bench_appspec.main([])
    print("== deploy-local")
    bench_deploy.main([])
    print("== telemetry outbox")
    bench_outbox.main([])
    print("== telemetry drain to mosquitto")
    bench_telemetry.main([])
    print("== agent daemon")
    bench_agent.main(["--deployments", "200", "--idle-seconds", "60"])
    print("== sandbox: 100 hosts")
    raise SystemExit(bench_sandbox.main(["--seconds", "30"]))
