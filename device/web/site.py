"""What one web app holds for all its requests: the `WebContext` it was made with, its templates and
login throttle, and the reader as every audience's pages see it (running or not, a test in
progress, the QC gate), so that the patient's Start and the technician's Run QC share one notion
of "busy"."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi.templating import Jinja2Templates

from calibration.in_force import qc_status
from device.language import i18n
from device.store.records import Records
from device.web.security import LoginGuard

INSERT_DELAY_S = 2.0       # simulated reader: the patient puts the strip in two seconds after "start"


@dataclass
class WebContext:
    """What the pages show and act on: the database, the product, and the live reader when one runs."""
    db: Path
    product: object                 # calibration.specs.Product
    service: object | None = None   # device.runtime.service.ReaderService
    rig: object | None = None       # simulator.rig.SimulatedRig: "start" also puts a simulated strip in
    https: bool = False
    login_everywhere: bool = False  # a clinic's network: every page needs a logged-in staff member
    login_guard: LoginGuard | None = None   # the login throttle (one is made when not given)
    rules: list | None = None       # the alert rules (device.monitoring.alerts.load_rules(); the shipped ones when None)
    lab: bool = False               # a lab is configured: alerts are sent to a clinic
    contact: str | None = None      # whom a patient contacts when QC locks the reader ($STRIPREAD_CONTACT)
    charts: dict = field(default_factory=dict)   # Levey-Jennings PNGs by (control, newest run id)
    locale: str = i18n.DEFAULT_LOCALE   # the device's language (i18n.choose_locale) until a browser chooses its own
    style: str = i18n.DEFAULT_STYLE     # the device's report style (i18n.choose_style), likewise


@dataclass
class Site:
    """One app's state across requests (`request.app.state.site`)."""
    context: WebContext
    templates: Jinja2Templates
    guard: LoginGuard
    contact: str                           # whom a patient contacts when QC locks the reader
    started_after: int | None = None       # the session count when a page here last started a test
    chart_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def product(self):
        return self.context.product

    def read_times(self) -> list[float]:
        return sorted({pad.read_at_s for pad in self.product.pads})

    def in_progress(self) -> bool:
        """A test was started here and is not stored yet, or the reader is reading a strip."""
        service = self.context.service
        if service is None:
            return False
        if service.session.state.value in ("armed", "developing"):
            return True
        return self.started_after is not None and service.sessions == self.started_after

    def begin(self, patient: str | None, operator: str | None, purpose: str, levels: dict | None = None) -> None:
        """Ask the reader for a test (a simulated rig also gets a strip put in, at `levels`)."""
        self.started_after = self.context.service.sessions
        self.context.service.request_test(patient, operator, purpose)
        if self.context.rig is not None:
            self.context.rig.hand_in_new_strip(levels=levels, after_s=INSERT_DELAY_S)

    def qc_state(self) -> dict:
        """The QC gate as a patient meets it: locked (with whom to contact), passed, or not set up."""
        with Records(self.context.db) as records:
            status = qc_status(records)
            any_run = bool(records.latest_per_subject("qc"))
        tone = "locked" if status.locked else "ok" if any_run else "neutral"
        return {"locked": status.locked, "message": status.message, "tone": tone, "contact": self.contact}

    def reader_state(self) -> dict:
        """What the reader is doing, its read times and countdown, the last stored record, the QC lock."""
        service = self.context.service
        qc = self.qc_state()
        lock = qc["message"] if qc["locked"] else None
        if service is None:
            return {"running": False, "state": "offline", "lock": lock}
        session = service.session
        elapsed = None if session.dipped_at is None else round(session.clock.now() - session.dipped_at, 1)
        developing = session.state.value == "developing"
        last = service.last_record
        return {"running": True, "state": session.state.value, "product": session.product.id,
                "read_times_s": session.read_times, "elapsed_s": elapsed if developing else None,
                "left_s": max(0, round(max(session.read_times) - elapsed)) if developing and elapsed is not None
                else None, "total_s": max(session.read_times), "in_progress": self.in_progress(),
                "sessions": service.sessions, "preview": session.last_photo is not None,
                "last_record": None if last is None else {"seq": last.seq, "status": last.result.get("status"),
                                                          "message": last.result.get("message")},
                "lock": lock}
