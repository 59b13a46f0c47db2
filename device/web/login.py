"""Staff log in and out (the accounts and sessions themselves are device.web.auth): a login is
throttled per account and per address, at most a couple of password hashes run at once, and it
lands the nurse on the clinic view and the technician on the technician page (or where the login
page was asked to go back to)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from device.language.i18n import N_
from device.web.auth import Accounts
from device.web.pages import ALLOWED_NEXT, SESSION_COOKIE, AnonymousForm, NurseForm, Page, PageOf, SiteOf
from device.web.security import PASSWORD_MAX, USERNAME_MAX, LoginBusy
from device.web.site import Site

router = APIRouter()


@router.get("/tech/login", response_class=HTMLResponse, include_in_schema=False)
def login_form(page: PageOf, next: Annotated[str | None, Query(max_length=20)] = None):  # noqa: A002
    return page("login.html", error=None, next=next if next in ALLOWED_NEXT else None)


@router.post("/tech/login", include_in_schema=False, dependencies=[AnonymousForm])
def login(request: Request, page: PageOf, username: Annotated[str, Form(max_length=USERNAME_MAX)],
          password: Annotated[str, Form(max_length=PASSWORD_MAX)],
          next: Annotated[str, Form(max_length=20)] = ""):  # noqa: A002
    """Throttled per account and per address (locked out past the allowance, the right password
    included), and at most a couple of password hashes at once."""
    site = page.site
    address = request.client.host if request.client else "unknown"
    refused = site.guard.refusal(username, address)
    if refused is not None:
        return _refused(page, refused[0], 429, refused[1])
    try:
        signed_in = site.guard.check(_check_password, site, username, password)
    except LoginBusy:
        return _refused(page, N_("The reader is busy checking other logins: try again in a moment."), 503, 1)
    site.guard.record(username, address, succeeded=signed_in is not None)
    if signed_in is None:
        return _refused(page, N_("Wrong name or password."), 401)
    token, session = signed_in
    landing = next if next in ALLOWED_NEXT else "/tech" if session.role == "technician" else "/clinic"
    if landing == "/tech" and not session.may("technician"):
        landing = "/clinic"
    response = RedirectResponse(landing, status_code=303)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", secure=site.context.https,
                        max_age=8 * 3600)
    return response


def _check_password(site: Site, username: str, password: str):
    with Accounts(site.context.db) as accounts:
        return accounts.login(username, password)


def _refused(page: Page, message: str, status: int, retry_after_s: int | None = None) -> HTMLResponse:
    response = page("login.html", status, error=message, next=None)
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(retry_after_s)
    return response


@router.post("/tech/logout", include_in_schema=False)
def logout(request: Request, site: SiteOf, session: NurseForm):
    with Accounts(site.context.db) as accounts:
        accounts.logout(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response
