"""Unpack a deployment bundle into ``deployment-archive``: safely, within limits, all or nothing.

The official agent shells out to ``tar -xpsf``, ``unzip -qo`` or ``cp -r`` (reference §4.2). We
unpack in-process with these rules:

Types
    ``tar`` (plain, or gzip/bzip2/xz-compressed as GNU ``tar -xf`` accepts; GitHub "tarball"
    revisions are gzipped), ``tgz`` (gzip-compressed tar), ``zip`` and ``directory`` (a tree copied
    as it is). The file's magic bytes must agree with the declared type: a zip pushed as ``tar``
    is refused with a message naming the right ``--bundle-type``.

All or nothing
    The bundle is unpacked into a hidden sibling ``.deployment-archive.partial-XXXX``; only when
    everything is written is the old ``deployment-archive`` moved aside and the new one renamed
    into place (two renames on one filesystem). A failure removes the partial directory and leaves
    the old destination as it was; partial directories left by a crash are removed by the next
    unpack. One unpack per destination at a time (the agent runs one command at a time).

Leading-directory strip (archives only, as in the official agent)
    If the archive root holds exactly one entry, that entry is a real directory (not a symlink)
    and its listing has a name matching ``/appspec/i``, its contents become the root (GitHub
    tarballs, zips of a folder).

Safety (each refusal is a ``BundleError`` naming the entry)
    Names that are absolute, hold a ``..`` component, a NUL byte or a line break (the clean-up
    file is one path per line: ``"x\\n/etc/passwd"`` would have the next Install delete
    ``/etc/passwd``); symlinks whose target leaves the final root (checked by name when the
    link is read, and again on disk once everything is written, which catches chains such as
    ``a -> .`` plus ``b -> a/a/..``, and links the strip would push outside); hard links to
    anything but an earlier regular file of the bundle; devices, FIFOs and sockets; entries
    whose path goes through a symlink of the bundle (we never write through a link). Files
    are created with ``O_EXCL | O_NOFOLLOW``.

Modes, owners, times
    As ``tar -xp`` / Info-ZIP ``unzip`` do, except that setuid/setgid bits are dropped (the
    AppSpec ``permissions`` section sets them on purpose) and owners are not restored (files
    belong to the agent's user). Zip modes come from ``external_attr >> 16`` for entries made on
    Unix, else 0644 for files and 0755 for directories. Modification times are kept (zip: the
    Info-ZIP extended timestamp when present, else the DOS time as local time). Directories stay
    0700 while files are written and get their final modes last, deepest first, so a read-only
    directory in the bundle cannot block its own contents. The final root is 0755.

Limits
    ``UnpackLimits.max_entries`` and ``max_bytes`` (agent.toml ``[deploy] max_bundle_entries`` /
    ``max_bundle_bytes``). A zip's central directory is checked before anything is written; bytes
    are also counted while streaming (1 MiB buffer) and the unpack stops as soon as the limit is
    passed, whatever the headers claimed. Tar sizes cannot lie (the header size is what is read),
    so tar relies on the streaming count rather than decompressing twice.

Corrupt or truncated archives, unreadable files and a full disk become ``BundleError`` with what
happened, where, and what to do; no raw traceback escapes.
"""

from __future__ import annotations

import errno
import glob
import lzma
import os
import posixpath
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum, StrEnum
from functools import partial
from pathlib import Path
from typing import IO, Literal, NoReturn, TypeVar

from .errors import BundleError

__all__ = ["BundleType", "UnpackLimits", "remove_partial_unpacks", "unpack_bundle"]

CONFIG_FILE = "/etc/pifleet/agent.toml"

_CHUNK = 1024 * 1024
_LINK_MAX = 4096
_MAX_LINK_HOPS = 40  # Linux's MAXSYMLINKS
# Enough to reach a gzip trailer after tar's end-of-archive record (tar pads to 10 KiB records).
_TRAILER_DRAIN = 1024 * 1024
_UNIX = 3
_ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                          zipfile.ZIP_LZMA})
_ZIP_EXTENDED_TIMESTAMP = 0x5455
_NO_SETID = ~(stat.S_ISUID | stat.S_ISGID)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_APPSPEC = re.compile("appspec", re.IGNORECASE)
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# What reading a damaged archive raises (gzip.BadGzipFile and bz2 errors are OSErrors).
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError,
                OSError, NotImplementedError, struct.error, ValueError)

_T = TypeVar("_T")


class BundleType(StrEnum):
    TAR = "tar"
    TGZ = "tgz"
    ZIP = "zip"
    DIRECTORY = "directory"


@dataclass(frozen=True)
class UnpackLimits:
    max_bytes: int = 2 * 1024**3
    max_entries: int = 100_000


def unpack_bundle(bundle: Path, bundle_type: BundleType, destination: Path, *,
                  limits: UnpackLimits = UnpackLimits()) -> None:
    """Fill ``destination`` with the bundle's contents, replacing what was there only on success."""
    compression = _check_bundle(bundle, bundle_type, destination)
    work = _prepare(bundle, destination)
    budget = _Budget(bundle, limits)
    try:
        try:
            final = _extract(bundle, bundle_type, compression, work, budget)
            _swap_into_place(final, destination, work)
        finally:
            _discard(work)
    except _Unreadable as exc:
        raise BundleError(_unreadable_message(bundle, bundle_type, exc)) from exc
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise BundleError(_disk_full_message(bundle, destination, budget)) from exc
        raise BundleError(f"cannot unpack {bundle} into {destination}: {exc}") from exc


# --- checks before unpacking -------------------------------------------------------------------

_KINDS_OF_FILE = {
    "zip": "a zip archive",
    "gz": "a gzip-compressed file (tgz)",
    "bz2": "a bzip2-compressed file",
    "xz": "an xz-compressed file",
    "tar": "a plain (uncompressed) tar archive",
}
_RIGHT_TYPE = {"zip": "zip", "gz": "tgz", "bz2": "tar", "xz": "tar", "tar": "tar"}
_ACCEPTED = {
    BundleType.TAR: {"", "tar", "gz", "bz2", "xz"},
    BundleType.TGZ: {"", "gz"},
    BundleType.ZIP: {"", "zip"},
}


def _check_bundle(bundle: Path, bundle_type: BundleType, destination: Path) -> str:
    """Refuse a bundle that is missing or of another kind; return the tar compression to use."""
    try:
        mode = bundle.stat().st_mode
    except FileNotFoundError:
        raise BundleError(f"bundle {bundle} does not exist; the download may have failed or "
                          "the file was removed, deploy again") from None
    except OSError as exc:
        raise BundleError(f"cannot read bundle {bundle}: {exc}") from exc
    if bundle_type is BundleType.DIRECTORY:
        _check_directory_bundle(bundle, mode, destination)
        return ""
    if stat.S_ISDIR(mode):
        raise BundleError(f"bundle {bundle} is a directory, but the deployment says its type is "
                          f"{bundle_type}; push it again with --bundle-type directory, or give "
                          "the archive file")
    if not stat.S_ISREG(mode):
        raise BundleError(f"bundle {bundle} is not a regular file; give the archive file itself")
    found = _sniff(bundle)
    if found not in _ACCEPTED[bundle_type]:
        raise BundleError(f"bundle {bundle} is {_KINDS_OF_FILE[found]}, but the deployment says "
                          f"its type is {bundle_type}; push it again with the right "
                          f"--bundle-type ({_RIGHT_TYPE[found]})")
    if bundle_type is BundleType.TGZ:
        return "gz"  # unknown bytes too: gzip then says what is wrong with them
    return "" if found == "tar" else found


def _check_directory_bundle(bundle: Path, mode: int, destination: Path) -> None:
    if not stat.S_ISDIR(mode):
        raise BundleError(f"bundle {bundle} is a file, but the deployment says its type is "
                          "directory; give the revision's directory, or push the archive with "
                          "its own --bundle-type (tar, tgz or zip)")
    source = os.path.realpath(bundle)
    target = os.path.realpath(destination.parent)
    if target == source or target.startswith(source + os.sep):
        raise BundleError(f"cannot copy directory bundle {bundle} into {destination}, which is "
                          "inside it; keep the deployment root outside the revision directory")


def _sniff(bundle: Path) -> str:
    """Name the format by its magic bytes; "" when unknown (old v7 tar, self-extracting zip)."""
    try:
        with bundle.open("rb") as file:
            head = file.read(512)
    except OSError as exc:
        raise BundleError(f"cannot read bundle {bundle}: {exc}") from exc
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    if head.startswith(b"BZh"):
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head[257:262] == b"ustar":
        return "tar"
    return ""


# --- the partial directory and the final swap ----------------------------------------------------

def remove_partial_unpacks(destination: Path) -> list[Path]:
    """Remove the partial directories a crashed unpack into ``destination`` left; what went.

    Only for when no unpack into ``destination`` runs (start-up, or the next unpack itself).
    """
    removed = []
    for stale in destination.parent.glob(f"{_partial_prefix(destination)}*"):
        _discard(stale)
        if not os.path.lexists(stale):
            removed.append(stale)
    return removed


def _prepare(bundle: Path, destination: Path) -> Path:
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        remove_partial_unpacks(destination)
        return Path(tempfile.mkdtemp(prefix=_partial_prefix(destination), dir=destination.parent))
    except OSError as exc:
        raise BundleError(f"cannot prepare {destination} for unpacking {bundle}: {exc}") from exc


def _partial_prefix(destination: Path) -> str:
    return f".{glob.escape(destination.name)}.partial-"


def _swap_into_place(final: str, destination: Path, work: Path) -> None:
    """Move the old destination into ``work`` (removed with it), then the new tree into place."""
    previous = work / "previous"
    had_previous = os.path.lexists(destination)
    if had_previous:
        os.rename(destination, previous)
    try:
        os.rename(final, destination)
    except OSError:
        if had_previous:
            os.rename(previous, destination)
        raise


def _discard(path: Path) -> None:
    """Remove a tree we made, even one holding read-only directories; a leftover is retried later.

    Failing here must not hide the error that brought us here, so OSError is swallowed.
    """
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
            return
        try:
            shutil.rmtree(path)
        except OSError:
            _open_up(path)
            shutil.rmtree(path, ignore_errors=True)
    except OSError:
        pass


def _open_up(root: Path) -> None:
    pending = [str(root)]
    while pending:
        directory = pending.pop()
        os.chmod(directory, 0o700)
        with os.scandir(directory) as listing:
            pending.extend(e.path for e in listing if e.is_dir(follow_symlinks=False))


# --- errors --------------------------------------------------------------------------------------

class _Unreadable(Exception):
    """The bundle's data could not be read (corrupt, truncated, or an unreadable source file)."""


def _guard(read: Callable[[], _T]) -> _T:
    """Run one read of the bundle, turning the reader's many error types into ``_Unreadable``.

    Reads and writes are kept apart so that an OSError from writing (disk full) is never
    mistaken for a damaged archive.
    """
    try:
        return read()
    except _READ_ERRORS as exc:
        raise _Unreadable(str(exc) or type(exc).__name__) from exc


def _unreadable_message(bundle: Path, bundle_type: BundleType, exc: _Unreadable) -> str:
    if bundle_type is BundleType.DIRECTORY:
        return f"cannot read directory bundle {bundle}: {exc}"
    return (f"bundle {bundle} is corrupt or truncated ({exc}); it is not a readable "
            f"{bundle_type} archive, push it again")


def _disk_full_message(bundle: Path, destination: Path, budget: _Budget) -> str:
    try:
        free = _size(shutil.disk_usage(destination.parent).free)
    except OSError:
        free = "unknown"
    needs = (f"it needs {_size(budget.declared)}" if budget.declared is not None
             else f"it had written {_size(budget.bytes)} when the disk filled")
    return (f"disk full while unpacking {bundle} into {destination}: {free} free there now, "
            f"and {needs}; free some space (old revisions, logs) and deploy again")


def _size(count: int) -> str:
    if count < 1024**2:
        return f"{count:,} bytes"
    if count < 1024**3:
        return f"{count / 1024**2:,.1f} MB"
    return f"{count / 1024**3:,.2f} GB"


# --- limits --------------------------------------------------------------------------------------

class _Budget:
    """Entry and byte counts against ``UnpackLimits``."""

    def __init__(self, bundle: Path, limits: UnpackLimits) -> None:
        self._bundle = bundle
        self._limits = limits
        self.entries = 0
        self.bytes = 0
        self.declared: int | None = None

    def check_declared(self, entries: int, size: int) -> None:
        self.declared = size
        if entries > self._limits.max_entries:
            self._too_many(f"{entries:,}")
        if size > self._limits.max_bytes:
            self._too_big(_size(size))

    def take_entry(self) -> None:
        self.entries += 1
        if self.entries > self._limits.max_entries:
            self._too_many(f"more than {self._limits.max_entries:,}")

    def read_size(self) -> int:
        # One byte past the limit is enough to know it was passed.
        return min(_CHUNK, self._limits.max_bytes - self.bytes + 1)

    def take_bytes(self, count: int) -> None:
        self.bytes += count
        if self.bytes > self._limits.max_bytes:
            self._too_big(f"more than {_size(self._limits.max_bytes)}")

    def _too_many(self, held: str) -> NoReturn:
        raise BundleError(f"bundle {self._bundle} holds {held} entries, over the limit of "
                          f"{self._limits.max_entries:,}; if the bundle is right, raise "
                          f"[deploy] max_bundle_entries in {CONFIG_FILE}")

    def _too_big(self, held: str) -> NoReturn:
        raise BundleError(f"bundle {self._bundle} unpacks to {held}, over the limit of "
                          f"{_size(self._limits.max_bytes)}; if the bundle is right, raise "
                          f"[deploy] max_bundle_bytes in {CONFIG_FILE}")


# --- entries and the extractor -------------------------------------------------------------------

class _Kind(Enum):
    FILE = "file"
    DIR = "directory"
    SYMLINK = "symlink"
    HARDLINK = "hard link"
    DEVICE = "device file"
    FIFO = "FIFO"
    SOCKET = "socket"


_REFUSED_KINDS = frozenset({_Kind.DEVICE, _Kind.FIFO, _Kind.SOCKET})
_KIND_BY_FORMAT = {
    stat.S_IFREG: _Kind.FILE, stat.S_IFDIR: _Kind.DIR, stat.S_IFLNK: _Kind.SYMLINK,
    stat.S_IFCHR: _Kind.DEVICE, stat.S_IFBLK: _Kind.DEVICE, stat.S_IFIFO: _Kind.FIFO,
    stat.S_IFSOCK: _Kind.SOCKET,
}


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str  # as the bundle spells it, for messages
    kind: _Kind
    mode: int = 0o644
    mtime_ns: int | None = None
    link: str = ""  # symlink target, or hard-link source (a bundle path)
    opener: Callable[[], IO[bytes]] | None = None


def _write_chunk(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _set_mtime(target: int | str, mtime_ns: int | None) -> None:
    if mtime_ns is None:
        return
    try:
        if isinstance(target, int):
            os.utime(target, ns=(mtime_ns, mtime_ns))
        else:
            os.utime(target, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
    except (OverflowError, ValueError):
        pass  # an implausible timestamp is not worth failing a deployment (GNU tar only warns)


def _name_problem(raw: str) -> str:
    if "\0" in raw:
        return "has a NUL byte in its name"
    if "\n" in raw:
        # The clean-up file lists one path per line: such a name would make the next
        # deployment delete whatever path follows the line break.
        return "has a line break in its name"
    if raw.startswith("/"):
        return "has an absolute path"
    if ".." in raw.split("/"):
        return "has a '..' component"
    return ""


def _normal(raw: str) -> str:
    return "/".join(part for part in raw.split("/") if part not in ("", "."))


class _Extractor:
    """Writes entries under ``root``, enforcing the safety rules against its own record of what
    each written path is (so a link in the bundle can never be written through)."""

    def __init__(self, bundle: Path, root: str, budget: _Budget) -> None:
        self._bundle = bundle
        self._root = root
        self._budget = budget
        self._kinds: dict[str, _Kind] = {"": _Kind.DIR}
        self._dir_meta: dict[str, tuple[int, int | None]] = {}
        self._links: dict[str, str] = {}  # symlink path -> target

    def add(self, entry: _Entry) -> None:
        self._budget.take_entry()
        rel = self._clean(entry.name)
        if entry.kind in _REFUSED_KINDS:
            self._refuse(entry.name, f"is a {entry.kind.value}; a bundle may only hold files, "
                                     "directories and links")
        if not rel:
            if entry.kind is not _Kind.DIR:
                self._refuse(entry.name, "has an empty name")
            return
        self._ensure_parent(rel, entry.name)
        if entry.kind is _Kind.DIR:
            self._add_dir(rel, entry)
        elif entry.kind is _Kind.SYMLINK:
            self._add_symlink(rel, entry)
        elif entry.kind is _Kind.HARDLINK:
            self._add_hardlink(rel, entry)
        else:
            self._add_file(rel, entry)

    def finish(self, strip: bool) -> str:
        """Check links against the final root, apply directory modes; return the final root."""
        top = self._strip_target() if strip else ""
        final = self._path(top)
        self._check_symlinks(top)
        for rel in sorted(self._dir_meta, key=lambda r: r.count("/"), reverse=True):
            if rel != top:
                mode, mtime_ns = self._dir_meta[rel]
                _set_mtime(self._path(rel), mtime_ns)
                os.chmod(self._path(rel), mode)
        # What `mkdir deployment-archive` gives under the usual umask, as the official agent has.
        os.chmod(final, 0o755)  # noqa: S103
        return final

    # names and parents

    def _clean(self, raw: str) -> str:
        problem = _name_problem(raw)
        if problem:
            self._refuse(raw, problem)
        return _normal(raw)

    def _path(self, rel: str) -> str:
        return os.path.join(self._root, rel) if rel else self._root

    def _ensure_parent(self, rel: str, raw: str) -> None:
        parent = rel.rpartition("/")[0]
        if self._kinds.get(parent) is _Kind.DIR:
            return
        prefix = ""
        for part in parent.split("/"):
            prefix = f"{prefix}/{part}" if prefix else part
            kind = self._kinds.get(prefix)
            if kind is None:
                os.mkdir(self._path(prefix), 0o700)
                self._kinds[prefix] = _Kind.DIR
                self._dir_meta[prefix] = (0o755, None)
            elif kind is _Kind.SYMLINK:
                self._refuse(raw, f"goes through the symlink {prefix!r}; the agent never writes "
                                  "through a link")
            elif kind is not _Kind.DIR:
                self._refuse(raw, f"needs {prefix!r} to be a directory, but the bundle has a "
                                  f"{kind.value} there")

    def _make_room(self, rel: str, raw: str) -> None:
        """A later entry with the same name wins, as with tar; a directory is never replaced."""
        kind = self._kinds.get(rel)
        if kind is None:
            return
        if kind is _Kind.DIR:
            self._refuse(raw, "has the name of a directory already in the bundle")
        os.unlink(self._path(rel))
        self._links.pop(rel, None)
        del self._kinds[rel]

    # one handler per kind

    def _add_dir(self, rel: str, entry: _Entry) -> None:
        if self._kinds.get(rel) is not _Kind.DIR:
            self._make_room(rel, entry.name)
            os.mkdir(self._path(rel), 0o700)
            self._kinds[rel] = _Kind.DIR
        self._dir_meta[rel] = (entry.mode & 0o7777 & _NO_SETID, entry.mtime_ns)

    def _add_file(self, rel: str, entry: _Entry) -> None:
        self._make_room(rel, entry.name)
        fd = os.open(self._path(rel), _CREATE, 0o600)
        try:
            self._kinds[rel] = _Kind.FILE
            self._copy(entry, fd)
            os.fchmod(fd, entry.mode & 0o7777 & _NO_SETID)
            _set_mtime(fd, entry.mtime_ns)
        finally:
            os.close(fd)

    def _copy(self, entry: _Entry, fd: int) -> None:
        if entry.opener is None:
            return
        source = _guard(entry.opener)
        with source:
            while chunk := _guard(partial(source.read, self._budget.read_size())):
                self._budget.take_bytes(len(chunk))
                _write_chunk(fd, chunk)

    def _add_symlink(self, rel: str, entry: _Entry) -> None:
        target = entry.link
        if not target or "\0" in target:
            self._refuse(entry.name, "is a symlink with an empty or NUL-holding target")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            self._refuse(entry.name, f"is a symlink to {target!r}, outside the bundle")
        self._make_room(rel, entry.name)
        os.symlink(target, self._path(rel))
        self._kinds[rel] = _Kind.SYMLINK
        self._links[rel] = target
        _set_mtime(self._path(rel), entry.mtime_ns)

    def _add_hardlink(self, rel: str, entry: _Entry) -> None:
        source = "" if _name_problem(entry.link) else _normal(entry.link)
        if source == rel or self._kinds.get(source) is not _Kind.FILE:
            self._refuse(entry.name, f"is a hard link to {entry.link!r}, which is not an "
                                     "earlier file of the bundle")
        self._make_room(rel, entry.name)
        os.link(self._path(source), self._path(rel), follow_symlinks=False)
        self._kinds[rel] = _Kind.FILE

    # the end

    def _strip_target(self) -> str:
        tops = [rel for rel in self._kinds if rel and "/" not in rel]
        if len(tops) != 1 or self._kinds[tops[0]] is not _Kind.DIR:
            return ""
        prefix = f"{tops[0]}/"
        children = (rel[len(prefix):] for rel in self._kinds if rel.startswith(prefix))
        if any("/" not in child and _APPSPEC.search(child) for child in children):
            return tops[0]
        return ""

    def _check_symlinks(self, top: str) -> None:
        for rel, target in sorted(self._links.items()):
            if self._escapes(top, rel):
                self._refuse(rel, f"is a symlink to {target!r}, which leads outside the "
                                  "bundle once the links around it are followed")

    def _escapes(self, top: str, rel: str) -> bool:
        """Resolve a link as the kernel would, following the bundle's links, within the final root.

        Done on our records rather than with realpath because the final root is ``top`` inside
        the work directory: a ``..`` that climbs above ``top`` is an escape once it is renamed.
        """
        base = f"{top}/" if top else ""
        current = rel[len(base):].split("/")[:-1]
        pending = deque(self._links[rel].split("/"))
        hops = 0
        while pending:
            part = pending.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if not current:
                    return True
                current.pop()
                continue
            current.append(part)
            target = self._links.get(base + "/".join(current))
            if target is None:
                continue
            hops += 1
            if target.startswith("/"):
                return True
            if hops > _MAX_LINK_HOPS:
                return False  # a loop: the kernel answers ELOOP, nothing is reached
            current.pop()
            pending.extendleft(reversed(target.split("/")))
        return False

    def _refuse(self, name: str, reason: str) -> NoReturn:
        raise BundleError(f"bundle {self._bundle} is unsafe: entry {name!r} {reason}; nothing "
                          "was unpacked, fix the bundle and push it again")


# --- sources -------------------------------------------------------------------------------------

def _extract(bundle: Path, bundle_type: BundleType, compression: str, work: Path,
             budget: _Budget) -> str:
    root = work / "root"
    root.mkdir(mode=0o700)
    extractor = _Extractor(bundle, str(root), budget)
    if bundle_type is BundleType.DIRECTORY:
        for entry in _directory_entries(bundle):
            extractor.add(entry)
    elif bundle_type is BundleType.ZIP:
        _extract_zip(bundle, extractor, budget)
    else:
        _extract_tar(bundle, compression, extractor)
    return extractor.finish(strip=bundle_type is not BundleType.DIRECTORY)


_TarMode = Literal["r:", "r:gz", "r:bz2", "r:xz"]
_TAR_MODES: dict[str, _TarMode] = {"": "r:", "gz": "r:gz", "bz2": "r:bz2", "xz": "r:xz"}


def _extract_tar(bundle: Path, compression: str, extractor: _Extractor) -> None:
    archive = _guard(partial(tarfile.open, bundle, _TAR_MODES[compression],
                             tarinfo=_StrictTarInfo))
    with archive:
        while (member := _guard(archive.next)) is not None:
            # TarFile keeps every header it read (megabytes for 100k entries on a Pi); we need
            # none of them afterwards. `members` is a plain attribute typeshed leaves out.
            archive.members.clear()  # type: ignore[attr-defined]
            extractor.add(_tar_entry(archive, member))
        # Reading on past the end lets gzip, bzip2 and xz verify their checksums.
        _guard(partial(archive.fileobj.read, _TRAILER_DRAIN))


class _StrictTarInfo(tarfile.TarInfo):
    """TarFile takes a damaged or missing header for the end of the archive and stops quietly;
    GNU tar reports both, and so do we: half a revision must not deploy."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> _StrictTarInfo:
        if len(buf) == tarfile.BLOCKSIZE and buf.count(0) == tarfile.BLOCKSIZE:
            return super().frombuf(buf, encoding, errors)  # a zero block: the real end
        if not buf:
            raise _Unreadable("the archive ends without its end-of-archive marker")
        try:
            return super().frombuf(buf, encoding, errors)
        except tarfile.HeaderError as exc:
            raise _Unreadable(f"damaged header: {exc}") from None


def _tar_entry(archive: tarfile.TarFile, member: tarfile.TarInfo) -> _Entry:
    kind = _tar_kind(member)
    opener = partial(_open_tar_member, archive, member) if kind is _Kind.FILE else None
    return _Entry(member.name, kind, member.mode, _ns(member.mtime), member.linkname, opener)


def _tar_kind(member: tarfile.TarInfo) -> _Kind:
    if member.isdir():
        return _Kind.DIR
    if member.issym():
        return _Kind.SYMLINK
    if member.islnk():
        return _Kind.HARDLINK
    if member.ischr() or member.isblk():
        return _Kind.DEVICE
    if member.isfifo():
        return _Kind.FIFO
    return _Kind.FILE  # regular, contiguous, sparse, and unknown types (GNU tar does the same)


def _open_tar_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    data = archive.extractfile(member)
    if data is None:
        raise _Unreadable(f"entry {member.name!r} has no data")
    return data


def _extract_zip(bundle: Path, extractor: _Extractor, budget: _Budget) -> None:
    archive = _guard(partial(zipfile.ZipFile, bundle))
    with archive:
        infos = archive.infolist()
        budget.check_declared(len(infos), sum(info.file_size for info in infos))
        for info in infos:
            _check_zip_member(bundle, info)
        for info in infos:
            extractor.add(_zip_entry(archive, info))


def _check_zip_member(bundle: Path, info: zipfile.ZipInfo) -> None:
    if info.flag_bits & 0x1:
        raise BundleError(f"bundle {bundle}: entry {info.filename!r} is encrypted; the agent "
                          "cannot unpack encrypted zips, push the bundle unencrypted")
    if info.compress_type not in _ZIP_METHODS:
        raise BundleError(f"bundle {bundle}: entry {info.filename!r} uses zip compression method "
                          f"{info.compress_type}, which the agent cannot read; rebuild the zip "
                          "with the standard deflate method")


def _zip_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Entry:
    unix = info.external_attr >> 16 if info.create_system == _UNIX else 0
    name = info.orig_filename
    if info.create_system != _UNIX:
        name = name.replace("\\", "/")  # as Info-ZIP unzip does for DOS/Windows-made zips
    kind = _KIND_BY_FORMAT.get(stat.S_IFMT(unix), _Kind.FILE)
    if name.endswith("/"):
        kind = _Kind.DIR
    default = 0o755 if kind is _Kind.DIR else 0o644
    mode = stat.S_IMODE(unix) if unix & 0o777 else default
    mtime_ns = _zip_mtime_ns(info)
    if kind is _Kind.SYMLINK:
        return _Entry(name, kind, mode, mtime_ns, _read_zip_link(archive, info))
    opener = partial(archive.open, info) if kind is _Kind.FILE else None
    return _Entry(name, kind, mode, mtime_ns, "", opener)


def _read_zip_link(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    def read() -> bytes:
        with archive.open(info) as data:
            return data.read(_LINK_MAX + 1)

    target = _guard(read)
    if len(target) > _LINK_MAX:
        raise _Unreadable(f"symlink {info.filename!r} has a target longer than {_LINK_MAX} bytes")
    return os.fsdecode(target)


def _zip_mtime_ns(info: zipfile.ZipInfo) -> int | None:
    """The Info-ZIP extended timestamp (UTC) if present, else the DOS time read as local time."""
    extra, offset = info.extra, 0
    while offset + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, offset)
        body = extra[offset + 4:offset + 4 + length]
        if tag == _ZIP_EXTENDED_TIMESTAMP and len(body) >= 5 and body[0] & 1:
            return _ns(struct.unpack_from("<i", body, 1)[0])
        offset += 4 + length
    try:
        return _ns(time.mktime((*info.date_time, 0, 0, -1)))
    except (OverflowError, ValueError):
        return None


def _ns(seconds: float) -> int | None:
    """Nanoseconds for os.utime; None for what a pax header may hold but no clock can (nan, inf)."""
    try:
        return round(seconds * 1_000_000_000)
    except (OverflowError, ValueError):
        return None


def _directory_entries(source: Path) -> Iterator[_Entry]:
    pending = [""]
    while pending:
        rel = pending.pop()
        for name, info in _listing(source, rel):
            child = f"{rel}/{name}" if rel else name
            entry = _directory_entry(source, child, info)
            if entry.kind is _Kind.DIR:
                pending.append(child)
            yield entry


def _listing(source: Path, rel: str) -> list[tuple[str, os.stat_result]]:
    def scan() -> list[tuple[str, os.stat_result]]:
        with os.scandir(os.path.join(source, rel)) as listing:
            found = [(e.name, e.stat(follow_symlinks=False)) for e in listing]
        return sorted(found, key=lambda item: item[0])

    return _guard(scan)


def _directory_entry(source: Path, rel: str, info: os.stat_result) -> _Entry:
    path = os.path.join(source, rel)
    kind = _KIND_BY_FORMAT.get(stat.S_IFMT(info.st_mode), _Kind.FILE)
    link = _guard(partial(os.readlink, path)) if kind is _Kind.SYMLINK else ""
    opener = partial(_open_no_follow, path) if kind is _Kind.FILE else None
    return _Entry(rel, kind, stat.S_IMODE(info.st_mode), info.st_mtime_ns, link, opener)


def _open_no_follow(path: str) -> IO[bytes]:
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")

