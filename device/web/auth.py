"""Staff accounts and web sessions for the reader's local web interface: a nurse sees the clinic
view (alerts to review, acknowledge with a note, undo) and patients' histories; a technician also
calibration, QC and the lab sync.

Passwords are stored as scrypt hashes (a memory-hard KDF from the standard library, n=2^14, r=8,
p=1, 16-byte salt) and compared in constant time. A login creates a session: a random 256-bit token
in an HttpOnly, SameSite=Strict cookie (Secure when served over HTTPS), stored only as its SHA-256,
expiring after 8 hours of no use; each session has its own CSRF token that every state-changing
form or API call must echo. Accounts and sessions live in the device's database file.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from device.store.database import Database, open_database

SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1, "dklen": 32}
SESSION_IDLE = timedelta(hours=8)
MIN_PASSWORD = 10
ROLES = ("nurse", "technician")          # each sees what the one before sees, and more
_SCHEMA = """
CREATE TABLE IF NOT EXISTS web_users (
    username TEXT PRIMARY KEY,
    salt     BLOB NOT NULL,
    hash     BLOB NOT NULL,
    created  TEXT NOT NULL,
    role     TEXT NOT NULL DEFAULT 'technician'
);
CREATE TABLE IF NOT EXISTS web_sessions (
    token_sha256 TEXT PRIMARY KEY,
    username     TEXT NOT NULL REFERENCES web_users (username),
    csrf         TEXT NOT NULL,
    expires      TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class WebSession:
    username: str
    csrf: str
    role: str = "technician"

    def may(self, role: str) -> bool:
        """Whether this account may do what `role` does (a technician may do what a nurse does)."""
        return ROLES.index(self.role) >= ROLES.index(role)


def _kdf(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, **SCRYPT)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Accounts(Database):
    """The staff accounts and their web sessions, in the device's database file."""

    def __init__(self, path: Path | str):
        # accounts made before roles were all technicians: the column is added with that default
        self._db = open_database(path, _SCHEMA, columns={"web_users": {"role": "TEXT NOT NULL DEFAULT 'technician'"}})

    def set_password(self, username: str, password: str, role: str | None = None) -> None:
        """Create the account (a technician unless `role` says otherwise) or change its password and,
        when given, its role (ending its sessions either way)."""
        if len(password) < MIN_PASSWORD:
            raise ValueError(f"a staff password needs at least {MIN_PASSWORD} characters")
        if role is not None and role not in ROLES:
            raise ValueError(f"a role is one of {', '.join(ROLES)}, not {role!r}")
        salt = secrets.token_bytes(16)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._db.execute("INSERT INTO web_users (username, salt, hash, created, role) VALUES (?, ?, ?, ?, ?) ON "
                         "CONFLICT (username) DO UPDATE SET salt = excluded.salt, hash = excluded.hash, role = "
                         "COALESCE(?, role)", (username, salt, _kdf(password, salt), now, role or "technician", role))
        self._db.execute("DELETE FROM web_sessions WHERE username = ?", (username,))

    def login(self, username: str, password: str) -> tuple[str, WebSession] | None:
        """A new session's cookie token and the session, or None for a wrong name or password
        (both cost the same KDF, so the answer time does not tell which)."""
        row = self._db.execute("SELECT salt, hash, role FROM web_users WHERE username = ?", (username,)).fetchone()
        salt, stored, role = row if row else (b"\0" * 16, b"", None)
        if not hmac.compare_digest(_kdf(password, salt), stored) or row is None:
            return None
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self._db.execute("INSERT INTO web_sessions (token_sha256, username, csrf, expires) VALUES (?, ?, ?, ?)",
                         (_digest(token), username, csrf, _expiry()))
        return token, WebSession(username, csrf, role)

    def session(self, token: str | None) -> WebSession | None:
        """The live session for a cookie token (its idle timer restarted), or None."""
        if not token or len(token) > 256:         # ours are 43 characters; a cookie can hold anything
            return None
        row = self._db.execute("SELECT s.username, s.csrf, s.expires, u.role FROM web_sessions s JOIN web_users u"
                               " USING (username) WHERE s.token_sha256 = ?", (_digest(token),)).fetchone()
        if row is None or datetime.fromisoformat(row[2]) < datetime.now(timezone.utc):
            return None
        self._db.execute("UPDATE web_sessions SET expires = ? WHERE token_sha256 = ?", (_expiry(), _digest(token)))
        return WebSession(row[0], row[1], row[3])

    def logout(self, token: str | None) -> None:
        if token:
            self._db.execute("DELETE FROM web_sessions WHERE token_sha256 = ?", (_digest(token),))


def _expiry() -> str:
    return (datetime.now(timezone.utc) + SESSION_IDLE).isoformat(timespec="seconds")


def same_secret(expected: str | None, submitted: str | None) -> bool:
    """Constant-time comparison of a token with what a client sent, which may be any text (compared
    as bytes: `compare_digest` refuses non-ASCII strings)."""
    if not expected or submitted is None:
        return False
    return hmac.compare_digest(expected.encode("utf-8", "surrogatepass"), submitted.encode("utf-8", "surrogatepass"))


def csrf_ok(session: WebSession | None, submitted: str | None) -> bool:
    return session is not None and same_secret(session.csrf, submitted)
