"""`stripread run`: the reader's long-running service. It waits for a strip (the board's strip
sensor, or the start button), runs a reading session, stores it, and waits again; it logs one JSON
object per line (for journald or a log shipper) and never a patient identifier; SIGTERM ends it
cleanly, a session in progress included (stored as `shutdown`).

The patient is identified per session from a QR code on the patient's card, if one lies in the
camera's view when the strip goes in; otherwise the record is stored without one.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np

from device.runtime.session import POLL_S, ReadingSession
from device.store.results import PATIENT_ID

log = logging.getLogger("stripread.service")
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8     # glibc's mallopt parameters (malloc.h)
RETRY_STORE_S = 10.0           # how often (real seconds) readings held in memory are offered to the store again
_QR = cv2.QRCodeDetector()


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
                 "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry)


def patient_from_photo(photo: bytes) -> str | None:
    """The text of a QR code in the photo (the patient's card beside the tray), if any. Searched at
    half size: a card's code is large in the frame, and a full-size search costs the service ~24 MB."""
    image = cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_2)
    if image is None:
        return None
    text, _, _ = _QR.detectAndDecode(image)
    if text and not re.match(PATIENT_ID, text):
        log.warning("a QR code in view is not a patient id: the reading is kept unlinked")
        return None
    return text or None


class ReaderService:
    """Waits for strips and runs sessions until `stop` is set."""

    def __init__(self, session: ReadingSession, operator_id: str | None = None,
                 on_stored: Callable[[], None] | None = None):
        self.session, self.operator_id = session, operator_id
        self.on_stored = on_stored or (lambda: None)     # e.g. wake the lab sync
        self.sessions = 0
        self.last_record = None                           # the newest stored session's record
        self._requested: tuple | None = None     # (patient, operator, purpose) for the next strip
        self._lock = threading.Lock()
        self._retry_at = 0.0                              # when held readings are next offered to the store

    def request_test(self, patient_id: str | None, operator_id: str | None = None, purpose: str = "patient") -> None:
        """Someone at the screen started a test: the next strip is this patient's (or, `purpose="qc"`,
        a technician's control strip)."""
        with self._lock:
            self._requested = (patient_id, operator_id, purpose)

    def withdraw_request(self) -> None:
        """The screen's Cancel before the strip went in: the next strip is nobody's in particular."""
        with self._lock:
            self._requested = None

    def serve(self) -> int:
        board, clock, stop = self.session.board, self.session.clock, self.session.stop
        log.info("reader ready", extra={"fields": {"product": self.session.product.id,
                                                   "camera": self.session.camera.name}})
        while not stop.is_set():
            if self.session.held and time.monotonic() >= self._retry_at:
                self._store_held()
            event = self._next_event(board)
            if event is None:
                clock.sleep(POLL_S)
                continue
            if event.kind in ("link_lost", "link_restored", "board_reset", "lid"):
                log.info("board %s", event.kind, extra={"fields": {"detail": str(event.detail)}})
            if event.kind == "strip_inserted" or (event.kind == "button" and event.detail == "start"):
                self._one_session(clock.now())
        if self.session.held:
            self._store_held()
        if self.session.held:
            log.error("reader stopped with results the store could not take: they are lost",
                      extra={"fields": {"lost": len(self.session.held)}})
        log.info("reader stopped", extra={"fields": {"sessions": self.sessions}})
        return self.sessions

    def _store_held(self) -> None:
        self._retry_at = time.monotonic() + RETRY_STORE_S
        held = len(self.session.held)
        if self.session.store_held() is not None:
            log.info("held results stored", extra={"fields": {"stored": held}})
            self.on_stored()

    @staticmethod
    def _next_event(board):
        return None if board.events.empty() else board.events.get_nowait()

    def _one_session(self, inserted_at: float) -> None:
        started = time.monotonic()
        with self._lock:
            requested, self._requested = self._requested, None
        patient_id, operator_id, purpose = requested or (None, self.operator_id, "patient")
        report = self.session.run(patient_id=patient_id, operator_id=operator_id or self.operator_id,
                                  inserted_at=inserted_at, purpose=purpose,
                                  identify=patient_from_photo if purpose == "patient" else None)
        self.sessions += 1
        record = report.record
        if record is None:                   # the store refused it: held in memory (logged by the session)
            self._retry_at = time.monotonic() + RETRY_STORE_S
            log.info("session %s", report.outcome, extra={"fields": {
                "record": None, "held": len(self.session.held), "seconds": round(time.monotonic() - started, 2)}})
            return
        self.last_record = record
        log.info("session %s", report.outcome, extra={"fields": {
            "record": record.seq, "status": record.reading.status,
            "patient_identified": record.patient_id is not None, "seconds": round(time.monotonic() - started, 2)}})
        self.on_stored()


def install_json_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def bound_heap() -> None:
    """glibc's malloc set for a long-running service on a small device, before its threads start:
    at most two arenas (each of the web server's worker threads would otherwise get one of its own
    and keep what it freed there) and blocks from 128 kB up (photos, decoded frames, a history
    page's records) in mappings of their own, returned to the system as they are freed rather than
    kept in a heap that only grows. Measured through 200 sessions with the web pages polled
    (bench/footprint.py): RSS rose 29 MiB without this and 4 MiB with it. A C library without
    mallopt (musl) keeps its own behaviour."""
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_ARENA_MAX, 2)
    mallopt(M_MMAP_THRESHOLD, 128 * 1024)


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM (systemd stopping the service) and SIGINT set `stop`; the loop ends at its next look."""
    import signal
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
