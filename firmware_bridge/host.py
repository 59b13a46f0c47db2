"""Host side of the reader board link: a typed API over pyserial that survives resets and unplugs.

Threads: a reader owns the port (opens it, with backoff, reads it, closes it) and routes frames to
the waiting request or to the event queue; a supervisor sends heartbeats and runs the HELLO
handshake after a board reset or a reopened port. Requests are stop-and-wait: one outstanding at
a time, retried with the same sequence number so the firmware can resend instead of re-execute.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import serial

from firmware_bridge import protocol as p

log = logging.getLogger(__name__)

_REPLY_TO = {p.HELLO: p.HELLO_REPLY, p.PING: p.PONG, p.SET_LEDS: p.ACK,
             p.GET_CLIMATE: p.CLIMATE, p.GET_STATUS: p.STATUS}
_BUTTONS = {p.BUTTON_START: "start", p.BUTTON_CANCEL: "cancel"}
_NAK_REASONS = {p.NAK_UNKNOWN_TYPE: "unknown message type", p.NAK_BAD_PAYLOAD: "bad payload"}


class BoardUnavailable(RuntimeError):
    """The link is down (port gone, board silent): the call was not carried out."""


class ReplyTimeout(BoardUnavailable):
    """No valid reply after every retry."""


class IncompatibleProtocol(RuntimeError):
    """The board speaks a protocol major version this host does not."""


class BoardRejected(RuntimeError):
    """The board answered NAK."""

    def __init__(self, reason: int, msg_type: int) -> None:
        super().__init__("board rejected message type 0x%02x: %s"
                         % (msg_type, _NAK_REASONS.get(reason, "reason %d" % reason)))
        self.reason = reason
        self.msg_type = msg_type


@dataclass(frozen=True)
class BoardInfo:
    firmware_version: tuple
    protocol_version: tuple


@dataclass(frozen=True)
class Climate:
    humidity_pct: float
    temperature_c: float


@dataclass(frozen=True)
class BoardStatus:
    strip_present: bool
    lid_open: bool
    leds: tuple


@dataclass(frozen=True)
class Event:
    """kind: strip_inserted, strip_removed, button (detail 'start'/'cancel'), lid (detail
    'open'/'closed'), board_reset (detail BoardInfo), link_lost (detail: why),
    link_restored (detail BoardInfo)."""
    kind: str
    detail: object = None


@dataclass
class LinkStats:
    frames_received: int = 0
    garbage_frames: int = 0  # every undecodable chunk, CRC errors included
    crc_errors: int = 0
    bad_payloads: int = 0  # CRC-valid frames whose payload did not fit their type
    stale_replies: int = 0  # replies nobody was waiting for (late, or to an earlier request)
    retries: int = 0
    timeouts: int = 0
    link_losses: int = 0
    reconnects: int = 0
    events_missed: int = 0  # gaps in the board's event sequence numbers


class _Pending:
    def __init__(self, seq: int, msg_type: int) -> None:
        self.seq = seq
        self.reply_type = _REPLY_TO[msg_type]
        self.done = threading.Event()
        self.frame: Optional[p.Frame] = None
        self.fields: tuple = ()


class ReaderBoard:
    """The reader board behind a serial port; use as a context manager.

    The constructor opens the port and does HELLO (raising BoardUnavailable or
    IncompatibleProtocol); from then on the link repairs itself and reports link_lost /
    link_restored events. Events go to `events` (a queue.Queue) and to `on_event`, called on the
    reader thread: it must return quickly and must not call the board (that would deadlock).
    """

    def __init__(self, port: str, *, baudrate: int = 115200, timeout: float = 0.3,
                 retries: int = 2, heartbeat_interval: float = 1.0,
                 max_missed_heartbeats: int = 2, reconnect_backoff: tuple = (0.05, 2.0),
                 on_event: Optional[Callable[[Event], None]] = None) -> None:
        self.port = port
        self.baudrate = baudrate
        self.timeout = timeout
        self.retries = retries
        self.heartbeat_interval = heartbeat_interval
        self.max_missed_heartbeats = max_missed_heartbeats
        self.reconnect_backoff = reconnect_backoff
        self.on_event = on_event
        self.events: "queue.Queue[Event]" = queue.Queue()
        self.info: Optional[BoardInfo] = None

        self._stats = LinkStats()
        self._decoder = p.FrameDecoder(accept_types=p.DEVICE_TO_HOST)
        self._seq = 0
        self._leds = (0, 0, 0)  # last commanded, re-applied after the board restarts
        self._last_event_seq: Optional[int] = None
        self._pending: Optional[_Pending] = None
        self._request_lock = threading.Lock()  # one request on the wire at a time
        self._port_lock = threading.Lock()  # writes vs. the reader closing the port
        self._state_lock = threading.Lock()  # link up/down transitions
        self._closing = threading.Event()
        self._wake_supervisor = threading.Event()
        self._link_up = False
        self._down_reason = "not connected"
        self._handshake_needed = False
        self._drop_port = False
        self._reopen_delay = reconnect_backoff[0]  # grows while reopening does not give a link

        self._serial: Optional[serial.Serial] = None
        if not self._open_port():
            raise BoardUnavailable("cannot open %s" % port)
        self._reader = threading.Thread(target=self._read_loop, name="board-reader", daemon=True)
        self._reader.start()
        try:
            self.info = self._handshake()
        except BaseException:
            self._closing.set()
            self._reader.join()
            raise
        self._link_up = True
        log.info("reader board on %s: firmware %s, protocol %s", port,
                 _dotted(self.info.firmware_version), _dotted(self.info.protocol_version))
        self._supervisor = threading.Thread(target=self._supervise, name="board-supervisor",
                                            daemon=True)
        self._supervisor.start()

    # ---- public API -------------------------------------------------------------------------

    def hello(self) -> BoardInfo:
        self._require_link()
        self.info = self._handshake()
        return self.info

    def ping(self) -> float:
        """Round-trip time in seconds."""
        started = time.perf_counter()
        self._call(p.PING)
        return time.perf_counter() - started

    def set_leds(self, r: int, g: int, b: int) -> None:
        """LED ring brightness per channel, 0-255 each; (0, 0, 0) is off."""
        for value in (r, g, b):
            if not 0 <= value <= 255:
                raise ValueError("LED brightness must be 0-255, got %r" % (value,))
        self._call(p.SET_LEDS, r, g, b)
        self._leds = (r, g, b)

    def leds_off(self) -> None:
        self.set_leds(0, 0, 0)

    def climate(self) -> Climate:
        humidity_tenths, temperature_hundredths = self._call(p.GET_CLIMATE)
        return Climate(humidity_tenths / 10.0, temperature_hundredths / 100.0)

    def status(self) -> BoardStatus:
        flags, r, g, b = self._call(p.GET_STATUS)
        return BoardStatus(bool(flags & p.STATUS_STRIP_PRESENT), bool(flags & p.STATUS_LID_OPEN),
                           (r, g, b))

    def strip_present(self) -> bool:
        return self.status().strip_present

    @property
    def connected(self) -> bool:
        return self._link_up

    @property
    def stats(self) -> LinkStats:
        """A snapshot of the link counters."""
        return dataclasses.replace(self._stats, garbage_frames=self._decoder.garbage_total,
                                   crc_errors=self._decoder.garbage["bad_crc"],
                                   frames_received=self._decoder.frames)

    def close(self) -> None:
        """Stop both threads and close the port; idempotent."""
        self._closing.set()
        self._wake_supervisor.set()
        current = threading.current_thread()
        for thread in (getattr(self, "_supervisor", None), self._reader):
            if thread is not None and thread.is_alive() and thread is not current:
                thread.join()

    def __enter__(self) -> "ReaderBoard":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- requests ---------------------------------------------------------------------------

    def _require_link(self) -> None:
        if self._closing.is_set():
            raise BoardUnavailable("board link is closed")
        if not self._link_up:
            raise BoardUnavailable("reader board link is down (%s)" % self._down_reason)

    def _call(self, msg_type: int, *fields) -> tuple:
        self._require_link()
        return self._request(msg_type, *fields)

    def _request(self, msg_type: int, *fields) -> tuple:
        """Send and wait for the matching reply, retrying with the same sequence number."""
        payload = p.pack_payload(msg_type, *fields)
        with self._request_lock:
            self._seq = (self._seq + 1) & 0xFF
            pending = _Pending(self._seq, msg_type)
            wire = p.encode_frame(pending.seq, msg_type, payload)
            self._pending = pending
            try:
                for attempt in range(self.retries + 1):
                    if attempt:
                        self._stats.retries += 1
                        log.debug("retry %d of message type 0x%02x seq %d",
                                  attempt, msg_type, pending.seq)
                    self._write(wire)
                    if pending.done.wait(self.timeout):
                        break
                else:
                    self._stats.timeouts += 1
                    raise ReplyTimeout("no reply to message type 0x%02x after %d attempts of %.2f s"
                                       % (msg_type, self.retries + 1, self.timeout))
            finally:
                self._pending = None
        if pending.frame is None:
            raise BoardUnavailable("reader board link lost (%s)" % self._down_reason)
        if pending.frame.msg_type == p.NAK:
            raise BoardRejected(*pending.fields)
        return pending.fields

    def _write(self, data: bytes) -> None:
        with self._port_lock:
            port = self._serial
            if port is None:
                raise BoardUnavailable("serial port %s is not open" % self.port)
            try:
                port.write(data)
            except (serial.SerialException, OSError) as error:
                raise BoardUnavailable("write to %s failed: %s" % (self.port, error)) from error

    def _handshake(self) -> BoardInfo:
        protocol_major, protocol_minor, *firmware, _ = self._request(p.HELLO)
        if protocol_major != p.PROTOCOL_MAJOR:
            raise IncompatibleProtocol(
                "reader board speaks protocol %d.%d; this host speaks %d.x: update the %s"
                % (protocol_major, protocol_minor, p.PROTOCOL_MAJOR,
                   "host software" if protocol_major > p.PROTOCOL_MAJOR else "board firmware"))
        return BoardInfo(tuple(firmware), (protocol_major, protocol_minor))

    # ---- reader thread ----------------------------------------------------------------------

    def _open_port(self) -> bool:
        try:
            port = serial.Serial(self.port, self.baudrate, timeout=0.05)
        except (serial.SerialException, OSError) as error:
            log.debug("cannot open %s: %s", self.port, error)
            return False
        self._decoder.reset()
        port.write(p.DELIMITER)  # ends any partial frame the board holds from before
        self._serial = port
        return True

    def _close_port(self) -> None:
        with self._port_lock:
            port, self._serial = self._serial, None
        if port is not None:
            port.close()

    def _read_loop(self) -> None:
        while not self._closing.is_set():
            if self._drop_port:
                self._drop_port = False
                self._close_port()
            port = self._serial
            if port is None:
                if self._closing.wait(self._reopen_delay):
                    break
                if self._open_port():
                    self._handshake_needed = True
                    self._wake_supervisor.set()
                else:
                    self._grow_reopen_delay()
                continue
            try:
                data = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError) as error:
                self._lose_link("serial error: %s" % error)
                self._close_port()
                continue
            for frame in self._decoder.feed(data):
                self._dispatch(frame)
        self._close_port()

    def _dispatch(self, frame: p.Frame) -> None:
        try:
            fields = p.unpack_payload(frame.msg_type, frame.payload)
        except p.ProtocolError as error:
            self._stats.bad_payloads += 1
            log.debug("dropped frame: %s", error)
            return
        if frame.msg_type in p.EVENTS:
            self._on_board_event(frame, fields)
            return
        pending = self._pending
        if (pending is None or frame.seq != pending.seq or pending.done.is_set()
                or frame.msg_type not in (pending.reply_type, p.NAK)):
            self._stats.stale_replies += 1
            return
        if frame.msg_type == p.HELLO_REPLY:
            # set here, in stream order, so events after the reply are counted against it
            self._last_event_seq = (fields[-1] - 1) & 0xFF
        pending.frame, pending.fields = frame, fields
        pending.done.set()

    def _on_board_event(self, frame: p.Frame, fields: tuple) -> None:
        if frame.msg_type == p.EV_BOOT:
            info = BoardInfo(tuple(fields[2:]), tuple(fields[:2]))
            log.info("reader board restarted (firmware %s)", _dotted(info.firmware_version))
            self._last_event_seq = frame.seq
            self._handshake_needed = True
            self._wake_supervisor.set()
            self._emit(Event("board_reset", info))
            return
        if self._last_event_seq is not None:
            self._stats.events_missed += (frame.seq - self._last_event_seq - 1) & 0xFF
        self._last_event_seq = frame.seq
        (value,) = fields
        if frame.msg_type == p.EV_STRIP:
            self._emit(Event("strip_inserted" if value else "strip_removed"))
        elif frame.msg_type == p.EV_BUTTON:
            self._emit(Event("button", _BUTTONS.get(value, "button %d" % value)))
        else:
            self._emit(Event("lid", "open" if value else "closed"))

    def _emit(self, event: Event) -> None:
        self.events.put(event)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("on_event callback failed for %s", event.kind)

    def _grow_reopen_delay(self) -> None:
        self._reopen_delay = min(self._reopen_delay * 2, self.reconnect_backoff[1])

    def _lose_link(self, reason: str) -> None:
        with self._state_lock:
            self._down_reason = reason
            if not self._link_up:
                return
            self._link_up = False
        self._stats.link_losses += 1
        log.info("reader board link lost: %s", reason)
        pending = self._pending
        if pending is not None:
            pending.done.set()  # with no frame: the waiting call raises BoardUnavailable now
        self._emit(Event("link_lost", reason))

    # ---- supervisor thread ------------------------------------------------------------------

    def _supervise(self) -> None:
        missed = 0
        next_heartbeat = time.monotonic() + self.heartbeat_interval
        while not self._closing.is_set():
            self._wake_supervisor.wait(max(0.0, next_heartbeat - time.monotonic()))
            self._wake_supervisor.clear()
            if self._closing.is_set():
                break
            if self._handshake_needed and self._serial is not None:
                self._handshake_needed = False
                self._rehandshake()
                missed = 0
            elif self._link_up and time.monotonic() >= next_heartbeat:
                try:
                    self._request(p.PING)
                    missed = 0
                except BoardUnavailable as error:
                    missed += 1
                    log.debug("heartbeat %d missed: %s", missed, error)
                    if missed >= self.max_missed_heartbeats:
                        missed = 0
                        self._lose_link("%d heartbeats missed" % self.max_missed_heartbeats)
                        self._drop_port = True  # reopen: the path may now lead elsewhere
            if time.monotonic() >= next_heartbeat:
                next_heartbeat = time.monotonic() + self.heartbeat_interval

    def _rehandshake(self) -> None:
        """HELLO after a board restart or a reopened port; on success the link is up again."""
        try:
            self.info = self._handshake()
            if self._leds != (0, 0, 0):
                self._request(p.SET_LEDS, *self._leds)
        except (BoardUnavailable, BoardRejected, IncompatibleProtocol) as error:
            log.debug("reader board handshake failed: %s", error)
            self._lose_link("handshake failed: %s" % error)
            self._grow_reopen_delay()
            self._drop_port = True
            return
        self._reopen_delay = self.reconnect_backoff[0]
        with self._state_lock:
            was_up, self._link_up = self._link_up, True
        if not was_up:
            self._stats.reconnects += 1
            log.info("reader board link restored (firmware %s)",
                     _dotted(self.info.firmware_version))
            self._emit(Event("link_restored", self.info))


def _dotted(version: tuple) -> str:
    return ".".join(str(part) for part in version)
