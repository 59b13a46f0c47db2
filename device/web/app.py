"""The reader's local web interface (FastAPI, server-rendered pages, no external files).

A patient (or a nurse beside them) starts a test (or, when quality control has locked the reader,
is told so and whom to contact before dipping a strip), watches the read times count down by pad
with the camera's view (the page works without JavaScript: it refreshes itself), may cancel, and
reads the result: a one-line verdict, the pads that need attention first, levels with units and
reference ranges, what to do next, and the safety messages of the reading itself. Staff log in: a
nurse sees the clinic view (alerts to review; acknowledging an urgent one takes a note and can be
undone) and patients' histories with trend plots; a technician also runs QC from the page and sees
calibration records, Levey-Jennings charts, the lab sync and the device's health. Every page's data
is also JSON under /api (its OpenAPI schema at /openapi.json), beside the page that shows it.

Where to look: patient.py, clinic.py, technician.py and login.py hold each audience's routes;
pages.py what every route shares (words, rendering, roles, form checks, error pages); site.py the
app's state and the reader as pages see it; records.py a stored record as JSON; views.py and
plain.py what a record means on screen; security.py the defences against hostile clients (login
throttle, id formats, security headers, the last-resort error handler).

Request paths carry patient ids, so the server keeps no access log; what it logs names no patient.
"""
from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from device.monitoring.alerts import load_rules
from device.web import clinic, login, patient, pages, technician
from device.web.pages import FORM_COOKIE, SESSION_COOKIE, site_of, staff
from device.web.security import Hardening, LoginGuard
from device.web.site import Site, WebContext

# what the CLI and the tests use: an app made from a WebContext, and the cookies it sets
__all__ = ["WebContext", "create_app", "FORM_COOKIE", "SESSION_COOKIE"]

HERE = Path(__file__).parent
DEFAULT_CONTACT = "the technician who looks after this reader"
PUBLIC = ("/tech/login", "/openapi.json")     # open to all under `login_everywhere` (and /static/)


def create_app(context: WebContext) -> FastAPI:
    # the interactive docs pages load scripts from a CDN: offline readers publish the schema only
    app = FastAPI(title="stripread", description="The reader's local interface and its JSON API.",
                  docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    if context.rules is None:
        context.rules = load_rules()
    app.state.site = Site(context, pages.templates(HERE / "templates"), context.login_guard or LoginGuard(),
                          context.contact or os.environ.get("STRIPREAD_CONTACT") or DEFAULT_CONTACT)
    app.middleware("http")(_staff_only)
    app.add_exception_handler(HTTPException, pages.http_error)
    app.add_exception_handler(RequestValidationError, pages.bad_request)
    for audience in (patient, clinic, login, technician):
        app.include_router(audience.router)
    app.add_middleware(Hardening, https=context.https)     # added last: outermost, so on every response
    return app


async def _staff_only(request: Request, call_next):
    """With `login_everywhere`, patients' pages and data too are for logged-in staff only."""
    public = request.url.path in PUBLIC or request.url.path.startswith("/static/")
    if site_of(request).context.login_everywhere and not public and staff(request) is None:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "log in first"}, status_code=401)
        return RedirectResponse("/tech/login", status_code=303)
    return await call_next(request)
