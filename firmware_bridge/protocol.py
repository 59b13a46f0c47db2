"""Wire format of the reader board link: frames, message types and payload packing.

Shared by the host (host.py) and the firmware (firmware.py), so it stays within what MicroPython
offers: plain classes, `struct`, `collections.namedtuple`, no annotations. COBS and the CRC sit
behind `cobs_encode`, `cobs_decode` and `crc16`; a MicroPython build swaps those three functions.
PROTOCOL.md beside this file is the reference; the constants below mirror its tables.
"""
import struct
from collections import namedtuple

from crc import Calculator, Configuration

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0
FRAME_FORMAT = 0x01  # first body byte; a different value is not our frame
MAX_PAYLOAD = 64
HEADER_SIZE = 3  # format, seq, type
CRC_SIZE = 2
MIN_BODY = HEADER_SIZE + CRC_SIZE
MAX_BODY = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
MAX_ENCODED = MAX_BODY + MAX_BODY // 254 + 1  # COBS adds one byte per 254, at least one
DELIMITER = b"\x00"

# host -> device requests
HELLO = 0x01
PING = 0x02
SET_LEDS = 0x03
GET_CLIMATE = 0x04
GET_STATUS = 0x05
# device -> host unsolicited events (device's own sequence counter)
EV_BOOT = 0x41
EV_STRIP = 0x42
EV_BUTTON = 0x43
EV_LID = 0x44
# device -> host replies (echo the request's sequence number)
HELLO_REPLY = 0x81
PONG = 0x82
ACK = 0x83
CLIMATE = 0x84
STATUS = 0x85
NAK = 0xFF

REQUESTS = (HELLO, PING, SET_LEDS, GET_CLIMATE, GET_STATUS)
EVENTS = (EV_BOOT, EV_STRIP, EV_BUTTON, EV_LID)
REPLIES = (HELLO_REPLY, PONG, ACK, CLIMATE, STATUS, NAK)
DEVICE_TO_HOST = EVENTS + REPLIES

# NAK reasons
NAK_UNKNOWN_TYPE = 1
NAK_BAD_PAYLOAD = 2

BUTTON_START = 1
BUTTON_CANCEL = 2

STATUS_STRIP_PRESENT = 0x01
STATUS_LID_OPEN = 0x02

# payload layouts (little-endian); a type absent here has an empty payload
PAYLOAD_FORMATS = {
    SET_LEDS: "<BBB",  # r, g, b brightness 0-255
    HELLO_REPLY: "<BBBBBB",  # protocol major, minor; firmware major, minor, patch; next event seq
    EV_BOOT: "<BBBBB",  # protocol major, minor; firmware major, minor, patch
    CLIMATE: "<Hh",  # humidity in 0.1 %RH, temperature in 0.01 degC
    STATUS: "<BBBB",  # flags (STATUS_*), led r, g, b
    EV_STRIP: "<B",  # 1 inserted, 0 removed
    EV_BUTTON: "<B",  # BUTTON_*
    EV_LID: "<B",  # 1 opened, 0 closed
    NAK: "<BB",  # reason, offending type
}

Frame = namedtuple("Frame", ("seq", "msg_type", "payload"))

_CRC = Calculator(
    Configuration(
        width=16, polynomial=0x1021, init_value=0xFFFF, final_xor_value=0x0000,
        reverse_input=False, reverse_output=False,
    ),
    optimized=True,
)


def crc16(data):
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection): check value 0x29B1."""
    return _CRC.checksum(data)


def cobs_encode(data):
    """Consistent Overhead Byte Stuffing (Cheshire & Baker): the output has no zero byte, so a zero
    can end a frame. Each block is a code byte (its length + 1) and up to 254 non-zero bytes; a code
    below 0xFF stands for a zero after its block. (Written here: the `cobs` package ships no Linux
    wheels, and a Raspberry Pi must not compile anything; identical output to it, see the tests.)"""
    out = bytearray()
    block = bytearray()
    full = False                     # the last block written was a full one: no zero follows it
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block, full = bytearray(), False
        else:
            block.append(byte)
            if len(block) == 254:
                out.append(0xFF)
                out += block
                block, full = bytearray(), True
    if block or not full:
        out.append(len(block) + 1)
        out += block
    return bytes(out)


def cobs_decode(data):
    """Decode COBS; raises ValueError on malformed input (callers treat it as garbage)."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        end = i + code
        if code == 0 or end > n or 0 in data[i + 1:end]:
            raise ValueError("malformed COBS block at byte %d" % i)
        out += data[i + 1:end]
        i = end
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


class ProtocolError(ValueError):
    """A payload that does not fit its message type's layout."""


def pack_payload(msg_type, *fields):
    fmt = PAYLOAD_FORMATS.get(msg_type)
    if fmt is None:
        if fields:
            raise ProtocolError("message type 0x%02x takes no payload" % msg_type)
        return b""
    try:
        return struct.pack(fmt, *fields)
    except (struct.error, OverflowError) as error:
        raise ProtocolError("bad fields for type 0x%02x: %s" % (msg_type, error))


def unpack_payload(msg_type, payload):
    """Return the payload's fields as a tuple; ProtocolError if its length or type is wrong."""
    fmt = PAYLOAD_FORMATS.get(msg_type)
    if fmt is None:
        if payload:
            raise ProtocolError("message type 0x%02x takes no payload" % msg_type)
        return ()
    if len(payload) != struct.calcsize(fmt):
        raise ProtocolError("payload of type 0x%02x is %d bytes, expected %d"
                            % (msg_type, len(payload), struct.calcsize(fmt)))
    return struct.unpack(fmt, payload)


def encode_frame(seq, msg_type, payload=b""):
    """Bytes on the wire for one frame: COBS(body + CRC) followed by the 0x00 delimiter."""
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError("payload of %d bytes exceeds %d" % (len(payload), MAX_PAYLOAD))
    body = bytes((FRAME_FORMAT, seq & 0xFF, msg_type & 0xFF)) + bytes(payload)
    return cobs_encode(body + struct.pack("<H", crc16(body))) + DELIMITER


def encode_message(seq, msg_type, *fields):
    return encode_frame(seq, msg_type, pack_payload(msg_type, *fields))


# reasons a chunk of bytes between delimiters was not a frame; keys of FrameDecoder.garbage
GARBAGE_REASONS = ("bad_cobs", "truncated", "oversized", "bad_format", "bad_crc", "unknown_type")


def decode_frame(encoded, accept_types=None):
    """Decode one frame's bytes (without delimiter). Returns (Frame, None) or (None, reason)."""
    if len(encoded) > MAX_ENCODED:
        return None, "oversized"
    try:
        body = cobs_decode(bytes(encoded))
    except ValueError:
        return None, "bad_cobs"
    if len(body) < MIN_BODY:
        return None, "truncated"
    if len(body) > MAX_BODY:
        return None, "oversized"
    if body[0] != FRAME_FORMAT:
        return None, "bad_format"
    content = body[:-CRC_SIZE]
    if struct.unpack("<H", body[-CRC_SIZE:])[0] != crc16(content):
        return None, "bad_crc"
    if accept_types is not None and content[2] not in accept_types:
        return None, "unknown_type"
    return Frame(content[1], content[2], bytes(content[HEADER_SIZE:])), None


class FrameDecoder:
    """Turns a byte stream cut into arbitrary chunks into valid frames.

    Never raises on input: whatever lies between two delimiters is either a frame or counted in
    `garbage` by reason and dropped, so one bad frame costs nothing past the next 0x00. A run of
    bytes longer than any frame is discarded as it arrives rather than buffered.
    """

    def __init__(self, accept_types=None):
        self.accept_types = accept_types
        self.garbage = dict((reason, 0) for reason in GARBAGE_REASONS)
        self.frames = 0
        self._buffer = bytearray()
        self._overflowed = False

    @property
    def garbage_total(self):
        return sum(self.garbage.values())

    def feed(self, data):
        """Return the list of valid frames completed by `data`."""
        frames = []
        start = 0
        while start <= len(data):
            end = data.find(DELIMITER, start)
            if end < 0:
                self._append(data[start:])
                break
            self._append(data[start:end])
            frame = self._finish()
            if frame is not None:
                frames.append(frame)
            start = end + 1
        return frames

    def reset(self):
        """Forget a partial frame, keeping the counts: a reopened port starts a clean stream."""
        self._buffer = bytearray()
        self._overflowed = False

    def _append(self, chunk):
        if self._overflowed:
            return
        self._buffer.extend(chunk)
        if len(self._buffer) > MAX_ENCODED:
            self._overflowed = True
            self._buffer = bytearray()

    def _finish(self):
        if self._overflowed:
            self._overflowed = False
            self.garbage["oversized"] += 1
            return None
        if not self._buffer:
            return None  # back-to-back delimiters: an idle line, not garbage
        frame, reason = decode_frame(self._buffer, self.accept_types)
        self._buffer = bytearray()
        if frame is None:
            self.garbage[reason] += 1
            return None
        self.frames += 1
        return frame
