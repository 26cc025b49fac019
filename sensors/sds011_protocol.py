"""The Nova Fitness SDS011 serial protocol (Laser Dust Sensor Control Protocol V1.3), without I/O.

Host -> sensor: 19 bytes, ``AA B4 <data1..data13> <id_hi id_lo> <cs> AB`` with data1 the command
and cs the low byte of the sum of data1..data13 and the ID. Sensor -> host: 10 bytes,
``AA <C0|C5> d1..d6 <cs> AB`` with cs the low byte of d1+...+d6. The format has no escaping, so a
reader finds frames by scanning for the head byte and checking command byte, tail and checksum.
"""

from __future__ import annotations

from dataclasses import dataclass

HEAD = 0xAA
TAIL = 0xAB
HOST_COMMAND = 0xB4  # the only command ID a host sends
MEASUREMENT = 0xC0
REPLY = 0xC5
ALL_DEVICES = 0xFFFF  # the broadcast ID: any sensor on the line answers

HOST_FRAME_LEN = 19
SENSOR_FRAME_LEN = 10
HOST_DATA_LEN = 12  # data2..data13, after the command number

# data1: the command numbers.
CMD_REPORTING_MODE = 0x02
CMD_QUERY_DATA = 0x04
CMD_SET_DEVICE_ID = 0x05
CMD_SLEEP_WORK = 0x06
CMD_FIRMWARE = 0x07
CMD_WORKING_PERIOD = 0x08

MAX_WORKING_PERIOD_MIN = 30
MAX_PM_UGM3 = 999.9  # the datasheet's range; a frame can carry up to 6553.5


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def _check_id(device_id: int) -> None:
    if not 0 <= device_id <= 0xFFFF:
        raise ValueError(f"device ID must be 0..0xFFFF, got {device_id:#x}")


def encode_command(command: int, data: bytes = b"", device_id: int = ALL_DEVICES) -> bytes:
    """The 19-byte frame for ``command`` (data1), ``data`` being data2.. (zero-padded to 12)."""
    if not 0 <= command <= 0xFF:
        raise ValueError(f"command must be one byte, got {command}")
    if len(data) > HOST_DATA_LEN:
        raise ValueError(f"at most {HOST_DATA_LEN} data bytes follow the command, got {len(data)}")
    _check_id(device_id)
    body = bytes([command]) + data.ljust(HOST_DATA_LEN, b"\x00") + device_id.to_bytes(2, "big")
    return bytes([HEAD, HOST_COMMAND]) + body + bytes([checksum(body), TAIL])


# One helper per command. data2 is 0 to ask for the current setting and 1 to change it.

def set_reporting_mode(query: bool, device_id: int = ALL_DEVICES) -> bytes:
    """Query mode (the sensor answers only ``query_data``) or active mode (a C0 frame a second)."""
    return encode_command(CMD_REPORTING_MODE, bytes([1, int(query)]), device_id)


def get_reporting_mode(device_id: int = ALL_DEVICES) -> bytes:
    return encode_command(CMD_REPORTING_MODE, bytes([0]), device_id)


def query_data(device_id: int = ALL_DEVICES) -> bytes:
    return encode_command(CMD_QUERY_DATA, b"", device_id)


def set_device_id(new_id: int, device_id: int = ALL_DEVICES) -> bytes:
    _check_id(new_id)
    # The new ID goes in data12/13, the last two data bytes.
    return encode_command(CMD_SET_DEVICE_ID, bytes(10) + new_id.to_bytes(2, "big"), device_id)


def set_sleep(sleep: bool, device_id: int = ALL_DEVICES) -> bytes:
    """Sleep turns the laser and fan off; work turns them on (data3 = 0 sleep, 1 work)."""
    return encode_command(CMD_SLEEP_WORK, bytes([1, int(not sleep)]), device_id)


def get_sleep(device_id: int = ALL_DEVICES) -> bytes:
    return encode_command(CMD_SLEEP_WORK, bytes([0]), device_id)


def get_firmware(device_id: int = ALL_DEVICES) -> bytes:
    return encode_command(CMD_FIRMWARE, b"", device_id)


def set_working_period(minutes: int, device_id: int = ALL_DEVICES) -> bytes:
    """0 = continuous; n = work 30 s, then sleep n*60-30 s (the sensor's own duty cycle)."""
    if not 0 <= minutes <= MAX_WORKING_PERIOD_MIN:
        raise ValueError(
            f"working period must be 0..{MAX_WORKING_PERIOD_MIN} minutes, got {minutes}")
    return encode_command(CMD_WORKING_PERIOD, bytes([1, minutes]), device_id)


def get_working_period(device_id: int = ALL_DEVICES) -> bytes:
    return encode_command(CMD_WORKING_PERIOD, bytes([0]), device_id)


# Sensor -> host frames: what the driver receives and the emulator sends.

def _sensor_frame(kind: int, payload: bytes) -> bytes:
    return bytes([HEAD, kind]) + payload + bytes([checksum(payload), TAIL])


def _pm_raw(value: float) -> int:
    raw = round(value * 10)
    if not 0 <= raw <= 0xFFFF:
        raise ValueError(f"PM value {value} does not fit a frame (0..6553.5)")
    return raw


def encode_measurement(pm25: float, pm10: float, device_id: int) -> bytes:
    """A C0 frame: PM2.5 and PM10 in tenths of µg/m³, little-endian, then the device ID."""
    _check_id(device_id)
    payload = (_pm_raw(pm25).to_bytes(2, "little") + _pm_raw(pm10).to_bytes(2, "little")
               + device_id.to_bytes(2, "big"))
    return _sensor_frame(MEASUREMENT, payload)


def encode_reply(command: int, d2: int = 0, d3: int = 0, d4: int = 0, *, device_id: int) -> bytes:
    """A C5 frame answering ``command`` (echoed in d1), with d2..d4 as that command defines."""
    _check_id(device_id)
    return _sensor_frame(REPLY, bytes([command, d2, d3, d4]) + device_id.to_bytes(2, "big"))


@dataclass(frozen=True)
class Measurement:
    """A C0 frame, in µg/m³."""

    pm25: float
    pm10: float
    device_id: int


@dataclass(frozen=True)
class Reply:
    """A C5 frame. ``data`` is d1..d6 as received; the fields that apply to ``command`` are decoded,
    the others are None."""

    command: int
    data: bytes
    device_id: int
    is_set: bool | None = None  # the host changed the setting (not only asked for it)
    query_mode: bool | None = None  # CMD_REPORTING_MODE
    sleeping: bool | None = None  # CMD_SLEEP_WORK
    working_period: int | None = None  # CMD_WORKING_PERIOD, minutes
    firmware: str | None = None  # CMD_FIRMWARE, "YYYY-MM-DD"

    @classmethod
    def decode(cls, data: bytes) -> Reply:
        command, d2, d3, d4 = data[0], data[1], data[2], data[3]
        device_id = int.from_bytes(data[4:6], "big")
        if command == CMD_REPORTING_MODE:
            return cls(command, data, device_id, is_set=d2 == 1, query_mode=d3 == 1)
        if command == CMD_SLEEP_WORK:
            return cls(command, data, device_id, is_set=d2 == 1, sleeping=d3 == 0)
        if command == CMD_WORKING_PERIOD:
            return cls(command, data, device_id, is_set=d2 == 1, working_period=d3)
        if command == CMD_FIRMWARE:
            # The sensor gives two-digit years; every firmware is from the 2010s or later.
            return cls(command, data, device_id, firmware=f"20{d2:02d}-{d3:02d}-{d4:02d}")
        return cls(command, data, device_id)


Frame = Measurement | Reply


def _decode_sensor_frame(frame: bytes) -> Frame:
    payload = frame[2:8]
    if frame[1] == MEASUREMENT:
        return Measurement(pm25=int.from_bytes(payload[0:2], "little") / 10,
                           pm10=int.from_bytes(payload[2:4], "little") / 10,
                           device_id=int.from_bytes(payload[4:6], "big"))
    return Reply.decode(payload)


@dataclass(frozen=True)
class Command:
    """A host frame as the sensor sees it: ``data`` is data2..data13."""

    command: int
    data: bytes
    device_id: int


def _decode_host_frame(frame: bytes) -> Command:
    return Command(command=frame[2], data=frame[3:15],
                   device_id=int.from_bytes(frame[15:17], "big"))


class _Scanner:
    """Finds fixed-length frames in a byte stream that may start mid-frame or carry noise.

    A candidate starts at a head byte followed by an expected command byte; it is taken when its
    tail and checksum are right. Otherwise only its head byte is dropped and the scan goes on from
    the next head byte, so a real frame hidden behind a broken one is still found.
    """

    def __init__(self, length: int, kinds: frozenset[int], checked: slice) -> None:
        self._length = length
        self._kinds = kinds
        self._checked = checked  # the bytes the checksum covers
        self._buffer = bytearray()
        self.bad_frames = 0  # head and command byte right, but tail or checksum wrong, or cut short
        self.skipped_bytes = 0  # bytes that belonged to no good frame

    @property
    def pending(self) -> int:
        """Bytes held back as the start of a frame that has not fully arrived."""
        return len(self._buffer)

    @property
    def wanted(self) -> int:
        """How many more bytes would complete the pending frame (a full frame when none is)."""
        return self._length - len(self._buffer)

    def reset(self) -> None:
        """Forget the pending bytes without counting them (the caller flushed the line)."""
        self._buffer.clear()

    def drop_pending(self) -> int:
        """Count the pending bytes as a truncated frame: nothing more came after them."""
        dropped = len(self._buffer)
        if dropped >= 2:  # a head and a command byte: a frame began and was cut
            self.bad_frames += 1
        self.skipped_bytes += dropped
        self._buffer.clear()
        return dropped

    def scan(self, data: bytes) -> list[bytes]:
        buf = self._buffer
        buf += data
        frames: list[bytes] = []
        start = 0
        while True:
            head = buf.find(HEAD, start)
            if head < 0:
                self.skipped_bytes += len(buf) - start
                start = len(buf)
                break
            self.skipped_bytes += head - start
            start = head
            if len(buf) - start < 2:
                break
            if buf[start + 1] not in self._kinds:
                self.skipped_bytes += 1
                start += 1
                continue
            if len(buf) - start < self._length:
                break
            frame = bytes(buf[start:start + self._length])
            if frame[-1] == TAIL and frame[-2] == checksum(frame[self._checked]):
                frames.append(frame)
                start += self._length
            else:
                self.bad_frames += 1
                self.skipped_bytes += 1
                start += 1
        del buf[:start]
        return frames


class _StreamParser:
    """Complete frames of one direction from a byte stream fed in pieces of any size."""

    def __init__(self, scanner: _Scanner) -> None:
        self._scanner = scanner

    @property
    def bad_frames(self) -> int:
        return self._scanner.bad_frames

    @property
    def skipped_bytes(self) -> int:
        return self._scanner.skipped_bytes

    @property
    def pending(self) -> int:
        return self._scanner.pending

    @property
    def wanted(self) -> int:
        return self._scanner.wanted

    def reset(self) -> None:
        self._scanner.reset()

    def drop_pending(self) -> int:
        return self._scanner.drop_pending()


class FrameParser(_StreamParser):
    """Sensor -> host frames (measurements and replies)."""

    def __init__(self) -> None:
        super().__init__(_Scanner(SENSOR_FRAME_LEN, frozenset({MEASUREMENT, REPLY}),
                                  slice(2, 8)))

    def feed(self, data: bytes) -> list[Frame]:
        return [_decode_sensor_frame(frame) for frame in self._scanner.scan(data)]


class CommandParser(_StreamParser):
    """Host -> sensor frames: the sensor's side, used by the emulator."""

    def __init__(self) -> None:
        super().__init__(_Scanner(HOST_FRAME_LEN, frozenset({HOST_COMMAND}), slice(2, 17)))

    def feed(self, data: bytes) -> list[Command]:
        return [_decode_host_frame(frame) for frame in self._scanner.scan(data)]


