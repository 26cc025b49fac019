"""Nova Fitness SDS011 particulate sensor over a USB serial adapter, duty-cycled to save its laser.

The laser and fan last about 8000 h of continuous work, so the driver keeps the sensor asleep and
wakes it only to read: wake, wait out the 30 s warm-up, take a few query-mode readings 3 s apart,
report their median and put it back to sleep, whatever went wrong in between.

The serial port is any ``SerialLike`` (pyserial's ``Serial`` fits), and the clock and sleep are
injected, so tests run the real protocol against an emulator without waiting for the warm-up.
"""

from __future__ import annotations

import errno
import logging
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypedDict, TypeGuard, Unpack

from . import sds011_protocol as proto
from .base import OUT_OF_RANGE, WARMING_UP, Reading, SensorError

log = logging.getLogger(__name__)

# What a dead port raises: pyserial's SerialException is an OSError, but its input flush lets
# termios.error through (EIO once the adapter is gone).
try:
    import termios

    _PORT_ERRORS: tuple[type[Exception], ...] = (OSError, termios.error)
except ImportError:  # not POSIX
    _PORT_ERRORS = (OSError,)

DEFAULT_PORT = "/dev/ttyUSB0"
BAUD = 9600
DATASHEET_WARMUP_S = 30.0  # "data is stable after 30 seconds"
MIN_QUERY_SPACING_S = 3.0  # the datasheet asks for no faster polling
UNIT = "µg/m³"
_MAX_RESENDS = 2  # asking again after a broken answer beats waiting for the deadline


class SerialLike(Protocol):
    """What the driver needs from a serial port. ``read`` returns what arrived within the port's
    timeout, possibly fewer bytes than asked for or none, like pyserial."""

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes, /) -> int | None: ...

    def reset_input_buffer(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class DutyCycle:
    """How often and how long the laser runs. The defaults read every 5 minutes with the laser
    on for at most 45 s (30 s warm-up, then 5 readings 3 s apart): 15 % of the time, which
    stretches the rated 8000 h to about 6 years."""

    interval_s: float = 300.0  # from the start of one reading to the start of the next
    warmup_s: float = DATASHEET_WARMUP_S
    samples: int = 5
    sample_spacing_s: float = MIN_QUERY_SPACING_S

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError("samples must be at least 1")
        if self.warmup_s < 0 or self.sample_spacing_s < 0:
            raise ValueError("warmup_s and sample_spacing_s cannot be negative")
        if self.laser_budget_s >= self.interval_s:
            raise ValueError(f"a reading keeps the laser on up to {self.laser_budget_s:g} s, "
                             f"longer than the {self.interval_s:g} s interval")

    @property
    def laser_budget_s(self) -> float:
        """Laser-on time per reading, an upper bound: warm-up plus one spacing per sample (the
        samples need one spacing fewer; that one covers the wake/sleep handshakes)."""
        return self.warmup_s + self.samples * self.sample_spacing_s

    @property
    def laser_fraction(self) -> float:
        return self.laser_budget_s / self.interval_s

    def wait_s(self, started: float, now: float) -> float:
        """How long to wait before the next reading, given when the last one started."""
        return max(0.0, started + self.interval_s - now)


class DriverOptions(TypedDict, total=False):
    name: str
    address: int
    duty: DutyCycle
    reply_timeout_s: float
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    wall_clock: Callable[[], float]


class SDS011:
    """The driver. Not for concurrent use from several threads beyond ``health``: calls that
    talk to the sensor take a lock, so a second caller waits.

    ``clock`` is monotonic seconds for deadlines and laser time; it must advance while the port
    blocks in ``read`` (a fake clock adds its virtual sleeps to real time). ``wall_clock`` stamps
    readings. ``address`` picks one sensor on a shared line; the default reaches any sensor.
    """

    def __init__(self, port: SerialLike, *, name: str = "sds011",
                 address: int = proto.ALL_DEVICES, duty: DutyCycle | None = None,
                 reply_timeout_s: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.duty = duty or DutyCycle()
        self._port = port
        self._port_name = str(getattr(port, "port", None) or "the serial port")
        self._address = address
        self._reply_timeout_s = reply_timeout_s
        self._clock = clock
        self._pause = sleep
        self._wall_clock = wall_clock
        self._parser = proto.FrameParser()
        self._lock = threading.RLock()
        self._device_id: int | None = None
        self._firmware: str | None = None
        self._query_mode = False
        self._awake_since: float | None = None  # laser possibly on since then
        self._laser_on_s = 0.0
        self._reads = 0
        self._reads_ok = 0
        self._timeouts = 0
        self._stray_frames = 0

    @classmethod
    def open(cls, port: str = DEFAULT_PORT, *, read_timeout_s: float = 0.2,
             **options: Unpack[DriverOptions]) -> SDS011:
        """Open ``port`` with pyserial at 9600 8N1. ``read_timeout_s`` bounds each read call,
        not a reply: the driver's own deadline (``reply_timeout_s``) does that."""
        try:
            import serial  # type: ignore[import-untyped]  # noqa: PLC0415 - only on a Pi
        except ImportError as exc:
            raise SensorError("pyserial is not installed: pip install 'pifleet[pi]'") from exc
        try:
            conn = serial.Serial(port, BAUD, timeout=read_timeout_s)
        except (OSError, ValueError) as exc:  # pyserial's SerialException is an OSError
            raise _open_error(port, exc) from exc
        return cls(conn, **options)

    # --- commands ---------------------------------------------------------------------------

    @property
    def device_id(self) -> int | None:
        """The sensor's own ID, learned from its last frame (None before any)."""
        return self._device_id

    def set_query_mode(self) -> None:
        """Answer only when asked (the factory default sends a frame every second)."""
        self._transact(proto.set_reporting_mode(True, self._address), "query mode",
                       lambda f: _reply(f, proto.CMD_REPORTING_MODE) and f.query_mode is True)
        self._query_mode = True

    def query(self) -> tuple[float, float]:
        """(PM2.5, PM10) in µg/m³ from a fresh measurement."""
        frame = self._transact(proto.query_data(self._address), "data query",
                               lambda f: isinstance(f, proto.Measurement))
        assert isinstance(frame, proto.Measurement)  # noqa: S101 - narrowed by the predicate
        return frame.pm25, frame.pm10

    def wake(self) -> None:
        """Laser and fan on. Sends work, once more if unanswered (a sleeping sensor may spend the
        first command waking up), then drops whatever was received before."""
        with self._lock:
            if self._awake_since is None:
                # From the moment we ask: if the answer is lost the laser may be on all the same.
                self._awake_since = self._clock()
            for attempt in (1, 2):
                try:
                    self._transact(
                        proto.set_sleep(False, self._address), "work",
                        lambda f: _reply(f, proto.CMD_SLEEP_WORK) and f.sleeping is False)
                    break
                except SensorError as exc:
                    if not exc.transient or attempt == 2:
                        raise
            self._flush()

    def sleep(self) -> None:
        """Laser and fan off. Laser time stops counting only once the sensor confirms."""
        with self._lock:
            self._transact(proto.set_sleep(True, self._address), "sleep",
                           lambda f: _reply(f, proto.CMD_SLEEP_WORK) and f.sleeping is True)
            if self._awake_since is not None:
                self._laser_on_s += self._clock() - self._awake_since
                self._awake_since = None

    def set_working_period(self, minutes: int) -> None:
        """The sensor's own duty cycle (0 = continuous, as this driver's sleep/wake expects)."""
        frame = proto.set_working_period(minutes, self._address)
        self._transact(
            frame, "working period",
            lambda f: _reply(f, proto.CMD_WORKING_PERIOD) and f.working_period == minutes)

    def firmware(self) -> str:
        """Firmware date, YYYY-MM-DD. The sensor must be awake."""
        frame = self._transact(proto.get_firmware(self._address), "firmware request",
                               lambda f: _reply(f, proto.CMD_FIRMWARE))
        assert isinstance(frame, proto.Reply) and frame.firmware  # noqa: S101 - see predicate
        self._firmware = frame.firmware
        return frame.firmware

    # --- the Sensor protocol ----------------------------------------------------------------

    def read(self) -> Reading:
        """One duty cycle: wake, warm up, sample, median, sleep. Blocks about 42 s by default
        (30 s warm-up, then 5 samples 3 s apart); any failure still ends with a sleep attempt."""
        duty = self.duty
        with self._lock:
            self._reads += 1
            try:
                self.wake()
                if not self._query_mode:
                    self.set_query_mode()
                if self._firmware is None:
                    self._firmware_quietly()
                self._pause(duty.warmup_s)
                samples: list[tuple[float, float]] = []
                for i in range(duty.samples):
                    if i:
                        self._pause(duty.sample_spacing_s)
                    samples.append(self.query())
                taken = self._wall_clock()
            except BaseException:
                self._sleep_quietly()
                raise
            self.sleep()
            self._reads_ok += 1
        pm25 = round(statistics.median(s[0] for s in samples), 2)
        pm10 = round(statistics.median(s[1] for s in samples), 2)
        flags = set()
        if not (0.0 <= pm25 <= proto.MAX_PM_UGM3 and 0.0 <= pm10 <= proto.MAX_PM_UGM3):
            flags.add(OUT_OF_RANGE)
        if duty.warmup_s < DATASHEET_WARMUP_S:
            flags.add(WARMING_UP)
        return Reading(sensor=self.name, values={"pm25_ugm3": pm25, "pm10_ugm3": pm10},
                       units={"pm25_ugm3": UNIT, "pm10_ugm3": UNIT}, timestamp=taken,
                       flags=frozenset(flags))

    @property
    def laser_on_s(self) -> float:
        """Seconds the laser may have been on because of this driver (including now)."""
        running = 0.0 if self._awake_since is None else self._clock() - self._awake_since
        return self._laser_on_s + running

    def health(self) -> dict[str, float | int | str]:
        """Counters only; no serial traffic, so it can be called while a read is running."""
        return {
            "laser_on_hours": round(self.laser_on_s / 3600, 6),
            "read_success_ratio": self._reads_ok / self._reads if self._reads else 1.0,
            "reads": self._reads,
            "timeouts": self._timeouts,
            "bad_frames": self._parser.bad_frames,
            "skipped_bytes": self._parser.skipped_bytes,
            "stray_frames": self._stray_frames,
            "laser_duty_budget": round(self.duty.laser_fraction, 4),
            "firmware": self._firmware or "unknown",
        }

    def close(self) -> None:
        """Put the sensor to sleep if this driver woke it, then close the port."""
        with self._lock:
            if self._awake_since is not None:
                self._sleep_quietly()
            self._port.close()

    def __enter__(self) -> SDS011:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- serial plumbing ----------------------------------------------------------------------

    def _transact(self, frame: bytes, what: str,
                  accept: Callable[[proto.Frame], bool]) -> proto.Frame:
        """Send ``frame`` and return the first frame from our sensor that ``accept``s, ignoring
        others (stray reports, late answers). Transient SensorError at the deadline."""
        with self._lock:
            self._flush()  # match only what arrives after the request
            self._write(frame)
            deadline = self._clock() + self._reply_timeout_s
            heard = resends = 0
            while self._clock() < deadline:
                bad_before = self._parser.bad_frames
                chunk = self._read(self._parser.wanted)
                heard += len(chunk)
                if not chunk and self._parser.pending:
                    # The line went quiet mid-frame (a frame takes 10 ms at 9600 baud): cut short.
                    self._parser.drop_pending()
                for received in self._parser.feed(chunk):
                    if self._address not in (proto.ALL_DEVICES, received.device_id):
                        self._stray_frames += 1
                    elif accept(received):
                        self._device_id = received.device_id
                        return received
                    else:
                        self._stray_frames += 1
                if self._parser.bad_frames > bad_before and resends < _MAX_RESENDS:
                    resends += 1  # the broken frame was most likely our answer
                    self._write(frame)
            self._timeouts += 1
            detail = ("nothing at all: is it powered and connected?" if not heard
                      else f"{heard} bytes without a good answer "
                           f"({self._parser.bad_frames} bad frames so far)")
            raise SensorError(f"SDS011 on {self._port_name}: no answer to {what} within "
                              f"{self._reply_timeout_s:g} s, {detail}", transient=True)

    def _write(self, frame: bytes) -> None:
        try:
            self._port.write(frame)
        except _PORT_ERRORS as exc:
            raise self._vanished(exc) from exc

    def _read(self, size: int) -> bytes:
        try:
            return bytes(self._port.read(size))
        except _PORT_ERRORS as exc:
            raise self._vanished(exc) from exc

    def _flush(self) -> None:
        try:
            self._port.reset_input_buffer()
        except _PORT_ERRORS as exc:
            raise self._vanished(exc) from exc
        self._parser.reset()

    def _vanished(self, exc: Exception) -> SensorError:
        return SensorError(f"SDS011 serial port {self._port_name} failed ({exc}): was the USB "
                           "adapter unplugged? Reopen the port once it is back")

    def _sleep_quietly(self) -> None:
        try:
            self.sleep()
        except SensorError as exc:
            log.warning("could not put the SDS011 back to sleep; its laser may be on: %s", exc)

    def _firmware_quietly(self) -> None:
        try:
            self.firmware()
        except SensorError as exc:
            if not exc.transient:
                raise
            log.info("SDS011 firmware version unknown for now: %s", exc)


def _reply(frame: proto.Frame, command: int) -> TypeGuard[proto.Reply]:
    return isinstance(frame, proto.Reply) and frame.command == command


def _open_error(port: str, exc: Exception) -> SensorError:
    code = getattr(exc, "errno", None)
    if code in (errno.EACCES, errno.EPERM):
        hint = ("permission denied: add the agent's user to the dialout group "
                "(sudo usermod -aG dialout <user>, then restart the agent), or give the device "
                'a udev rule with GROUP="dialout", MODE="0660"')
    elif code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        hint = ("no such device: is the sensor plugged in? `ls /dev/ttyUSB* /dev/serial/by-id/` "
                "lists USB serial adapters; a udev rule such as SUBSYSTEM==\"tty\", "
                'ATTRS{idVendor}=="1a86", SYMLINK+="sds011" gives it a stable name, and the '
                "agent's user needs the dialout group to open it")
    else:
        hint = ("check the cable, that no other process holds the port, and that the agent's "
                'user is in the dialout group (udev rule: GROUP="dialout")')
    return SensorError(f"cannot open SDS011 port {port}: {exc}; {hint}")
