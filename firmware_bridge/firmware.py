"""The reader board's firmware logic as a transport-independent state machine.

`Firmware.receive(bytes)` returns the bytes to send back; sensor inputs (strip, lid, buttons,
climate) update state and queue event frames that `take_events()` drains. No threads, clocks or
I/O, so the same module drives the pty simulator here and could be the board's main loop on
MicroPython (plain classes, `struct`; framing comes from protocol.py's swappable COBS/CRC).
"""
from firmware_bridge import protocol as p

FIRMWARE_VERSION = (1, 2, 0)


class Firmware:
    """Board state plus request handling; a fresh instance is a board that has just booted."""

    def __init__(self, firmware_version=FIRMWARE_VERSION,
                 protocol_version=(p.PROTOCOL_MAJOR, p.PROTOCOL_MINOR)):
        self.firmware_version = tuple(firmware_version)
        self.protocol_version = tuple(protocol_version)
        self.humidity_pct = 45.0
        self.temperature_c = 22.0
        self.boot()

    def boot(self):
        """Power-on state: LEDs off, counters at zero, one BOOT event queued."""
        self.leds = (0, 0, 0)
        self.strip_present = False
        self.lid_open = False
        self.requests_handled = 0
        self.duplicates = 0
        self._decoder = p.FrameDecoder()
        self._event_seq = 0
        self._events = []
        self._last_request = None  # (seq, type, payload) of the last request handled
        self._last_reply = b""
        self._queue_event(p.EV_BOOT, *(self.protocol_version + self.firmware_version))

    @property
    def garbage_frames(self):
        """Undecodable chunks received since boot."""
        return self._decoder.garbage_total

    # ---- sensor inputs ------------------------------------------------------------------

    def strip_sensor(self, present):
        present = bool(present)
        if present != self.strip_present:
            self.strip_present = present
            self._queue_event(p.EV_STRIP, int(present))

    def lid_sensor(self, is_open):
        is_open = bool(is_open)
        if is_open != self.lid_open:
            self.lid_open = is_open
            self._queue_event(p.EV_LID, int(is_open))

    def button_pressed(self, button):
        self._queue_event(p.EV_BUTTON, button)

    def climate_sensor(self, humidity_pct, temperature_c):
        self.humidity_pct = humidity_pct
        self.temperature_c = temperature_c

    def take_events(self):
        """Encoded event frames queued since the last call, oldest first."""
        out = b"".join(self._events)
        self._events = []
        return out

    def _queue_event(self, msg_type, *fields):
        self._events.append(p.encode_message(self._event_seq, msg_type, *fields))
        self._event_seq = (self._event_seq + 1) & 0xFF

    # ---- requests -------------------------------------------------------------------------

    def receive(self, data):
        """Feed received bytes; return the encoded replies to the requests they completed."""
        replies = []
        for frame in self._decoder.feed(data):
            key = (frame.seq, frame.msg_type, frame.payload)
            if key == self._last_request:
                # a host retry: its request was handled, only the reply was lost; resend it
                self.duplicates += 1
                replies.append(self._last_reply)
                continue
            reply = self._handle(frame)
            self.requests_handled += 1
            self._last_request = key
            self._last_reply = reply
            replies.append(reply)
        return b"".join(replies)

    def _handle(self, frame):
        seq, msg_type = frame.seq, frame.msg_type
        if msg_type not in p.REQUESTS:
            return p.encode_message(seq, p.NAK, p.NAK_UNKNOWN_TYPE, msg_type)
        try:
            fields = p.unpack_payload(msg_type, frame.payload)
        except p.ProtocolError:
            return p.encode_message(seq, p.NAK, p.NAK_BAD_PAYLOAD, msg_type)
        if msg_type == p.HELLO:
            return p.encode_message(seq, p.HELLO_REPLY,
                                    *(self.protocol_version + self.firmware_version
                                      + (self._event_seq,)))
        if msg_type == p.PING:
            return p.encode_message(seq, p.PONG)
        if msg_type == p.SET_LEDS:
            self.leds = tuple(fields)
            return p.encode_message(seq, p.ACK)
        if msg_type == p.GET_CLIMATE:
            return p.encode_message(seq, p.CLIMATE,
                                    _clamp(round(self.humidity_pct * 10), 0, 1000),
                                    _clamp(round(self.temperature_c * 100), -32768, 32767))
        flags = ((p.STATUS_STRIP_PRESENT if self.strip_present else 0)
                 | (p.STATUS_LID_OPEN if self.lid_open else 0))
        return p.encode_message(seq, p.STATUS, flags, *self.leds)


def _clamp(value, low, high):
    return max(low, min(high, value))
