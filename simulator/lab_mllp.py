"""A laboratory information system on loopback for the reader's lab link: HL7 v2.5.1 ORU^R01 over MLLP.

Built on hl7apy's own MLLP server (one message per connection) so the reader is tested against an
independent HL7 implementation, not against its own encoder. Tests and the benchmark steer it like a
real LIS misbehaves (refuse, hang up, stay silent, answer late, go down) and read what it stored.
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import re
import socket
import ssl
import time
from collections.abc import Iterator

from hl7apy.base_datatypes import ST, TX
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message, Segment
from hl7apy.exceptions import HL7apyException, ValidationError
from hl7apy.mllp import AbstractErrorHandler, AbstractHandler, MLLPRequestHandler, MLLPServer, UnsupportedMessageType
from hl7apy.parser import get_message_info, parse_message, parse_segment

from simulator.lab_peer import LoopbackPeer, TrackedConnections

VERSION = "2.5.1"
RESULT_TYPES = ("ORU^R01^ORU_R01", "ORU^R01")  # MSH-9 with or without the message structure
REQUIRED_SEGMENTS = ("PID", "OBR", "OBX")  # hl7apy's ORU_R01 makes PID and OBX optional; a result needs both
INSTRUCTIONS = ("AE", "AR", "drop", "silent")
REQUEST_TIMEOUT_S = 5.0  # a client that stops sending mid-message or mid-handshake frees its thread after this
HL7_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
MSA_TEXT_LENGTH = 80  # MSA-3 is ST(80) in 2.5.1; ERR-8 carries the longer text
REFUSAL_TEXT_LENGTH = 250  # ERR-8 is TX(250); hl7apy's own messages can quote a whole 64 KiB value

# HL7 table 0357, message error condition codes
SEGMENT_SEQUENCE_ERROR = "100^Segment sequence error^HL70357"
REQUIRED_FIELD_MISSING = "101^Required field missing^HL70357"
DATA_TYPE_ERROR = "102^Data type error^HL70357"
UNSUPPORTED_MESSAGE_TYPE = "200^Unsupported message type^HL70357"
UNSUPPORTED_VERSION = "203^Unsupported version id^HL70357"
APPLICATION_ERROR = "207^Application internal error^HL70357"

# the ACK goes back where the message came from and quotes it: (ACK segment, its field, the incoming MSH field)
ANSWER_FIELDS = (("msh", "msh_3", "MSH_5"), ("msh", "msh_4", "MSH_6"), ("msh", "msh_5", "MSH_3"),
                 ("msh", "msh_6", "MSH_4"), ("msh", "msh_11", "MSH_11"), ("msa", "msa_2", "MSH_10"))


class Refusal(Exception):
    """A message the laboratory does not take: the acknowledgement code (AE/AR), the table 0357 error and why."""

    def __init__(self, code: str, error: str, text: str) -> None:
        one_line = " ".join(text.split())[:REFUSAL_TEXT_LENGTH]  # a CR in a value would end the ACK's segment
        super().__init__(one_line)
        self.code, self.error, self.text = code, error, one_line


class NoAcknowledgement(Exception):
    """The conversation ends without an ACK; hl7apy's handler closes the connection on any exception."""


def observations(message: Message) -> Iterator[Segment]:
    """Every OBX of an ORU^R01, through hl7apy's 2.5.1 groups (patient result > order observation > observation)."""
    for patient_result in message.oru_r01_patient_result:
        for order in patient_result.oru_r01_order_observation:
            for observation in order.oru_r01_observation:
                yield observation.obx


def parse_result(er7: str) -> Message:
    """The ORU^R01 in `er7` parsed and checked as strictly as a laboratory would, or the Refusal saying why not."""
    _, _, version = get_message_info(er7)
    if version != VERSION:
        raise Refusal("AR", UNSUPPORTED_VERSION, f"HL7 version {version!r} is not {VERSION}")
    try:
        message = parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT)
    except (HL7apyException, ValueError) as error:
        raise Refusal("AE", DATA_TYPE_ERROR, f"unreadable content: {error}") from error
    _check_segments(er7, message)
    try:
        message.validate()
    except ValidationError as error:
        raise Refusal("AE", REQUIRED_FIELD_MISSING, str(error)) from error
    _check_numeric_values(message)
    return message


def _check_segments(er7: str, message: Message) -> None:
    """hl7apy silently drops unknown segments and moves misplaced ones into its groups: compare with what was sent."""
    sent = [segment[:3] for segment in er7.split("\r") if segment.strip()]
    understood = [segment[:3] for segment in message.to_er7().split("\r")]
    if understood != sent:
        raise Refusal("AE", SEGMENT_SEQUENCE_ERROR, f"segments unknown or out of order: {' '.join(sent)}")
    missing = [name for name in REQUIRED_SEGMENTS if name not in sent]
    if missing:
        raise Refusal("AE", SEGMENT_SEQUENCE_ERROR, f"required segments missing: {' '.join(missing)}")


def _check_numeric_values(message: Message) -> None:
    """OBX-5 is 'varies' to hl7apy, so it never checks a value against its OBX-2 type."""
    for obx in observations(message):
        if obx.obx_2.to_er7() == "NM" and not HL7_NUMBER.fullmatch(obx.obx_5.to_er7()):
            raise Refusal("AE", DATA_TYPE_ERROR, f"OBX {obx.obx_1.to_er7()}: NM value is not a number")


def _header(er7: str) -> Segment | None:
    """The MSH of whatever arrived, if it has one, so that even a refused message gets an addressed ACK."""
    try:
        encoding_chars, _, _ = get_message_info(er7)
        return parse_segment(er7.split("\r", 1)[0], version=VERSION, encoding_chars=encoding_chars,
                             validation_level=VALIDATION_LEVEL.TOLERANT)
    except (HL7apyException, ValueError):
        return None


def acknowledgement(incoming: str, control_id: str, refusal: Refusal | None = None) -> Message:
    """The ACK for `incoming`: addressed back to its sender, quoting its MSH-10, AA or the refusal with an ERR."""
    ack = Message("ACK", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    ack.msh.msh_9 = "ACK^R01^ACK"
    ack.msh.msh_10 = control_id
    ack.msh.msh_11 = "P"
    ack.msa.msa_1 = refusal.code if refusal else "AA"
    header = _header(incoming)
    if header is not None:
        for segment, field, incoming_field in ANSWER_FIELDS:
            for value in header.children.get(incoming_field):
                with contextlib.suppress(HL7apyException, ValueError):  # a malformed field is left out of the ACK
                    setattr(getattr(ack, segment), field, value.to_er7())
    if refusal is not None:
        ack.msa.msa_3 = ST(refusal.text[:MSA_TEXT_LENGTH])  # a datatype object, so hl7apy escapes | ^ & ~ \
        ack.err.err_3 = refusal.error
        ack.err.err_4 = "E"
        ack.err.err_8 = TX(refusal.text)
    return ack


def _as_refusal(error: Exception) -> Refusal:
    """What hl7apy's router raised, as the refusal a laboratory answers with; anything else is a peer bug."""
    if isinstance(error, Refusal):
        return error
    if isinstance(error, UnsupportedMessageType):
        return Refusal("AR", UNSUPPORTED_MESSAGE_TYPE, f"message type {error.msg_type} is not ORU^R01")
    if isinstance(error, HL7apyException):  # InvalidHL7Message (no MSH) or InvalidEncodingChars (bad MSH-2)
        return Refusal("AR", SEGMENT_SEQUENCE_ERROR, f"not a readable HL7 message: {error}")
    raise error


class _ResultHandler(AbstractHandler):
    """MLLPServer's handler for ORU^R01: parse, store once per MSH-10, answer AA."""

    def __init__(self, message: str, peer: MllpPeer) -> None:
        super().__init__(message)
        self.peer = peer

    def reply(self) -> str:
        self.peer._store(parse_result(self.incoming_message))
        return self.peer._acknowledge(self.incoming_message)


class _RefusalHandler(AbstractErrorHandler):
    """MLLPServer's ERR handler: what does not parse, is not ORU^R01 or fails the checks gets AR or AE."""

    def __init__(self, exc: Exception, message: str, peer: MllpPeer) -> None:
        super().__init__(exc, message)
        self.peer = peer

    def reply(self) -> str:
        refusal = _as_refusal(self.exc)
        self.peer.count("unparseable")
        return self.peer._acknowledge(self.incoming_message, refusal)


class _LabRequestHandler(MLLPRequestHandler):
    """hl7apy's connection handler, plus the TLS handshake and the peer's instructions for the next messages."""

    def setup(self) -> None:
        # in this connection's own thread, so a client that never completes the handshake cannot stall accept()
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.server.timeout)
            self.request.do_handshake()
        super().setup()

    def _route_message(self, msg: str) -> str:
        peer: MllpPeer = self.server.peer
        instruction = peer._receive(msg)
        if instruction == "drop":
            peer.count("dropped")
            raise NoAcknowledgement
        if instruction == "silent":
            peer.count("silent")
            self._wait_for_client_to_give_up()
            raise NoAcknowledgement
        if instruction is None:
            reply = super()._route_message(msg)
        else:
            refusal = Refusal(instruction, APPLICATION_ERROR, f"refused on command ({instruction})")
            reply = peer._acknowledge(msg, refusal)
        time.sleep(peer._delay_s)
        return reply

    def _wait_for_client_to_give_up(self) -> None:
        """Hold the connection open, reading nothing useful, until the client closes it or the peer goes down."""
        self.request.settimeout(None)
        with contextlib.suppress(OSError):
            while self.request.recv(4096):
                pass


class _LabServer(TrackedConnections, MLLPServer):
    """hl7apy's MLLP server with daemon threads, optional TLS, and connections it can cut when going down."""

    def __init__(self, peer: MllpPeer) -> None:
        handlers = {message_type: (_ResultHandler, peer) for message_type in RESULT_TYPES}
        handlers["ERR"] = (_RefusalHandler, peer)
        super().__init__(peer, peer.host, peer.port, handlers, timeout=REQUEST_TIMEOUT_S,
                         request_handler_class=_LabRequestHandler)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        connection, address = super().get_request()
        if self.peer._tls is not None:
            connection = self.peer._tls.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return connection, address


class MllpPeer(LoopbackPeer):
    """A laboratory listening on 127.0.0.1 (port 0: any free port), serving in daemon threads; a context manager."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, port: int = 0) -> None:
        super().__init__(port)
        self._tls = tls
        self.messages: list[Message] = []
        self.raw: list[str] = []
        self._accepted_control_ids: set[str] = set()
        self._instructions: collections.deque[str] = collections.deque()
        self._ack_control_ids = itertools.count(1)

    def _make_server(self) -> _LabServer:
        return _LabServer(self)

    def answer_next(self, n: int, how: str) -> None:
        """The next n messages get `how`: "AE" or "AR" (refused, not stored), "drop" (hang up without an ACK) or
        "silent" (no ACK, connection held open until the client gives up); after them, normal answers resume."""
        if how not in INSTRUCTIONS:
            raise ValueError(f"answer {how!r} is not one of {', '.join(INSTRUCTIONS)}")
        with self._lock:
            self._instructions.extend([how] * n)

    def _receive(self, er7: str) -> str | None:
        """Record what arrived; the instruction for it, if one is pending."""
        with self._lock:
            self.raw.append(er7)
            self.stats["received"] += 1
            return self._instructions.popleft() if self._instructions else None

    def _store(self, message: Message) -> None:
        """Store a result once: a resend with an accepted MSH-10 is acknowledged again but not stored twice."""
        control_id = message.msh.msh_10.to_er7()
        with self._lock:
            if control_id in self._accepted_control_ids:
                self.stats["duplicates"] += 1
                return
            self._accepted_control_ids.add(control_id)
            self.messages.append(message)
            self.stats["stored"] += 1

    def _acknowledge(self, incoming: str, refusal: Refusal | None = None) -> str:
        """The MLLP-framed ACK for `incoming`, counted by its code."""
        ack = acknowledgement(incoming, f"LIS{next(self._ack_control_ids):07d}", refusal)
        self.count(ack.msa.msa_1.to_er7())
        return ack.to_mllp()
