"""The patient's pages (or a nurse's beside them): the home page, starting a test (or being told
that QC has locked the reader and whom to contact), the live view counting the read times down by
pad with the camera's view, cancelling, the result page with its pad photos, and the display
switches (language, report style, large text). The JSON of the live reader and of one record sits
beside the pages that show them."""
from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from device.language import i18n
from device.language.i18n import N_
from device.store.results import ResultStore
from device.web import views
from device.web.pages import (BACK, LANG_COOKIE, LARGE_COOKIE, NOT_FOUND, NOT_LOGGED_IN, STYLE_COOKIE, STYLE_NAMES,
                              AnonymousForm, Name, Page, PageOf, Seq, SiteOf)
from device.language.plain import plain_name
from device.web.records import ENGLISH, record_json, stored
from device.web.security import PATIENT_ID, SEQ_MAX
from device.web.site import Site
from firmware_bridge.host import Event

REFRESH_S = 3              # the live page without JavaScript reloads itself this often
YEAR_S = 365 * 86400       # how long a browser keeps its display choices

router = APIRouter()


@router.get("/display", include_in_schema=False)
def display(site: SiteOf, lang: Annotated[str | None, Query(max_length=20)] = None,
            style: Annotated[str | None, Query(pattern="^(conventional|si|plus)$")] = None,
            large: Annotated[str | None, Query(pattern="^[01]$")] = None,
            back: Annotated[str, Query(max_length=300)] = "/"):
    """A display switch (every page's header, the result's units): remembered by this browser,
    then back to the page it was pressed on. A language without a catalogue is refused."""
    response = RedirectResponse(back if BACK.fullmatch(back) else "/", status_code=303)
    secure = site.context.https
    if lang is not None:
        locale = i18n.match_locale(lang)
        if locale is None:
            raise HTTPException(400, f"no catalogue for the language {lang!r}: {', '.join(i18n.LOCALES)}")
        response.set_cookie(LANG_COOKIE, locale, max_age=YEAR_S, samesite="lax", secure=secure)
    for cookie, value in ((STYLE_COOKIE, style), (LARGE_COOKIE, large)):
        if value is not None:
            response.set_cookie(cookie, value, max_age=YEAR_S, samesite="lax", secure=secure)
    return response


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def home(page: PageOf):
    site = page.site
    return page("home.html", reader=site.reader_state(), qc=site.qc_state(), busy=site.in_progress())


@router.get("/test", response_class=HTMLResponse, include_in_schema=False)
def start_form(page: PageOf):
    return _start_page(page)


def _start_page(page: Page, error: str | None = None, status_code: int = 200) -> HTMLResponse:
    site = page.site
    return page("start.html", status_code, qc=site.qc_state(), live=site.context.service is not None,
                busy=site.in_progress(), after=site.started_after, error=error,
                total_s=max(site.read_times(), default=0))


@router.post("/test", include_in_schema=False, dependencies=[AnonymousForm])
def start_test(page: PageOf, patient_id: str = Form("")):
    site, words = page.site, page.words
    patient = patient_id.strip() or None
    if patient is not None and not re.fullmatch(PATIENT_ID, patient):
        return _start_page(page, words("Not started: a patient ID is 1 to 64 letters, digits, '.', '_' or '-'."),
                           400)
    if site.context.service is None:
        raise HTTPException(409, N_("No reader is running here: start `stripread run` or `stripread serve`."))
    if site.in_progress():          # a second Start would end the running test: offer to go back to it
        return _start_page(page, words("Not started: a test is already in progress."), 409)
    if site.qc_state()["locked"]:
        return _start_page(page, words("Not started: patient tests are locked."), 423)
    site.begin(patient, None, "patient")
    return RedirectResponse(f"/test/live?after={site.started_after}", status_code=303)


def read_groups(site: Site, state: dict) -> list[dict]:
    """Each read time with the pads read then (plain names) and the seconds left, if counting."""
    elapsed = state.get("elapsed_s")
    pads = site.product.pads
    return [{"at_s": t, "analytes": [p.analyte for p in pads if p.read_at_s == t],
             "pads": [plain_name(p.analyte, ENGLISH) for p in pads if p.read_at_s == t],
             "left_s": None if elapsed is None else max(0, round(t - elapsed))} for t in site.read_times()]


@router.get("/test/live", response_class=HTMLResponse, include_in_schema=False)
def live(page: PageOf, after: Annotated[int | None, Query(ge=0, le=SEQ_MAX)] = None,
         control: Annotated[str | None, Query(pattern="^(negative|positive)$")] = None):
    """The running test; once it is stored, its result (a control strip's: its QC verdict)."""
    site = page.site
    state = site.reader_state()
    last = state.get("last_record")
    if after is not None and state.get("sessions", 0) > after and last is not None:
        target = f"/tech/qc/result/{last['seq']}?control={control}" if control else f"/results/{last['seq']}"
        return RedirectResponse(target, status_code=303)
    names = {pad.analyte: plain_name(pad.analyte, page.words) for pad in site.product.pads}
    groups = [{**g, "pads": [names[a] for a in g["analytes"]]} for g in read_groups(site, state)]
    return page("live.html", state=state, groups=groups, after=after, control=control,
                refresh=REFRESH_S if after is not None else None, names=names)


@router.post("/test/cancel", include_in_schema=False, dependencies=[AnonymousForm])
def cancel(site: SiteOf, after: Annotated[int | None, Form(ge=0)] = None):
    """The screen's Cancel: the board's cancel button, pressed for the running session."""
    service = site.context.service
    if service is None or service.session.state.value not in ("armed", "developing"):
        if service is not None and site.in_progress():       # started here, strip not in yet
            service.withdraw_request()
        site.started_after = None
        return RedirectResponse("/", status_code=303)
    service.session.board.events.put(Event("button", "cancel"))
    return RedirectResponse(f"/test/live?after={after if after is not None else service.sessions}",
                            status_code=303)


@router.get("/api/session", responses=NOT_LOGGED_IN)
def session_state(site: SiteOf) -> dict:
    """The reader's state: what it is doing, the read times left (with the pads read at each),
    the last stored record, and the QC lock."""
    state = site.reader_state()
    return {**state, "read_groups": read_groups(site, state)}


@router.get("/api/session/preview.jpg", include_in_schema=False)
def preview(site: SiteOf):
    service = site.context.service
    photo = service.session.last_photo if service else None
    if photo is None:
        raise HTTPException(404, N_("no capture yet"))
    return Response(photo, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


@router.get("/results/{seq}", response_class=HTMLResponse, include_in_schema=False)
def result_page(page: PageOf, seq: Seq):
    context, words = page.site.context, page.words
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
    rows = views.pad_rows(result, words, pictured) if result.get("status") == "ok" else []
    line, tone = views.verdict(result, rows, words)
    return page("result.html", record=record_json(record, words), rows=rows, verdict=line, tone=tone,
                qc=views.is_qc(result), steps=views.advice(result, rows, words),
                safety=views.safety(context.rules, record, history, filed, context.lab, words), styles=STYLE_NAMES)


@router.get("/api/results/{seq}", responses={**NOT_LOGGED_IN, **NOT_FOUND})
def result_json(site: SiteOf, seq: Seq) -> dict:
    return stored(site.context.db, seq)


@router.get("/thumbnails/{seq}/{analyte}.png", include_in_schema=False)
def thumbnail(site: SiteOf, seq: Seq, analyte: Name):
    with ResultStore(site.context.db) as store:
        png = store.thumbnails(stored(site.context.db, seq)["result_id"]).get(analyte)
    if png is None:
        raise HTTPException(404, N_("no picture of this pad"))
    return Response(png, media_type="image/png")
