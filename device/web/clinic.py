"""What clinic staff wrote when they acknowledged an urgent alert or undid it: one row per action,
kept beside the web accounts in the device's database (the store's alerts table keeps who closed an
alert and when; this keeps why)."""
from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path

NOTE_MAX = 500
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


class AlertNotes:
    def __init__(self, path: Path | str):
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute(_SCHEMA)

    def __enter__(self) -> AlertNotes:
        return self

    def __exit__(self, *exc) -> None:
        self._db.close()

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
