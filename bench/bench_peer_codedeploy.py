"""The official CodeDeploy agent (Ruby) and pifleet-agent side by side, idle on the same sandbox.

Run: ``python -m bench.bench_peer_codedeploy [--idle-seconds 60] [--json]``. Needs ruby with
Debian's ruby-aws-sdk-core, ruby-aws-sdk-s3, ruby-zip, ruby-logging, ruby-builder,
ruby-concurrent and ruby-json, and a checkout of aws/aws-codedeploy-agent (never part of this
repository) in ``$PIFLEET_CODEDEPLOY_AGENT`` or build/peers/aws-codedeploy-agent. Its ``gli``
command-line gem is not packaged by Debian, so a six-line launcher here does what its
``start`` command does (put the vendored gems on the load path without activating their gem
specifications, which name gli; load the configuration, pick the Linux platform, run the
master process in the foreground); everything else is the agent's own code and vendored gems.

Both agents are registered iam-user hosts of one in-process sandbox, poll it every second
through byte-counting relays, and idle for the same window: reported are each one's RSS (the
official agent is a master and a child process: both are counted), CPU time, and bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .timing import Figure, finish, mb

TITLE = "Peer: the official CodeDeploy agent beside pifleet-agent, idle"
ISSUE = 9
RUNS = {"full": [["--idle-seconds", "60"]], "quick": [["--idle-seconds", "10"]]}

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = """
Dir[File.join(ARGV[0], "vendor", "gems", "*", "lib")].each { |lib| $:.unshift lib }
$:.unshift File.join(ARGV[0], "lib")
require "instance_agent"
InstanceAgent::Config.config(:config_file => ARGV[1])
InstanceAgent::Platform.util = InstanceAgent::LinuxUtil
InstanceAgent::Config.load_config
InstanceAgent::Runner::Master.new.start
"""
RUBY_LIBRARIES = ("aws-sdk-core", "aws-sdk-s3", "zip", "logging", "builder", "concurrent",
                  "json")


def agent_checkout() -> Path:
    return Path(os.environ.get("PIFLEET_CODEDEPLOY_AGENT",
                               ROOT / "build" / "peers" / "aws-codedeploy-agent"))


def skip_reason() -> str | None:
    ruby = shutil.which("ruby")
    if ruby is None:
        return ("ruby is not installed (apt-get install ruby ruby-aws-sdk-core ruby-aws-sdk-s3 "
                "ruby-zip ruby-logging ruby-builder ruby-concurrent ruby-json)")
    checkout = agent_checkout()
    if not (checkout / "lib" / "instance_agent.rb").exists():
        return (f"no checkout of aws/aws-codedeploy-agent in {checkout} (set "
                f"PIFLEET_CODEDEPLOY_AGENT to one)")
    missing = subprocess.run(
        [ruby, "-e", "ARGV.each { |l| begin; require l; rescue LoadError; puts l; end }",
         *RUBY_LIBRARIES], capture_output=True, text=True, check=False).stdout.split()
    if missing:
        return f"ruby libraries missing: {', '.join(missing)} (the ruby-* Debian packages)"
    return None


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the official agent's master forks its child)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        children = Path(f"/proc/{current}/task/{current}/children")
        if children.exists():
            queue += [int(c) for c in children.read_text().split()]
    return found


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def run(idle_seconds: float) -> dict[str, Any]:
    from fleet.sandbox.server import Sandbox  # noqa: PLC0415 - only once skip_reason passed
    from tests.e2e.conftest import World  # noqa: PLC0415
    from tests.support.link import Link  # noqa: PLC0415
    from tests.support.waiting import wait_for  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="pifleet-bench-peer-") as tmp, \
            Sandbox() as sandbox:
        sandbox.app.reset()
        work = Path(tmp)
        world = World(sandbox, work)
        world.setup_fleet()
        port = int(sandbox.endpoint.url.rsplit(":", 1)[1])
        ours_relay, theirs_relay = Link(port), Link(port)
        ours = world.device("pi-ours", poll_interval_s=1.0)
        ours.config.write_text(ours.config.read_text().replace(
            f'commands_endpoint = "{sandbox.endpoint.url}"',
            f'commands_endpoint = "http://127.0.0.1:{ours_relay.port}"'))
        theirs = official_agent(world, work, theirs_relay.port)
        ours.start()
        try:
            status = ours.root / "status.json"
            wait_for(lambda: status.exists()
                     and json.loads(status.read_text())["state"] == "polling", 60,
                     "pifleet-agent to poll")
            try:
                wait_for(lambda: theirs_relay.upstream_bytes > 0 and len(tree(theirs.pid)) >= 2, 60,
                         "the official agent to poll")
            except AssertionError:
                logs = sorted((work / "official" / "log").glob("*.log"))
                tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                                  for p in logs)
                raise SystemExit(f"the official agent did not poll the sandbox:\n{tails}") \
                    from None
            time.sleep(5)  # both past start-up before the window opens
            assert ours.process is not None
            ours_pids, theirs_pids = [ours.process.pid], tree(theirs.pid)
            before = {"ours": (cpu_s(ours_pids), ours_relay.total_bytes),
                      "theirs": (cpu_s(theirs_pids),
                                 theirs_relay.total_bytes)}
            time.sleep(idle_seconds)
            theirs_pids = tree(theirs.pid)
            if theirs.poll() is not None:
                raise SystemExit(f"the official agent exited: {theirs.returncode}")
            result = {
                "idle_seconds": idle_seconds,
                "ours_rss_mb": rss_kib(ours_pids) / 1024,
                "theirs_rss_mb": rss_kib(theirs_pids) / 1024,
                "theirs_processes": len(theirs_pids),
                "ours_cpu_s": cpu_s(ours_pids) - before["ours"][0],
                "theirs_cpu_s": cpu_s(theirs_pids) - before["theirs"][0],
                "ours_bytes": ours_relay.total_bytes - before["ours"][1],
                "theirs_bytes": theirs_relay.total_bytes
                - before["theirs"][1],
                "ruby": subprocess.run(["ruby", "-e", "print RUBY_VERSION"],
                                       capture_output=True, text=True, check=True).stdout,
                "python": sys.version.split()[0],
                "theirs_version": agent_version(),
                "theirs_log_tail": "",
            }
            polls = (work / "official" / "log" / "codedeploy-agent.log")
            if polls.exists():
                result["theirs_log_tail"] = polls.read_text(errors="replace")[-400:]
            return result
        finally:
            if ours.process is not None:
                ours.stop()
            stop_official(theirs)
            ours_relay.down()
            theirs_relay.down()


def stop_official(master: subprocess.Popen[bytes]) -> None:
    family = tree(master.pid) if master.poll() is None else [master.pid]
    master.terminate()  # its master stops its child
    try:
        master.wait(timeout=30)
    except subprocess.TimeoutExpired:
        master.kill()
        master.wait()
    for pid in family[1:]:  # a child the master left behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def agent_version() -> str:
    spec = (agent_checkout() / "codedeploy_agent.gemspec")
    for line in spec.read_text().splitlines() if spec.exists() else []:
        if "spec.version" in line:
            return line.split("=", 1)[1].strip().strip("'\"")
    return "unknown"


def official_agent(world: Any, work: Path, relay_port: int) -> subprocess.Popen[bytes]:
    """Register a host for the official agent, write its two files, start its master."""
    iam = world.client("iam")
    arn = iam.create_user(UserName="pi-official")["User"]["Arn"]
    key = iam.create_access_key(UserName="pi-official")["AccessKey"]
    cd = world.client("codedeploy")
    cd.register_on_premises_instance(instanceName="pi-official", iamUserArn=arn)
    home = work / "official"
    for sub in ("log", "pid", "root"):
        (home / sub).mkdir(parents=True)
    onprem = home / "codedeploy.onpremises.yml"
    onprem.write_text(f"---\nregion: us-east-1\niam_user_arn: {arn}\n"
                      f"aws_access_key_id: {key['AccessKeyId']}\n"
                      f"aws_secret_access_key: {key['SecretAccessKey']}\n")
    onprem.chmod(0o600)
    config = home / "codedeployagent.yml"
    # "beta" is the agent's own test profile: it skips the TLS certificate check of the
    # endpoint, which a plain-HTTP loopback sandbox cannot pass.
    config.write_text(
        f"---\n:log_aws_wire: false\n:log_dir: '{home / 'log'}/'\n:pid_dir: '{home / 'pid'}/'\n"
        f":program_name: codedeploy-agent\n:root_dir: '{home / 'root'}'\n:verbose: false\n"
        f":wait_between_runs: 1\n:max_revisions: 5\n:codedeploy_test_profile: beta\n"
        f":deploy_control_endpoint: 'http://127.0.0.1:{relay_port}'\n"
        f":on_premises_config_file: '{onprem}'\n")
    launcher = home / "launch.rb"
    launcher.write_text(LAUNCHER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.Popen(["ruby", str(launcher), str(agent_checkout()), str(config)],
                            stdout=(home / "log" / "stdout.log").open("wb"),
                            stderr=subprocess.STDOUT, env=env, cwd=home)


def figures(result: dict[str, Any], argv: list[str]) -> list[Figure]:
    seconds = result["idle_seconds"]
    ratio = result["theirs_rss_mb"] / result["ours_rss_mb"]
    per_hour = 3600 / seconds
    return [
        Figure(f"pifleet-agent {result['python']}: RSS / CPU / traffic, idle {seconds:.0f} s",
               f"{mb(result['ours_rss_mb'])} / {result['ours_cpu_s'] * per_hour:.0f} CPU s "
               f"per hour / {result['ours_bytes'] * per_hour / 1e6:.2f} MB per hour"),
        Figure(f"official CodeDeploy agent {result['theirs_version']} (Ruby "
               f"{result['ruby']}, {result['theirs_processes']} processes): the same",
               f"{mb(result['theirs_rss_mb'])} / {result['theirs_cpu_s'] * per_hour:.0f} CPU "
               f"s per hour / {result['theirs_bytes'] * per_hour / 1e6:.2f} MB per hour",
               None, None, ratio, "pifleet-agent's RSS in the same run"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    return finish(as_json=args.json, skip=skip_reason(), run=lambda: run(args.idle_seconds),
                  figures=figures)


if __name__ == "__main__":
    raise SystemExit(main())
