"""The clinic's pages (a nurse, or a technician): alerts to review, acknowledging one with a note
of what was done (needed for an urgent alert) and undoing that, the readings of all patients and
of one with trend plots. The JSON behind each page sits beside it.

What staff wrote when they acknowledged an alert or undid it is kept here too (`AlertNotes`): one
row per action beside the web accounts in the device's database (the store's alerts table keeps
who closed an alert and when; this keeps why)."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Path as PathParam, Query
from fastapi.responses import HTMLResponse, RedirectResponse

from device.language import units
from device.language.i18n import N_
from device.monitoring.alerts import severity_rank
from device.monitoring.trends import series
from device.store.database import Database, open_database
from device.store.results import ResultStore
from device.web import views
from device.web.pages import (NOT_FOUND, NOT_LOGGED_IN, STYLE_NAMES, Nurse, NurseForm, PageOf, PatientId, SiteOf,
                              Staff)
from device.language.plain import level_words, plain_name, trend_svg, unit_words, value_text
from device.web.records import local, results
from device.web.security import LIMIT_MAX, NOTE_MAX, PATIENT_ID, PATIENT_ID_RULE, SEQ_MAX

AlertRow = Annotated[int, PathParam(ge=1, le=SEQ_MAX)]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_notes (
    id        INTEGER PRIMARY KEY,
    alert_row INTEGER NOT NULL,
    action    TEXT NOT NULL CHECK (action IN ('acknowledged', 'reopened')),
    by_user   TEXT NOT NULL,
    note      TEXT NOT NULL,
    at        TEXT NOT NULL
)
"""


class AlertNotes(Database):
    """Why staff closed or reopened an alert, one row per action."""

    def __init__(self, path: Path | str):
        self._db = open_database(path, _SCHEMA)

    def add(self, alert_row: int, action: str, by: str, note: str) -> None:
        self._db.execute("INSERT INTO alert_notes (alert_row, action, by_user, note, at) VALUES (?, ?, ?, ?, ?)",
                         (alert_row, action, by, note, datetime.now(timezone.utc).isoformat(timespec="seconds")))

    def latest(self, alert_rows: list[int]) -> dict[int, dict]:
        """The newest note of each alert that has one."""
        found: dict[int, dict] = {}
        for row, action, by, note, at in self._db.execute(
                "SELECT alert_row, action, by_user, note, at FROM alert_notes WHERE alert_row IN (%s) ORDER BY id"
                % ",".join("?" * len(alert_rows)), alert_rows):
            found[row] = {"action": action, "by": by, "note": note, "at": at}
        return found


router = APIRouter()


@router.get("/history", response_class=HTMLResponse, include_in_schema=False)
def history(page: PageOf):
    """Patients' readings only: control strips are the technician's (QC records)."""
    records = results(page.site.context.db, None, 200, page.words)
    return page("history.html", records=[r for r in records if not r["qc"]][:50])


@router.get("/api/results", responses=NOT_LOGGED_IN)
def results_json(site: SiteOf,
                 patient: Annotated[str | None, Query(pattern=PATIENT_ID, description=PATIENT_ID_RULE)] = None,
                 limit: Annotated[int, Query(ge=1, le=LIMIT_MAX)] = 50) -> list[dict]:
    return results(site.context.db, patient, limit)


@router.get("/patients", include_in_schema=False)
def find_patient(p: Annotated[str, Query(pattern=PATIENT_ID)]):
    """The history page's search form: no script needed to turn its field into the patient's page."""
    return RedirectResponse(f"/patients/{quote(p)}", status_code=303)


def patient_trends(db: Path, patient_id: str) -> list[dict]:
    """The patient's readings as series over time (control strips left out), or 404."""
    with ResultStore(db) as store:
        lines = series([r for r in reversed(store.history(patient_id, 500)) if not views.is_qc(r.result)])
    if not lines:
        raise HTTPException(404, N_("no readings of this patient"))
    return lines


@router.get("/patients/{patient_id}", response_class=HTMLResponse, include_in_schema=False)
def patient_page(page: PageOf, patient_id: PatientId):
    db, product, words = page.site.context.db, page.site.product, page.words
    plots = []
    for t in patient_trends(db, patient_id):
        pad = next((p for p in product.pads if p.analyte == t["analyte"]), None)
        unit = t["unit"] if pad is None else units.converted(pad.analyte, pad.unit, 1.0, words.style)[1]
        plots.append({"id": f"trend-{t['analyte']}", "name": plain_name(t["analyte"], words),
                      "unit": unit_words(unit, words),
                      "svg": trend_svg(pad, t["unit"], t["levels"], t["points"], f"trend-{t['analyte']}", words),
                      "points": [{**p, "when": local(p["at"], words),
                                  "level_text": level_words(pad, p["level"], words) if pad else p["level"],
                                  "value_text": value_text(pad, p["value"], words) if pad else None}
                                 for p in t["points"]]})
    return page("patient.html", patient_id=patient_id, plots=plots, styles=STYLE_NAMES,
                records=[r for r in results(db, patient_id, 50, words) if not r["qc"]])


@router.get("/api/patients/{patient_id}/trends", responses={**NOT_LOGGED_IN, **NOT_FOUND})
def trends_json(site: SiteOf, patient_id: PatientId) -> list[dict]:
    """Each analyte's readings over time: chart position, confidence, abnormal flag."""
    return patient_trends(site.context.db, patient_id)


def clinic_view(db: Path) -> dict:
    """Patients to review (the most severe open alert first, then the newest), open alerts with
    their latest note, and the 20 newest acknowledged."""
    with ResultStore(db) as store:
        recent = store.alerts(limit=200)
    with AlertNotes(db) as notes:
        written = notes.latest([a["id"] for a in recent])
    recent = [{**a, "note": written.get(a["id"])} for a in recent]
    open_alerts = [a for a in recent if a["acknowledged_at"] is None]
    patients: dict[str, dict] = {}
    for alert in open_alerts:                       # newest first: the first seen is the newest
        entry = patients.setdefault(alert["patient_id"], {"patient_id": alert["patient_id"], "alerts": 0,
                                                         "worst": alert["severity"], "newest": alert["created_at"]})
        entry["alerts"] += 1
        if severity_rank(alert["severity"]) > severity_rank(entry["worst"]):
            entry["worst"] = alert["severity"]
    review = sorted(patients.values(), key=lambda p: (severity_rank(p["worst"]), p["newest"]),
                    reverse=True)                   # the most severe first, then the newest
    return {"review": review, "open": open_alerts,
            "acknowledged": [a for a in recent if a["acknowledged_at"] is not None][:20]}


@router.get("/clinic", response_class=HTMLResponse, include_in_schema=False)
def clinic(page: PageOf, session: Nurse):
    """Patients needing review: open alerts, newest first, each with the patient's history."""
    context, words = page.site.context, page.words
    view = clinic_view(context.db)
    for alert in view["open"] + view["acknowledged"]:
        alert["shown"] = views.alert_words(context.rules, alert, words)
        alert["when"] = local(alert["created_at"], words)
        alert["done_at"] = alert["acknowledged_at"] and local(alert["acknowledged_at"], words)
    for patient in view["review"]:
        patient["when"] = local(patient["newest"], words)
    return page("clinic.html", csrf=session.csrf, note_max=NOTE_MAX, **view)


@router.get("/api/clinic/alerts", responses=NOT_LOGGED_IN)
def clinic_json(site: SiteOf, session: Staff) -> dict:
    """Open and recent alerts (clinic staff only)."""
    if session is None:
        raise HTTPException(401, N_("log in as clinic staff"))
    return clinic_view(site.context.db)


@router.post("/clinic/alerts/{alert_row}/acknowledge", include_in_schema=False)
def acknowledge(site: SiteOf, session: NurseForm, alert_row: AlertRow,
                note: Annotated[str, Form(max_length=NOTE_MAX)] = ""):
    """Closed with a note of what was done (needed for an urgent alert); undone by `reopen`."""
    with ResultStore(site.context.db) as store:
        alert = next((a for a in store.alerts(limit=10_000) if a["id"] == alert_row), None)
        if alert is None:
            raise HTTPException(404, f"no alert #{alert_row}")
        if alert["severity"] == "urgent" and not note.strip():
            raise HTTPException(400, "An urgent alert needs a note of what was done (for example: "
                                     "'phoned the patient, seen today') before it is acknowledged.")
        if store.acknowledge(alert_row, session.username):
            with AlertNotes(site.context.db) as notes:
                notes.add(alert_row, "acknowledged", session.username, note.strip())
    return RedirectResponse("/clinic", status_code=303)


@router.post("/clinic/alerts/{alert_row}/reopen", include_in_schema=False)
def reopen(site: SiteOf, session: NurseForm, alert_row: AlertRow):
    """Undo an acknowledgement: the alert is open again, and the undo is noted."""
    with ResultStore(site.context.db) as store:
        if store.reopen(alert_row):
            with AlertNotes(site.context.db) as notes:
                notes.add(alert_row, "reopened", session.username, "acknowledgement undone")
    return RedirectResponse("/clinic", status_code=303)
