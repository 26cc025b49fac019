"""Bundle unpacking on real archives: types, strip rule, modes, times, safety, limits, atomicity."""

from __future__ import annotations

import errno
import gzip
import io
import os
import shutil
import stat
import struct
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.deploy import bundle as bundle_module
from agent.deploy.bundle import BundleType, UnpackLimits, unpack_bundle
from agent.deploy.errors import BundleError

MTIME = 1_600_000_000  # 2020-09-13, an even second so zip's DOS time keeps it exactly
APPSPEC = b"version: 0.0\nos: linux\n"

needs_tar = pytest.mark.skipif(shutil.which("tar") is None, reason="tar command not installed")


# --- building bundles ---------------------------------------------------------------------------

TarMember = Callable[[tarfile.TarFile], None]


def tfile(name: str, data: bytes = b"x", mode: int = 0o644, mtime: int = MTIME) -> TarMember:
    def add(archive: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, mtime
        archive.addfile(info, io.BytesIO(data))
    return add


def tspecial(name: str, kind: bytes, mode: int = 0o755, link: str = "") -> TarMember:
    def add(archive: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.linkname = kind, mode, MTIME, link
        archive.addfile(info)
    return add


def tdir(name: str, mode: int = 0o755) -> TarMember:
    return tspecial(name, tarfile.DIRTYPE, mode)


def tsym(name: str, target: str) -> TarMember:
    return tspecial(name, tarfile.SYMTYPE, 0o777, target)


def thard(name: str, target: str) -> TarMember:
    return tspecial(name, tarfile.LNKTYPE, 0o644, target)


def make_tar(path: Path, *members: TarMember, compression: str = "") -> Path:
    with tarfile.open(path, f"w:{compression}") as archive:  # type: ignore[call-overload]
        for add in members:
            add(archive)
    return path


def zinfo(name: str, mode: int | None = 0o644, *, system: int = 3,
          kind: int = stat.S_IFREG) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=time.localtime(MTIME)[:6])
    info.create_system = system
    info.compress_type = zipfile.ZIP_DEFLATED
    if mode is not None:
        info.external_attr = (kind | mode) << 16
    return info


def make_zip(path: Path, *members: tuple[zipfile.ZipInfo, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in members:
            archive.writestr(info, data)
    return path


def listing(root: Path) -> dict[str, str]:
    """Every path under root: file content, '<dir>', or '-> target'."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            found[rel] = "<dir>"
        else:
            found[rel] = path.read_text()
    return found


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def deploy(tmp_path: Path) -> Path:
    """The deployment directory: bundle.tar (always that name) and deployment-archive go here."""
    directory = tmp_path / "dg" / "d-1"
    directory.mkdir(parents=True)
    return directory


def dest(deploy: Path) -> Path:
    return deploy / "deployment-archive"


def partials(deploy: Path) -> list[str]:
    return sorted(p.name for p in deploy.iterdir() if p.name.startswith("."))


DEFAULT_LIMITS = UnpackLimits()


def assert_refused(bundle: Path, bundle_type: BundleType, deploy: Path, *fragments: str,
                   limits: UnpackLimits = DEFAULT_LIMITS) -> str:
    """The unpack fails with every fragment in the message; the old destination is untouched."""
    old = dest(deploy)
    old.mkdir(exist_ok=True)
    (old / "marker").write_text("previous revision")
    with pytest.raises(BundleError) as caught:
        unpack_bundle(bundle, bundle_type, old, limits=limits)
    message = caught.value.message
    for fragment in fragments:
        assert fragment in message
    assert listing(old) == {"marker": "previous revision"}
    assert partials(deploy) == []
    return message


# --- the four types -----------------------------------------------------------------------------

@pytest.mark.parametrize(("compression", "bundle_type"),
                         [("", BundleType.TAR), ("gz", BundleType.TGZ)])
def test_tar_and_tgz_unpack(deploy: Path, compression: str, bundle_type: BundleType) -> None:
    bundle = make_tar(deploy / "bundle.tar", tfile("appspec.yml", APPSPEC), tdir("scripts"),
                      tfile("scripts/start.sh", b"#!/bin/sh\n", 0o755), tfile("deep/er/f", b"f"),
                      compression=compression)
    unpack_bundle(bundle, bundle_type, dest(deploy))
    assert listing(dest(deploy)) == {
        "appspec.yml": APPSPEC.decode(), "deep": "<dir>", "deep/er": "<dir>", "deep/er/f": "f",
        "scripts": "<dir>", "scripts/start.sh": "#!/bin/sh\n"}
    assert mode_of(dest(deploy) / "deep") == 0o755  # implied directories get tar's default
    assert mode_of(dest(deploy)) == 0o755
    assert partials(deploy) == []


def test_zip_unpacks(deploy: Path) -> None:
    bundle = make_zip(deploy / "bundle.tar", (zinfo("appspec.yml"), APPSPEC),
                      (zinfo("web/", 0o755, kind=stat.S_IFDIR), b""),
                      (zinfo("web/index.html"), b"<p>hi</p>"), (zinfo("a/b/c.txt"), b"c"))
    unpack_bundle(bundle, BundleType.ZIP, dest(deploy))
    assert listing(dest(deploy)) == {
        "a": "<dir>", "a/b": "<dir>", "a/b/c.txt": "c", "appspec.yml": APPSPEC.decode(),
        "web": "<dir>", "web/index.html": "<p>hi</p>"}


def test_directory_is_copied_with_links_modes_and_times(tmp_path: Path, deploy: Path) -> None:
    source = tmp_path / "revision"
    (source / "scripts").mkdir(parents=True)
    (source / "appspec.yml").write_bytes(APPSPEC)
    (source / "scripts" / "run.sh").write_text("#!/bin/sh\n")
    (source / "scripts" / "run.sh").chmod(0o750)
    (source / "secret").write_text("s")
    (source / "secret").chmod(0o600)
    (source / "current").symlink_to("scripts/run.sh")
    (source / "scripts").chmod(0o750)
    os.utime(source / "secret", (MTIME, MTIME))
    os.utime(source / "scripts", (MTIME, MTIME))
    unpack_bundle(source, BundleType.DIRECTORY, dest(deploy))
    out = dest(deploy)
    assert listing(out) == {"appspec.yml": APPSPEC.decode(), "current": "-> scripts/run.sh",
                            "scripts": "<dir>", "scripts/run.sh": "#!/bin/sh\n", "secret": "s"}
    assert (mode_of(out / "scripts/run.sh"), mode_of(out / "secret")) == (0o750, 0o600)
    assert mode_of(out / "scripts") == 0o750
    assert (out / "secret").stat().st_mtime == MTIME
    assert (out / "scripts").stat().st_mtime == MTIME


def test_directory_bundle_is_never_stripped(tmp_path: Path, deploy: Path) -> None:
    source = tmp_path / "revision"
    (source / "app").mkdir(parents=True)
    (source / "app" / "appspec.yml").write_bytes(APPSPEC)
    unpack_bundle(source, BundleType.DIRECTORY, dest(deploy))
    assert listing(dest(deploy)) == {"app": "<dir>", "app/appspec.yml": APPSPEC.decode()}


def test_directory_bundle_refuses_fifo(tmp_path: Path, deploy: Path) -> None:
    source = tmp_path / "revision"
    source.mkdir()
    os.mkfifo(source / "pipe")
    assert_refused(source, BundleType.DIRECTORY, deploy, "'pipe'", "FIFO")


def test_directory_bundle_cannot_hold_the_destination(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="inside it"):
        unpack_bundle(tmp_path, BundleType.DIRECTORY, tmp_path / "d" / "deployment-archive")


@needs_tar
@pytest.mark.parametrize(("flags", "bundle_type"), [("-cf", BundleType.TAR),
                                                     ("-czf", BundleType.TGZ)])
def test_archives_made_by_gnu_tar(tmp_path: Path, deploy: Path, flags: str,
                                  bundle_type: BundleType) -> None:
    source = tmp_path / "src"
    (source / "bin").mkdir(parents=True)
    (source / "appspec.yml").write_bytes(APPSPEC)
    (source / "bin" / "tool").write_text("tool")
    (source / "bin" / "tool").chmod(0o755)
    (source / "link").symlink_to("bin/tool")
    os.link(source / "bin" / "tool", source / "hard")
    bundle = deploy / "bundle.tar"
    subprocess.run(["tar", flags, str(bundle), "-C", str(source), "."], check=True)
    unpack_bundle(bundle, bundle_type, dest(deploy))
    out = dest(deploy)
    assert listing(out) == {"appspec.yml": APPSPEC.decode(), "bin": "<dir>", "bin/tool": "tool",
                            "hard": "tool", "link": "-> bin/tool"}
    assert (out / "hard").stat().st_ino == (out / "bin" / "tool").stat().st_ino
    assert mode_of(out / "bin" / "tool") == 0o755


def test_tar_type_also_reads_compressed_tar_like_gnu_tar(deploy: Path) -> None:
    bundle = make_tar(deploy / "bundle.tar", tfile("appspec.yml", APPSPEC), compression="gz")
    unpack_bundle(bundle, BundleType.TAR, dest(deploy))
    assert listing(dest(deploy)) == {"appspec.yml": APPSPEC.decode()}


# --- the leading-directory strip ----------------------------------------------------------------

@pytest.mark.parametrize("appspec_name", ["appspec.yml", "AppSpec.YAML", "my-appspec-notes"])
def test_strip_single_directory_holding_an_appspec(deploy: Path, appspec_name: str) -> None:
    bundle = make_tar(deploy / "bundle.tar", tdir("repo-abc123", 0o700),
                      tfile(f"repo-abc123/{appspec_name}", APPSPEC), tfile("repo-abc123/sub/f"),
                      tsym("repo-abc123/sub/l", "../sub/f"))
    unpack_bundle(bundle, BundleType.TAR, dest(deploy))
    assert listing(dest(deploy)) == {appspec_name: APPSPEC.decode(), "sub": "<dir>",
                                     "sub/f": "x", "sub/l": "-> ../sub/f"}
    assert mode_of(dest(deploy)) == 0o755


def test_strip_applies_to_zip_of_a_folder_without_directory_entries(deploy: Path) -> None:
    bundle = make_zip(deploy / "bundle.tar", (zinfo("folder/appspec.yml"), APPSPEC),
                      (zinfo("folder/app/main.py"), b"main"))
    unpack_bundle(bundle, BundleType.ZIP, dest(deploy))
    assert listing(dest(deploy)) == {"app": "<dir>", "app/main.py": "main",
                                     "appspec.yml": APPSPEC.decode()}


@pytest.mark.parametrize(("members", "expected"), [
    pytest.param([tfile("app/appspec.yml", APPSPEC), tfile("README")],
                 {"app": "<dir>", "app/appspec.yml": APPSPEC.decode(), "README": "x"},
                 id="two-root-entries"),
    pytest.param([tfile("app/config.yml"), tfile("app/deep/appspec.yml")],
                 {"app": "<dir>", "app/config.yml": "x", "app/deep": "<dir>",
                  "app/deep/appspec.yml": "x"},
                 id="no-appspec-in-the-directory-listing"),
    pytest.param([tfile("appspec.yml", APPSPEC)], {"appspec.yml": APPSPEC.decode()},
                 id="single-file"),
])
def test_strip_does_not_apply(deploy: Path, members: list[TarMember],
                              expected: dict[str, str]) -> None:
    unpack_bundle(make_tar(deploy / "bundle.tar", *members), BundleType.TAR, dest(deploy))
    assert listing(dest(deploy)) == expected


def test_strip_does_not_apply_when_the_single_entry_is_a_symlink(deploy: Path) -> None:
    bundle = make_tar(deploy / "bundle.tar", tsym("app", "."))
    unpack_bundle(bundle, BundleType.TAR, dest(deploy))
    assert listing(dest(deploy)) == {"app": "-> ."}


def test_links_that_the_strip_would_push_outside_are_refused(deploy: Path) -> None:
    bundle = make_tar(deploy / "bundle.tar", tfile("app/appspec.yml", APPSPEC),
                      tfile("app/data"), tsym("app/up", "../app/data"))
    assert_refused(bundle, BundleType.TAR, deploy, "'app/up'", "outside")


# --- modes, owners, times -----------------------------------------------------------------------

def test_tar_modes_times_and_setid_bits(deploy: Path) -> None:
    bundle = make_tar(deploy / "bundle.tar", tdir("conf", 0o750), tfile("run.sh", mode=0o755),
                      tfile("conf/key", mode=0o600), tfile("suid", mode=0o4755),
                      tfile("sgid", mode=0o2750), tdir("shared", 0o3775), tdir("ro", 0o555),
                      tfile("ro/inside", mode=0o444))
    unpack_bundle(bundle, BundleType.TAR, dest(deploy))
    out = dest(deploy)
    modes = {name: mode_of(out / name) for name in
             ["conf", "run.sh", "conf/key", "suid", "sgid", "shared", "ro", "ro/inside"]}
    assert modes == {"conf": 0o750, "run.sh": 0o755, "conf/key": 0o600, "suid": 0o755,
                     "sgid": 0o750, "shared": 0o1775, "ro": 0o555, "ro/inside": 0o444}
    assert (out / "run.sh").stat().st_mtime == MTIME
    assert (out / "conf").stat().st_mtime == MTIME  # set after its files were written


@pytest.mark.parametrize("mtime", ["nan", "inf", "1e30", "-5"])
def test_implausible_tar_times_do_not_fail_the_unpack(deploy: Path, mtime: str) -> None:
    def odd(archive: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("f")
        info.pax_headers = {"mtime": mtime}
        archive.addfile(info, io.BytesIO())

    with tarfile.open(deploy / "bundle.tar", "w", format=tarfile.PAX_FORMAT) as archive:
        odd(archive)
    unpack_bundle(deploy / "bundle.tar", BundleType.TAR, dest(deploy))
    assert listing(dest(deploy)) == {"f": ""}


def test_owner_is_not_restored(deploy: Path) -> None:
    def foreign(archive: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("f")
        info.uid = info.gid = 4242
        archive.addfile(info, io.BytesIO())

    unpack_bundle(make_tar(deploy / "bundle.tar", foreign), BundleType.TAR, dest(deploy))
    assert (dest(deploy) / "f").stat().st_uid == os.geteuid()


def test_zip_unix_modes_and_times(deploy: Path) -> None:
    bundle = make_zip(deploy / "bundle.tar", (zinfo("run.sh", 0o755), b"#!/bin/sh\n"),
                      (zinfo("key", 0o600), b"k"), (zinfo("priv/", 0o750, kind=stat.S_IFDIR), b""),
                      (zinfo("priv/x", 0o4755), b"x"), (zinfo("nomode", 0), b"n"))
    unpack_bundle(bundle, BundleType.ZIP, dest(deploy))
    out = dest(deploy)
    assert {n: mode_of(out / n) for n in ["run.sh", "key", "priv", "priv/x", "nomode"]} == {
        "run.sh": 0o755, "key": 0o600, "priv": 0o750, "priv/x": 0o755, "nomode": 0o644}
    assert (out / "run.sh").stat().st_mtime == MTIME
    assert (out / "priv").stat().st_mtime == MTIME


def test_zip_extended_timestamp_wins_over_dos_time(deploy: Path) -> None:
    info = zinfo("f")
    info.extra = struct.pack("<HHBi", 0x5455, 5, 1, MTIME + 1)
    unpack_bundle(make_zip(deploy / "bundle.tar", (info, b"f")), BundleType.ZIP, dest(deploy))
    assert (dest(deploy) / "f").stat().st_mtime == MTIME + 1


def test_zip_made_on_windows_gets_default_modes_and_slashes(deploy: Path) -> None:
    bundle = make_zip(deploy / "bundle.tar", (zinfo("run.sh", 0o700, system=0), b"s"),
                      (zinfo("web\\index.html", None, system=0), b"i"),
                      (zinfo("empty/", None, system=0), b""))
    unpack_bundle(bundle, BundleType.ZIP, dest(deploy))
    out = dest(deploy)
    assert listing(out) == {"empty": "<dir>", "run.sh": "s", "web": "<dir>",
                            "web/index.html": "i"}
    assert (mode_of(out / "run.sh"), mode_of(out / "web/index.html")) == (0o644, 0o644)
    assert mode_of(out / "empty") == 0o755


def test_zip_symlink_becomes_a_symlink(deploy: Path) -> None:
    bundle = make_zip(deploy / "bundle.tar", (zinfo("bin/tool", 0o755), b"t"),
                      (zinfo("tool", 0o777, kind=stat.S_IFLNK), b"bin/tool"))
    unpack_bundle(bundle, BundleType.ZIP, dest(deploy))
    assert listing(dest(deploy)) == {"bin": "<dir>", "bin/tool": "t", "tool": "-> bin/tool"}


def test_later_entry_with_the_same_name_wins(deploy: Path) -> None:
    bundle = make_tar(deploy / "bundle.tar", tfile("f", b"old", 0o444), tsym("l", "f"),
                      tfile("f", b"new"), tfile("l", b"file now"))
    unpack_bundle(bundle, BundleType.TAR, dest(deploy))
    assert listing(dest(deploy)) == {"f": "new", "l": "file now"}


# --- unsafe entries -----------------------------------------------------------------------------

@pytest.mark.parametrize(("members", "fragments"), [
    pytest.param([tfile("/etc/evil")], ["'/etc/evil'", "absolute"], id="absolute"),
    pytest.param([tfile("a/../../evil")], ["'a/../../evil'", "'..'"], id="dotdot"),
    pytest.param([tsym("l", "../../etc")], ["'l'", "'../../etc'", "outside"], id="link-up"),
    pytest.param([tsym("l", "/etc/passwd")], ["'l'", "outside"], id="link-absolute"),
    pytest.param([tsym("d/l", "../..")], ["'d/l'", "outside"], id="link-up-from-subdir"),
    pytest.param([tsym("a", "."), tsym("b", "a/a/..")], ["'b'", "outside"], id="link-chain"),
    pytest.param([thard("h", "/etc/passwd")], ["'h'", "hard link"], id="hardlink-absolute"),
    pytest.param([thard("h", "../x")], ["'h'", "hard link"], id="hardlink-up"),
    pytest.param([thard("h", "later"), tfile("later")], ["'h'", "earlier file"],
                 id="hardlink-forward"),
    pytest.param([tsym("l", "."), thard("h", "l")], ["'h'", "earlier file"],
                 id="hardlink-to-symlink"),
    pytest.param([tspecial("dev", tarfile.CHRTYPE)], ["'dev'", "device"], id="char-device"),
    pytest.param([tspecial("blk", tarfile.BLKTYPE)], ["'blk'", "device"], id="block-device"),
    pytest.param([tspecial("p", tarfile.FIFOTYPE)], ["'p'", "FIFO"], id="fifo"),
    pytest.param([tsym("a", "."), tfile("a/x")], ["'a/x'", "symlink 'a'"], id="through-dot"),
    pytest.param([tdir("sub"), tsym("a", "sub"), tfile("a/x")], ["'a/x'", "symlink 'a'"],
                 id="through-link-to-subdir"),
    pytest.param([tfile("f"), tfile("f/x")], ["'f/x'", "directory"], id="through-file"),
    pytest.param([tdir("d"), tfile("d")], ["'d'", "directory"], id="file-over-directory"),
    # Found by the security suite: the clean-up file is one path per line, so the next Install
    # would have deleted /etc/passwd.
    pytest.param([tfile("x\n/etc/passwd")], ["'x\\n/etc/passwd'", "line break"],
                 id="newline-in-name"),
    pytest.param([tfile("ok"), thard("h\nx", "ok")], ["line break"], id="newline-in-link-name"),
])
def test_unsafe_tar_entries_are_refused(deploy: Path, members: list[TarMember],
                                        fragments: list[str]) -> None:
    bundle = make_tar(deploy / "bundle.tar", tfile("appspec.yml", APPSPEC), *members)
    message = assert_refused(bundle, BundleType.TAR, deploy, *fragments)
    assert "unsafe" in message
    assert not (deploy.parent / "evil").exists()


def patched_zip(path: Path, name: str, new: bytes) -> Path:
    """A zip whose entry name is rewritten in both headers (zipfile cannot write such names)."""
    make_zip(path, (zinfo("appspec.yml"), APPSPEC), (zinfo(name), b"x"))
    data = path.read_bytes()
    assert data.count(name.encode()) == 2
    path.write_bytes(data.replace(name.encode(), new))
    return path


@pytest.mark.parametrize(("members", "fragments"), [
    pytest.param([(zinfo("/abs"), b"x")], ["'/abs'", "absolute"], id="absolute"),
    pytest.param([(zinfo("../evil"), b"x")], ["'../evil'", "'..'"], id="dotdot"),
    pytest.param([(zinfo("..\\evil", system=0), b"x")], ["'../evil'", "'..'"],
                 id="windows-dotdot"),
    pytest.param([(zinfo("l", 0o777, kind=stat.S_IFLNK), b"/etc")], ["'l'", "outside"],
                 id="symlink-absolute"),
    pytest.param([(zinfo("l", 0o777, kind=stat.S_IFLNK), b"../..")], ["'l'", "outside"],
                 id="symlink-up"),
    pytest.param([(zinfo("l", 0o777, kind=stat.S_IFLNK), b"."), (zinfo("l/x"), b"x")],
                 ["'l/x'", "symlink"], id="through-symlink"),
    pytest.param([(zinfo("dev", 0o600, kind=stat.S_IFCHR), b"")], ["'dev'", "device"],
                 id="device"),
    pytest.param([(zinfo("p", 0o600, kind=stat.S_IFIFO), b"")], ["'p'", "FIFO"], id="fifo"),
    pytest.param([(zinfo("s", 0o600, kind=stat.S_IFSOCK), b"")], ["'s'", "socket"],
                 id="socket"),
])
def test_unsafe_zip_entries_are_refused(deploy: Path, members: list[tuple[zipfile.ZipInfo, bytes]],
                                        fragments: list[str]) -> None:
    bundle = make_zip(deploy / "bundle.tar", (zinfo("appspec.yml"), APPSPEC), *members)
    assert_refused(bundle, BundleType.ZIP, deploy, *fragments)


def test_zip_name_with_nul_is_refused(deploy: Path) -> None:
    bundle = patched_zip(deploy / "bundle.tar", "evil?name", b"evil\0name")
    assert_refused(bundle, BundleType.ZIP, deploy, "'evil\\x00name'", "NUL")


def test_zip_name_with_a_line_break_is_refused(deploy: Path) -> None:
    bundle = make_zip(deploy / "bundle.tar", (zinfo("appspec.yml"), APPSPEC),
                      (zinfo("x\n/etc/passwd"), b"x"))
    assert_refused(bundle, BundleType.ZIP, deploy, "'x\\n/etc/passwd'", "line break")


def test_encrypted_zip_is_refused(deploy: Path) -> None:
    bundle = make_zip(deploy / "bundle.tar", (zinfo("appspec.yml"), APPSPEC))
    data = bytearray(bundle.read_bytes())
    for signature, flag_offset in [(b"PK\x03\x04", 6), (b"PK\x01\x02", 8)]:
        data[data.index(signature) + flag_offset] |= 1
    bundle.write_bytes(bytes(data))
    assert_refused(bundle, BundleType.ZIP, deploy, "'appspec.yml'", "encrypted")


# --- wrong, missing and damaged bundles ---------------------------------------------------------

@pytest.mark.parametrize(("make", "bundle_type", "fragments"), [
    pytest.param(lambda p: make_zip(p, (zinfo("a"), b"a")), BundleType.TAR,
                 ["is a zip archive", "type is tar", "--bundle-type (zip)"], id="zip-as-tar"),
    pytest.param(lambda p: make_zip(p, (zinfo("a"), b"a")), BundleType.TGZ,
                 ["is a zip archive", "type is tgz"], id="zip-as-tgz"),
    pytest.param(lambda p: make_tar(p, tfile("a")), BundleType.TGZ,
                 ["plain (uncompressed) tar", "type is tgz", "(tar)"], id="tar-as-tgz"),
    pytest.param(lambda p: make_tar(p, tfile("a"), compression="gz"), BundleType.ZIP,
                 ["gzip", "type is zip", "(tgz)"], id="tgz-as-zip"),
    pytest.param(lambda p: make_tar(p, tfile("a")), BundleType.ZIP,
                 ["tar archive", "type is zip"], id="tar-as-zip"),
    pytest.param(lambda p: make_tar(p, tfile("a"), compression="xz"), BundleType.TGZ,
                 ["xz", "type is tgz"], id="txz-as-tgz"),
])
def test_type_mismatch_names_the_right_type(deploy: Path, make: Callable[[Path], Path],
                                            bundle_type: BundleType, fragments: list[str]) -> None:
    bundle = make(deploy / "bundle.tar")
    message = assert_refused(bundle, bundle_type, deploy, str(bundle), *fragments)
    assert "push it again" in message


def test_missing_bundle(deploy: Path) -> None:
    assert_refused(deploy / "bundle.tar", BundleType.TAR, deploy, "does not exist")


def test_directory_given_for_an_archive_type(tmp_path: Path, deploy: Path) -> None:
    assert_refused(tmp_path, BundleType.ZIP, deploy, "is a directory", "--bundle-type directory")


def test_file_given_for_directory_type(deploy: Path) -> None:
    bundle = make_tar(deploy / "bundle.tar", tfile("a"))
    assert_refused(bundle, BundleType.DIRECTORY, deploy, "is a file", "type is directory")


def big_tar(path: Path, compression: str = "") -> Path:
    return make_tar(path, tfile("appspec.yml", APPSPEC), tfile("blob", os.urandom(64 * 1024)),
                    tfile("z"), compression=compression)


@pytest.mark.parametrize("cut", [100, 20_000, -40])
def test_truncated_tgz(deploy: Path, cut: int) -> None:
    bundle = big_tar(deploy / "bundle.tar", "gz")
    bundle.write_bytes(bundle.read_bytes()[:cut])
    assert_refused(bundle, BundleType.TGZ, deploy, str(bundle), "corrupt or truncated")


@pytest.mark.parametrize("cut", [30_000, 512 * 131, 512 * 132])
def test_truncated_tar_in_data_or_between_members(deploy: Path, cut: int) -> None:
    bundle = big_tar(deploy / "bundle.tar")
    bundle.write_bytes(bundle.read_bytes()[:cut])
    assert_refused(bundle, BundleType.TAR, deploy, str(bundle), "corrupt or truncated")


def test_tar_with_a_damaged_header_in_the_middle(deploy: Path) -> None:
    bundle = big_tar(deploy / "bundle.tar")
    data = bytearray(bundle.read_bytes())
    data[512 * 131: 512 * 131 + 10] = b"garbage!!!"  # the third member's header
    bundle.write_bytes(bytes(data))
    assert_refused(bundle, BundleType.TAR, deploy, "corrupt or truncated", "header")


def test_tgz_with_a_damaged_checksum(deploy: Path) -> None:
    bundle = big_tar(deploy / "bundle.tar", "gz")
    data = bytearray(bundle.read_bytes())
    data[-8] ^= 0xFF  # gzip's CRC-32 of the whole stream
    bundle.write_bytes(bytes(data))
    assert_refused(bundle, BundleType.TGZ, deploy, "corrupt or truncated")


@pytest.mark.parametrize("cut", [50, 2_000, -10])
def test_truncated_zip(deploy: Path, cut: int) -> None:
    bundle = make_zip(deploy / "bundle.tar", (zinfo("appspec.yml"), APPSPEC),
                      (zinfo("blob"), os.urandom(4096)))
    bundle.write_bytes(bundle.read_bytes()[:cut])
    assert_refused(bundle, BundleType.ZIP, deploy, str(bundle), "corrupt or truncated")


def test_zip_with_damaged_data(deploy: Path) -> None:
    bundle = make_zip(deploy / "bundle.tar", (zinfo("blob"), os.urandom(4096)))
    data = bytearray(bundle.read_bytes())
    data[100] ^= 0xFF
    bundle.write_bytes(bytes(data))
    assert_refused(bundle, BundleType.ZIP, deploy, "corrupt or truncated")


@pytest.mark.parametrize("bundle_type", [BundleType.TAR, BundleType.TGZ, BundleType.ZIP])
def test_garbage_and_empty_files(deploy: Path, bundle_type: BundleType) -> None:
    bundle = deploy / "bundle.tar"
    for content in [b"", b"not an archive at all" * 40]:
        bundle.write_bytes(content)
        assert_refused(bundle, bundle_type, deploy, "corrupt or truncated")


# --- limits -------------------------------------------------------------------------------------

def test_zip_declared_size_is_checked_before_anything_is_written(
        deploy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = make_zip(deploy / "bundle.tar", (zinfo("a"), b"a" * 600), (zinfo("b"), b"b" * 600))
    writes: list[int] = []
    monkeypatch.setattr(bundle_module, "_write_chunk", lambda fd, data: writes.append(len(data)))
    assert_refused(bundle, BundleType.ZIP, deploy, "unpacks to 1,200 bytes",
                   "limit of 1,000 bytes", "max_bundle_bytes", "/etc/pifleet/agent.toml",
                   limits=UnpackLimits(max_bytes=1000))
    assert writes == []


def test_zip_whose_headers_understate_the_size_is_refused(deploy: Path) -> None:
    bundle = make_zip(deploy / "bundle.tar", (zinfo("bomb"), b"\0" * 1_000_000))
    data = bytearray(bundle.read_bytes())
    for signature, size_offset in [(b"PK\x03\x04", 22), (b"PK\x01\x02", 24)]:
        at = data.index(signature) + size_offset
        struct.pack_into("<I", data, at, 10)
    bundle.write_bytes(bytes(data))
    with zipfile.ZipFile(bundle) as archive:
        assert archive.getinfo("bomb").file_size == 10  # the lie passes the header check
    assert_refused(bundle, BundleType.ZIP, deploy, "corrupt or truncated",
                   limits=UnpackLimits(max_bytes=100))


@pytest.mark.parametrize("bundle_type", [BundleType.TAR, BundleType.TGZ])
def test_tar_bytes_are_counted_while_streaming(deploy: Path, bundle_type: BundleType,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    compression = "gz" if bundle_type is BundleType.TGZ else ""
    bundle = make_tar(deploy / "bundle.tar", tfile("a", b"a" * 700), tfile("big", b"b" * 5_000_000),
                      compression=compression)
    written: list[int] = []
    real_write = bundle_module._write_chunk

    def counting(fd: int, data: bytes) -> None:
        written.append(len(data))
        real_write(fd, data)

    monkeypatch.setattr(bundle_module, "_write_chunk", counting)
    assert_refused(bundle, bundle_type, deploy, "more than 1,000 bytes", "max_bundle_bytes",
                   limits=UnpackLimits(max_bytes=1000))
    assert sum(written) <= 1000  # stopped at the limit, not after the 5 MB member


def test_directory_bytes_are_limited(tmp_path: Path, deploy: Path) -> None:
    source = tmp_path / "revision"
    source.mkdir()
    (source / "big").write_bytes(b"x" * 2000)
    assert_refused(source, BundleType.DIRECTORY, deploy, "more than 1,000 bytes",
                   limits=UnpackLimits(max_bytes=1000))


def test_exactly_at_the_limits_is_fine(deploy: Path) -> None:
    bundle = make_tar(deploy / "bundle.tar", tfile("a", b"a" * 500), tfile("b", b"b" * 500))
    unpack_bundle(bundle, BundleType.TAR, dest(deploy),
                  limits=UnpackLimits(max_bytes=1000, max_entries=2))
    assert listing(dest(deploy)) == {"a": "a" * 500, "b": "b" * 500}


def test_too_many_tar_entries(deploy: Path) -> None:
    bundle = make_tar(deploy / "bundle.tar", *(tfile(f"f{i}") for i in range(6)))
    assert_refused(bundle, BundleType.TAR, deploy, "more than 5 entries", "max_bundle_entries",
                   limits=UnpackLimits(max_entries=5))


def test_too_many_zip_entries_from_the_central_directory(deploy: Path) -> None:
    bundle = make_zip(deploy / "bundle.tar", *((zinfo(f"f{i}"), b"") for i in range(6)))
    assert_refused(bundle, BundleType.ZIP, deploy, "holds 6 entries", "limit of 5",
                   limits=UnpackLimits(max_entries=5))


# --- all or nothing -----------------------------------------------------------------------------

def test_existing_destination_is_replaced(deploy: Path) -> None:
    old = dest(deploy)
    (old / "ro").mkdir(parents=True)
    (old / "ro" / "stale.txt").write_text("old")
    (old / "ro").chmod(0o500)  # a previous revision's read-only directory must not block us
    bundle = make_tar(deploy / "bundle.tar", tfile("appspec.yml", APPSPEC))
    unpack_bundle(bundle, BundleType.TAR, old)
    assert listing(old) == {"appspec.yml": APPSPEC.decode()}
    assert partials(deploy) == []


def test_stale_partial_directories_are_removed(deploy: Path) -> None:
    for name in [".deployment-archive.partial-abc123", ".deployment-archive.partial-x"]:
        (deploy / name / "sub").mkdir(parents=True)
        (deploy / name / "sub" / "half-written").write_text("x")
        (deploy / name / "sub").chmod(0o500)
    (deploy / ".unrelated").mkdir()
    bundle = make_tar(deploy / "bundle.tar", tfile("appspec.yml", APPSPEC))
    unpack_bundle(bundle, BundleType.TAR, dest(deploy))
    assert partials(deploy) == [".unrelated"]


def test_failed_unpack_keeps_previous_destination(deploy: Path) -> None:
    good = make_tar(deploy / "good.tar", tfile("appspec.yml", b"v1"))
    unpack_bundle(good, BundleType.TAR, dest(deploy))
    bad = make_tar(deploy / "bad.tar", tfile("appspec.yml", b"v2"), tsym("x", "/etc"))
    with pytest.raises(BundleError):
        unpack_bundle(bad, BundleType.TAR, dest(deploy))
    assert listing(dest(deploy)) == {"appspec.yml": "v1"}
    assert partials(deploy) == []


def test_destination_parent_is_created(tmp_path: Path) -> None:
    bundle = make_tar(tmp_path / "bundle.tar", tfile("a"))
    unpack_bundle(bundle, BundleType.TAR, tmp_path / "new" / "deployment-archive")
    assert listing(tmp_path / "new") == {"deployment-archive": "<dir>",
                                         "deployment-archive/a": "x"}


def test_disk_full_is_reported_and_cleaned_up(deploy: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bundle_module, "_write_chunk", full)
    bundle = make_tar(deploy / "bundle.tar", tfile("appspec.yml", APPSPEC))
    message = assert_refused(bundle, BundleType.TAR, deploy, "disk full while unpacking",
                             str(bundle), str(dest(deploy)), "free")
    assert "MB" in message or "GB" in message


def test_disk_full_on_zip_says_what_the_bundle_needs(deploy: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def quota(fd: int, data: bytes) -> None:
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(bundle_module, "_write_chunk", quota)
    bundle = make_zip(deploy / "bundle.tar", (zinfo("a"), b"a" * 3000))
    assert_refused(bundle, BundleType.ZIP, deploy, "disk full", "it needs 3,000 bytes")


def test_gzip_stream_that_is_not_a_tar(deploy: Path) -> None:
    bundle = deploy / "bundle.tar"
    bundle.write_bytes(gzip.compress(b"plain text, not a tar archive\n" * 100))
    assert_refused(bundle, BundleType.TGZ, deploy, "corrupt or truncated")
