"""The web interface's defences against hostile or broken clients: the login throttle and the bound on
concurrent password hashes, the formats every id must have, and an outermost ASGI layer that puts
the security headers on every response, refuses oversized bodies and turns any unexpected exception
into a logged traceback (route template and frames only: paths, queries and error texts may carry
patient ids) and a plain 500.
"""
from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.datastructures import MutableHeaders
from starlette.responses import PlainTextResponse

from device.store.results import PATIENT_ID

log = logging.getLogger("stripread.web")
T = TypeVar("T")

PATIENT_ID_RULE = "a patient ID is 1 to 64 letters, digits, '.', '_' or '-'"
SEQ_MAX = 2 ** 63 - 1                  # SQLite's INTEGER range: a larger number can name no record
LIMIT_MAX = 1000
NAME = r"^[A-Za-z0-9._-]{1,64}$"      # analyte codes, control ids
USERNAME_MAX, PASSWORD_MAX = 64, 1024
NOTE_MAX = 500                        # what a nurse writes when closing an alert
MAX_BODY = 64 * 1024                  # every form of the interface is well under 1 kB

# Headers on every response. The pages load only their own stylesheet, scripts and images; no
# inline script or style (the chart swatches are SVG fills), so the policy needs no 'unsafe-inline'.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",                        # frame-ancestors for browsers without CSP 2
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",                 # URLs carry patient ids: never send them on
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


class LoginBusy(Exception):
    """More logins at once than the device hashes in parallel: answer 503, do not queue."""


class LoginGuard:
    """Failed logins are counted per account and per client address in moving windows (the `limits`
    library, in memory: one device process serves the interface); once an account or an address
    uses up its allowance it is locked out for `lockout_s`, the right password included (the count
    then starts afresh). The counting windows run on the library's wall clock, the lockout on `clock`
    (monotonic seconds), which tests move on. At most `hashes` scrypt hashes (16 MB each) run at once,
    on `hashes` threads of their own: a flood of logins is answered at once instead of taking the
    memory, and the hashes' freed memory stays in those threads' malloc arenas (hashed on the web
    worker threads, under a semaphore alone, 120 logins still peaked at 490 MB)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, per_account: int = 5, per_address: int = 20,
                 window_s: int = 900, lockout_s: float = 900, hashes: int = 2, hash_wait_s: float = 0.5):
        self.clock, self.lockout_s, self.hash_wait_s = clock, lockout_s, hash_wait_s
        self._counter = MovingWindowRateLimiter(MemoryStorage())
        self._allowance = {"account": RateLimitItemPerSecond(per_account, window_s),
                           "address": RateLimitItemPerSecond(per_address, window_s)}
        self._locked: dict[tuple[str, str], float] = {}     # (kind, key) -> clock time the lockout ends
        self._lock = threading.Lock()
        self._hashes = threading.BoundedSemaphore(hashes)
        self._hashing_threads = ThreadPoolExecutor(hashes, thread_name_prefix="password-hash")

    def refusal(self, username: str, address: str) -> tuple[str, int] | None:
        """Why this attempt is refused without checking the password, and the seconds to wait; None
        when it may go ahead."""
        now = self.clock()
        with self._lock:
            ends = {kind: self._locked.get((kind, key), now) for kind, key in self._keys(username, address)}
        kind = max(ends, key=ends.get)
        if ends[kind] <= now:
            return None
        wait = math.ceil(ends[kind] - now)
        minutes = math.ceil(wait / 60)
        who = "this account" if kind == "account" else "this device's address"
        return (f"Too many wrong passwords for {who}: logins are locked for {minutes} more "
                f"minute{'s' if minutes != 1 else ''}. Ask another technician if it is urgent.", wait)

    def record(self, username: str, address: str, succeeded: bool) -> None:
        """Count a wrong password (locking what used up its allowance); a right one clears the
        account's count (the address's stays: one address may be guessing many accounts)."""
        if succeeded:
            self._counter.clear(self._allowance["account"], "account", username)
            return
        now = self.clock()
        with self._lock:
            self._locked = {k: ends for k, ends in self._locked.items() if ends > now}   # forget ended lockouts
            for kind, key in self._keys(username, address):
                item = self._allowance[kind]
                self._counter.hit(item, kind, key)
                if self._counter.get_window_stats(item, kind, key).remaining == 0:
                    self._locked[(kind, key)] = now + self.lockout_s
                    self._counter.clear(item, kind, key)

    @contextlib.contextmanager
    def hashing(self) -> Iterator[None]:
        """A slot for one password hash, waited for briefly; LoginBusy when none frees up."""
        if not self._hashes.acquire(timeout=self.hash_wait_s):
            raise LoginBusy
        try:
            yield
        finally:
            self._hashes.release()

    def check(self, login: Callable[..., T], *args) -> T:
        """`login(*args)` (which hashes a password) on a hashing thread, in a slot of `hashing`."""
        with self.hashing():
            return self._hashing_threads.submit(login, *args).result()

    @staticmethod
    def _keys(username: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("account", username), ("address", address)


class BodyTooLarge(Exception):
    pass


class Hardening:
    """Outermost ASGI layer: security headers (and `Cache-Control: no-store` beyond /static/, since
    pages and API answers carry patient data) on every response, errors included; request bodies
    over MAX_BODY refused with 413; any exception the app lets through logged without request data
    and answered with a plain 500."""

    def __init__(self, app, https: bool = False):
        self.app = app
        self.headers = dict(SECURITY_HEADERS)
        if https:
            self.headers["strict-transport-security"] = "max-age=31536000"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False
        private = not scope["path"].startswith("/static/")

        async def send_hardened(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers[name] = value
                if private:
                    headers["cache-control"] = "no-store"
            await send(message)

        received = 0

        async def receive_bounded():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY:
                raise BodyTooLarge
            return message

        declared = dict(scope["headers"]).get(b"content-length", b"0")
        try:
            if not declared.isdigit() or int(declared) > MAX_BODY:
                raise BodyTooLarge
            await self.app(scope, receive_bounded, send_hardened)
        except BodyTooLarge:
            if not started:
                await PlainTextResponse(f"The request is too large (at most {MAX_BODY // 1024} kB).",
                                        status_code=413)(scope, receive, send_hardened)
        except Exception as exc:
            log_unexpected(scope, exc)
            if not started:
                await PlainTextResponse("Something went wrong on the reader. The error is logged for the "
                                        "technician; try again.", status_code=500)(scope, receive, send_hardened)


def log_unexpected(scope, exc: BaseException) -> None:
    """The route's template (/patients/{patient_id}, never the path), the exception's type and its
    frames with their source lines; not its message, which may quote a patient id."""
    route = getattr(scope.get("route"), "path", "(no route)")
    frames = "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__)))
    log.error("unexpected %s in %s %s\n%s", type(exc).__name__, scope.get("method"), route, frames,
              extra={"fields": {"route": route, "method": scope.get("method"), "error": type(exc).__name__}})
