"""The technicians' records: camera calibrations, measured cards, strip-lot calibrations, QC runs
and the QC schedule, each stored once and never changed.

A record's id is its kind and the first 12 hex digits of the SHA-256 of its content (kind,
subject, time, operator, payload) and of the id before it, so the id a result's provenance names
pins exactly what calibrated it, two identical runs in one millisecond still differ, and an edited
or removed record breaks the chain (`verify`). They live in the
device's database file beside the results (their own table, opened by `device.store.database`), so
one backup holds both. `calibration.in_force` reads them through its `RecordSource` protocol.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from device.store.database import Database, Transaction, chain_hash, open_database, open_readonly

KINDS = ("camera", "card", "lot", "qc", "qc_schedule")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS calibration_records (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    kind       TEXT NOT NULL,
    subject    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    operator   TEXT,
    payload    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calibration_records_kind ON calibration_records (kind, subject, seq)
"""


@dataclass(frozen=True)
class Record:
    id: str
    kind: str            # camera, card, lot, qc, qc_schedule
    subject: str         # what it calibrates: the device, a card id, a lot id, a control id
    created_at: str
    operator: str | None
    payload: dict


def _record_id(previous: str, kind: str, subject: str, created_at: str, operator: str | None, payload_json: str) -> str:
    digest = chain_hash([previous, kind, subject, created_at, operator, payload_json], ascii_only=True)
    return f"{kind.replace('_', '-')}-{digest[:12]}"


class Records(Database):
    """The calibration records in one SQLite file (WAL, durable commits)."""

    def __init__(self, path: Path | str, readonly: bool = False):
        # reading a photo must work on a read-only data folder: nothing is written (no records: none read)
        self._db = (open_readonly(path, "calibration_records", _SCHEMA, missing_ok=False) if readonly
                    else open_database(path, _SCHEMA))

    def add(self, kind: str, subject: str, payload: dict, operator: str | None = None) -> Record:
        if kind not in KINDS:
            raise ValueError(f"unknown record kind {kind!r}")
        created_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        payload_json = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        with Transaction(self._db):                   # the chain's head, read and extended by one writer
            row = self._db.execute("SELECT id FROM calibration_records ORDER BY seq DESC LIMIT 1").fetchone()
            record_id = _record_id(row[0] if row else "", kind, subject, created_at, operator, payload_json)
            self._db.execute("INSERT INTO calibration_records (id, kind, subject, created_at, operator, payload)"
                             " VALUES (?, ?, ?, ?, ?, ?)",
                             (record_id, kind, subject, created_at, operator, payload_json))
        return Record(record_id, kind, subject, created_at, operator, payload)

    def latest(self, kind: str, subject: str | None = None) -> Record | None:
        """The newest record of a kind (for one subject): the one in force."""
        found = self.history(kind, subject, limit=1)
        return found[0] if found else None

    def history(self, kind: str, subject: str | None = None, limit: int | None = None) -> list[Record]:
        """Newest first."""
        query = "SELECT id, kind, subject, created_at, operator, payload FROM calibration_records WHERE kind = ?"
        args: list = [kind]
        if subject is not None:
            query, args = query + " AND subject = ?", args + [subject]
        query += " ORDER BY seq DESC" + (f" LIMIT {int(limit)}" if limit else "")
        return [Record(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in self._db.execute(query, args)]

    def latest_per_subject(self, kind: str) -> dict[str, Record]:
        """The record in force for each subject of a kind (each control's last QC run, each lot's
        calibration), newest first."""
        newest: dict[str, Record] = {}
        for record in self.history(kind):
            newest.setdefault(record.subject, record)
        return newest

    def get(self, record_id: str) -> Record | None:
        row = self._db.execute("SELECT id, kind, subject, created_at, operator, payload FROM calibration_records"
                               " WHERE id = ?", (record_id,)).fetchone()
        return Record(row[0], row[1], row[2], row[3], row[4], json.loads(row[5])) if row else None

    def verify(self) -> list[str]:
        """Ids of records that no longer match their content or their place in the chain (edited,
        or one before them removed)."""
        broken, previous = [], ""
        for r in self._db.execute("SELECT id, kind, subject, created_at, operator, payload FROM calibration_records"
                                  " ORDER BY seq"):
            if _record_id(previous, r[1], r[2], r[3], r[4], r[5]) != r[0]:
                broken.append(r[0])
            previous = r[0]
        return broken
