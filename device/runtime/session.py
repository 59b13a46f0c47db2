"""The timed reading session: idle -> armed (climate checked, waiting for the strip) -> developing
(LEDs on, camera settled, one capture at each distinct `read_at_s` of the product) -> stored -> idle.

Each pad is read from the capture taken at its own read time; a capture later than the product
allows leaves its pads unreported (`outside_read_window`), and a session left past the product's
`discard_after` is refused outright. Cancel, a strip pulled out early, a lost camera and a lost
controller each end the session with a stored record saying so: never a silent loss, never a
half-written result (the store writes each record in one transaction). A store that cannot take
the record (a full disk) does not end the service: the reading is held in memory and stored as soon
as the store takes it again (`store_held`); a test does not start below a margin of free space.

Time comes from a `Clock`: real seconds scaled by a speed factor on the device and in the demo,
a fake clock in tests, so every transition can be driven deterministically.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum

from calibration.in_force import NOT_LOCKED
from device.runtime.camera import Camera, CameraLost
from device.reading.reader import Reader, software_version
from device.reading.result import PadResult, Reading, refused
from device.store.results import ResultStore, StoredResult, storage_failure
from firmware_bridge.host import BoardUnavailable

LATE_TOLERANCE_S = 10.0        # a capture up to this late still reads its pads as at their read time
EARLY_MARGIN_S = 0.5
POLL_S = 0.05                  # how often (in session seconds) events are checked while waiting
ARM_TIMEOUT_S = 600.0          # an armed reader with no strip for this long disarms (stored as such)
DEFAULT_CLIMATE = {"temperature_c": (15.0, 30.0), "humidity_pct": (10.0, 85.0)}   # typical strip labels
SESSION_SCHEMA = "stripread.session/1"
TOO_LATE_MESSAGE = "The strip was read too long after dipping: repeat the test with a new strip."
MIN_FREE_MB = float(os.environ.get("STRIPREAD_MIN_FREE_MB", "20"))   # a test needs this much room to be stored
log = logging.getLogger("stripread.session")


class State(Enum):
    IDLE = "idle"
    ARMED = "armed"
    DEVELOPING = "developing"
    STORED = "stored"


class Clock:
    """Wall-clock seconds, `speed` times faster (the demo compresses a two-minute read)."""

    def __init__(self, speed: float = 1.0):
        self.speed = speed
        self._origin = time.monotonic()
        self._held_at: float | None = None

    def now(self) -> float:
        held = self._held_at
        return held if held is not None else (time.monotonic() - self._origin) * self.speed

    @contextlib.contextmanager
    def held(self):
        """Time stands still inside (and goes on after it where it stopped): the simulated camera
        renders its photo here, work a real camera does not do, which at 20 times speed aged the
        strip by up to 27 s per photo and pushed reads out of their window."""
        start, self._held_at = time.monotonic(), self.now()
        try:
            yield
        finally:
            self._origin += time.monotonic() - start
            self._held_at = None

    def sleep(self, seconds: float) -> None:
        time.sleep(max(seconds, 0.0) / self.speed)


class SessionEnded(Exception):
    """A session stops early: `outcome` names why, `message` says it to the user."""

    def __init__(self, outcome: str, message: str):
        super().__init__(message)
        self.outcome, self.message = outcome, message


@dataclass
class SessionReport:
    state_log: list[tuple[float, str]] = field(default_factory=list)
    outcome: str = ""
    record: StoredResult | None = None


def climate_range(product) -> dict:
    """The product's operating range (`operating_conditions` in the product file), else the
    conditions printed on typical strip bottles."""
    conditions = product.source.get("operating_conditions", {})
    return {k: tuple(conditions.get(k, v)) for k, v in DEFAULT_CLIMATE.items()}


class ReadingSession:
    """One reader: its board (LEDs, strip sensor, climate, buttons), camera, read path and store."""

    def __init__(self, reader: Reader, board, camera: Camera, store: ResultStore, clock: Clock,
                 on_progress=None, stop: threading.Event | None = None, admit=None, judge=None):
        self.reader, self.board, self.camera, self.store, self.clock = reader, board, camera, store, clock
        # the QC state before each patient test (calibration.in_force.QcStatus): locked, why, last passing run
        self.admit = admit or (lambda: NOT_LOCKED)
        self.judge = judge                        # the alert rules, run as each patient's reading is stored
        self.on_progress = on_progress or (lambda message: None)   # one line per step, no patient data
        self.stop = stop or threading.Event()                      # set: the reader is shutting down
        self.product = reader.product
        self.read_times = sorted({pad.read_at_s for pad in self.product.pads})
        self.state = State.IDLE
        self.report = SessionReport()
        self.stored = 0                                            # sessions ended (stored or held)
        self.held: list[dict] = []          # records the store could not take yet (a full disk), oldest first
        self.min_free_mb = MIN_FREE_MB
        self.dipped_at: float | None = None                        # clock time the current strip went in
        self.last_photo: bytes | None = None                       # the newest capture (a live preview)

    def _enter(self, state: State, message: str = "") -> None:
        self.state = state
        self.report.state_log.append((round(self.clock.now(), 3), state.value))
        if message:
            self.on_progress(message)

    def run(self, patient_id: str | None = None, operator_id: str | None = None,
            inserted_at: float | None = None, identify=None, purpose: str = "patient") -> SessionReport:
        """One session from arming to a stored record, whatever happens in between; `inserted_at`
        when the strip is already in (the service saw it go in); `identify(photo)` finds the patient
        in the first capture when no `patient_id` is given. A `purpose="qc"` session reads a control
        strip: it runs while patient tests are locked and its result stays off the lab's outbox."""
        self.report = SessionReport()
        self._enter(State.ARMED, "waiting for the strip")
        captures: list[dict] = []
        thumbnails: dict[str, bytes] = {}
        dipped_at = None
        qc = self.admit() if purpose == "patient" else NOT_LOCKED
        try:
            if qc.locked:
                raise SessionEnded("locked", qc.message)
            self._check_room()
            self._check_climate()
            dipped_at = self._wait_for_strip() if inserted_at is None else inserted_at
            self.dipped_at, self.last_photo = dipped_at, None
            self._enter(State.DEVELOPING, "strip in: developing, reads at "
                        + ", ".join(f"{t:g}" for t in self.read_times) + " s")
            self._board(self.board.set_leds, 255, 255, 255)
            self.camera.start(self.reader.calibration.camera_settings or None)
            result, first_photo = self._develop_and_read(dipped_at, captures, thumbnails)
            if patient_id is None and identify is not None and first_photo is not None:
                patient_id = identify(first_photo)
            outcome = "completed"
        except SessionEnded as ended:
            outcome = ended.outcome
            result = Reading("aborted", self.product.id, schema=SESSION_SCHEMA,
                             extra={"outcome": ended.outcome, "message": ended.message})
        finally:
            self._lights_off_and_stop()
        if result.provenance and qc.last_passing_id:
            result = result.with_provenance(qc_run_id=qc.last_passing_id)     # the QC that vouched for this reader
        result = replace(result, extra={**result.extra, "session": {
            "outcome": outcome, "purpose": purpose, "dipped_at_s": dipped_at, "captures": captures,
            "states": self.report.state_log, "software_version": software_version()}})
        self.held.append({"result": result, "patient_id": patient_id, "operator_id": operator_id,
                          "thumbnails": thumbnails, "for_lab": purpose == "patient",
                          "judge": self.judge if purpose == "patient" else None})
        self.report.record = self.store_held()
        self.report.outcome = outcome
        self.stored += 1
        self._enter(State.STORED, f"{outcome}: stored as record #{self.report.record.seq}" if self.report.record
                    else f"{outcome}: kept in memory until the store can take it")
        self._enter(State.IDLE)
        return self.report

    def store_held(self) -> StoredResult | None:
        """Store the held records, oldest first; the newest one stored, or None when the store
        refused (the records stay held, and the failure is logged once per try, without patient data)."""
        stored = None
        while self.held:
            try:
                stored = self.store.add(**self.held[0])
            except Exception as exc:
                if not storage_failure(exc):
                    raise
                log.error("result kept in memory: the store cannot take it (%s)", exc,
                          extra={"fields": {"held": len(self.held)}})
                return None
            self.held.pop(0)
        return stored

    def _check_room(self) -> None:
        """Refuse to start a test the store may have no room for."""
        try:
            free_mb = shutil.disk_usage(self.store.path.parent).free / 1e6
        except OSError:
            return                           # cannot tell: the store itself will say
        if free_mb < self.min_free_mb:
            raise SessionEnded("storage_full", f"The reader's storage is almost full ({free_mb:.0f} MB free, "
                                               f"{self.min_free_mb:.0f} MB needed to store a test): ask a "
                                               "technician to make room (stripread backup, then clear old files).")

    def _board(self, call, *args):
        """A board call; a controller that stopped answering ends the session."""
        try:
            return call(*args)
        except BoardUnavailable as exc:
            raise SessionEnded("board_lost", "The reader's controller stopped responding: unplug the reader, "
                                             "plug it in again and repeat the test with a new strip.") from exc

    def _check_climate(self) -> None:
        climate = self._board(self.board.climate)
        limits = climate_range(self.product)
        t_lo, t_hi = limits["temperature_c"]
        h_lo, h_hi = limits["humidity_pct"]
        if not (t_lo <= climate.temperature_c <= t_hi and h_lo <= climate.humidity_pct <= h_hi):
            raise SessionEnded("climate_out_of_range",
                               f"The room is {climate.temperature_c:.0f} °C at {climate.humidity_pct:.0f} % "
                               f"humidity; the strips are only reliable between {t_lo:.0f} and {t_hi:.0f} °C "
                               f"and {h_lo:.0f}-{h_hi:.0f} %. Test somewhere else.")

    def _events(self):
        """Board events received since the last look; a shutdown request ends the session."""
        if self.stop.is_set():
            raise SessionEnded("shutdown", "The reader was switched off during the test: repeat the test "
                                           "with a new strip.")
        while not self.board.events.empty():
            yield self.board.events.get_nowait()

    def _wait_for_strip(self) -> float:
        deadline = self.clock.now() + ARM_TIMEOUT_S
        while self.clock.now() < deadline:
            for event in self._events():
                if event.kind == "strip_inserted":
                    return self.clock.now()
                self._interrupting(event)
            self.clock.sleep(POLL_S)
        raise SessionEnded("no_strip", "No strip was put in the tray; the test was not started.")

    def _interrupting(self, event) -> None:
        """Events that end a session whatever its state."""
        if event.kind == "button" and event.detail == "cancel":
            raise SessionEnded("cancelled", "The test was cancelled.")
        if event.kind == "strip_removed":
            raise SessionEnded("strip_removed", "The strip was taken out before all its pads were read: "
                                                "repeat the test with a new strip.")
        if event.kind in ("link_lost", "board_reset"):
            raise SessionEnded("board_lost", "The reader's controller restarted during the test: repeat the "
                                             "test with a new strip.")

    def _develop_and_read(self, dipped_at: float, captures: list[dict], thumbnails: dict) -> tuple[Reading, bytes]:
        """A capture at each read time, each pad read from its own (and pictured from it); the
        reading assembled (its derived ratios from the pads as assembled), and the first photo."""
        window = self.product.read_window_s
        pads: dict[str, PadResult] = {}
        first_result = first_photo = None
        for read_at in self.read_times:
            self._wait_until(dipped_at + read_at - EARLY_MARGIN_S)
            taken = self.clock.now() - dipped_at   # the shutter opens on request; delivery may take longer
            try:
                photo = self.last_photo = self.camera.capture()
            except CameraLost as exc:
                raise SessionEnded("camera_lost", "The camera stopped working during the test: restart the "
                                                  "reader and repeat the test with a new strip.") from exc
            late = taken > read_at + LATE_TOLERANCE_S or taken > window.get("discard_after", float("inf"))
            result, crops = self.reader.take(photo, captured_at=datetime.now(timezone.utc))
            captures.append({"read_at_s": read_at, "taken_at_s": round(taken, 2),
                             "image_sha256": result.provenance["image_sha256"], "status": result.status})
            self.on_progress(f"{taken:5.1f} s: read " + ", ".join(p.analyte for p in self.product.pads
                                                                  if p.read_at_s == read_at)
                             + ("" if result.ok else f" - refused ({result.error.code})"))
            first_photo = first_photo or photo
            if not result.ok:
                return result, first_photo   # the strip cannot be read again later: refuse the session
            first_result = first_result or result
            for pad in result.pads:
                if self.product.pad(pad.analyte).read_at_s == read_at:
                    pads[pad.analyte] = pad.unreported("outside_read_window") if late else pad
                    thumbnails[pad.analyte] = crops[pad.analyte]
        assembled = tuple(pads[p.analyte] for p in self.product.pads)
        if all("outside_read_window" in p.flags for p in assembled):
            return refused("outside_read_window", TOO_LATE_MESSAGE, product=self.product.id,
                           provenance=first_result.provenance), first_photo
        return replace(first_result, pads=assembled), first_photo

    def _wait_until(self, when: float) -> None:
        while True:
            for event in self._events():
                self._interrupting(event)
            remaining = when - self.clock.now()
            if remaining <= 0:
                return
            self.clock.sleep(min(POLL_S, remaining))

    def _lights_off_and_stop(self) -> None:
        """Always leave the LEDs off and the camera closed, even when the session failed."""
        try:
            self.board.leds_off()
        except BoardUnavailable:
            pass   # the controller is gone; its LEDs go off with it
        try:
            self.camera.stop()
        except CameraLost:
            pass

