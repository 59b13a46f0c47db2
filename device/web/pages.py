"""What every page and route shares, as FastAPI dependencies: the browser's language and display
switches, rendering a page, who is logged in and in what role, the forms' CSRF and double-submit
checks, the bounded ids of the paths, and the two error handlers that turn a refusal or a malformed
request into a page (or, under /api, JSON)."""
from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Form, HTTPException, Path as PathParam, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from pydantic import BaseModel

from device.language import i18n
from device.language.i18n import N_, Words
from device.web.auth import Accounts, WebSession, csrf_ok, same_secret
from device.language.plain import plain_name
from device.web.security import (LIMIT_MAX, NAME, NOTE_MAX, PASSWORD_MAX, PATIENT_ID, PATIENT_ID_RULE, SEQ_MAX,
                                 USERNAME_MAX)
from device.web.site import Site

SESSION_COOKIE, FORM_COOKIE = "sr_session", "sr_form"
# a browser's own display choices (language, report style, large text); not secrets, a year long
LANG_COOKIE, STYLE_COOKIE, LARGE_COOKIE = "sr_lang", "sr_style", "sr_large"
BACK = re.compile(r"/(?![/\\])[^\s]{0,300}")      # where a display switch returns: a path on this site only
FORM_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")   # secrets.token_urlsafe(24): anything else is not ours
ALLOWED_NEXT = ("/clinic", "/tech", "/history")   # where a login may send its user on

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


class Problem(BaseModel):
    detail: str


# what the API answers besides 200 and 422 (401 on every route under --web-login), for its schema
NOT_LOGGED_IN = {401: {"model": Problem, "description": "not logged in (staff data, or anything under --web-login)"}}
NOT_FOUND = {404: {"model": Problem, "description": "no such record or patient"}}

# messages other modules fill in (calibration.in_force.qc_status, calibration.in_force.qc_guidance), as
# templates a page says again in its language (`Words.retell`); an unknown one stays English
RETOLD = (N_("Quality control failed ({controls}): patient tests are locked until a technician runs a passing QC."),
          N_("Quality control is due ({controls}): patient tests are locked until a technician runs it."),
          N_("Quality control passed."), N_("No quality control is set up."),
          N_("Dip a strip in {control} (lot {lot}) and put it in the tray."))
STYLE_NAMES = {"conventional": N_("Conventional units"), "si": N_("SI units"), "plus": N_("Plus grades")}


def templates(directory: Path) -> Jinja2Templates:
    """The page templates, translated through each page's own `words`."""
    made = Jinja2Templates(directory=directory)
    made.env.add_extension("jinja2.ext.i18n")
    made.env.install_gettext_callables(_gettext, _ngettext, newstyle=True)
    made.env.filters["plain"] = lambda code, words: plain_name(code, words)
    made.env.filters["retell"] = lambda text, words: words.retell(text, RETOLD)
    # a message held in a variable, translated and then escaped like any text (`_()` would mark it safe)
    made.env.filters["translate"] = lambda text, words: words.gettext(str(text))
    return made


@pass_context
def _gettext(template_context, message: str) -> str:
    return template_context["words"].gettext(message)


@pass_context
def _ngettext(template_context, singular: str, plural: str, n: int) -> str:
    return template_context["words"].ngettext(singular, plural, n)


def site_of(request: Request) -> Site:
    return request.app.state.site


def words_of(request: Request) -> Words:
    """This browser's language and report style (its cookies), else the device's."""
    context = site_of(request).context
    locale = i18n.match_locale(request.cookies.get(LANG_COOKIE, "")) or context.locale
    style = request.cookies.get(STYLE_COOKIE)
    return Words(locale, style if style in i18n.STYLES else context.style)


def staff(request: Request) -> WebSession | None:
    """The logged-in staff member's session, or None: looked up (and its idle timer restarted, a
    durable write) once per request, however many of the request's checks and its page ask."""
    if not hasattr(request.state, "staff"):
        with Accounts(site_of(request).context.db) as accounts:
            request.state.staff = accounts.session(request.cookies.get(SESSION_COOKIE))
    return request.state.staff


class Page:
    """This request's pages: in the browser's language, with the display switches and the
    anonymous forms' token (a cookie echoed by a hidden field) every page carries."""

    def __init__(self, request: Request):
        self.request, self.site, self.words = request, site_of(request), words_of(request)

    def render(self, name: str, values: dict, status_code: int = 200) -> HTMLResponse:
        url = self.request.url
        back = url.path + (f"?{url.query}" if url.query else "")
        back = back if BACK.fullmatch(back) else "/"            # a hostile megabyte of path is not echoed back
        display = {"words": self.words, "back": back, "large": self.request.cookies.get(LARGE_COOKIE) == "1",
                   "languages": [(code, name_) for code, name_ in i18n.LANGUAGE_NAMES.items()
                                 if code != self.words.locale]}
        return self.site.templates.TemplateResponse(self.request, name, {**display, **values},
                                                    status_code=status_code)

    def __call__(self, name: str, status_code: int = 200, **values) -> HTMLResponse:
        form_token = self.request.cookies.get(FORM_COOKIE, "")
        if not FORM_TOKEN.fullmatch(form_token):
            form_token = secrets.token_urlsafe(24)
        response = self.render(name, {"form_token": form_token, "user": staff(self.request), **values}, status_code)
        response.set_cookie(FORM_COOKIE, form_token, httponly=True, samesite="strict",
                            secure=self.site.context.https)
        return response


def _signed_in(role: str):
    def session_for(request: Request) -> WebSession:
        """The logged-in session, if its role may do what `role` does; otherwise to the login
        page (coming back here after it), or a refusal for a nurse on a technician's page."""
        session = staff(request)
        if session is None:
            back = request.url.path if request.url.path in ALLOWED_NEXT else ""
            raise HTTPException(303, headers={"Location": "/tech/login" + (f"?next={back}" if back else "")})
        if not session.may(role):
            raise HTTPException(403, f"This page is for a {role}: you are logged in as a {session.role}.")
        return session
    return session_for


def _signed_form(role: str):
    signed_in = _signed_in(role)

    def session_for(request: Request, csrf: str = Form("")) -> WebSession:
        """A staff member's state-changing form: logged in with the role, and the session's CSRF token echoed."""
        session = signed_in(request)
        if not csrf_ok(session, csrf):
            raise HTTPException(403, N_("missing or wrong CSRF token"))
        return session
    return session_for


def anonymous_form(request: Request, form_token: str = Form("")) -> None:
    """Anonymous forms: the hidden token must match the page's cookie (double submit)."""
    if not same_secret(request.cookies.get(FORM_COOKIE), form_token):
        raise HTTPException(403, N_("This form has expired: go back, reload the page and try again."))


# the dependencies a route declares
SiteOf = Annotated[Site, Depends(site_of)]
WordsOf = Annotated[Words, Depends(words_of)]
PageOf = Annotated[Page, Depends()]
Staff = Annotated[WebSession | None, Depends(staff)]
Nurse = Annotated[WebSession, Depends(_signed_in("nurse"))]
Technician = Annotated[WebSession, Depends(_signed_in("technician"))]
NurseForm = Annotated[WebSession, Depends(_signed_form("nurse"))]
TechnicianForm = Annotated[WebSession, Depends(_signed_form("technician"))]
AnonymousForm = Depends(anonymous_form)


def http_error(request: Request, exc: HTTPException):
    """A refusal: a redirect as it is, JSON under /api, else a page in the browser's language."""
    if exc.status_code == 303:
        return RedirectResponse(exc.headers["Location"], status_code=303)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
    page = Page(request)
    return page.render("error.html", {"message": page.words.gettext(str(exc.detail)), "user": None,
                                      "in_progress": "in progress" in str(exc.detail)}, exc.status_code)


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
    return Page(request).render("error.html", {"message": message[:1].upper() + message[1:] + ".", "user": None},
                               status)
