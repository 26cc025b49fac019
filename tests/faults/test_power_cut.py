"""Power cuts in the middle of the two commands that write files: DownloadBundle's unpack and
Install's copies, simulated by SIGKILL of a real agent caught half-way (SIGSTOP first, so the
test can check it really is half-way).

A kill loses nothing the kernel already has; a real power cut also loses what was not fsync'd.
What that could add is covered where it can be made exactly: the clean-up file is listed and
fsync'd before the first copy (checked below: every path of the plan is listed while most do
not exist yet), and a torn last line of it is dropped and the rest still undone
(tests/unit/deploy/test_install.py: test_cleanup_parsing_drops_a_torn_last_line,
test_crash_mid_install_is_cleaned_up_next_time), and the fsync itself is seen with strace before
the first change (test_the_cleanup_list_is_durable_before_the_first_change). Tracking and
pointer files are written atomically (temporary file, fsync, rename, fsync of the folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import HOOKS, Device, World, revision_zip
from .deploy_faults import (
    RESTART_MESSAGE,
    assert_nothing_in_flight,
    big_revision,
    cleanup_entries,
    deploy_ok,
    deployment_root,
    freeze_when,
    group_folder,
    installed,
    installed_big,
    kill,
    pointer,
)

pytestmark = pytest.mark.integration
BIG = 800
SMALL = {"version.txt": "1", "only-v1.txt": "1"}


def _restart_and_expect_failed_at(world: World, device: Device, deployment: str,
                                  event: str) -> None:
    device.start()
    assert world.wait_deployment(deployment, timeout_s=120)["status"] == "Failed"
    failed = world.events(deployment, "pi-1")[event]
    assert failed["status"] == "Failed"
    assert failed["diagnostics"]["message"] == RESTART_MESSAGE


def _hooks() -> dict[str, str]:
    return {h: "true" for h in HOOKS}


def test_power_cut_during_unpack_leaves_nothing_half_unpacked(world: World) -> None:
    device = world.device("pi-1")
    device.start()
    first = deploy_ok(world, device, "proof/v1.zip", revision_zip(_hooks(), SMALL))
    second = world.deploy(world.push("proof/v2.zip",
                                     big_revision(_hooks(), {"version.txt": "2"}, BIG)))

    def unpacking() -> bool:  # bundle.py unpacks into <partial>/root
        return any((p / "root" / "app" / "big" / "f00000").exists() for p in deployment_root(device)
                   .glob(f"*/{second}/.deployment-archive.partial-*"))

    freeze_when(device, unpacking, "the bundle's unpack to be under way")
    folder = group_folder(device) / second
    partial, = folder.glob(".deployment-archive.partial-*")
    assert (partial / "root" / "app" / "big").is_dir()
    assert not (partial / "root" / "app" / "big" / f"f{BIG - 1:05d}").exists(), "unpack done"
    assert not (folder / "deployment-archive").exists()
    kill(device)

    _restart_and_expect_failed_at(world, device, second, "DownloadBundle")
    assert not partial.exists(), "the restarted agent removes the half-unpacked archive"
    assert "the archive an interrupted DownloadBundle was unpacking" in device.output()
    assert_nothing_in_flight(device)
    # The cut deployment never became the one hooks or clean-up look at.
    assert pointer(device, "most_recent_install") == first
    assert pointer(device, "last_successful_install") == first
    assert installed(device) == SMALL

    third = deploy_ok(world, device, "proof/v3.zip",
                      big_revision(_hooks(), {"version.txt": "3"}, BIG))
    assert installed(device) == {"version.txt": "3"} and installed_big(device) == BIG
    assert pointer(device, "last_successful_install") == third
    assert_nothing_in_flight(device)


def test_power_cut_during_install_copies_then_disallow_does_not_trip(world: World) -> None:
    device = world.device("pi-1")
    device.start()
    deploy_ok(world, device, "proof/v1.zip", revision_zip(_hooks(), SMALL))
    app = device.root / "fs" / "opt" / "proof"
    (app / "user-data.db").write_text("precious")  # not ours: no clean-up may touch it
    second = world.deploy(world.push("proof/v2.zip", big_revision(
        _hooks(), {"version.txt": "2", "only-v2.txt": "2"}, BIG)))

    freeze_when(device, (app / "big" / "f00000").exists, "Install to start copying")
    assert not (app / "version.txt").exists(), "Install finished before it could be cut"
    copied = installed_big(device)
    assert 0 < copied < BIG
    # Everything the plan will create is already in the clean-up file (written and fsync'd
    # before the first copy), including what does not exist yet.
    instructions = json.loads(
        (deployment_root(device) / "deployment-instructions"
         / f"{group_folder(device).name}-install.json").read_text())["instructions"]
    planned = {str(device.root / "fs") + i["destination"]
               for i in instructions if i["type"] == "copy"}
    listed = set(cleanup_entries(device))
    assert len(planned) == BIG + 2
    assert planned <= listed
    assert sum(os.path.lexists(p) for p in planned) < len(planned)
    kill(device)
    # What a power cut could do on top of the kill: the file being written loses its data.
    newest = max((app / "big").iterdir(), key=lambda p: p.name)
    with newest.open("r+b") as torn:
        torn.truncate(0)

    _restart_and_expect_failed_at(world, device, second, "Install")
    assert_nothing_in_flight(device)
    assert pointer(device, "most_recent_install") == second
    assert pointer(device, "last_successful_install") != second

    # The next deployment, DISALLOW (the default), ships the very names the cut one left.
    third = deploy_ok(world, device, "proof/v3.zip",
                      big_revision(_hooks(), {"version.txt": "3"}, BIG))
    assert installed(device) == {"version.txt": "3", "user-data.db": "precious"}
    assert installed_big(device) == BIG
    assert (app / "big" / newest.name).read_text() == (f"file {int(newest.name[1:])}\n" * 8)
    assert pointer(device, "last_successful_install") == third
    assert not [p for p in _walk(device.root / "fs") if p.name.endswith(".pifleet-new")]
    assert_nothing_in_flight(device)


def _walk(top: Path) -> list[Path]:
    return [Path(d) / f for d, _, files in os.walk(top) for f in files]


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_the_cleanup_list_is_durable_before_the_first_change(tmp_path: Path) -> None:
    """What a kill cannot show: the clean-up file is fsync'd before Install creates anything,
    so a power cut cannot keep a file of ours that the list lost. Seen in the system calls of a
    real `pifleet-agent deploy-local`."""
    revision = tmp_path / "revision"
    (revision / "app" / "sub").mkdir(parents=True)
    (revision / "appspec.yml").write_text("version: 0.0\nos: linux\nfiles:\n  - source: app\n"
                                          "    destination: /opt/proof\n")
    for name in ("a.txt", "sub/b.txt"):
        (revision / "app" / name).write_text(name)
    root, trace = tmp_path / "pi", tmp_path / "trace"
    agent = Path(sys.executable).parent / "pifleet-agent"
    done = subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat,fsync,mkdir", "-o",
                           str(trace), str(agent), "deploy-local", "-l", str(revision),
                           "--root", str(root)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = trace.read_text().splitlines()
    opened = next(i for i, line in enumerate(calls)
                  if re.search(r'openat\(.*-cleanup", O_WRONLY\|O_CREAT\|O_APPEND', line))
    fd = calls[opened].rsplit("=", 1)[1].strip()
    pid = calls[opened].split()[0]
    synced = next((i for i in range(opened, len(calls))
                   if calls[i].startswith(f"{pid} ") and f"fsync({fd})" in calls[i]), None)
    first_change = next(i for i, line in enumerate(calls)
                        if f'"{root}/opt' in line and ("mkdir(" in line or "O_CREAT" in line))
    assert synced is not None, "the clean-up file is never fsync'd"
    assert opened < synced < first_change, "\n".join(calls[opened:first_change + 1])
    assert (root / "opt" / "proof" / "sub" / "b.txt").read_text() == "sub/b.txt"
