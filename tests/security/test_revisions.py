"""Malicious revisions through the real agent: refused, nothing written outside, old one kept.

Unit cases of each rule are in tests/unit/deploy/test_bundle.py (``test_unsafe_*``); here each
attack is a whole bundle given to `pifleet-agent deploy-local`, and the daemon case checks that
the diagnostic reaches the control plane.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from .conftest import (
    AGENT,
    APPSPEC,
    GROUP,
    Member,
    Pi,
    World,
    deploy_local,
    file,
    hardlink,
    honest_zip_bomb,
    make_bundle,
    make_tar,
    make_zip,
    revision,
    revision_zip,
    special,
    symlink,
)

pytestmark = pytest.mark.integration

# The unpack happens in <group>/<deployment>/.deployment-archive.partial-XXXX/root: six levels
# below the test's tmp directory, where the "outside" victim folder is.
UP = "../" * 6
ALL = ["tar", "tgz", "zip"]


def hostile(pi: Pi, kind: str, *members: Member) -> Path:
    return make_bundle(pi.tmp / "bundles" / f"hostile.{kind}", kind, revision("2", *members))


@pytest.mark.parametrize("kind", ALL)
def test_zip_slip_is_refused(pi: Pi, kind: str) -> None:
    name = f"{UP}outside/slip.txt"
    pi.refuses(hostile(pi, kind, file(name)), kind, repr(name), "'..' component")
    assert not (pi.outside / "slip.txt").exists()


@pytest.mark.parametrize("kind", ALL)
def test_absolute_path_is_refused(pi: Pi, kind: str) -> None:
    name = str(pi.outside / "abs.txt")
    pi.refuses(hostile(pi, kind, file(name)), kind, repr(name), "absolute path")


@pytest.mark.parametrize("kind", ALL)
@pytest.mark.parametrize("relative", [True, False], ids=["relative-link", "absolute-link"])
def test_symlink_then_a_file_through_it_is_refused(pi: Pi, kind: str, relative: bool) -> None:
    target = f"{UP}outside" if relative else str(pi.outside)
    bundle = hostile(pi, kind, symlink("app/esc", target), file("app/esc/through.txt"))
    pi.refuses(bundle, kind, "'app/esc'", "outside the bundle")
    assert sorted(os.listdir(pi.outside)) == ["victim"]


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_symlink_chain_escaping_only_once_resolved_is_refused(pi: Pi, kind: str) -> None:
    # Each link looks harmless by name; together they climb out (checked on the final tree).
    bundle = hostile(pi, kind, symlink("app/a", "."), symlink("app/b", "a/a/../../.."))
    pi.refuses(bundle, kind, "'app/b'", "outside the bundle once the links")


@pytest.mark.parametrize("target", ["absolute", "relative"])
def test_hardlink_escape_is_refused(pi: Pi, target: str) -> None:
    victim = pi.outside / "victim"
    link = str(victim) if target == "absolute" else f"{UP}outside/victim"
    # The second entry would write through the link into the victim if the link were made.
    bundle = make_tar(pi.tmp / "bundles" / "hard.tar",
                      revision("2", hardlink("app/hl", link), file("app/hl", b"owned")))
    pi.refuses(bundle, "tar", "'app/hl'", "hard link")
    assert victim.read_text() == "keep me" and victim.stat().st_nlink == 1


@pytest.mark.parametrize(("kind", "entry", "what"), [
    ("tar", special("app/console", tarfile.CHRTYPE), "device file"),
    ("tgz", special("app/sda", tarfile.BLKTYPE), "device file"),
    ("tar", special("app/pipe", tarfile.FIFOTYPE), "FIFO"),
    ("zip", special("app/console", tarfile.CHRTYPE), "device file"),
    ("zip", special("app/pipe", tarfile.FIFOTYPE), "FIFO"),
])
def test_device_files_and_fifos_are_refused(pi: Pi, kind: str, entry: Member, what: str) -> None:
    pi.refuses(hostile(pi, kind, entry), kind, repr(entry.name), what)


@pytest.mark.parametrize("kind", ALL)
def test_a_filename_with_a_line_break_is_refused(pi: Pi, kind: str) -> None:
    # Found by this suite: the clean-up file is one path per line, so the next Install deleted
    # the path after the line break (here the victim, outside the install root).
    name = f"app/x\n{pi.outside / 'victim'}"
    pi.refuses(hostile(pi, kind, file(name)), kind, "line break")
    good = make_tar(pi.tmp / "bundles" / "v3.tgz", revision("3"), "gz")
    assert deploy_local(good, "tgz", pi.root).returncode == 0
    assert (pi.outside / "victim").read_text() == "keep me"


def test_an_appspec_destination_with_a_line_break_is_refused(pi: Pi) -> None:
    # Found by this suite: the same clean-up injection through the AppSpec instead of a name.
    victim = pi.outside / "victim"
    appspec = ("version: 0.0\nos: linux\nfiles:\n  - source: app/x\n"
               f"    destination: \"/opt/a\\n{pi.outside}\"\n").encode()
    bundle = make_tar(pi.tmp / "bundles" / "dest.tar", [file("appspec.yml", appspec),
                                                       file("app/x/victim", b"2")])
    done = deploy_local(bundle, "tar", pi.root)
    assert done.returncode == 1
    # The AppSpec reader refuses it when the revision is first read (before any file is
    # touched); Install's own check (unit-tested) stays as a second line of defence.
    assert "BeforeInstall        FAILED" in done.stdout, done.stdout
    assert "files[0].destination: error line-break" in done.stdout
    good = make_tar(pi.tmp / "bundles" / "v3.tgz", revision("3"), "gz")
    assert deploy_local(good, "tgz", pi.root).returncode == 0
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize("kind", ["tar", "tgz"])  # zip names without the UTF-8 flag are CP437
def test_a_filename_that_is_not_utf8_is_kept_byte_exact_and_cleaned_up(pi: Pi, kind: str) -> None:
    """Not refused, as GNU tar and unzip accept it: written with the same bytes, listed in the
    clean-up file and removed by the next deployment, nothing outside touched."""
    name = "app/caf\udce9.txt"  # Latin-1 "café": byte 0xE9 is not UTF-8
    before = pi.state([pi.root / "opt", pi.deployment_root])
    done = deploy_local(hostile(pi, kind, file(name, b"latin")), kind, pi.root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (pi.root / "opt" / "app" / os.fsdecode(b"caf\xe9.txt")).read_bytes() == b"latin"
    good = make_tar(pi.tmp / "bundles" / "v3.tgz", revision("3"), "gz")
    assert deploy_local(good, "tgz", pi.root).returncode == 0
    assert sorted(os.listdir(pi.root / "opt" / "app")) == ["v.txt"]
    assert pi.state([pi.root / "opt", pi.deployment_root]) == before


def test_setuid_and_setgid_bits_are_dropped(pi: Pi) -> None:
    bundle = make_tar(pi.tmp / "bundles" / "suid.tar", [
        file("appspec.yml", APPSPEC), file("app/v.txt", b"2"),
        file("app/tool", b"#!/bin/sh\n", 0o6755), Member("app/shared", b"", tarfile.DIRTYPE,
                                                         mode=0o2775),
        file("app/shared/f", b"x", 0o4644)])
    done = deploy_local(bundle, "tar", pi.root)
    assert done.returncode == 0, done.stdout + done.stderr
    (archive,) = {f for f in pi.folders() if f != pi.first_folder}
    unpacked, installed = archive / "deployment-archive" / "app", pi.root / "opt" / "app"
    assert stat.S_IMODE((unpacked / "shared").stat().st_mode) == 0o775
    for where in (unpacked, installed):
        assert stat.S_IMODE((where / "tool").stat().st_mode) == 0o755
        assert stat.S_IMODE((where / "shared" / "f").stat().st_mode) == 0o644
        assert not (where / "shared").stat().st_mode & (stat.S_ISUID | stat.S_ISGID)


def test_zip_bomb_is_refused_before_anything_is_written(pi: Pi) -> None:
    """2 GiB + 1 MiB of zeros in 2 MB: over [deploy] max_bundle_bytes (2 GiB by default)."""
    bomb = honest_zip_bomb(pi.tmp / "bundles" / "bomb.zip", 2048 * 1024**2 + 1024**2)
    assert bomb.stat().st_size < 5 * 1024**2
    started = time.monotonic()
    pi.refuses(bomb, "zip", "unpacks to 2.00 GB, over the limit of 2.00 GB",
               "max_bundle_bytes")
    assert time.monotonic() - started < 30


def test_100000_tiny_files_unpack_within_bounded_time_and_memory(pi: Pi) -> None:
    """The entry limit is 100,000 ([deploy] max_bundle_entries): exactly that many works."""
    many = [file(f"many/{i // 1000}/{i % 1000}", b"") for i in range(100_000 - 103)]
    dirs = [Member(f"many/{d}", b"", tarfile.DIRTYPE, mode=0o755) for d in range(100)]
    bundle = make_tar(pi.tmp / "bundles" / "many.tgz",
                      [*revision("2"), Member("many", b"", tarfile.DIRTYPE, mode=0o755),
                       *dirs, *many], "gz")
    assert len(dirs) + len(many) + 1 + len(revision("2")) == 100_000
    # A wrapper whose only child is the agent, so the peak RSS is the agent's alone.
    measure = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:], "
               "stdout=subprocess.DEVNULL).returncode; print(resource.getrusage("
               "resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", measure, AGENT, "deploy-local", "-l",
                           str(bundle), "-t", "tgz", "--root", str(pi.root)],
                          capture_output=True, text=True, timeout=300, check=False)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    peak_mib = int(done.stdout.split()[-1]) / 1024
    print(f"100,000 entries: deploy-local {elapsed:.1f} s, peak RSS {peak_mib:.0f} MiB")
    assert elapsed < 120
    assert peak_mib < 100
    assert pi.installed_version() == "2"


def test_one_entry_over_the_limit_is_refused_up_front(pi: Pi) -> None:
    members = [*revision("2"), *(file(f"many/{i}", b"") for i in range(100_000 - 1))]
    bundle = make_zip(pi.tmp / "bundles" / "many.zip", members)
    started = time.monotonic()
    pi.refuses(bundle, "zip", "holds 100,001 entries, over the limit of 100,000",
               "max_bundle_entries")
    assert time.monotonic() - started < 30


def test_a_refused_revision_is_reported_to_the_control_plane(world: World) -> None:
    device = world.device("pi-1")
    device.start()
    good = world.deploy(world.push("proof/v1.zip", revision_zip({}, {"version.txt": "1"})))
    assert world.wait_deployment(good)["status"] == "Succeeded", device.output()[-3000:]
    slip = "app/../../../../../../../../escaped.txt"
    bundle = make_zip(world.tmp / "slip.zip", [file("appspec.yml", APPSPEC),
                                               file("app/version.txt", b"2"), file(slip)])
    deployment = world.deploy(world.push("proof/slip.zip", bundle.read_bytes()))
    info = world.wait_deployment(deployment)
    assert info["status"] == "Failed"
    download = world.events(deployment, "pi-1")["DownloadBundle"]
    assert download["status"] == "Failed"
    message = download["diagnostics"]["message"]
    assert f"entry {slip!r} has a '..' component" in message, message
    assert download["diagnostics"]["errorCode"] == "UnknownError"
    assert not (world.tmp / "escaped.txt").exists()
    assert not list(world.tmp.rglob("escaped.txt"))
    assert (device.root / "fs" / "opt" / "proof" / "version.txt").read_text() == "1"
    assert "Traceback" not in device.output()
    assert GROUP not in message  # the device's own group folder, not deploy-local's


def test_the_daemon_applies_the_configured_size_limit(world: World) -> None:
    """[deploy] max_bundle_bytes from agent.toml reaches the unpack, and its refusal the plane."""
    device = world.device("pi-1")
    with device.config.open("a") as config:
        config.write("\n[deploy]\nmax_bundle_bytes = 1048576\n")
    device.start()
    bomb = honest_zip_bomb(world.tmp / "bomb.zip", 8 * 1024**2)
    deployment = world.deploy(world.push("proof/bomb.zip", bomb.read_bytes()))
    assert world.wait_deployment(deployment)["status"] == "Failed"
    download = world.events(deployment, "pi-1")["DownloadBundle"]
    message = download["diagnostics"]["message"]
    assert "unpacks to 8.0 MB, over the limit of 1.0 MB" in message, message
    assert "raise [deploy] max_bundle_bytes" in message
    assert not list(world.tmp.rglob("zeros.bin"))
