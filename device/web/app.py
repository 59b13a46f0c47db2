"""The reader's local web interface (FastAPI, server-rendered pages, no external files): patients and
nurses start a test, watch the read windows count down with the camera's view, read the result with
each pad beside its chart colour and what to do next, and look back at a patient's trends;
technicians (logged in) see calibration records, QC with Levey-Jennings charts, the lab sync with a
retry, and the device's health. Every page's data is also JSON under /api (its OpenAPI schema at /openapi.json).

Request paths carry patient ids, so the server keeps no access log; what it logs names no patient.
Its defences against hostile clients (login throttle, id formats, security headers, the last-resort
error handler) are in device/web/security.py.
"""
from __future__ import annotations

import io
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import FastAPI, Form, HTTPException, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel

from device.web.auth import Accounts, csrf_ok, same_secret
from device.web.plain import next_steps, trend_svg
from device.web.security import (LIMIT_MAX, NAME, PASSWORD_MAX, PATIENT_ID, PATIENT_ID_RULE, SEQ_MAX, USERNAME_MAX,
                                 Hardening, LoginBusy, LoginGuard)

HERE = Path(__file__).parent
SESSION_COOKIE, FORM_COOKIE = "sr_session", "sr_form"
SEVERITY_ORDER = ("info", "warning", "urgent")
INSERT_DELAY_S = 2.0       # simulated reader: the patient puts the strip in two seconds after "start"
FORM_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")   # secrets.token_urlsafe(24): anything else is not ours

# Every id and number that reaches the app, bounded where it enters (FastAPI answers a mismatch 422
# on the API; the pages show the rule in words, see `bad_request`).
Seq = Annotated[int, PathParam(ge=1, le=SEQ_MAX, description="a record's number")]
PatientId = Annotated[str, PathParam(pattern=PATIENT_ID, description=PATIENT_ID_RULE)]
Name = Annotated[str, PathParam(pattern=NAME)]
RULES = {"seq": f"a record number is a whole number from 1 to {SEQ_MAX}",
         "alert_row": f"an alert number is a whole number from 1 to {SEQ_MAX}",
         "patient_id": PATIENT_ID_RULE, "patient": PATIENT_ID_RULE, "p": PATIENT_ID_RULE,
         "limit": f"limit is a whole number from 1 to {LIMIT_MAX}",
         "analyte": "an analyte is a short code such as GLU", "control_id": "a control id is 1 to 64 letters, "
         "digits, '.', '_' or '-'", "username": f"a name has at most {USERNAME_MAX} characters",
         "password": f"a password has at most {PASSWORD_MAX} characters"}


class Problem(BaseModel):
    detail: str


# what the API answers besides 200 and 422 (401 on every route under --web-login), for its schema
NOT_LOGGED_IN = {401: {"model": Problem, "description": "not logged in (staff data, or anything under --web-login)"}}
NOT_FOUND = {404: {"model": Problem, "description": "no such record or patient"}}


@dataclass
class WebContext:
    """What the pages show and act on: the database, the product, and the live reader when one runs."""
    db: Path
    product: object                 # calibration.specs.Product
    service: object | None = None   # device.service.ReaderService
    rig: object | None = None       # device.rig.SimulatedRig: "start" also puts a simulated strip in
    https: bool = False
    login_everywhere: bool = False  # a clinic's network: every page needs a logged-in staff member
    login_guard: LoginGuard | None = None   # the login throttle (one is made when not given)


def create_app(context: WebContext) -> FastAPI:
    # the interactive docs pages load scripts from a CDN: offline readers publish the schema only
    app = FastAPI(title="stripread", description="The reader's local interface and its JSON API.",
                  docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    product = context.product
    guard = context.login_guard or LoginGuard()

    @app.middleware("http")
    async def staff_only(request: Request, call_next):
        """With `login_everywhere`, patients' pages and data too are for logged-in staff only."""
        public = request.url.path in ("/tech/login", "/openapi.json") or request.url.path.startswith("/static/")
        if context.login_everywhere and not public and technician(request) is None:
            if request.url.path.startswith("/api/"):
                return JSONResponse({"detail": "log in first"}, status_code=401)
            return RedirectResponse("/tech/login", status_code=303)
        return await call_next(request)

    def page(request: Request, name: str, **values) -> HTMLResponse:
        form_token = request.cookies.get(FORM_COOKIE, "")
        if not FORM_TOKEN.fullmatch(form_token):
            form_token = secrets.token_urlsafe(24)
        response = templates.TemplateResponse(request, name, {"form_token": form_token, **values})
        response.set_cookie(FORM_COOKIE, form_token, httponly=True, samesite="strict", secure=context.https)
        return response

    def technician(request: Request):
        with Accounts(context.db) as accounts:
            return accounts.session(request.cookies.get(SESSION_COOKIE))

    def require_technician(request: Request):
        session = technician(request)
        if session is None:
            raise HTTPException(303, headers={"Location": "/tech/login"})
        return session

    def technician_form(request: Request, csrf: str):
        """A technician's state-changing form: logged in, and the session's CSRF token echoed."""
        session = require_technician(request)
        if not csrf_ok(session, csrf):
            raise HTTPException(403, "missing or wrong CSRF token")
        return session

    def form_ok(request: Request, token: str) -> None:
        """Anonymous forms: the hidden token must match the page's cookie (double submit)."""
        if not same_secret(request.cookies.get(FORM_COOKIE), token):
            raise HTTPException(403, "This form has expired: go back, reload the page and try again.")

    # -- patient and nurse -------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(request: Request):
        return page(request, "home.html", reader=reader_state(), lock=qc_lock())

    @app.get("/test", response_class=HTMLResponse, include_in_schema=False)
    def start_form(request: Request):
        return page(request, "start.html", lock=qc_lock(), live=context.service is not None)

    @app.post("/test", include_in_schema=False)
    def start_test(request: Request, patient_id: str = Form(""), form_token: str = Form("")):
        form_ok(request, form_token)
        patient = patient_id.strip() or None
        if patient is not None and not re.fullmatch(PATIENT_ID, patient):
            response = page(request, "start.html", lock=qc_lock(), live=context.service is not None,
                            error=f"Not started: {PATIENT_ID_RULE}.")
            response.status_code = 400
            return response
        if context.service is None:
            raise HTTPException(409, "No reader is running here: start `stripread run` or `stripread serve`.")
        context.service.request_test(patient)
        if context.rig is not None:
            context.rig.hand_in_new_strip(after_s=INSERT_DELAY_S)
        return RedirectResponse("/test/live", status_code=303)

    @app.get("/test/live", response_class=HTMLResponse, include_in_schema=False)
    def live(request: Request):
        return page(request, "live.html")

    @app.get("/api/session", responses=NOT_LOGGED_IN)
    def session_state() -> dict:
        """The reader's state: what it is doing, the read windows left, the last stored record."""
        return reader_state()

    @app.get("/api/session/preview.jpg", include_in_schema=False)
    def preview():
        photo = context.service.session.last_photo if context.service else None
        if photo is None:
            raise HTTPException(404, "no capture yet")
        return Response(photo, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.get("/results/{seq}", response_class=HTMLResponse, include_in_schema=False)
    def result_page(request: Request, seq: Seq):
        record = stored(seq)
        from device.store import ResultStore
        with ResultStore(context.db) as store:
            alerts = store.alerts(result_id=record["result_id"])
        return page(request, "result.html", record=record, pads=pad_rows(record), steps=next_steps(record["result"]),
                    alerts=alerts)

    @app.get("/api/results/{seq}", responses={**NOT_LOGGED_IN, **NOT_FOUND})
    def result_json(seq: Seq) -> dict:
        return stored(seq)

    @app.get("/thumbnails/{seq}/{analyte}.png", include_in_schema=False)
    def thumbnail(seq: Seq, analyte: Name):
        from device.store import ResultStore
        with ResultStore(context.db) as store:
            png = store.thumbnails(stored(seq)["result_id"]).get(analyte)
        if png is None:
            raise HTTPException(404, "no picture of this pad")
        return Response(png, media_type="image/png")

    @app.get("/history", response_class=HTMLResponse, include_in_schema=False)
    def history(request: Request):
        return page(request, "history.html", records=results(None, 50))

    @app.get("/api/results", responses=NOT_LOGGED_IN)
    def results_json(patient: Annotated[str | None, Query(pattern=PATIENT_ID, description=PATIENT_ID_RULE)] = None,
                     limit: Annotated[int, Query(ge=1, le=LIMIT_MAX)] = 50) -> list[dict]:
        return results(patient, limit)

    @app.get("/patients", include_in_schema=False)
    def find_patient(p: Annotated[str, Query(pattern=PATIENT_ID)]):
        """The history page's search form: no script needed to turn its field into the patient's page."""
        return RedirectResponse(f"/patients/{quote(p)}", status_code=303)

    @app.get("/patients/{patient_id}", response_class=HTMLResponse, include_in_schema=False)
    def patient_page(request: Request, patient_id: PatientId):
        trends = patient_trends(patient_id)
        plots = [(t["analyte"], t["name"], trend_svg(t["analyte"], t["levels"], [
            (p["date"], p["position"], p["confidence"], p["abnormal"]) for p in t["points"]])) for t in trends]
        return page(request, "patient.html", patient_id=patient_id, plots=plots, records=results(patient_id, 50))

    @app.get("/api/patients/{patient_id}/trends", responses={**NOT_LOGGED_IN, **NOT_FOUND})
    def trends_json(patient_id: PatientId) -> list[dict]:
        """Each analyte's readings over time: chart position, confidence, abnormal flag."""
        return patient_trends(patient_id)

    # -- technician ------------------------------------------------------------------------------

    @app.get("/tech/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request):
        return page(request, "login.html", error=None)

    @app.post("/tech/login", include_in_schema=False)
    def login(request: Request, username: Annotated[str, Form(max_length=USERNAME_MAX)],
              password: Annotated[str, Form(max_length=PASSWORD_MAX)], form_token: str = Form("")):
        """Throttled per account and per address (locked out past the allowance, the right password
        included), and at most a couple of password hashes at once."""
        form_ok(request, form_token)
        address = request.client.host if request.client else "unknown"
        refused = guard.refusal(username, address)
        if refused is not None:
            return login_refused(request, refused[0], 429, refused[1])
        try:
            signed_in = guard.check(check_password, username, password)
        except LoginBusy:
            return login_refused(request, "The reader is busy checking other logins: try again in a moment.", 503, 1)
        guard.record(username, address, succeeded=signed_in is not None)
        if signed_in is None:
            return login_refused(request, "Wrong name or password.", 401)
        response = RedirectResponse("/tech", status_code=303)
        response.set_cookie(SESSION_COOKIE, signed_in[0], httponly=True, samesite="strict", secure=context.https,
                            max_age=8 * 3600)
        return response

    def check_password(username: str, password: str):
        with Accounts(context.db) as accounts:
            return accounts.login(username, password)

    def login_refused(request: Request, message: str, status: int, retry_after_s: int | None = None) -> HTMLResponse:
        response = page(request, "login.html", error=message)
        response.status_code = status
        if retry_after_s is not None:
            response.headers["Retry-After"] = str(retry_after_s)
        return response

    @app.post("/tech/logout", include_in_schema=False)
    def logout(request: Request, csrf: str = Form("")):
        technician_form(request, csrf)
        with Accounts(context.db) as accounts:
            accounts.logout(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.get("/tech", response_class=HTMLResponse, include_in_schema=False)
    def technician_page(request: Request):
        session = require_technician(request)
        return page(request, "tech.html", user=session.username, csrf=session.csrf, status=technician_status())

    @app.get("/api/tech/status", responses=NOT_LOGGED_IN)
    def technician_json(request: Request) -> dict:
        """Calibration records, QC, lab sync and device health (technicians only)."""
        if technician(request) is None:
            raise HTTPException(401, "log in as a technician")
        return technician_status()

    @app.get("/tech/qc/{control_id}.png", include_in_schema=False)
    def levey_jennings(request: Request, control_id: Name):
        require_technician(request)
        from calibration.qc import levey_jennings_png
        from calibration.records import Records
        from device.calibrations import control_runs
        with Records(context.db) as records:
            control, series = control_runs(records, control_id)
        if control is None:
            raise HTTPException(404, "no runs of this control")
        buffer = io.BytesIO()
        levey_jennings_png(control, series, buffer)
        return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/clinic", response_class=HTMLResponse, include_in_schema=False)
    def clinic(request: Request):
        """Patients needing review: open alerts, newest first, each with the patient's history."""
        session = require_technician(request)
        return page(request, "clinic.html", user=session.username, csrf=session.csrf, **clinic_view())

    @app.get("/api/clinic/alerts", responses=NOT_LOGGED_IN)
    def clinic_json(request: Request) -> dict:
        """Open and recent alerts (clinic staff only)."""
        if technician(request) is None:
            raise HTTPException(401, "log in as clinic staff")
        return clinic_view()

    @app.post("/clinic/alerts/{alert_row}/acknowledge", include_in_schema=False)
    def acknowledge(request: Request, alert_row: Annotated[int, PathParam(ge=1, le=SEQ_MAX)], csrf: str = Form("")):
        session = technician_form(request, csrf)
        from device.store import ResultStore
        with ResultStore(context.db) as store:
            store.acknowledge(alert_row, session.username)
        return RedirectResponse("/clinic", status_code=303)

    @app.post("/tech/sync/retry", include_in_schema=False)
    def retry_sync(request: Request, csrf: str = Form("")):
        technician_form(request, csrf)
        from device.store import ResultStore
        with ResultStore(context.db) as store:
            store.retry_failed()
        return RedirectResponse("/tech", status_code=303)

    @app.exception_handler(HTTPException)
    def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 303:
            return RedirectResponse(exc.headers["Location"], status_code=303)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
        return templates.TemplateResponse(request, "error.html", {"message": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    def bad_request(request: Request, exc: RequestValidationError):
        """A malformed id, number or form field: each named with its rule, never echoing the input
        (it may be a megabyte). The API answers 422 as its schema says; a page answers 404 for a bad
        path (no such page) and 400 for a bad query or form."""
        def rule(error: dict) -> str:
            field = str(error["loc"][-1])
            return f"{field} is missing" if error["type"] == "missing" else RULES.get(field, error["msg"])
        errors = [{"loc": list(e["loc"]), "type": e["type"], "msg": rule(e)} for e in exc.errors()]
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": errors}, status_code=422)
        status = 404 if any(e["loc"][:1] == ["path"] for e in errors) else 400
        message = "; ".join(dict.fromkeys(e["msg"] for e in errors))
        return templates.TemplateResponse(request, "error.html", {"message": message[:1].upper() + message[1:] + "."},
                                          status_code=status)

    # -- the data behind the pages ----------------------------------------------------------------

    def reader_state() -> dict:
        service = context.service
        if service is None:
            return {"running": False, "state": "offline", "lock": qc_lock()}
        session = service.session
        elapsed = None if session.dipped_at is None else round(session.clock.now() - session.dipped_at, 1)
        last = service.last_record
        return {"running": True, "state": session.state.value, "product": session.product.id,
                "read_times_s": session.read_times, "elapsed_s": elapsed if session.state.value == "developing" else None,
                "sessions": service.sessions, "preview": session.last_photo is not None,
                "last_record": None if last is None else {"seq": last.seq, "status": last.result.get("status"),
                                                          "message": last.result.get("message")},
                "lock": qc_lock()}

    def qc_lock() -> str | None:
        from calibration.records import Records
        from device.calibrations import qc_status
        with Records(context.db) as records:
            status = qc_status(records)
        return status.message if status.locked else None

    def stored(seq: int) -> dict:
        from device.store import ResultStore
        with ResultStore(context.db) as store:
            record = store.get(seq)
        if record is None:
            raise HTTPException(404, f"no record #{seq}")
        return _record_json(record)

    def results(patient: str | None, limit: int) -> list[dict]:
        from device.store import ResultStore
        with ResultStore(context.db) as store:
            return [_record_json(r) for r in store.history(patient, limit)]

    def pad_rows(record: dict) -> list[dict]:
        rows = []
        for entry in record["result"].get("analytes", []):
            pad = _pad(product, entry["analyte"])
            level = next((lv for lv in pad.levels if lv.code == entry.get("level")), None) if pad else None
            rows.append({**entry, "name": pad.name if pad else entry["analyte"],
                         "chart": level.srgb if level else None,
                         "abnormal": "abnormal" in entry.get("flags", [])})
        return rows

    def patient_trends(patient_id: str) -> list[dict]:
        from device.store import ResultStore
        from device.trends import series
        with ResultStore(context.db) as store:
            lines = series(list(reversed(store.history(patient_id, 500))))
        if not lines:
            raise HTTPException(404, "no readings of this patient")
        return lines

    def clinic_view() -> dict:
        from device.store import ResultStore
        with ResultStore(context.db) as store:
            recent = store.alerts(limit=200)
        open_alerts = [a for a in recent if a["acknowledged_at"] is None]
        patients: dict[str, dict] = {}
        for alert in open_alerts:                       # newest first: the first seen is the newest
            entry = patients.setdefault(alert["patient_id"], {"patient_id": alert["patient_id"], "alerts": 0,
                                                             "worst": alert["severity"], "newest": alert["created_at"]})
            entry["alerts"] += 1
            if SEVERITY_ORDER.index(alert["severity"]) > SEVERITY_ORDER.index(entry["worst"]):
                entry["worst"] = alert["severity"]
        review = sorted(patients.values(), key=lambda p: (SEVERITY_ORDER.index(p["worst"]), p["newest"]),
                        reverse=True)                   # the most severe first, then the newest
        return {"review": review, "open": open_alerts,
                "acknowledged": [a for a in recent if a["acknowledged_at"] is not None][:20]}

    def technician_status() -> dict:
        from calibration.records import Records
        from device.calibrations import qc_status
        from device.store import ResultStore
        with Records(context.db) as records:
            qc = qc_status(records)
            latest_qc = {control: {"id": run.id, "at": run.created_at, "passed": run.payload["passed"],
                                   "summary": run.payload["run"]["summary"]}
                         for control, run in records.latest_per_subject("qc").items()}
            calibrations = [{"kind": r.kind, "subject": r.subject, "id": r.id, "at": r.created_at, "operator": r.operator}
                            for kind in ("camera", "card", "lot", "qc_schedule") for r in records.history(kind, limit=5)]
        with ResultStore(context.db) as store:
            sync = {"counts": store.outbox_counts(),
                    "failed": [{"seq": seq, "attempts": attempts, "error": error}
                               for seq, _, attempts, error in store.failures()]}
        return {"qc": {"locked": qc.locked, "message": qc.message, "controls": latest_qc},
                "calibrations": calibrations, "sync": sync, "device": device_health()}

    def device_health() -> dict:
        from device.read import device_id, software_version
        health = {"device_id": device_id(), "software": software_version()}
        service = context.service
        if service is None:
            return {**health, "reader": "not running"}
        board, session = service.session.board, service.session
        health.update(camera=session.camera.name, state=session.state.value)
        try:
            climate = board.climate()
            health.update(firmware=".".join(map(str, board.info.firmware_version)),
                          temperature_c=round(climate.temperature_c, 1), humidity_pct=round(climate.humidity_pct, 1))
        except Exception as exc:     # the board may be unplugged: show that instead of failing the page
            health["board"] = f"not answering ({type(exc).__name__})"
        return health

    app.add_middleware(Hardening, https=context.https)     # added last: outermost, so on every response
    return app


def _pad(product, analyte: str):
    return next((p for p in product.pads if p.analyte == analyte), None)


def _record_json(record) -> dict:
    return {"seq": record.seq, "result_id": record.result_id, "stored_at": record.stored_at,
            "stored_at_local": datetime.fromisoformat(record.stored_at).strftime("%Y-%m-%d %H:%M"),
            "patient_id": record.patient_id, "findings": _findings(record.result), "result": record.result}


def _findings(result: dict) -> str:
    """One line for a list: the abnormal pads, or why there is no reading."""
    if result.get("status") != "ok":
        return result.get("outcome") or result.get("error", {}).get("code", "no reading")
    abnormal = [a["analyte"] for a in result["analytes"] if "abnormal" in a.get("flags", [])]
    return ", ".join(abnormal) if abnormal else "all within the usual range"
