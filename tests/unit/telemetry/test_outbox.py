"""The SQLite outbox: order, bounds, counters, threads, crashes and corrupt files."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.telemetry.outbox import Message, Outbox, OutboxFull, OutboxStats

REPO = Path(__file__).resolve().parents[3]


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.db"


@pytest.fixture
def outbox(db: Path, clock: FakeClock) -> Iterator[Outbox]:
    with Outbox(db, clock=clock) as box:
        yield box


def payloads(box: Outbox) -> list[bytes]:
    return [m.payload for m in box.peek(10**6)]


def quick_check(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("PRAGMA quick_check")]
    finally:
        conn.close()


def fill(path: Path, count: int, size: int = 200) -> None:
    with Outbox(path) as box:
        for i in range(count):
            box.put(f"dt/t/{i % 2}", b"%06d" % i + b"." * (size - 6))


def corrupt_copies(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))


# -- order, ack, nack, stats ---------------------------------------------------------------

def test_fifo_order_and_ids_survive_reopen(db: Path, clock: FakeClock) -> None:
    with Outbox(db, clock=clock) as box:
        first = [box.put("t", b"%d" % i) for i in range(5)]
        box.ack(first[:2])
    with Outbox(db, clock=clock) as box:
        assert [m.id for m in box.peek()] == first[2:]
        later = box.put("t", b"5")
        assert later > first[-1]  # ids never go back, even past deleted ones
        assert payloads(box) == [b"2", b"3", b"4", b"5"]


def test_ids_are_not_reused_after_everything_was_acked(db: Path) -> None:
    with Outbox(db) as box:
        ids = [box.put("t", b"x") for _ in range(3)]
        box.ack(ids)
    with Outbox(db) as box:
        assert box.put("t", b"y") == ids[-1] + 1


def test_peek_returns_messages_oldest_first_without_removing(outbox: Outbox,
                                                             clock: FakeClock) -> None:
    ids = [outbox.put(f"topic/{i}", b"p%d" % i) for i in range(4)]
    assert outbox.peek(2) == [Message(ids[0], "topic/0", b"p0", clock.now, 0),
                              Message(ids[1], "topic/1", b"p1", clock.now, 0)]
    assert len(outbox.peek()) == 4
    assert outbox.peek(0) == []


def test_ack_deletes_and_counts_once(outbox: Outbox) -> None:
    ids = [outbox.put("t", b"abc") for _ in range(3)]
    outbox.ack([ids[1], ids[1], 12345])
    outbox.ack([ids[1]])
    assert [m.id for m in outbox.peek()] == [ids[0], ids[2]]
    stats = outbox.stats()
    assert (stats.pending, stats.bytes, stats.delivered) == (2, 6, 1)


def test_nack_counts_attempts_and_keeps_the_order(db: Path) -> None:
    with Outbox(db) as box:
        ids = [box.put("t", b"%d" % i) for i in range(3)]
        box.nack([ids[0]])
        box.nack([ids[0], ids[2]])
        box.nack([999])
    with Outbox(db) as box:
        assert [(m.id, m.attempts) for m in box.peek()] == [(ids[0], 2), (ids[1], 0),
                                                            (ids[2], 1)]


def test_stats(outbox: Outbox, clock: FakeClock) -> None:
    assert outbox.stats() == OutboxStats(0, 0, 0, 0, None)
    outbox.put("t", b"12345")
    clock.now += 10
    outbox.put("t", b"123")
    clock.now += 5
    assert outbox.stats() == OutboxStats(pending=2, bytes=8, dropped=0, delivered=0,
                                         oldest_age_s=15.0)


def test_closed_outbox_refuses_work_and_close_is_idempotent(db: Path) -> None:
    box = Outbox(db)
    box.close()
    box.close()
    with pytest.raises(ValueError, match="closed"):
        box.put("t", b"x")


# -- bounds --------------------------------------------------------------------------------

def test_drop_oldest_counts_and_persists(db: Path, clock: FakeClock,
                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), Outbox(db, max_messages=3, clock=clock) as box:
        ids = [box.put("t", b"%d" % i) for i in range(5)]
        assert payloads(box) == [b"2", b"3", b"4"]
        box.ack([ids[2]])
    assert "dropped the oldest" in caplog.text
    with Outbox(db, max_messages=3, clock=clock) as box:
        assert box.stats() == OutboxStats(2, 2, dropped=2, delivered=1, oldest_age_s=0.0)
        box.put("t", b"5")
        box.put("t", b"6")
        assert payloads(box) == [b"4", b"5", b"6"]
        assert box.stats().dropped == 3


def test_bytes_bound_drops_as_many_as_needed(outbox: Outbox, db: Path) -> None:
    outbox.close()
    with Outbox(db, max_bytes=1000) as box:
        for i in range(4):
            box.put("t", bytes([i]) * 250)
        box.put("t", b"x" * 600)  # needs three of the four gone
        assert [m.payload[:1] for m in box.peek()] == [b"\x03", b"x"]
        assert box.stats().bytes == 850
        assert box.stats().dropped == 3
        with pytest.raises(ValueError, match="exceeds"):
            box.put("t", b"y" * 1001)


def test_refuse_policy_raises_and_keeps_everything(db: Path) -> None:
    with Outbox(db, max_messages=2, policy="refuse") as box:
        box.put("t", b"1")
        box.put("t", b"2")
        with pytest.raises(OutboxFull, match="2 messages"):
            box.put("t", b"3")
        assert payloads(box) == [b"1", b"2"]
        assert box.stats().dropped == 0
        box.ack([box.peek(1)[0].id])
        box.put("t", b"3")
    with Outbox(db, max_bytes=4, policy="refuse") as box:
        with pytest.raises(OutboxFull, match="bytes"):
            box.put("t", b"abc")
        assert payloads(box) == [b"2", b"3"]


# -- threads -------------------------------------------------------------------------------

def test_concurrent_puts_and_a_consumer_deliver_every_message_exactly_once(
        outbox: Outbox) -> None:
    per_thread, writers = 250, 4
    delivered: list[bytes] = []
    done = threading.Event()

    def produce(n: int) -> None:
        for i in range(per_thread):
            outbox.put(f"t/{n}", b"%d-%d" % (n, i))

    def consume() -> None:
        while True:
            batch = outbox.peek(50)
            if not batch and done.is_set():
                return
            delivered.extend(m.payload for m in batch)
            outbox.ack(m.id for m in batch)

    consumer = threading.Thread(target=consume)
    consumer.start()
    producers = [threading.Thread(target=produce, args=(n,)) for n in range(writers)]
    for t in producers:
        t.start()
    for t in producers:
        t.join()
    done.set()
    consumer.join(timeout=30)
    assert sorted(delivered) == sorted(b"%d-%d" % (n, i) for n in range(writers)
                                       for i in range(per_thread))
    for n in range(writers):  # each producer's messages came out in its order
        mine = [p for p in delivered if p.startswith(b"%d-" % n)]
        assert mine == [b"%d-%d" % (n, i) for i in range(per_thread)]
    assert outbox.stats().delivered == per_thread * writers
    assert outbox.stats().pending == 0


# -- durability ----------------------------------------------------------------------------

CHILD = """
import sys
from pathlib import Path
from agent.telemetry.outbox import Outbox
box = Outbox(Path(sys.argv[1]), sync_every_s=3600)
i = 0
while True:
    box.put("dt/t", b"%08d" % i)
    i += 1
    if i % 100 == 0:
        box.flush()
        print(i, flush=True)
"""


@pytest.mark.integration
def test_sigkill_keeps_every_flushed_message_in_order(db: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        flushed = 0
        while flushed < 1500:
            line = child.stdout.readline()
            assert line, "child died"
            flushed = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert quick_check(db) == ["ok"]
    with Outbox(db) as box:
        got = payloads(box)
        assert len(got) >= flushed
        assert got == [b"%08d" % i for i in range(len(got))]
        ids = [m.id for m in box.peek(10**6)]
        assert ids == sorted(ids)
    assert quick_check(db) == ["ok"]


def test_torn_wal_tail_opens_as_a_consistent_prefix(db: Path, tmp_path: Path) -> None:
    # What a power cut can leave: the WAL cut short anywhere. SQLite's checksums drop the tail.
    with Outbox(db) as box:
        for i in range(200):
            box.put("t", b"%04d" % i + b"." * 150)
        box.flush()
        wal = Path(f"{db}-wal")
        size = wal.stat().st_size
        kept = []
        for cut in (size // 3 + 517, size - 700):
            copy = tmp_path / f"cut-{cut}" / "outbox.db"
            copy.parent.mkdir()
            shutil.copyfile(db, copy)
            shutil.copyfile(wal, f"{copy}-wal")
            os.truncate(f"{copy}-wal", cut)
            with Outbox(copy) as torn:
                got = payloads(torn)
            assert got == [b"%04d" % i + b"." * 150 for i in range(len(got))]
            assert quick_check(copy) == ["ok"]
            kept.append(len(got))
        assert kept[0] < kept[1] < 200


def test_flush_and_close_leave_nothing_unsynced(db: Path, monkeypatch: pytest.MonkeyPatch,
                                                clock: FakeClock) -> None:
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    with Outbox(db, clock=clock, sync_every_s=30) as box:
        box.put("t", b"1")
        clock.now += 10
        box.put("t", b"2")
        assert synced == []  # within the period: no fsync
        clock.now += 25
        box.put("t", b"3")  # the oldest unsynced commit is 35 s old
        assert len(synced) == 1
        box.put("t", b"4")
        box.flush()
        assert len(synced) == 2
    assert not Path(f"{db}-wal").exists()  # checkpointed into the database file on close
    assert quick_check(db) == ["ok"]


def test_the_timer_syncs_an_idle_outbox(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = threading.Event()
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.set(), real(fd))[1])
    with Outbox(db, sync_every_s=0.05) as box:
        box.put("t", b"1")
        assert synced.wait(5)


# -- corruption ----------------------------------------------------------------------------

def test_garbage_over_the_header_is_moved_aside_and_the_messages_salvaged(
        db: Path, caplog: pytest.LogCaptureFixture) -> None:
    fill(db, 50)
    with open(db, "r+b") as fh:
        fh.write(os.urandom(100))
    broken = db.read_bytes()
    with caplog.at_level(logging.WARNING), Outbox(db) as box:
        got = payloads(box)
        assert box.put("t", b"new") > 50
    [aside] = corrupt_copies(db)
    assert aside.read_bytes() == broken
    assert "salvaged 50 message(s)" in caplog.text
    assert aside.name in caplog.text
    assert got == [b"%06d" % i + b"." * 194 for i in range(50)]
    assert quick_check(db) == ["ok"]


def test_truncated_database_keeps_what_is_readable(db: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    fill(db, 400)
    size = db.stat().st_size
    os.truncate(db, size // 2 + 300)  # mid-page
    with caplog.at_level(logging.WARNING), Outbox(db) as box:
        got = [m.payload for m in box.peek(10**6)]
        ids = [m.id for m in box.peek(10**6)]
        assert box.put("t", b"new") > 400
    assert 0 < len(got) < 400
    assert all(p == b"%06d" % (i - 1) + b"." * 194 for i, p in zip(ids, got, strict=True))
    assert len(corrupt_copies(db)) == 1
    assert f"salvaged {len(got)} message(s)" in caplog.text
    assert quick_check(db) == ["ok"]


def test_a_corrupt_page_in_the_middle_is_stepped_over(db: Path) -> None:
    fill(db, 400)
    with open(db, "r+b") as fh:
        fh.seek(db.stat().st_size // 2 // 1024 * 1024)
        fh.write(b"\xff" * 1024)  # one page of junk
    with Outbox(db) as box:
        ids = [m.id for m in box.peek(10**6)]
    assert 350 < len(ids) < 400
    assert ids[-1] == 400  # the pages after the broken one were read too
    assert quick_check(db) == ["ok"]


def test_a_file_that_is_not_a_database_is_replaced(db: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    db.parent.mkdir(parents=True)
    db.write_text("this is not a database\n" * 200)
    with caplog.at_level(logging.WARNING), Outbox(db) as box:
        assert box.peek() == []
        box.put("t", b"x")
        assert payloads(box) == [b"x"]
    [aside] = corrupt_copies(db)
    assert aside.read_text().startswith("this is not a database")
    assert "salvaged 0 message(s)" in caplog.text


def test_a_foreign_sqlite_database_is_moved_aside(db: Path) -> None:
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE outbox (something TEXT)")
    conn.commit()
    conn.close()
    original = db.read_bytes()
    with Outbox(db) as box:
        box.put("t", b"x")
        assert payloads(box) == [b"x"]
    [aside] = corrupt_copies(db)
    assert aside.read_bytes() == original  # moved aside untouched


def test_corruption_found_while_running_is_recovered(db: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    fill(db, 300)
    with Outbox(db) as box:
        with open(db, "r+b") as fh:  # the card goes bad under the running daemon
            fh.write(os.urandom(100))
            fh.seek(db.stat().st_size // 2 // 1024 * 1024)
            fh.write(b"\x00" * 4096)
        box._conn.execute("PRAGMA shrink_memory")  # forget the cached pages
        with caplog.at_level(logging.WARNING):
            box.put("t", b"after")
            got = payloads(box)
        assert "became corrupt while running" in caplog.text
        assert got[-1] == b"after"
        assert len(got) > 200
    assert quick_check(db) == ["ok"]


def test_files_are_private(db: Path, outbox: Outbox) -> None:
    outbox.put("t", b"secret reading")
    outbox.flush()
    for path in (db, Path(f"{db}-wal")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700


def test_existing_file_mode_is_tightened(db: Path) -> None:
    fill(db, 1)
    db.chmod(0o644)
    with Outbox(db):
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
