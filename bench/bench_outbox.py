"""The telemetry outbox: what it costs the SD card, and how fast it is.

(a) Wear: simulated hours (injected clock) of two sensors each putting a ~200-byte reading
    per minute, peeked and acked two seconds later, as the transport does after a PUBACK.
    Reports the bytes the process caused to be written to disk (``write_bytes`` in
    ``/proc/self/io``: page-cache pages dirtied, counted again after each fsync cleans them),
    the bytes handed to ``write()`` (``wchar``), and the fsyncs: the outbox's own (counted by
    wrapping ``os.fsync``/``os.fdatasync``) plus three per SQLite checkpoint (WAL, database,
    WAL header on reuse; a checkpoint is seen as a change of the database file's mtime).
    Runs once per page size, so the page-size choice is measured, not guessed.
(b) Throughput: put 10,000 messages, then drain them with peek(100) + ack.

Run: ``python -m bench.bench_outbox [--messages 10000] [--page-sizes 1024,4096] [--json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.telemetry.outbox import DEFAULT_PAGE_SIZE, Outbox

from .timing import Figure

TITLE = "Telemetry outbox: disk writes and throughput"
ISSUE = 6
RUNS = {"full": [[]], "quick": [["--hours", "1", "--messages", "2000"]]}

SENSORS = ("dht11", "sds011")
HOUR_S = 3600.0
READING_EVERY_S = 60.0
ACK_AFTER_S = 2.0
SQLITE_FSYNCS_PER_CHECKPOINT = 3


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class WearResult:
    page_size: int
    sync_every_s: float
    hours: int
    readings_per_hour: int
    disk_bytes_per_hour: int | None  # /proc/self/io write_bytes; None where unavailable
    write_call_bytes_per_hour: int | None  # /proc/self/io wchar
    file_bytes: int  # database + WAL size at the end (the fallback where /proc is missing)
    fsyncs_per_hour: float
    outbox_fsyncs_per_hour: float
    sqlite_checkpoints_per_hour: float


@dataclass(frozen=True)
class ThroughputResult:
    messages: int
    page_size: int
    put_per_s: float
    drain_per_s: float
    put_peek_ack_per_s: float


def read_io() -> dict[str, int] | None:
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:
        return None
    fields = dict(line.split(": ", 1) for line in lines)
    return {key: int(value) for key, value in fields.items()}


@contextlib.contextmanager
def counting_fsyncs() -> Iterator[list[int]]:
    """Count os.fsync and os.fdatasync calls made by this process's Python code."""
    calls: list[int] = []
    originals: dict[str, Callable[[int], None]] = {}
    for name in ("fsync", "fdatasync"):
        if hasattr(os, name):
            original: Callable[[int], None] = getattr(os, name)
            originals[name] = original

            def counted(fd: int, _original: Callable[[int], None] = original) -> None:
                calls.append(fd)
                _original(fd)

            setattr(os, name, counted)
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(os, name, original)


def reading(sensor: str, minute: int) -> bytes:
    body = {"state": {"reported": {sensor: {"value": 21.5 + minute % 7, "ts": 1_700_000_000
                                            + 60 * minute, "seq": minute, "status": "ok"}}},
            "clientToken": f"pi-0001-{sensor}-{minute:06d}"}
    raw = json.dumps(body, separators=(",", ":")).encode()
    return raw + b" " * max(0, 200 - len(raw))


def simulate(directory: Path, page_size: int, *, hours: int = 6,
             sync_every_s: float = 30.0) -> WearResult:
    clock = FakeClock(1_700_000_000.0)
    path = directory / f"wear-{page_size}.db"
    with Outbox(path, clock=clock, page_size=page_size, sync_every_s=sync_every_s) as box:

        def minute(index: int) -> None:
            clock.now = start + index * READING_EVERY_S
            ids = [box.put(f"dt/pifleet/pi-0001/{s}", reading(s, index)) for s in SENSORS]
            clock.now += ACK_AFTER_S
            delivered = box.peek(len(ids))
            box.ack(m.id for m in delivered)

        start = clock.now
        for index in range(3):  # warm up: the WAL exists and has been reused once
            minute(index)
        start = clock.now + READING_EVERY_S
        checkpoints = 0
        mtime = path.stat().st_mtime_ns
        minutes = int(hours * HOUR_S / READING_EVERY_S)
        with counting_fsyncs() as fsyncs:
            before = read_io()
            for index in range(minutes):
                minute(index)
                now_mtime = path.stat().st_mtime_ns
                if now_mtime != mtime:
                    checkpoints, mtime = checkpoints + 1, now_mtime
            after = read_io()
        wal = Path(f"{path}-wal")
        files = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    disk = write_calls = None
    if before is not None and after is not None:
        disk = (after["write_bytes"] - before["write_bytes"]) // hours
        write_calls = (after["wchar"] - before["wchar"]) // hours
    return WearResult(page_size, sync_every_s, hours, minutes * len(SENSORS) // hours, disk,
                      write_calls, files,
                      (len(fsyncs) + SQLITE_FSYNCS_PER_CHECKPOINT * checkpoints) / hours,
                      len(fsyncs) / hours, checkpoints / hours)


def throughput(directory: Path, messages: int, page_size: int) -> ThroughputResult:
    payload = reading("dht11", 1)
    with Outbox(directory / f"throughput-{page_size}.db", page_size=page_size,
                max_messages=max(messages, 1)) as box:
        started = time.perf_counter()
        for _ in range(messages):
            box.put("dt/pifleet/pi-0001/dht11", payload)
        put_s = time.perf_counter() - started
        drained = 0
        started = time.perf_counter()
        while batch := box.peek(100):
            box.ack(m.id for m in batch)
            drained += len(batch)
        drain_s = time.perf_counter() - started
        assert drained == messages
    return ThroughputResult(messages, page_size, messages / put_s, messages / drain_s,
                            messages / (put_s + drain_s))


def figures(result: dict[str, Any], argv: list[str]) -> list[Figure]:
    rows = []
    for w in result["wear"]:
        disk = w["disk_bytes_per_hour"]
        shown = "n/a" if disk is None else f"{disk / 1e6:.2f} MB"
        default = " (default)" if w["page_size"] == DEFAULT_PAGE_SIZE else ""
        rows.append(Figure(
            f"bytes written to disk per hour, 2 sensors x 1 reading/min, page size "
            f"{w['page_size']:,}{default}",
            f"{shown}, {w['fsyncs_per_hour']:.0f} fsyncs"))
    for t in result["throughput"]:
        rows.append(Figure(f"outbox put + peek + ack, {t['messages']:,} messages, page size "
                           f"{t['page_size']:,}", f"{t['put_peek_ack_per_s']:,.0f} msg/s"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--page-sizes", default=f"{DEFAULT_PAGE_SIZE},4096")
    parser.add_argument("--sync-every-s", type=float, default=30.0)
    parser.add_argument("--hours", type=int, default=6, help="simulated hours to average")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    page_sizes = [int(p) for p in args.page_sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-outbox-", dir=os.environ.get("BENCH_DIR"))\
            as tmp:
        directory = Path(tmp)
        wear = [simulate(directory, p, hours=args.hours, sync_every_s=args.sync_every_s)
                for p in page_sizes]
        speed = [throughput(directory, args.messages, p) for p in page_sizes]
    if args.json:
        print(json.dumps({"wear": [asdict(w) for w in wear],
                          "throughput": [asdict(s) for s in speed]}, indent=2))
        return 0
    print(f"(a) per hour, averaged over {args.hours} simulated hours: {len(SENSORS)} sensors x "
          f"1 reading/min (~200 B), ack after {ACK_AFTER_S:g} s, "
          f"sync_every_s={args.sync_every_s:g}")
    print(f"{'page':>6} {'disk B/h':>10} {'write() B/h':>12} {'fsyncs/h':>9} "
          f"{'outbox':>8} {'ckpts/h':>8}")
    for w in wear:
        disk = "n/a" if w.disk_bytes_per_hour is None else f"{w.disk_bytes_per_hour:,}"
        calls = ("n/a" if w.write_call_bytes_per_hour is None
                 else f"{w.write_call_bytes_per_hour:,}")
        print(f"{w.page_size:>6} {disk:>10} {calls:>12} {w.fsyncs_per_hour:>9.1f} "
              f"{w.outbox_fsyncs_per_hour:>8.1f} {w.sqlite_checkpoints_per_hour:>8.2f}")
    print(f"(b) {args.messages:,} messages: put, then peek(100) + ack")
    print(f"{'page':>6} {'put/s':>10} {'drain/s':>10} {'put+peek+ack msg/s':>19}")
    for s in speed:
        print(f"{s.page_size:>6} {s.put_per_s:>10,.0f} {s.drain_per_s:>10,.0f} "
              f"{s.put_peek_ack_per_s:>19,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
