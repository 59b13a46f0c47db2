"""The reader's local web interface (FastAPI, server-rendered pages, no external files).

A patient (or a nurse beside them) starts a test (or, when quality control has locked the reader,
is told so and whom to contact before dipping a strip), watches the read times count down by pad
with the camera's view (the page works without JavaScript: it refreshes itself), may cancel, and
reads the result: a one-line verdict, the pads that need attention first, levels with units and
reference ranges, what to do next, and the safety messages of the reading itself. Staff log in: a
nurse sees the clinic view (alerts to review; acknowledging an urgent one takes a note and can be
undone) and patients' histories with trend plots; a technician also runs QC from the page and sees
calibration records, Levey-Jennings charts, the lab sync and the device's health. Every page's data
is also JSON under /api (its OpenAPI schema at /openapi.json).

Request paths carry patient ids, so the server keeps no access log; what it logs names no patient.
Its defences against hostile clients (login throttle, id formats, security headers, the last-resort
error handler) are in device/web/security.py; what a record means on screen is in views.py.
"""
from __future__ import annotations

import io
import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import FastAPI, Form, HTTPException, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from pydantic import BaseModel

from device.language import i18n, units
from device.language.i18n import N_, Words
from device.web import views
from device.web.auth import Accounts, csrf_ok, same_secret
from device.web.clinic import NOTE_MAX, AlertNotes
from device.web.plain import level_words, levey_jennings_svg, plain_name, trend_svg, unit_words, value_text
from device.web.security import (LIMIT_MAX, NAME, PASSWORD_MAX, PATIENT_ID, PATIENT_ID_RULE, SEQ_MAX, USERNAME_MAX,
                                 Hardening, LoginBusy, LoginGuard)

HERE = Path(__file__).parent
SESSION_COOKIE, FORM_COOKIE = "sr_session", "sr_form"
# a browser's own display choices (language, report style, large text); not secrets, a year long
LANG_COOKIE, STYLE_COOKIE, LARGE_COOKIE = "sr_lang", "sr_style", "sr_large"
BACK = re.compile(r"/(?![/\\])[^\s]{0,300}")      # where a display switch returns: a path on this site only
SEVERITY_ORDER = ("info", "warning", "urgent")
INSERT_DELAY_S = 2.0       # simulated reader: the patient puts the strip in two seconds after "start"
FORM_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")   # secrets.token_urlsafe(24): anything else is not ours
CONTROLS = ("negative", "positive")             # the control materials shipped with the reader
DEFAULT_CONTACT = "the technician who looks after this reader"
REFRESH_S = 3              # the live page without JavaScript reloads itself this often

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
         "password": f"a password has at most {PASSWORD_MAX} characters", "after": "after is a session count",
         "control": "the control is negative or positive", "note": f"a note has at most {NOTE_MAX} characters"}
ALLOWED_NEXT = ("/clinic", "/tech", "/history")   # where a login may send its user on


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
    service: object | None = None   # device.runtime.service.ReaderService
    rig: object | None = None       # device.runtime.rig.SimulatedRig: "start" also puts a simulated strip in
    https: bool = False
    login_everywhere: bool = False  # a clinic's network: every page needs a logged-in staff member
    login_guard: LoginGuard | None = None   # the login throttle (one is made when not given)
    rules: list | None = None       # the alert rules (device.monitoring.alerts.load_rules(); the shipped ones when None)
    lab: bool = False               # a lab is configured: alerts are sent to a clinic
    contact: str | None = None      # whom a patient contacts when QC locks the reader ($STRIPREAD_CONTACT)
    charts: dict = field(default_factory=dict)   # Levey-Jennings PNGs by (control, newest run id)
    locale: str = i18n.DEFAULT_LOCALE   # the device's language (i18n.choose_locale) until a browser chooses its own
    style: str = i18n.DEFAULT_STYLE     # the device's report style (i18n.choose_style), likewise


def create_app(context: WebContext) -> FastAPI:
    # the interactive docs pages load scripts from a CDN: offline readers publish the schema only
    app = FastAPI(title="stripread", description="The reader's local interface and its JSON API.",
                  docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.add_extension("jinja2.ext.i18n")
    templates.env.install_gettext_callables(_gettext, _ngettext, newstyle=True)   # each page's own `words`
    templates.env.filters["plain"] = lambda code, words: plain_name(code, words)
    templates.env.filters["retell"] = lambda text, words: words.retell(text, RETOLD)
    # a message held in a variable, translated and then escaped like any text (`_()` would mark it safe)
    templates.env.filters["translate"] = lambda text, words: words.gettext(str(text))
    product = context.product
    guard = context.login_guard or LoginGuard()
    contact = context.contact or os.environ.get("STRIPREAD_CONTACT") or DEFAULT_CONTACT
    if context.rules is None:
        from device.monitoring.alerts import load_rules
        context.rules = load_rules()
    started: dict[str, int | None] = {"after": None}     # the session count when this page last started a test
    chart_lock = threading.Lock()

    @app.middleware("http")
    async def staff_only(request: Request, call_next):
        """With `login_everywhere`, patients' pages and data too are for logged-in staff only."""
        public = request.url.path in ("/tech/login", "/openapi.json") or request.url.path.startswith("/static/")
        if context.login_everywhere and not public and staff(request) is None:
            if request.url.path.startswith("/api/"):
                return JSONResponse({"detail": "log in first"}, status_code=401)
            return RedirectResponse("/tech/login", status_code=303)
        return await call_next(request)

    def words_of(request: Request) -> Words:
        """This browser's language and report style (its cookies), else the device's."""
        locale = i18n.match_locale(request.cookies.get(LANG_COOKIE, "")) or context.locale
        style = request.cookies.get(STYLE_COOKIE)
        return Words(locale, style if style in i18n.STYLES else context.style)

    def render(request: Request, name: str, values: dict, status_code: int) -> HTMLResponse:
        """A page in the browser's language, with the display switches every page carries."""
        words = words_of(request)
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        back = back if BACK.fullmatch(back) else "/"            # a hostile megabyte of path is not echoed back
        display = {"words": words, "back": back, "large": request.cookies.get(LARGE_COOKIE) == "1",
                   "languages": [(code, name_) for code, name_ in i18n.LANGUAGE_NAMES.items() if code != words.locale]}
        return templates.TemplateResponse(request, name, {**display, **values}, status_code=status_code)

    def page(request: Request, name: str, status_code: int = 200, **values) -> HTMLResponse:
        form_token = request.cookies.get(FORM_COOKIE, "")
        if not FORM_TOKEN.fullmatch(form_token):
            form_token = secrets.token_urlsafe(24)
        response = render(request, name, {"form_token": form_token, "user": staff(request), **values}, status_code)
        response.set_cookie(FORM_COOKIE, form_token, httponly=True, samesite="strict", secure=context.https)
        return response

    def staff(request: Request):
        with Accounts(context.db) as accounts:
            return accounts.session(request.cookies.get(SESSION_COOKIE))

    def require(request: Request, role: str):
        """The logged-in session, if its role may do what `role` does; otherwise to the login
        page (coming back here after it), or a refusal for a nurse on a technician's page."""
        session = staff(request)
        if session is None:
            back = request.url.path if request.url.path in ALLOWED_NEXT else ""
            raise HTTPException(303, headers={"Location": "/tech/login" + (f"?next={back}" if back else "")})
        if not session.may(role):
            raise HTTPException(403, f"This page is for a {role}: you are logged in as a {session.role}.")
        return session

    def staff_form(request: Request, csrf: str, role: str):
        """A staff member's state-changing form: logged in with the role, and the session's CSRF token echoed."""
        session = require(request, role)
        if not csrf_ok(session, csrf):
            raise HTTPException(403, N_("missing or wrong CSRF token"))
        return session

    def form_ok(request: Request, token: str) -> None:
        """Anonymous forms: the hidden token must match the page's cookie (double submit)."""
        if not same_secret(request.cookies.get(FORM_COOKIE), token):
            raise HTTPException(403, N_("This form has expired: go back, reload the page and try again."))

    # -- patient and nurse -------------------------------------------------------------------------

    @app.get("/display", include_in_schema=False)
    def display(lang: Annotated[str | None, Query(max_length=20)] = None,
                style: Annotated[str | None, Query(pattern="^(conventional|si|plus)$")] = None,
                large: Annotated[str | None, Query(pattern="^[01]$")] = None,
                back: Annotated[str, Query(max_length=300)] = "/"):
        """A display switch (every page's header, the result's units): remembered by this browser,
        then back to the page it was pressed on. A language without a catalogue is refused."""
        response = RedirectResponse(back if BACK.fullmatch(back) else "/", status_code=303)
        year = 365 * 86400
        if lang is not None:
            locale = i18n.match_locale(lang)
            if locale is None:
                raise HTTPException(400, f"no catalogue for the language {lang!r}: {', '.join(i18n.LOCALES)}")
            response.set_cookie(LANG_COOKIE, locale, max_age=year, samesite="lax", secure=context.https)
        for cookie, value in ((STYLE_COOKIE, style), (LARGE_COOKIE, large)):
            if value is not None:
                response.set_cookie(cookie, value, max_age=year, samesite="lax", secure=context.https)
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(request: Request):
        return page(request, "home.html", reader=reader_state(), qc=qc_state(), busy=in_progress())

    @app.get("/test", response_class=HTMLResponse, include_in_schema=False)
    def start_form(request: Request):
        return start_page(request)

    def start_page(request: Request, error: str | None = None, status_code: int = 200) -> HTMLResponse:
        return page(request, "start.html", status_code, qc=qc_state(), live=context.service is not None,
                    busy=in_progress(), after=started["after"], error=error, total_s=max(read_times(), default=0))

    @app.post("/test", include_in_schema=False)
    def start_test(request: Request, patient_id: str = Form(""), form_token: str = Form("")):
        form_ok(request, form_token)
        words = words_of(request)
        patient = patient_id.strip() or None
        if patient is not None and not re.fullmatch(PATIENT_ID, patient):
            return start_page(request, words("Not started: a patient ID is 1 to 64 letters, digits, '.', '_' or '-'."),
                              400)
        if context.service is None:
            raise HTTPException(409, N_("No reader is running here: start `stripread run` or `stripread serve`."))
        if in_progress():          # a second Start would end the running test: offer to go back to it
            return start_page(request, words("Not started: a test is already in progress."), 409)
        if qc_state()["locked"]:
            return start_page(request, words("Not started: patient tests are locked."), 423)
        begin(patient, None, "patient")
        return RedirectResponse(f"/test/live?after={started['after']}", status_code=303)

    def begin(patient: str | None, operator: str | None, purpose: str, levels: dict | None = None) -> None:
        started["after"] = context.service.sessions
        context.service.request_test(patient, operator, purpose)
        if context.rig is not None:
            context.rig.hand_in_new_strip(levels=levels, after_s=INSERT_DELAY_S)

    @app.get("/test/live", response_class=HTMLResponse, include_in_schema=False)
    def live(request: Request, after: Annotated[int | None, Query(ge=0, le=SEQ_MAX)] = None,
             control: Annotated[str | None, Query(pattern="^(negative|positive)$")] = None):
        """The running test; once it is stored, its result (a control strip's: its QC verdict)."""
        state = reader_state()
        last = state.get("last_record")
        if after is not None and state.get("sessions", 0) > after and last is not None:
            target = f"/tech/qc/result/{last['seq']}?control={control}" if control else f"/results/{last['seq']}"
            return RedirectResponse(target, status_code=303)
        words = words_of(request)
        names = {pad.analyte: plain_name(pad.analyte, words) for pad in product.pads}
        groups = [{**g, "pads": [names[a] for a in g["analytes"]]} for g in read_groups(state)]
        return page(request, "live.html", state=state, groups=groups, after=after, control=control,
                    refresh=REFRESH_S if after is not None else None, names=names)

    @app.post("/test/cancel", include_in_schema=False)
    def cancel(request: Request, form_token: str = Form(""), after: Annotated[int | None, Form(ge=0)] = None):
        """The screen's Cancel: the board's cancel button, pressed for the running session."""
        form_ok(request, form_token)
        service = context.service
        if service is None or service.session.state.value not in ("armed", "developing"):
            if service is not None and in_progress():       # started here, strip not in yet
                service.withdraw_request()
            started["after"] = None
            return RedirectResponse("/", status_code=303)
        from firmware_bridge.host import Event
        service.session.board.events.put(Event("button", "cancel"))
        return RedirectResponse(f"/test/live?after={after if after is not None else service.sessions}",
                                status_code=303)

    @app.get("/api/session", responses=NOT_LOGGED_IN)
    def session_state() -> dict:
        """The reader's state: what it is doing, the read times left (with the pads read at each),
        the last stored record, and the QC lock."""
        state = reader_state()
        return {**state, "read_groups": read_groups(state)}

    @app.get("/api/session/preview.jpg", include_in_schema=False)
    def preview():
        photo = context.service.session.last_photo if context.service else None
        if photo is None:
            raise HTTPException(404, N_("no capture yet"))
        return Response(photo, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.get("/results/{seq}", response_class=HTMLResponse, include_in_schema=False)
    def result_page(request: Request, seq: Seq):
        from device.store.results import ResultStore
        with ResultStore(context.db) as store:
            record = store.get(seq)
            if record is None:
                raise HTTPException(404, f"no record #{seq}")
            pictured = set(store.thumbnails(record.result_id))
            if record.patient_id is None:
                history, filed = [record], []
            else:
                history = [r for r in reversed(store.history(record.patient_id, 200)) if r.seq <= seq]
                filed = store.alerts(patient_id=record.patient_id, limit=1000)
        result = record.result
        words = words_of(request)
        rows = views.pad_rows(result, words, pictured) if result.get("status") == "ok" else []
        line, tone = views.verdict(result, rows, words)
        return page(request, "result.html", record=_record_json(record, words), rows=rows, verdict=line, tone=tone,
                    qc=views.is_qc(result), steps=views.advice(result, rows, words),
                    safety=views.safety(context.rules, record, history, filed, context.lab, words),
                    styles=STYLE_NAMES)

    @app.get("/api/results/{seq}", responses={**NOT_LOGGED_IN, **NOT_FOUND})
    def result_json(seq: Seq) -> dict:
        return stored(seq)

    @app.get("/thumbnails/{seq}/{analyte}.png", include_in_schema=False)
    def thumbnail(seq: Seq, analyte: Name):
        from device.store.results import ResultStore
        with ResultStore(context.db) as store:
            png = store.thumbnails(stored(seq)["result_id"]).get(analyte)
        if png is None:
            raise HTTPException(404, N_("no picture of this pad"))
        return Response(png, media_type="image/png")

    @app.get("/history", response_class=HTMLResponse, include_in_schema=False)
    def history(request: Request):
        """Patients' readings only: control strips are the technician's (QC records)."""
        words = words_of(request)
        return page(request, "history.html", records=[r for r in results(None, 200, words) if not r["qc"]][:50])

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
        words = words_of(request)
        plots = []
        for t in patient_trends(patient_id):
            pad = next((p for p in product.pads if p.analyte == t["analyte"]), None)
            unit = t["unit"] if pad is None else units.converted(pad.analyte, pad.unit, 1.0, words.style)[1]
            plots.append({"id": f"trend-{t['analyte']}", "name": plain_name(t["analyte"], words),
                          "unit": unit_words(unit, words),
                          "svg": trend_svg(pad, t["unit"], t["levels"], t["points"], f"trend-{t['analyte']}", words),
                          "points": [{**p, "when": _local(p["at"], words),
                                      "level_text": level_words(pad, p["level"], words) if pad else p["level"],
                                      "value_text": value_text(pad, p["value"], words) if pad else None}
                                     for p in t["points"]]})
        return page(request, "patient.html", patient_id=patient_id, plots=plots, styles=STYLE_NAMES,
                    records=[r for r in results(patient_id, 50, words) if not r["qc"]])

    @app.get("/api/patients/{patient_id}/trends", responses={**NOT_LOGGED_IN, **NOT_FOUND})
    def trends_json(patient_id: PatientId) -> list[dict]:
        """Each analyte's readings over time: chart position, confidence, abnormal flag."""
        return patient_trends(patient_id)

    # -- staff ------------------------------------------------------------------------------------

    @app.get("/tech/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: Annotated[str | None, Query(max_length=20)] = None):  # noqa: A002
        return page(request, "login.html", error=None, next=next if next in ALLOWED_NEXT else None)

    @app.post("/tech/login", include_in_schema=False)
    def login(request: Request, username: Annotated[str, Form(max_length=USERNAME_MAX)],
              password: Annotated[str, Form(max_length=PASSWORD_MAX)], form_token: str = Form(""),
              next: Annotated[str, Form(max_length=20)] = ""):  # noqa: A002
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
            return login_refused(request, N_("The reader is busy checking other logins: try again in a moment."),
                                 503, 1)
        guard.record(username, address, succeeded=signed_in is not None)
        if signed_in is None:
            return login_refused(request, N_("Wrong name or password."), 401)
        token, session = signed_in
        landing = next if next in ALLOWED_NEXT else "/tech" if session.role == "technician" else "/clinic"
        if landing == "/tech" and not session.may("technician"):
            landing = "/clinic"
        response = RedirectResponse(landing, status_code=303)
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", secure=context.https,
                            max_age=8 * 3600)
        return response

    def check_password(username: str, password: str):
        with Accounts(context.db) as accounts:
            return accounts.login(username, password)

    def login_refused(request: Request, message: str, status: int, retry_after_s: int | None = None) -> HTMLResponse:
        response = page(request, "login.html", status, error=message, next=None)
        if retry_after_s is not None:
            response.headers["Retry-After"] = str(retry_after_s)
        return response

    @app.post("/tech/logout", include_in_schema=False)
    def logout(request: Request, csrf: str = Form("")):
        staff_form(request, csrf, "nurse")
        with Accounts(context.db) as accounts:
            accounts.logout(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.get("/tech", response_class=HTMLResponse, include_in_schema=False)
    def technician_page(request: Request):
        session = require(request, "technician")
        return page(request, "tech.html", csrf=session.csrf, status=technician_status(), controls=control_guidance(),
                    charts=qc_charts(words_of(request)), live=context.service is not None, busy=in_progress())

    @app.get("/api/tech/status", responses=NOT_LOGGED_IN)
    def technician_json(request: Request) -> dict:
        """Calibration records, QC, lab sync and device health (technicians only)."""
        session = staff(request)
        if session is None or not session.may("technician"):
            raise HTTPException(401, N_("log in as a technician"))
        return technician_status()

    @app.post("/tech/qc/run", include_in_schema=False)
    def run_qc(request: Request, control: Annotated[str, Form(pattern="^(negative|positive)$")], csrf: str = Form("")):
        """A control strip read on the reader as a patient's is (the CLI's `qc run`), then judged."""
        session = staff_form(request, csrf, "technician")
        if context.service is None:
            raise HTTPException(409, N_("No reader is running here: run `stripread qc run` on the reader instead."))
        if in_progress():
            raise HTTPException(409, N_("A test is in progress: wait for it to finish, then run QC."))
        from calibration.in_force import find_control
        definition, _ = find_control(control)
        begin(None, session.username, "qc", levels={a.analyte: a.target for a in definition.analytes})
        return RedirectResponse(f"/test/live?after={started['after']}&control={control}", status_code=303)

    @app.get("/tech/qc/result/{seq}", response_class=HTMLResponse, include_in_schema=False)
    def qc_result(request: Request, seq: Seq, control: Annotated[str, Query(pattern="^(negative|positive)$")]):
        """The control strip's verdict, judged and stored once (the record of this strip's photo)."""
        session = require(request, "technician")
        from calibration.records import Records
        from calibration.in_force import find_control, judge_qc_run
        record = stored(seq)
        if not record["qc"]:
            raise HTTPException(404, f"record #{seq} is not a control strip")
        if record["result"].get("status") == "aborted":       # no strip was read: nothing to judge or store
            raise HTTPException(409, f"The control strip was not read: {record['result'].get('message')} "
                                     "Run QC again from the technician page.")
        definition, text = find_control(control)
        image = record["result"]["provenance"]["image_sha256"]
        with Records(context.db) as records:
            done = next((r for r in records.history("qc", definition.id, limit=20)
                         if r.payload.get("image_sha256") == image), None)
            if done is None:
                runs, _ = judge_qc_run(records, [(definition, text)], [record["result"]], session.username)
                run = runs[0].to_dict()
            else:
                run = done.payload["run"]
        return page(request, "qc_result.html", control=definition, run=run, seq=seq, qc=qc_state())

    @app.get("/tech/qc/{control_id}.png", include_in_schema=False)
    def levey_jennings(request: Request, control_id: Name):
        """The chart, drawn once per new run of the control (drawing takes about a second)."""
        require(request, "technician")
        from calibration.qc import levey_jennings_png
        from calibration.records import Records
        from calibration.in_force import control_runs
        with Records(context.db) as records:
            newest = records.latest("qc", control_id)
            if newest is None:
                raise HTTPException(404, N_("no runs of this control"))
            words = words_of(request)
            key = (control_id, newest.id, words.locale)
            with chart_lock:
                png = context.charts.get(key)
            if png is None:
                control, series = control_runs(records, control_id)
                buffer = io.BytesIO()
                levey_jennings_png(control, series, buffer, words)
                png = buffer.getvalue()
                with chart_lock:
                    context.charts = {k: v for k, v in context.charts.items()   # this control's older runs go
                                      if k[0] != control_id or k[1] == newest.id}
                    context.charts[key] = png
        return Response(png, media_type="image/png")

    @app.get("/clinic", response_class=HTMLResponse, include_in_schema=False)
    def clinic(request: Request):
        """Patients needing review: open alerts, newest first, each with the patient's history."""
        session = require(request, "nurse")
        words = words_of(request)
        view = clinic_view()
        for alert in view["open"] + view["acknowledged"]:
            alert["shown"] = views.alert_words(context.rules, alert, words)
            alert["when"] = _local(alert["created_at"], words)
            alert["done_at"] = alert["acknowledged_at"] and _local(alert["acknowledged_at"], words)
        for patient in view["review"]:
            patient["when"] = _local(patient["newest"], words)
        return page(request, "clinic.html", csrf=session.csrf, note_max=NOTE_MAX, **view)

    @app.get("/api/clinic/alerts", responses=NOT_LOGGED_IN)
    def clinic_json(request: Request) -> dict:
        """Open and recent alerts (clinic staff only)."""
        if staff(request) is None:
            raise HTTPException(401, N_("log in as clinic staff"))
        return clinic_view()

    @app.post("/clinic/alerts/{alert_row}/acknowledge", include_in_schema=False)
    def acknowledge(request: Request, alert_row: Annotated[int, PathParam(ge=1, le=SEQ_MAX)], csrf: str = Form(""),
                    note: Annotated[str, Form(max_length=NOTE_MAX)] = ""):
        """Closed with a note of what was done (needed for an urgent alert); undone by `reopen`."""
        session = staff_form(request, csrf, "nurse")
        from device.store.results import ResultStore
        with ResultStore(context.db) as store:
            alert = next((a for a in store.alerts(limit=10_000) if a["id"] == alert_row), None)
            if alert is None:
                raise HTTPException(404, f"no alert #{alert_row}")
            if alert["severity"] == "urgent" and not note.strip():
                raise HTTPException(400, "An urgent alert needs a note of what was done (for example: "
                                         "'phoned the patient, seen today') before it is acknowledged.")
            if store.acknowledge(alert_row, session.username):
                with AlertNotes(context.db) as notes:
                    notes.add(alert_row, "acknowledged", session.username, note.strip())
        return RedirectResponse("/clinic", status_code=303)

    @app.post("/clinic/alerts/{alert_row}/reopen", include_in_schema=False)
    def reopen(request: Request, alert_row: Annotated[int, PathParam(ge=1, le=SEQ_MAX)], csrf: str = Form("")):
        """Undo an acknowledgement: the alert is open again, and the undo is noted."""
        session = staff_form(request, csrf, "nurse")
        from device.store.results import ResultStore
        with ResultStore(context.db) as store:
            if store.reopen(alert_row):
                with AlertNotes(context.db) as notes:
                    notes.add(alert_row, "reopened", session.username, "acknowledgement undone")
        return RedirectResponse("/clinic", status_code=303)

    @app.post("/tech/sync/retry", include_in_schema=False)
    def retry_sync(request: Request, csrf: str = Form("")):
        staff_form(request, csrf, "technician")
        from device.store.results import ResultStore
        with ResultStore(context.db) as store:
            store.retry_failed()
        return RedirectResponse("/tech", status_code=303)

    @app.exception_handler(HTTPException)
    def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 303:
            return RedirectResponse(exc.headers["Location"], status_code=303)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
        return render(request, "error.html", {"message": words_of(request).gettext(str(exc.detail)), "user": None,
                                              "in_progress": "in progress" in str(exc.detail)}, exc.status_code)

    @app.exception_handler(RequestValidationError)
    def bad_request(request: Request, exc: RequestValidationError):
        """A malformed id, number or form field: each named with its rule, never echoing the input
        (it may be a megabyte). The API answers 422 as its schema says; a page answers 404 for a bad
        path (no such page) and 400 for a bad query or form."""
        def rule(error: dict) -> str:
            field_name = str(error["loc"][-1])
            return f"{field_name} is missing" if error["type"] == "missing" else RULES.get(field_name, error["msg"])
        errors = [{"loc": list(e["loc"]), "type": e["type"], "msg": rule(e)} for e in exc.errors()]
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": errors}, status_code=422)
        status = 404 if any(e["loc"][:1] == ["path"] for e in errors) else 400
        message = "; ".join(dict.fromkeys(e["msg"] for e in errors))
        return render(request, "error.html", {"message": message[:1].upper() + message[1:] + ".", "user": None},
                      status)

    # -- the data behind the pages ----------------------------------------------------------------

    def read_times() -> list[float]:
        return sorted({pad.read_at_s for pad in product.pads})

    def read_groups(state: dict) -> list[dict]:
        """Each read time with the pads read then (plain names) and the seconds left, if counting."""
        elapsed = state.get("elapsed_s")
        return [{"at_s": t, "analytes": [p.analyte for p in product.pads if p.read_at_s == t],
                 "pads": [plain_name(p.analyte, ENGLISH) for p in product.pads if p.read_at_s == t],
                 "left_s": None if elapsed is None else max(0, round(t - elapsed))} for t in read_times()]

    def in_progress() -> bool:
        """A test was started here and is not stored yet, or the reader is reading a strip."""
        service = context.service
        if service is None:
            return False
        if service.session.state.value in ("armed", "developing"):
            return True
        return started["after"] is not None and service.sessions == started["after"]

    def reader_state() -> dict:
        service = context.service
        qc = qc_state()
        if service is None:
            return {"running": False, "state": "offline", "lock": qc["message"] if qc["locked"] else None}
        session = service.session
        elapsed = None if session.dipped_at is None else round(session.clock.now() - session.dipped_at, 1)
        developing = session.state.value == "developing"
        last = service.last_record
        return {"running": True, "state": session.state.value, "product": session.product.id,
                "read_times_s": session.read_times, "elapsed_s": elapsed if developing else None,
                "left_s": max(0, round(max(session.read_times) - elapsed)) if developing and elapsed is not None
                else None, "total_s": max(session.read_times), "in_progress": in_progress(),
                "sessions": service.sessions, "preview": session.last_photo is not None,
                "last_record": None if last is None else {"seq": last.seq, "status": last.result.get("status"),
                                                          "message": last.result.get("message")},
                "lock": qc["message"] if qc["locked"] else None}

    def qc_state() -> dict:
        """The QC gate as a patient meets it: locked (with whom to contact), passed, or not set up."""
        from calibration.records import Records
        from calibration.in_force import qc_status
        with Records(context.db) as records:
            status = qc_status(records)
            any_run = bool(records.latest_per_subject("qc"))
        tone = "locked" if status.locked else "ok" if any_run else "neutral"
        return {"locked": status.locked, "message": status.message, "tone": tone, "contact": contact}

    def control_guidance() -> list[dict]:
        from calibration.in_force import find_control, qc_guidance
        return [{"name": name, "title": definition.name, "guidance": qc_guidance(definition)}
                for name, (definition, _) in ((name, find_control(name)) for name in CONTROLS)]

    def qc_charts(words: Words) -> list[dict]:
        """Each control's runs of its current lot: a Levey-Jennings plot per pad and the runs as a table."""
        from calibration.records import Records
        from calibration.in_force import control_runs
        charts = []
        with Records(context.db) as records:
            for control_id in sorted(records.latest_per_subject("qc")):
                control, series = control_runs(records, control_id)
                panels = []
                for analyte in (a.pad.analyte for a in control.analytes):
                    runs = [(run.at.isoformat(), found.z, "failed" if found.rules or not found.in_range else
                             "warning" if found.warnings else "ok")
                            for run in series if (found := run.analyte(analyte)) is not None and found.z is not None]
                    if runs:
                        label = f"lj-{control_id}-{analyte}"
                        panels.append({"id": label, "name": plain_name(analyte, words),
                                       "svg": levey_jennings_svg(runs, label, words)})
                charts.append({"id": control_id, "name": control.name, "lot": control.material_lot, "panels": panels,
                               "runs": [{"at": _local(run.at.isoformat(), words), "passed": run.passed,
                                         "summary": run.summary}
                                        for run in reversed(series)][:20]})
        return charts

    def stored(seq: int) -> dict:
        from device.store.results import ResultStore
        with ResultStore(context.db) as store:
            record = store.get(seq)
        if record is None:
            raise HTTPException(404, f"no record #{seq}")
        return _record_json(record)

    def results(patient: str | None, limit: int, words: Words = ENGLISH) -> list[dict]:
        from device.store.results import ResultStore
        with ResultStore(context.db) as store:
            return [_record_json(r, words) for r in store.history(patient, limit)]

    def patient_trends(patient_id: str) -> list[dict]:
        from device.store.results import ResultStore
        from device.monitoring.trends import series
        with ResultStore(context.db) as store:
            lines = series([r for r in reversed(store.history(patient_id, 500)) if not views.is_qc(r.result)])
        if not lines:
            raise HTTPException(404, N_("no readings of this patient"))
        return lines

    def clinic_view() -> dict:
        from device.store.results import ResultStore
        with ResultStore(context.db) as store:
            recent = store.alerts(limit=200)
        with AlertNotes(context.db) as notes:
            written = notes.latest([a["id"] for a in recent])
        recent = [{**a, "note": written.get(a["id"])} for a in recent]
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
        from device.store.results import ResultStore
        with Records(context.db) as records:
            latest_qc = {control: {"id": run.id, "at": run.created_at, "passed": run.payload["passed"],
                                   "summary": run.payload["run"]["summary"]}
                         for control, run in records.latest_per_subject("qc").items()}
            calibrations = [{"kind": r.kind, "subject": r.subject, "id": r.id, "at": r.created_at, "operator": r.operator}
                            for kind in ("camera", "card", "lot", "qc_schedule") for r in records.history(kind, limit=5)]
        with ResultStore(context.db) as store:
            sync = {"counts": store.outbox_counts(),
                    "failed": [{"seq": seq, "attempts": attempts, "error": error}
                               for seq, _, attempts, error in store.failures()]}
        qc = qc_state()
        return {"qc": {"locked": qc["locked"], "message": qc["message"], "tone": qc["tone"], "controls": latest_qc},
                "calibrations": calibrations, "sync": sync, "device": device_health()}

    def device_health() -> dict:
        """Each reading of the device with its judgement where it has a range (the strips' climate)."""
        from device.reading.reader import device_id, software_version
        health = {"device_id": device_id(), "software": software_version()}
        service = context.service
        if service is None:
            return {**health, "reader": "not running", "checks": []}
        from device.runtime.session import climate_range
        board, session = service.session.board, service.session
        health.update(camera=session.camera.name, state=session.state.value, checks=[])
        try:
            climate = board.climate()
            health.update(firmware=".".join(map(str, board.info.firmware_version)),
                          temperature_c=round(climate.temperature_c, 1), humidity_pct=round(climate.humidity_pct, 1))
        except Exception as exc:     # the board may be unplugged: show that instead of failing the page
            health["board"] = f"not answering ({type(exc).__name__})"
            return health
        limits = climate_range(session.product)
        for label, key, unit in ((N_("Temperature"), "temperature_c", "°C"), (N_("Humidity"), "humidity_pct", "%")):
            low, high = limits[key]
            value = health[key]
            health["checks"].append({"label": label, "value": f"{value:g} {unit}", "ok": low <= value <= high,
                                     "range": f"{low:g} to {high:g} {unit}"})
        return health

    app.add_middleware(Hardening, https=context.https)     # added last: outermost, so on every response
    return app


ENGLISH = Words()          # the JSON API's words: language-neutral, whatever a browser chose
# messages other modules fill in (calibration.in_force.qc_status, calibration.in_force.qc_guidance), as
# templates a page says again in its language (`Words.retell`); an unknown one stays English
RETOLD = (N_("Quality control failed ({controls}): patient tests are locked until a technician runs a passing QC."),
          N_("Quality control is due ({controls}): patient tests are locked until a technician runs it."),
          N_("Quality control passed."), N_("No quality control is set up."),
          N_("Dip a strip in {control} (lot {lot}) and put it in the tray."))
STYLE_NAMES = {"conventional": N_("Conventional units"), "si": N_("SI units"), "plus": N_("Plus grades")}


@pass_context
def _gettext(template_context, message: str) -> str:
    return template_context["words"].gettext(message)


@pass_context
def _ngettext(template_context, singular: str, plural: str, n: int) -> str:
    return template_context["words"].ngettext(singular, plural, n)


def _local(stored_at: str, words: Words = ENGLISH) -> str:
    """A stored UTC time as the reader's local time, to the minute (the API's ISO-like, a page's by its locale)."""
    moment = datetime.fromisoformat(stored_at).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M") if words is ENGLISH else words.datetime(moment)


def _record_json(record, words: Words = ENGLISH) -> dict:
    return {"seq": record.seq, "result_id": record.result_id, "stored_at": record.stored_at,
            "stored_at_local": _local(record.stored_at, words), "patient_id": record.patient_id,
            "qc": views.is_qc(record.result), "findings": views.findings(record.result, words), "result": record.result}
