"""Store-and-forward outbox: a bounded, ordered queue of telemetry messages in SQLite that
survives restarts, crashes and power cuts while writing little to the SD card.

The sensor loop ``put``s every message it wants delivered; the transport ``peek``s the oldest,
publishes them and ``ack``s each one once the broker has confirmed it (PUBACK, or
``/update/accepted`` for a shadow) or ``nack``s it when the attempt failed. Nothing is removed
before its ``ack``, so delivery is at-least-once and the message id (never reused, increasing
across restarts) lets the cloud side de-duplicate.

Durability (the SD-card trade-off)
----------------------------------
The database runs in WAL mode with ``synchronous=NORMAL``: a commit appends to the write-ahead
log but does not fsync it. Every committed message survives the process being killed at any
moment (the kernel holds the data). To survive a *power cut* the WAL must reach the card: the
outbox fsyncs it when the oldest unsynced commit is ``sync_every_s`` old (a timer, or the next
operation if the injected clock says so), on ``flush()`` and on ``close()``. So **a power cut
loses at most the messages put (and the acks made) in the last ``sync_every_s`` seconds**
before it; a lost ack only means that message is sent again. Whatever survives is consistent:
SQLite's WAL checksums discard a torn tail, and the file is checked when it is opened. (This
assumes storage that honours fsync; some cheap SD cards do not.)
``sync_every_s=0`` fsyncs after every commit (every reading matters, more wear).

One fsync of the WAL per period is all the outbox adds. Checkpoints (WAL copied into the main
file, which costs the WAL, the database and the WAL header an fsync each) are SQLite's automatic
ones every 1000 WAL pages plus one on ``close()``. Pages are 1 KiB by default: a put or an ack
rewrites about two pages, and ``bench/bench_outbox.py`` measures 1 KiB pages writing about a
third of the bytes 4 KiB pages do (two ~200-byte readings a minute: ~0.63 MB/hour against
~1.7 MB/hour, 61 fsyncs/hour either way).

Bounds and corruption
---------------------
The queue is bounded by message count and by total payload bytes. When full, policy
``"drop-oldest"`` deletes the oldest messages and counts them (``stats().dropped``, persisted,
plus a rate-limited warning); policy ``"refuse"`` raises ``OutboxFull``.

On open the database is checked (``PRAGMA quick_check``). A corrupt file, or something that is
not an outbox database, is kept for forensics as ``<name>.corrupt-<UTC timestamp>`` (with its
``-wal``), the readable messages and counters are copied into a fresh database (each row carries
a CRC-32, so only intact messages are kept), a warning says how many were salvaged, and the
outbox carries on. Ids continue past the highest one still known. Corruption met later, while
running, is handled the same way. The daemon never stops over a broken queue file.

The database file and its WAL are created mode 0600 (readings may be sensitive); the parent
directory is created if missing. One connection, guarded by a lock, serves all threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from agent.deploy.atomic import fsync_dir

log = logging.getLogger(__name__)

Policy = Literal["drop-oldest", "refuse"]
T = TypeVar("T")

SCHEMA_VERSION = 1
# Measured by bench/bench_outbox.py: 1 KiB pages write about a third of the bytes of 4 KiB
# pages for ~200-byte readings (a put or an ack rewrites about two pages).
DEFAULT_PAGE_SIZE = 1024
_DROP_WARNING_EVERY_S = 300.0
_SELECT_NONE = "SELECT id, topic, payload, created, attempts, crc FROM outbox LIMIT 0"
_SELECT_OLDEST = ("SELECT id, topic, payload, created, attempts FROM outbox "
                  "ORDER BY id LIMIT ?")
_SELECT_AFTER = ("SELECT id, topic, payload, created, attempts, crc FROM outbox "
                 "WHERE id > ? ORDER BY id")
_SELECT_ONE = "SELECT id, topic, payload, created, attempts, crc FROM outbox WHERE id = ?"
_INSERT_ROW = ("INSERT INTO outbox (id, topic, payload, created, attempts, crc) "
               "VALUES (?, ?, ?, ?, ?, ?)")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS outbox ("
    "id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL, "
    "created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, crc INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0), ('delivered', 0)",
)
_CORRUPTION = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_SALVAGE_PAGE_SIZES = (DEFAULT_PAGE_SIZE, 4096, 512, 2048, 8192, 16384, 32768, 65536)
_MAX_ID = 2**63 - 1

_Row = tuple[int, str, bytes, float, int]


@dataclass(frozen=True)
class Message:
    """One queued message; ``id`` increases with every put and is never reused."""

    id: int
    topic: str
    payload: bytes
    created: float
    attempts: int


@dataclass(frozen=True)
class OutboxStats:
    """Queue depth and lifetime counters (``dropped`` and ``delivered`` persist)."""

    pending: int
    bytes: int
    dropped: int
    delivered: int
    oldest_age_s: float | None


class OutboxFull(Exception):
    """The outbox is at its bounds and its policy is ``"refuse"``."""


class _Unusable(Exception):
    """The database file is corrupt or is not an outbox database."""


@dataclass
class _Salvage:
    rows: list[_Row] = field(default_factory=list)
    unreadable: int = 0
    dropped: int = 0
    delivered: int = 0
    sequence: int = 0


class Outbox:
    """A bounded FIFO of messages in the SQLite database at ``path`` (see the module docstring).

    Example::

        with Outbox(Path("/var/lib/pifleet/outbox.db")) as outbox:
            outbox.put("dt/pifleet/pi-1/dht11", b'{"t": 21.5}')
            for message in outbox.peek(10):
                ...  # publish, then outbox.ack([message.id]) or outbox.nack([message.id])
    """

    def __init__(self, path: Path, *, max_messages: int = 50_000, max_bytes: int = 16 * 2**20,
                 policy: Policy = "drop-oldest", sync_every_s: float = 30.0,
                 clock: Callable[[], float] = time.time,
                 page_size: int = DEFAULT_PAGE_SIZE) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("max_messages and max_bytes must be at least 1")
        if policy not in ("drop-oldest", "refuse"):
            raise ValueError(f"policy must be 'drop-oldest' or 'refuse', not {policy!r}")
        if sync_every_s < 0:
            raise ValueError("sync_every_s must not be negative")
        if page_size not in _SALVAGE_PAGE_SIZES:
            raise ValueError("page_size must be a power of two from 512 to 65536")
        self._path = Path(path)
        self._wal = Path(f"{self._path}-wal")
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._policy = policy
        self._sync_every_s = sync_every_s
        self._clock = clock
        self._page_size = page_size
        self._lock = threading.RLock()
        self._closed = False
        self._timer: threading.Timer | None = None
        self._dirty_since: float | None = None
        self._synced_wal_inode: int | None = None
        self._last_drop_warning: float | None = None
        self._pending = self._bytes = self._dropped = self._delivered = 0

        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self._path.exists():
            os.close(os.open(self._path, os.O_CREAT | os.O_WRONLY, 0o600))
            fsync_dir(self._path.parent)
        os.chmod(self._path, 0o600)
        self._conn = self._open()
        self._load_counters()
        if self._wal.exists() and self._wal.stat().st_size > 0:
            # Left by a process that died: its last commits may not be on the card yet.
            self._after_commit(self._clock())

    # -- public API -------------------------------------------------------------------------

    def put(self, topic: str, payload: bytes) -> int:
        """Queue a message and return its id. At the bounds, drop the oldest messages (counted)
        or raise ``OutboxFull``, as the policy says. A payload larger than ``max_bytes`` can
        never fit: ``ValueError``."""
        data = bytes(payload)
        size = len(data)
        if size > self._max_bytes:
            raise ValueError(f"payload of {size} bytes exceeds the outbox bound of "
                             f"{self._max_bytes} bytes")
        with self._lock:
            self._check_open()
            now = self._clock()

            def work(conn: sqlite3.Connection) -> tuple[int, int, int]:
                over_count = self._pending + 1 - self._max_messages
                over_bytes = self._bytes + size - self._max_bytes
                dropped = dropped_bytes = 0
                if over_count > 0 or over_bytes > 0:
                    if self._policy == "refuse":
                        raise OutboxFull(
                            f"outbox full: {self._pending} messages, {self._bytes} bytes "
                            f"(bounds {self._max_messages} messages, {self._max_bytes} bytes)")
                    dropped, dropped_bytes = _drop_oldest(conn, over_count, over_bytes)
                cursor = conn.execute(
                    "INSERT INTO outbox (topic, payload, created, attempts, crc) "
                    "VALUES (?, ?, ?, 0, ?)", (topic, data, now, _crc(topic, data, now)))
                return int(cursor.lastrowid or 0), dropped, dropped_bytes

            message_id, dropped, dropped_bytes = self._run(work, write=True)
            self._pending += 1 - dropped
            self._bytes += size - dropped_bytes
            if dropped:
                self._dropped += dropped
                self._warn_dropped(now)
            self._after_commit(now)
            return message_id

    def peek(self, limit: int = 100) -> list[Message]:
        """The ``limit`` oldest messages, oldest first. Nothing is removed."""
        if limit <= 0:
            return []
        with self._lock:
            self._check_open()
            rows = self._run(lambda conn: conn.execute(
                _SELECT_OLDEST, (limit,)).fetchall(),
                write=False)
        return [Message(int(i), str(t), bytes(p), float(c), int(a)) for i, t, p, c, a in rows]

    def ack(self, ids: Iterable[int]) -> None:
        """These messages were delivered: delete them and count them. Unknown ids (already
        acked, or dropped meanwhile) are ignored."""
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return
        with self._lock:
            self._check_open()

            def work(conn: sqlite3.Connection) -> tuple[int, int]:
                count = size = 0
                for message_id in wanted:
                    row = conn.execute("SELECT length(payload) FROM outbox WHERE id = ?",
                                       (message_id,)).fetchone()
                    if row is not None:
                        conn.execute("DELETE FROM outbox WHERE id = ?", (message_id,))
                        count += 1
                        size += int(row[0])
                if count:
                    conn.execute("UPDATE meta SET value = value + ? WHERE key = 'delivered'",
                                 (count,))
                return count, size

            count, size = self._run(work, write=True)
            if count:
                self._pending -= count
                self._bytes -= size
                self._delivered += count
                self._after_commit(self._clock())

    def nack(self, ids: Iterable[int]) -> None:
        """An attempt to deliver these messages failed: count it; they keep their place."""
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return
        with self._lock:
            self._check_open()
            self._run(lambda conn: conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1 WHERE id = ?",
                [(i,) for i in wanted]), write=True)
            self._after_commit(self._clock())

    def stats(self) -> OutboxStats:
        with self._lock:
            self._check_open()
            row = self._run(lambda conn: conn.execute(
                "SELECT created FROM outbox ORDER BY id LIMIT 1").fetchone(), write=False)
            age = None if row is None else max(0.0, self._clock() - float(row[0]))
            return OutboxStats(self._pending, self._bytes, self._dropped, self._delivered, age)

    def flush(self) -> None:
        """Make every committed put, ack and nack durable now (one fsync of the WAL)."""
        with self._lock:
            self._check_open()
            self._sync()

    def close(self) -> None:
        """Checkpoint everything into the database file (fsync'd) and close. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            timer, self._timer = self._timer, None
            if timer is not None:
                timer.cancel()
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("outbox %s: final checkpoint failed: %s", self._path, exc)
            finally:
                self._conn.close()
        if timer is not None and timer is not threading.current_thread():
            timer.join()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- durability -------------------------------------------------------------------------

    def _after_commit(self, now: float) -> None:
        if self._sync_every_s <= 0:
            self._sync()
        elif self._dirty_since is None:
            self._dirty_since = now
            self._timer = threading.Timer(self._sync_every_s, self._on_timer)
            self._timer.daemon = True
            self._timer.start()
        elif now - self._dirty_since >= self._sync_every_s:
            self._sync()

    def _on_timer(self) -> None:
        with self._lock:
            if self._closed or self._timer is not threading.current_thread():
                return
            try:
                self._sync()
            except OSError as exc:
                log.warning("outbox %s: fsync failed: %s", self._path, exc)

    def _sync(self) -> None:
        """fsync the WAL (and, once per WAL file, the directory that holds it)."""
        timer, self._timer = self._timer, None
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
        self._dirty_since = None
        try:
            fd = os.open(self._wal, os.O_RDONLY)
        except FileNotFoundError:
            return  # nothing written since the last checkpoint
        try:
            # fdatasync: the data and the size, not the timestamps (less journal traffic).
            _fdatasync(fd)
            inode = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        if inode != self._synced_wal_inode:
            fsync_dir(self._path.parent)
            self._synced_wal_inode = inode

    # -- opening, checking, recovering ------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"outbox {self._path} is closed")

    def _run(self, work: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run ``work`` (in a transaction if it writes); on corruption, recover and retry once."""
        for attempt in (1, 2):
            try:
                if not write:
                    return work(self._conn)
                with _transaction(self._conn):
                    return work(self._conn)
            except sqlite3.DatabaseError as exc:
                if attempt == 2 or exc.sqlite_errorcode not in _CORRUPTION:
                    raise
                log.error("outbox %s became corrupt while running (%s); recovering",
                          self._path, exc)
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._recover(str(exc))
                self._conn = self._connect_checked_or_fail()
                self._load_counters()
        raise AssertionError("unreachable")

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect_checked()
        except _Unusable as exc:
            reason = str(exc)
        self._recover(reason)
        return self._connect_checked_or_fail()

    def _connect_checked_or_fail(self) -> sqlite3.Connection:
        try:
            return self._connect_checked()
        except _Unusable as exc:
            raise sqlite3.DatabaseError(f"fresh outbox database {self._path} is unusable: "
                                        f"{exc}") from exc

    def _connect_checked(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, timeout=10.0, isolation_level=None,
                               check_same_thread=False)
        try:
            self._configure(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if exc.sqlite_errorcode in _CORRUPTION:
                raise _Unusable(str(exc)) from exc
            raise
        except BaseException:
            conn.close()
            raise
        return conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise _Unusable("quick_check: " + "; ".join(problems[:3]))
        # Read-only checks first: a file that is not ours is moved aside unchanged.
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise _Unusable(f"schema version {version} is newer than {SCHEMA_VERSION}")
        if version == 0 and tables:
            raise _Unusable("not an outbox database: tables without an outbox schema version")
        if version:
            try:
                conn.execute(_SELECT_NONE)
                conn.execute("SELECT key, value FROM meta LIMIT 0")
            except sqlite3.OperationalError as exc:
                raise _Unusable(f"not an outbox database: {exc}") from exc
        conn.execute(f"PRAGMA page_size = {self._page_size}")  # a new database only
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            log.warning("outbox %s: WAL mode unavailable (journal_mode=%s)", self._path, mode)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA secure_delete = FAST")  # zero deleted readings when it is free
        if not version:
            with _transaction(conn):
                _create_schema(conn)

    def _load_counters(self) -> None:
        count, size = self._conn.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox").fetchone()
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        self._pending, self._bytes = int(count), int(size)
        self._dropped = int(meta.get("dropped", 0))
        self._delivered = int(meta.get("delivered", 0))

    def _recover(self, reason: str) -> None:
        """Keep the unusable file aside, salvage what is readable into a fresh database."""
        parent, name = self._path.parent, self._path.name
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        aside = parent / f"{name}.corrupt-{stamp}"
        serial = 1
        while aside.exists():
            aside, serial = parent / f"{name}.corrupt-{stamp}-{serial}", serial + 1
        salvage = _Salvage()
        workdir = Path(tempfile.mkdtemp(prefix=f".{name}.salvage-", dir=parent))
        try:
            fresh = workdir / "fresh.db"
            try:
                copy = workdir / "copy.db"
                shutil.copyfile(self._path, copy)
                if self._wal.exists():
                    shutil.copyfile(self._wal, workdir / "copy.db-wal")
                salvage = _salvage(copy)
                self._build(fresh, salvage)
            except (OSError, sqlite3.Error) as exc:
                log.error("outbox %s: salvage failed (%s); starting empty", self._path, exc)
                salvage = _Salvage()
                fresh.unlink(missing_ok=True)
                self._build(fresh, salvage)
            # ``path`` names the broken file until the fresh one atomically replaces it.
            try:
                os.link(self._path, aside)
            except OSError:
                shutil.copy2(self._path, aside)
            if self._wal.exists():
                os.replace(self._wal, f"{aside}-wal")
            Path(f"{self._path}-shm").unlink(missing_ok=True)
            os.replace(fresh, self._path)
            fsync_dir(parent)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        ids = [row[0] for row in salvage.rows]
        log.warning(
            "outbox %s was unusable (%s); kept it as %s; salvaged %d message(s)%s%s, "
            "dropped=%d delivered=%d; continuing with a fresh database",
            self._path, reason, aside.name, len(ids),
            f" (ids {ids[0]}..{ids[-1]})" if ids else "",
            f", {salvage.unreadable} unreadable" if salvage.unreadable else "",
            salvage.dropped, salvage.delivered)

    def _build(self, target: Path, salvage: _Salvage) -> None:
        conn = sqlite3.connect(target, isolation_level=None)
        try:
            conn.execute(f"PRAGMA page_size = {self._page_size}")
            conn.execute("PRAGMA synchronous = FULL")
            with _transaction(conn):
                _create_schema(conn)
                conn.executemany(_INSERT_ROW, [(*row, _crc(*row[1:4])) for row in salvage.rows])
                conn.executemany("UPDATE meta SET value = ? WHERE key = ?",
                                 [(salvage.dropped, "dropped"),
                                  (salvage.delivered, "delivered")])
                # Ids must keep increasing past every id ever handed out.
                sequence = max([salvage.sequence, *(row[0] for row in salvage.rows)])
                conn.execute("DELETE FROM sqlite_sequence WHERE name = 'outbox'")
                conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)",
                             (sequence,))
        finally:
            conn.close()
        os.chmod(target, 0o600)
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _warn_dropped(self, now: float) -> None:
        last = self._last_drop_warning
        if last is None or now - last >= _DROP_WARNING_EVERY_S or now < last:
            self._last_drop_warning = now
            log.warning("outbox %s is full (bounds %d messages, %d bytes): dropped the oldest; "
                        "%d dropped so far", self._path, self._max_messages, self._max_bytes,
                        self._dropped)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _create_schema(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _drop_oldest(conn: sqlite3.Connection, over_count: int, over_bytes: int) -> tuple[int, int]:
    """Delete the fewest oldest messages that bring both excesses to zero; count them."""
    count = size = 0
    last_id: int | None = None
    with contextlib.closing(conn.execute("SELECT id, length(payload) FROM outbox ORDER BY id")) \
            as cursor:
        for message_id, length in cursor:
            if count >= over_count and size >= over_bytes:
                break
            last_id, count, size = int(message_id), count + 1, size + int(length)
    if last_id is not None:
        conn.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))
        conn.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (count,))
    return count, size


# -- salvage --------------------------------------------------------------------------------

def _salvage(copy: Path) -> _Salvage:
    """Read what can still be read from a copy of a broken outbox database."""
    salvage = _Salvage()
    conn = _open_for_salvage(copy)
    if conn is None:
        return salvage
    try:
        salvage.rows, salvage.unreadable = _read_rows(conn)
        with contextlib.suppress(sqlite3.Error, ValueError, TypeError):
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            salvage.dropped = max(0, int(meta.get("dropped", 0)))
            salvage.delivered = max(0, int(meta.get("delivered", 0)))
        with contextlib.suppress(sqlite3.Error, ValueError, TypeError):
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            salvage.sequence = max(0, int(row[0])) if row else 0
    finally:
        conn.close()
    return salvage


def _open_for_salvage(copy: Path) -> sqlite3.Connection | None:
    conn = _try_salvage_connect(copy)
    if conn is not None:
        return conn
    # The header may be what is broken (e.g. the first bytes overwritten): write a plausible
    # one for each page size and keep whichever reads the most messages.
    best: tuple[int, int] | None = None
    for page_size in _SALVAGE_PAGE_SIZES:
        _write_header(copy, page_size)
        conn = _try_salvage_connect(copy)
        if conn is None:
            continue
        try:
            readable = len(_read_rows(conn)[0])
        finally:
            conn.close()
        if best is None or readable > best[1]:
            best = (page_size, readable)
    if best is None:
        return None
    _write_header(copy, best[0])
    return _try_salvage_connect(copy)


def _try_salvage_connect(copy: Path) -> sqlite3.Connection | None:
    Path(f"{copy}-shm").unlink(missing_ok=True)
    conn = sqlite3.connect(copy, isolation_level=None)
    try:
        found = conn.execute("SELECT count(*) FROM sqlite_master "
                             "WHERE type = 'table' AND name = 'outbox'").fetchone()[0]
    except sqlite3.Error:
        found = 0
    if not found:
        conn.close()
        return None
    return conn


def _write_header(copy: Path, page_size: int) -> None:
    """Overwrite the 100-byte database header with a minimal valid one (WAL mode, UTF-8)."""
    header = bytearray(100)
    header[0:16] = b"SQLite format 3\x00"
    struct.pack_into(">HBBBBBB", header, 16, 1 if page_size == 65536 else page_size,
                     2, 2, 0, 64, 32, 32)
    struct.pack_into(">I", header, 24, 1)        # change counter; size at 28 left 0: from file
    struct.pack_into(">I", header, 40, 1)        # schema cookie
    struct.pack_into(">I", header, 44, 4)        # schema format
    struct.pack_into(">I", header, 56, 1)        # UTF-8
    struct.pack_into(">I", header, 96, sqlite3.sqlite_version_info[0] * 1_000_000
                     + sqlite3.sqlite_version_info[1] * 1000 + sqlite3.sqlite_version_info[2])
    with open(copy, "r+b") as fh:
        fh.write(header)


def _read_rows(conn: sqlite3.Connection) -> tuple[list[_Row], int]:
    """Every readable message in id order, stepping over unreadable rows and pages."""
    rows: list[_Row] = []
    unreadable = 0
    after = 0
    while True:
        try:
            for raw in conn.execute(_SELECT_AFTER,
                                    (after,)):
                after = int(raw[0])
                row = _valid_row(raw)
                if row is None:
                    unreadable += 1
                else:
                    rows.append(row)
            return rows, unreadable
        except sqlite3.Error:
            following = _next_readable_id(conn, after)
            if following is None:
                return rows, unreadable + 1
            try:
                raw = conn.execute(_SELECT_ONE,
                                   (following,)).fetchone()
                row = None if raw is None else _valid_row(raw)
            except sqlite3.Error:
                row = None
            if row is None:
                unreadable += 1
            else:
                rows.append(row)
            after = following


def _next_readable_id(conn: sqlite3.Connection, after: int) -> int | None:
    """The first id greater than ``after`` whose key can be read, skipping broken pages."""

    def probe(start: int) -> int | Literal[False] | None:
        try:
            row = conn.execute("SELECT id FROM outbox WHERE id > ? ORDER BY id LIMIT 1",
                               (start,)).fetchone()
        except sqlite3.Error:
            return False
        return None if row is None else int(row[0])

    found = probe(after)
    if found is not False:
        return found
    low, step = after, 1
    while True:
        if after + step >= _MAX_ID:
            return None
        found = probe(after + step)
        if found is not False:
            high = after + step
            break
        low, step = after + step, step * 2
    while high - low > 1:  # the smallest start past the broken pages
        middle = (low + high) // 2
        if probe(middle) is False:
            low = middle
        else:
            high = middle
    found = probe(high)
    return None if found is False else found


def _fdatasync(fd: int) -> None:
    sync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)  # not on macOS
    sync(fd)


def _crc(topic: str, payload: bytes, created: float) -> int:
    """CRC-32 of what a message is: lets salvage tell a torn or zero-filled row from a good one."""
    return zlib.crc32(payload, zlib.crc32(struct.pack(">d", created) + topic.encode() + b"\0"))


def _valid_row(raw: tuple[object, ...]) -> _Row | None:
    message_id, topic, payload, created, attempts, crc = raw
    if not (isinstance(message_id, int) and isinstance(topic, str)
            and isinstance(payload, bytes) and isinstance(created, int | float)
            and isinstance(attempts, int) and isinstance(crc, int)):
        return None
    if crc != _crc(topic, payload, float(created)):
        return None
    return message_id, topic, payload, float(created), max(0, attempts)
