"""The result store: every reading the device takes, kept so that it survives a crash, a power cut
mid-write and a lab outage, and so that tampering shows.

SQLite in WAL mode with `synchronous=FULL`: a result, its pad thumbnails and its outbox entry are
written in one transaction, so after any crash a result is either wholly there (and queued for the
lab) or not there at all. Each record is chained to the one before it by SHA-256 over a canonical
serialisation: altering, inserting or deleting a row breaks the chain, which `verify` reports.
Patient and operator identifiers are stored (a history needs them) but never logged.

Readings with status `ok` are queued in the outbox for the lab; refused readings and aborted
sessions stay on the device. A result is `sent` once every configured lab destination has
acknowledged it (`deliveries` keeps each acknowledgement), `failed` when a lab rejected it for good.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

GENESIS = "0" * 64
SCHEMA_VERSION = 3
_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    seq          INTEGER PRIMARY KEY,
    result_id    TEXT NOT NULL UNIQUE,
    stored_at    TEXT NOT NULL,
    patient_id   TEXT,
    operator_id  TEXT,
    status       TEXT NOT NULL,
    result_json  TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS results_patient ON results (patient_id, seq);
CREATE TABLE IF NOT EXISTS thumbnails (
    result_id TEXT NOT NULL REFERENCES results (result_id),
    analyte   TEXT NOT NULL,
    png       BLOB NOT NULL,
    PRIMARY KEY (result_id, analyte)
);
CREATE TABLE IF NOT EXISTS outbox (
    result_id  TEXT PRIMARY KEY REFERENCES results (result_id),
    state      TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS alerts (
    id              INTEGER PRIMARY KEY,
    alert_id        TEXT NOT NULL UNIQUE,
    result_id       TEXT NOT NULL REFERENCES results (result_id),
    patient_id      TEXT NOT NULL,
    rule_id         TEXT NOT NULL,
    severity        TEXT NOT NULL,
    condition_key   TEXT NOT NULL,
    alert_json      TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    acknowledged_by TEXT,
    acknowledged_at TEXT,
    delivery        TEXT NOT NULL DEFAULT 'pending' CHECK (delivery IN ('pending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS alerts_patient ON alerts (patient_id, acknowledged_at);
CREATE TABLE IF NOT EXISTS deliveries (
    result_id   TEXT NOT NULL REFERENCES results (result_id),
    destination TEXT NOT NULL,
    acked_at    TEXT NOT NULL,
    reference   TEXT NOT NULL,
    PRIMARY KEY (result_id, destination)
);
"""
# version 1 queued every record; refusals and aborted sessions are not for the lab
_MIGRATE_FROM_1 = ("DELETE FROM outbox WHERE state = 'pending' AND result_id IN"
                   " (SELECT result_id FROM results WHERE status != 'ok')")


def default_path() -> Path:
    """The results database: under $STRIPREAD_DATA if set (the service sets /var/lib/stripread),
    else in the user's data folder."""
    folder = os.environ.get("STRIPREAD_DATA") or Path.home() / ".local" / "share" / "stripread"
    return Path(folder) / "results.db"


@dataclass(frozen=True)
class StoredResult:
    seq: int
    result_id: str
    stored_at: str
    patient_id: str | None
    operator_id: str | None
    result: dict
    hash: str


@dataclass(frozen=True)
class ChainReport:
    records: int
    first_broken_seq: int | None      # None: the chain is intact
    reason: str | None


def _record_hash(prev_hash: str, result_id: str, stored_at: str, patient_id: str | None,
                 operator_id: str | None, status: str, result_json: str) -> str:
    canonical = json.dumps([prev_hash, result_id, stored_at, patient_id, operator_id, status, result_json],
                           separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResultStore:
    """One SQLite file; safe to open from several processes (WAL), one writer at a time. An object
    may be handed to another thread (the service's session thread) but not used by two at once."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")       # a committed result survives a power cut
        self._db.execute("PRAGMA foreign_keys=ON")
        if self._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return           # current: no writer lock taken just to open (every web request opens one)
        with self._transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)
            if version == 1:
                self._db.execute(_MIGRATE_FROM_1)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _transaction(self):
        return _Transaction(self._db)

    def add(self, result: dict, patient_id: str | None = None, operator_id: str | None = None,
            thumbnails: dict[str, bytes] | None = None, for_lab: bool = True, judge=None) -> StoredResult:
        """Store a result with its thumbnails and, when it is a patient's reading (not a refusal, not
        a QC control strip: `for_lab`), queue it for the lab, atomically; with it, the alerts that
        `judge(history, open_alerts)` raises on the patient's history ending with this reading."""
        result_id = str(uuid.uuid4())
        stored_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        result_json = json.dumps(result, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        status = str(result.get("status", "unknown"))
        with self._transaction():
            row = self._db.execute("SELECT hash FROM results ORDER BY seq DESC LIMIT 1").fetchone()
            prev_hash = row[0] if row else GENESIS
            digest = _record_hash(prev_hash, result_id, stored_at, patient_id, operator_id, status, result_json)
            cursor = self._db.execute(
                "INSERT INTO results (result_id, stored_at, patient_id, operator_id, status, result_json,"
                " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (result_id, stored_at, patient_id, operator_id, status, result_json, prev_hash, digest))
            self._db.executemany("INSERT INTO thumbnails (result_id, analyte, png) VALUES (?, ?, ?)",
                                 [(result_id, a, png) for a, png in (thumbnails or {}).items()])
            stored = StoredResult(cursor.lastrowid, result_id, stored_at, patient_id, operator_id, result, digest)
            if status == "ok" and for_lab:
                self._db.execute("INSERT INTO outbox (result_id) VALUES (?)", (result_id,))
                if judge is not None and patient_id is not None:
                    history = list(reversed(self.history(patient_id, limit=200)))
                    for alert in judge(history, self.alerts(patient_id, open_only=True)):
                        self._db.execute(
                            "INSERT INTO alerts (alert_id, result_id, patient_id, rule_id, severity, condition_key,"
                            " alert_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (str(uuid.uuid4()), result_id, patient_id, alert["rule_id"], alert["severity"],
                             alert["condition_key"], json.dumps(alert, sort_keys=True), stored_at))
        return stored

    def history(self, patient_id: str | None = None, limit: int | None = None) -> list[StoredResult]:
        """Newest first; one patient's or everyone's."""
        query = "SELECT seq, result_id, stored_at, patient_id, operator_id, result_json, hash FROM results"
        args: tuple = ()
        if patient_id is not None:
            query, args = query + " WHERE patient_id = ?", (patient_id,)
        query += " ORDER BY seq DESC" + (f" LIMIT {int(limit)}" if limit else "")
        return [StoredResult(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6])
                for r in self._db.execute(query, args)]

    def get(self, seq: int) -> StoredResult | None:
        row = self._db.execute("SELECT seq, result_id, stored_at, patient_id, operator_id, result_json, hash"
                               " FROM results WHERE seq = ?", (seq,)).fetchone()
        return StoredResult(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6]) if row else None

    def alerts(self, patient_id: str | None = None, open_only: bool = False, result_id: str | None = None,
               delivery: str | None = None, limit: int = 200) -> list[dict]:
        """Alerts, newest first: a patient's, the open ones (not yet acknowledged), one result's, or
        those in a delivery state."""
        clauses, args = [], []
        for clause, value in (("a.patient_id = ?", patient_id), ("a.result_id = ?", result_id),
                              ("a.delivery = ?", delivery)):
            if value is not None:
                clauses, args = clauses + [clause], args + [value]
        if open_only:
            clauses.append("a.acknowledged_at IS NULL")
        rows = self._db.execute(
            "SELECT a.id, a.alert_id, r.seq, a.result_id, a.patient_id, a.alert_json, a.created_at, a.acknowledged_by,"
            " a.acknowledged_at, a.delivery, a.attempts, a.last_error FROM alerts a JOIN results r USING (result_id)"
            + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY a.id DESC LIMIT ?", (*args, limit))
        return [{**json.loads(r[5]), "id": r[0], "alert_id": r[1], "seq": r[2], "result_id": r[3], "patient_id": r[4],
                 "created_at": r[6], "acknowledged_by": r[7], "acknowledged_at": r[8], "delivery": r[9],
                 "attempts": r[10], "last_error": r[11]} for r in rows]

    def acknowledge(self, alert_row: int, by: str) -> bool:
        """A clinician has seen the alert: it closes, and the same condition may alert again later."""
        at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return self._db.execute("UPDATE alerts SET acknowledged_by = ?, acknowledged_at = ? WHERE id = ? AND"
                                " acknowledged_at IS NULL", (by, at, alert_row)).rowcount == 1

    def pending_alerts(self) -> list[dict]:
        """Alerts the clinic has not yet received, oldest first."""
        return list(reversed(self.alerts(delivery="pending", limit=10_000)))

    def record_alert_delivery(self, alert_row: int, error: str | None = None, permanent: bool = False) -> None:
        state = "sent" if error is None else "failed" if permanent else "pending"
        self._db.execute("UPDATE alerts SET delivery = ?, attempts = attempts + 1, last_error = ? WHERE id = ?",
                         (state, error, alert_row))

    def thumbnails(self, result_id: str) -> dict[str, bytes]:
        return dict(self._db.execute("SELECT analyte, png FROM thumbnails WHERE result_id = ?", (result_id,)))

    def outbox_counts(self) -> dict[str, int]:
        counts = dict(self._db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"))
        return {state: counts.get(state, 0) for state in ("pending", "sent", "failed")}

    def pending(self, after_seq: int = 0, limit: int = 100) -> list[StoredResult]:
        """Results waiting for the lab, oldest first, from after `after_seq`."""
        rows = self._db.execute(
            "SELECT r.seq, r.result_id, r.stored_at, r.patient_id, r.operator_id, r.result_json, r.hash"
            " FROM outbox o JOIN results r USING (result_id) WHERE o.state = 'pending' AND r.seq > ?"
            " ORDER BY r.seq LIMIT ?", (after_seq, limit))
        return [StoredResult(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]) for r in rows]

    def deliveries(self, result_id: str) -> dict[str, str]:
        """Destination -> the lab's reference, for each lab that already acknowledged this result."""
        return dict(self._db.execute("SELECT destination, reference FROM deliveries WHERE result_id = ?",
                                     (result_id,)))

    def record_delivery(self, result_id: str, destination: str, reference: str, complete: bool) -> None:
        """A lab acknowledged the result; `complete` when it was the last destination to do so."""
        acked_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO deliveries (result_id, destination, acked_at, reference)"
                             " VALUES (?, ?, ?, ?)", (result_id, destination, acked_at, reference))
            self._db.execute("UPDATE outbox SET attempts = attempts + 1, last_error = NULL"
                             + (", state = 'sent'" if complete else "") + " WHERE result_id = ?", (result_id,))

    def record_attempt(self, result_id: str, error: str, permanent: bool) -> None:
        """A send that did not get through: kept pending for a retry, or failed for a person to look at."""
        self._db.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ?"
                         + (", state = 'failed'" if permanent else "") + " WHERE result_id = ?", (error, result_id))

    def failures(self) -> list[tuple[int, str, int, str]]:
        """(seq, result_id, attempts, last_error) of every result a lab rejected."""
        return list(self._db.execute("SELECT r.seq, o.result_id, o.attempts, o.last_error FROM outbox o"
                                     " JOIN results r USING (result_id) WHERE o.state = 'failed' ORDER BY r.seq"))

    def retry_failed(self) -> int:
        """Queue rejected results again (after the cause was fixed at the lab or in the configuration)."""
        return self._db.execute("UPDATE outbox SET state = 'pending' WHERE state = 'failed'").rowcount

    def verify(self) -> ChainReport:
        """Walk the chain from the first record: every hash must recompute and link to the last."""
        prev, count = GENESIS, 0
        rows = self._db.execute("SELECT seq, result_id, stored_at, patient_id, operator_id, status, result_json,"
                                " prev_hash, hash FROM results ORDER BY seq")
        for seq, result_id, stored_at, patient, operator, status, result_json, prev_hash, digest in rows:
            count += 1
            if prev_hash != prev:
                return ChainReport(count, seq, "a record before this one was removed or inserted")
            if _record_hash(prev_hash, result_id, stored_at, patient, operator, status, result_json) != digest:
                return ChainReport(count, seq, "this record was altered after it was stored")
            prev = digest
        return ChainReport(count, None, None)

    def integrity(self) -> str:
        """SQLite's own check of the file ('ok' when sound)."""
        return self._db.execute("PRAGMA integrity_check").fetchone()[0]

    def iter_results(self) -> Iterator[StoredResult]:
        """Oldest first, for export."""
        for r in self._db.execute("SELECT seq, result_id, stored_at, patient_id, operator_id, result_json, hash"
                                  " FROM results ORDER BY seq"):
            yield StoredResult(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6])


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception: the writer lock is taken up front,
    so two processes adding results cannot both read the same chain head."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        return False
