"""An SDS011 on the far side of a real pseudo-terminal, for tests and laptops.

``Sds011Emulator().start()`` opens a pty and answers the protocol from a background thread;
``.port`` is the tty path pyserial opens, so the driver's real serial code runs unchanged. The
emulator keeps the state the real sensor keeps (reporting mode, sleep, working period, device ID),
logs every command with a timestamp from an injectable clock, and can misbehave on purpose:
noise between frames, bad checksums, cut frames, or silence as if unplugged.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import random
import select
import threading
import time
import tty
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

from . import sds011_protocol as proto

_POLL_S = 0.02  # how often the thread checks for stop and for the next active-mode report


@dataclass(frozen=True)
class Faults:
    """What the emulator does wrong. Counts are over every frame it sends (replies and reports)."""

    garbage: int = 0  # random bytes written before each frame
    corrupt_every: int = 0  # every Nth frame gets a wrong checksum (0: never)
    truncate_every: int = 0  # every Nth frame is cut after 6 bytes and never finished (0: never)
    ignore: frozenset[int] = frozenset()  # command numbers dropped as if never heard


@dataclass(frozen=True)
class Event:
    """A command the emulator received. ``handled`` is False when it was ignored (asleep,
    silent, addressed to another sensor)."""

    t: float
    command: int
    data: bytes
    device_id: int
    handled: bool


class Sds011Emulator:
    """A stateful SDS011. Powers up working in active mode, like the factory-fresh sensor.

    The working period is kept and reported but not acted on (its cycle lasts minutes).
    Values come from ``values`` (cycled) or, without it, from a generator seeded with ``seed``.
    ``sent_values`` lists every measurement sent, in order, so a test can tell what a driver
    could have seen.
    """

    def __init__(self, *, device_id: int = 0xA160, firmware: tuple[int, int, int] = (15, 7, 10),
                 values: Sequence[tuple[float, float]] | None = None, seed: int = 0,
                 query_mode: bool = False, sleeping: bool = False, working_period: int = 0,
                 faults: Faults = Faults(), active_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.device_id = device_id
        self.firmware = firmware
        self.query_mode = query_mode
        self.sleeping = sleeping
        self.working_period = working_period
        self.faults = faults
        self.silent = False  # no replies, no reports: the cable is out (commands are still logged)
        self._active_interval_s = active_interval_s
        self._clock = clock
        self._rng = random.Random(seed)  # noqa: S311 - test data, not secrets
        self._noise_rng = random.Random(seed + 1)  # noqa: S311 - apart, so faults keep the values
        self._values: Iterator[tuple[float, float]] | None = (
            itertools.cycle(list(values)) if values else None)
        self._parser = proto.CommandParser()
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._laser: list[tuple[float, bool]] = []
        self._sent_values: list[tuple[float, float, bool]] = []
        self.frames_sent = 0
        self.damaged_frames = 0  # corrupted or truncated on purpose
        self._master = -1
        self._slave = -1
        self._port = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- life cycle -------------------------------------------------------------------------

    @property
    def port(self) -> str:
        if not self._port:
            raise RuntimeError("the emulator is not started")
        return self._port

    def start(self) -> Sds011Emulator:
        self._master, self._slave = os.openpty()
        # Raw mode: the line discipline must not echo or translate bytes (0x0D, 0x11...).
        tty.setraw(self._slave)
        # A UART does not wait for the reader; neither do we when the pty buffer is full.
        os.set_blocking(self._master, False)
        self._port = os.ttyname(self._slave)
        self._laser.append((self._clock(), not self.sleeping))
        self._thread = threading.Thread(target=self._run, name="sds011-emulator", daemon=True)
        self._thread.start()
        return self

    def unplug(self) -> None:
        """Close the device side: the host's next read or write fails as with a pulled USB cable."""
        self._halt()
        if self._master >= 0:
            os.close(self._master)
            self._master = -1

    def close(self) -> None:
        self.unplug()
        if self._slave >= 0:
            os.close(self._slave)
            self._slave = -1

    def __enter__(self) -> Sds011Emulator:
        return self.start() if self._thread is None else self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- what a test looks at -----------------------------------------------------------------

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    @property
    def laser_log(self) -> list[tuple[float, bool]]:
        """(time, laser on) at start and at every change."""
        with self._lock:
            return list(self._laser)

    @property
    def sent_values(self) -> list[tuple[float, float, bool]]:
        """(pm25, pm10, intact) for every measurement sent; not intact = damaged by a fault."""
        with self._lock:
            return list(self._sent_values)

    def laser_on_seconds(self, start: float, end: float) -> float:
        """Seconds the laser was on between ``start`` and ``end`` (emulator clock)."""
        total = 0.0
        log = self.laser_log
        for (t, on), (t_next, _) in zip(log, [*log[1:], (end, False)], strict=True):
            if on:
                total += max(0.0, min(t_next, end) - max(t, start))
        return total

    # --- the device ---------------------------------------------------------------------------

    def _run(self) -> None:
        next_report = time.monotonic() + self._active_interval_s
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], _POLL_S)
                if ready:
                    data = os.read(self._master, 4096)
                    for command in self._parser.feed(data):
                        self._handle(command)
                if time.monotonic() >= next_report:
                    next_report += self._active_interval_s
                    if not (self.query_mode or self.sleeping or self.silent):
                        self._send(*self._measurement())
            except OSError as exc:
                # EIO: no process holds the tty side open right now; wait for the next open.
                if exc.errno not in (errno.EIO, errno.EAGAIN):
                    raise
                self._stop.wait(_POLL_S)

    def _handle(self, cmd: proto.Command) -> None:
        mine = cmd.device_id in (proto.ALL_DEVICES, self.device_id)
        # Asleep, the sensor only listens for sleep/work commands (laser and fan are off).
        awake_enough = not self.sleeping or cmd.command == proto.CMD_SLEEP_WORK
        handled = (mine and awake_enough and not self.silent
                   and cmd.command not in self.faults.ignore)
        with self._lock:
            self._events.append(Event(self._clock(), cmd.command, cmd.data, cmd.device_id, handled))
        if not handled:
            return
        write, value = cmd.data[0] == 1, cmd.data[1]
        if cmd.command == proto.CMD_QUERY_DATA:
            self._send(*self._measurement())
        elif cmd.command == proto.CMD_REPORTING_MODE:
            if write:
                self.query_mode = value == 1
            self._send(self._reply(cmd.command, int(write), int(self.query_mode)))
        elif cmd.command == proto.CMD_SLEEP_WORK:
            if write:
                self._set_sleeping(value == 0)
            self._send(self._reply(cmd.command, int(write), int(not self.sleeping)))
        elif cmd.command == proto.CMD_WORKING_PERIOD:
            if write and value <= proto.MAX_WORKING_PERIOD_MIN:
                self.working_period = value
            self._send(self._reply(cmd.command, int(write), self.working_period))
        elif cmd.command == proto.CMD_FIRMWARE:
            self._send(self._reply(cmd.command, *self.firmware))
        elif cmd.command == proto.CMD_SET_DEVICE_ID:
            self.device_id = int.from_bytes(cmd.data[10:12], "big")
            self._send(self._reply(cmd.command))
        # Other commands go unanswered.

    def _set_sleeping(self, sleeping: bool) -> None:
        if sleeping != self.sleeping:
            self.sleeping = sleeping
            with self._lock:
                self._laser.append((self._clock(), not sleeping))

    def _reply(self, command: int, d2: int = 0, d3: int = 0, d4: int = 0) -> bytes:
        return proto.encode_reply(command, d2, d3, d4, device_id=self.device_id)

    def _measurement(self) -> tuple[bytes, tuple[float, float]]:
        if self._values is not None:
            pm25, pm10 = next(self._values)
        else:
            pm25 = round(self._rng.uniform(2.0, 60.0), 1)
            pm10 = round(pm25 * self._rng.uniform(1.1, 2.0), 1)
        return proto.encode_measurement(pm25, pm10, self.device_id), (pm25, pm10)

    def _send(self, frame: bytes, value: tuple[float, float] | None = None) -> None:
        self.frames_sent += 1
        n, faults = self.frames_sent, self.faults
        damaged = False
        if faults.corrupt_every and n % faults.corrupt_every == 0:
            frame = frame[:-2] + bytes([(frame[-2] + 1) & 0xFF]) + frame[-1:]
            damaged = True
        if faults.truncate_every and n % faults.truncate_every == 0:
            frame = frame[:6]
            damaged = True
        with self._lock:
            self.damaged_frames += damaged
            if value is not None:
                self._sent_values.append((*value, not damaged))
        noise = bytes(self._noise_rng.randrange(256) for _ in range(faults.garbage))
        with contextlib.suppress(BlockingIOError):  # nobody reads: the bytes are lost, as on a wire
            os.write(self._master, noise + frame)
