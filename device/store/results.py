"""The result store: every reading the device takes, kept so that it survives a crash, a power cut
mid-write and a lab outage, and so that tampering shows.

SQLite in WAL mode with `synchronous=FULL`: a result, its pad thumbnails and its outbox entry are
written in one transaction, so after any crash a result is either wholly there (and queued for the
lab) or not there at all. Each record is chained to the one before it by SHA-256 over a canonical
serialisation: altering, inserting or deleting a row breaks the chain, which `verify` reports.
The chain alone cannot show an edit with the hashes recomputed, nor the newest records deleted or the
file emptied: each record's chain head is therefore signed with the device key (`device.store.signing`,
kept outside the database) and the newest signed head is checkpointed in a second file beside the
database after every commit. `examine` checks all of it without writing a byte.
Patient and operator identifiers are stored (a history needs them) but never logged.

Readings with status `ok` are queued in the outbox for the lab; refused readings and aborted
sessions stay on the device. A result is `sent` once every configured lab destination has
acknowledged it (`deliveries` keeps each acknowledgement), `failed` when a lab rejected it for good.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from device.store import signing
from device.store.database import Database, Transaction, chain_hash, connect_readonly, open_database, open_readonly

if TYPE_CHECKING:        # the store's commands (history, export, verify) never load the image or model stack
    from device.reading.result import Reading

log = logging.getLogger("stripread.store")

# A patient id is what the FHIR `id` type allows (1-64 of [A-Za-z0-9.-]) plus "_": it goes into
# URLs, HL7 fields and FHIR identifiers without escaping surprises, and a page listing ids stays small.
# Every entrance checks it: the web's forms and paths, and the QR code on a patient's card.
PATIENT_ID = r"^[A-Za-z0-9._-]{1,64}$"

GENESIS = "0" * 64
SCHEMA_VERSION = 4
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
    hash         TEXT NOT NULL UNIQUE,
    chain_count  INTEGER,           -- records in the store with this one (signed with the hash)
    signature    TEXT               -- "<key id>:<base64 Ed25519 signature>" of the head at this record
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
_SIGNATURE_COLUMNS = {"chain_count": "INTEGER", "signature": "TEXT"}      # version 4
_CHAIN = "seq, result_id, stored_at, patient_id, operator_id, status, result_json, prev_hash, hash"
_COLUMNS = "seq, result_id, stored_at, patient_id, operator_id, result_json, hash, chain_count, signature"


@dataclass(frozen=True)
class StoredResult:
    """One stored record: `result` is its JSON as stored (parsed once), `reading` the same as the
    `Reading` the rest of the device works with."""
    seq: int
    result_id: str
    stored_at: str
    patient_id: str | None
    operator_id: str | None
    result: dict
    hash: str
    chain_count: int | None = None      # the signed head at this record (None: stored before signing)
    signature: str | None = None

    @cached_property
    def reading(self) -> Reading:
        from device.reading.result import Reading
        return Reading.from_dict(self.result)

    def seal(self) -> dict | None:
        """The chain head signed when this record was stored, for the lab to keep: key id, count,
        seq, sha256 and signature (None for a record stored before signing)."""
        if not self.signature:
            return None
        key_id, _, signature = self.signature.partition(":")
        return {"key": key_id, "count": self.chain_count, "seq": self.seq, "sha256": self.hash,
                "signature": signature}


def _stored(row) -> StoredResult:
    return StoredResult(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6], row[7], row[8])


@dataclass(frozen=True)
class ChainReport:
    records: int
    first_broken_seq: int | None      # None: the chain is intact
    reason: str | None


def _record_hash(prev_hash: str, result_id: str, stored_at: str, patient_id: str | None,
                 operator_id: str | None, status: str, result_json: str) -> str:
    return chain_hash([prev_hash, result_id, stored_at, patient_id, operator_id, status, result_json])


class ResultStore(Database):
    """One SQLite file; safe to open from several processes (WAL), one writer at a time. An object
    may be handed to another thread (the service's session thread) but not used by two at once.
    `readonly` opens an existing file without writing anything to it (history, export, verify)."""

    def __init__(self, path: Path | str, key: signing.DeviceKey | None = None, readonly: bool = False):
        self.path = Path(path)
        self._key = key                                   # loaded (or created) at the first add
        self._columns = _COLUMNS
        if readonly:
            # the file as it is: no file, an empty one or one without results reads as an empty store
            self._db = open_readonly(self.path, "results", _SCHEMA)
            present = {row[1] for row in self._db.execute("PRAGMA table_info(results)")}
            if not present >= set(_SIGNATURE_COLUMNS):     # a store from before signing: read without them
                self._columns = _COLUMNS.replace("chain_count, signature", "NULL, NULL")
            return
        self._db = open_database(self.path, _SCHEMA, SCHEMA_VERSION, {"results": _SIGNATURE_COLUMNS},
                                 {1: _MIGRATE_FROM_1})

    @property
    def key(self) -> signing.DeviceKey:
        if self._key is None:
            self._key = signing.DeviceKey.load(signing.key_path(self.path))
        return self._key

    def _transaction(self):
        return Transaction(self._db)

    def add(self, result: Reading | dict, patient_id: str | None = None, operator_id: str | None = None,
            thumbnails: dict[str, bytes] | None = None, for_lab: bool = True, judge=None) -> StoredResult:
        """Store a reading (or a `stripread.read/1` object as received) with its thumbnails and, when
        it is a patient's reading (not a refusal, not a QC control strip: `for_lab`), queue it for the
        lab, atomically; with it, the alerts that `judge(history, open_alerts)` raises on the
        patient's history ending with this reading (the earlier records read back, this one as given)."""
        reading = None if isinstance(result, dict) else result
        result = result if reading is None else reading.to_dict()
        result_id = str(uuid.uuid4())
        stored_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        result_json = json.dumps(result, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        status = str(result.get("status", "unknown"))
        key = self.key
        with self._transaction():
            row = self._db.execute("SELECT seq, hash FROM results ORDER BY seq DESC LIMIT 1").fetchone()
            prev_hash = row[1] if row else GENESIS
            seq = row[0] + 1 if row else 1
            count = self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0] + 1
            digest = _record_hash(prev_hash, result_id, stored_at, patient_id, operator_id, status, result_json)
            signature = f"{key.id}:{key.sign(count, seq, digest)}"
            self._db.execute(
                "INSERT INTO results (seq, result_id, stored_at, patient_id, operator_id, status, result_json,"
                " prev_hash, hash, chain_count, signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, result_id, stored_at, patient_id, operator_id, status, result_json, prev_hash, digest, count,
                 signature))
            self._db.executemany("INSERT INTO thumbnails (result_id, analyte, png) VALUES (?, ?, ?)",
                                 [(result_id, a, png) for a, png in (thumbnails or {}).items()])
            stored = StoredResult(seq, result_id, stored_at, patient_id, operator_id, result, digest, count, signature)
            if reading is not None:
                vars(stored)["reading"] = reading           # the object itself, not its JSON read back
            if status == "ok" and for_lab:
                self._db.execute("INSERT INTO outbox (result_id) VALUES (?)", (result_id,))
                if judge is not None and patient_id is not None:
                    history = [*reversed(self.history(patient_id, limit=199, before=seq)), stored]
                    for alert in judge(history, self.alerts(patient_id, open_only=True)):
                        self._db.execute(
                            "INSERT INTO alerts (alert_id, result_id, patient_id, rule_id, severity, condition_key,"
                            " alert_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (str(uuid.uuid4()), result_id, patient_id, alert["rule_id"], alert["severity"],
                             alert["condition_key"], json.dumps(alert, sort_keys=True), stored_at))
        self._checkpoint_after_commit()
        return stored

    def _checkpoint_after_commit(self) -> None:
        """The stored head, out to the checkpoint file. The record is committed whatever happens here:
        a failure (a full disk) leaves the checkpoint one step behind, which `examine` tolerates for
        records that carry their own signature, and the next commit catches up."""
        try:
            self.write_checkpoint()
        except OSError as exc:
            log.warning("checkpoint not updated", extra={"fields": {"error": exc.strerror or str(exc)}})

    def write_checkpoint(self) -> signing.Checkpoint | None:
        """Write the newest signed head beside the database (None: nothing signed yet). The head is
        read under the checkpoint's lock, so concurrent writers leave the newest one in the file."""
        target = signing.checkpoint_path(self.path)
        with signing.checkpoint_lock(target):
            row = self._db.execute("SELECT seq, hash, chain_count, signature FROM results WHERE signature IS NOT NULL"
                                   " ORDER BY seq DESC LIMIT 1").fetchone()
            if row is None:
                return None
            key_id, _, signature = row[3].partition(":")
            return signing.write_checkpoint(target, row[2], row[0], row[1], signature, key_id)

    def seal(self) -> bool:
        """Sign the head of a store written before signing existed (its earlier records are vouched
        for by the hash chain up to it) and write the checkpoint; True when the store had none."""
        if signing.checkpoint_path(self.path).exists():
            return False
        with self._transaction():
            row = self._db.execute("SELECT seq, hash, signature FROM results ORDER BY seq DESC LIMIT 1").fetchone()
            if row is not None and row[2] is None:
                count = self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
                self._db.execute("UPDATE results SET chain_count = ?, signature = ? WHERE seq = ?",
                                 (count, f"{self.key.id}:{self.key.sign(count, row[0], row[1])}", row[0]))
        return self.write_checkpoint() is not None

    def backup(self, destination: Path | str) -> signing.Checkpoint | None:
        """A consistent copy by SQLite's online backup API (the service may go on storing meanwhile),
        with the checkpoint of the copied head beside it: restoring is copying both back."""
        destination = Path(destination)
        if destination.exists():
            raise FileExistsError(f"{destination} exists: choose a new name")
        partial = destination.with_name(f".{destination.name}.partial")
        target = sqlite3.connect(partial)
        try:
            self._db.backup(target)
            row = target.execute("SELECT seq, hash, chain_count, signature FROM results WHERE signature IS NOT NULL"
                                 " ORDER BY seq DESC LIMIT 1").fetchone()
            target.close()
            with open(partial, "rb") as written:
                os.fsync(written.fileno())
        except BaseException:
            target.close()
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, destination)
        if row is None:
            return None
        key_id, _, signature = row[3].partition(":")
        return signing.write_checkpoint(signing.checkpoint_path(destination), row[2], row[0], row[1], signature,
                                        key_id)

    def history(self, patient_id: str | None = None, limit: int | None = None,
                before: int | None = None) -> list[StoredResult]:
        """Newest first; one patient's or everyone's; those stored before record `before`."""
        clauses = [(c, v) for c, v in (("patient_id = ?", patient_id), ("seq < ?", before)) if v is not None]
        query = f"SELECT {self._columns} FROM results" + \
            (" WHERE " + " AND ".join(c for c, _ in clauses) if clauses else "")
        query += " ORDER BY seq DESC" + (f" LIMIT {int(limit)}" if limit else "")
        return [_stored(r) for r in self._db.execute(query, tuple(v for _, v in clauses))]

    def get(self, seq: int) -> StoredResult | None:
        row = self._db.execute(f"SELECT {self._columns} FROM results WHERE seq = ?", (seq,)).fetchone()
        return _stored(row) if row else None

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

    def reopen(self, alert_row: int) -> bool:
        """Undo an acknowledgement made by mistake: the alert is open again."""
        return self._db.execute("UPDATE alerts SET acknowledged_by = NULL, acknowledged_at = NULL WHERE id = ? AND"
                                " acknowledged_at IS NOT NULL", (alert_row,)).rowcount == 1

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
            f"SELECT {self._columns} FROM outbox o JOIN results r USING (result_id) WHERE o.state = 'pending'"
            " AND r.seq > ? ORDER BY r.seq LIMIT ?", (after_seq, limit))
        return [_stored(r) for r in rows]

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
        count = 0
        for count, (row, fault) in enumerate(_chain(self._db.execute(f"SELECT {_CHAIN} FROM results ORDER BY seq")), 1):
            if fault:
                return ChainReport(count, row[0], fault)
        return ChainReport(count, None, None)

    def integrity(self) -> str:
        """SQLite's own check of the file ('ok' when sound)."""
        return self._db.execute("PRAGMA integrity_check").fetchone()[0]

    def iter_results(self) -> Iterator[StoredResult]:
        """Oldest first, for export."""
        for r in self._db.execute(f"SELECT {self._columns} FROM results ORDER BY seq"):
            yield _stored(r)


@dataclass
class Examination:
    """What `examine` found: `damaged` when SQLite itself cannot read the file soundly; `problems`
    (each naming records and why) when it was damaged or tampered with; `notes` that are no fault."""
    records: int = 0
    head_seq: int | None = None
    damaged: bool = False
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checkpoint: signing.Checkpoint | None = None
    hash_at_checkpoint: str | None = None      # the stored hash of the record the checkpoint names
    signed: int = 0                            # records carrying a signature

    @property
    def sound(self) -> bool:
        return not self.problems


def examine(path: Path | str, key: signing.PublicKey | None, thorough: bool = True) -> Examination:
    """Check a store without writing to it: SQLite's integrity check (quick unless `thorough`),
    the hash chain, the records' signatures (all when `thorough`, else those newer than the
    checkpoint) and the checkpoint beside the file (its signature and whether the store still
    reaches it). `key` None: signatures are not checked (said in a note)."""
    path = Path(path)
    found = Examination()
    try:
        found.checkpoint = signing.read_checkpoint(signing.checkpoint_path(path))
    except ValueError as exc:
        found.problems.append(str(exc))
    if path.exists() and path.stat().st_size > 0:
        try:
            _examine_file(path, key, thorough, found)
        except sqlite3.DatabaseError as exc:
            found.damaged = True
            found.problems.append(f"the database file is damaged: {exc}")
            return found
    elif not path.exists():
        found.notes.append("no database file yet")
    if found.damaged:
        return found
    _compare_checkpoint(found, key)
    return found


def _cut_short(path: Path) -> str | None:
    """SQLite reads a missing end of the file as zeros, so a file cut short can pass its checks:
    it only ever writes whole pages, and without a WAL the header's page count is the file's."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        header = file.read(100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        return None                                       # not a database at all: SQLite says so
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if size % page_size:
        return f"the file ends part-way through a page ({size} bytes, pages of {page_size}): it was cut short"
    pages = int.from_bytes(header[28:32], "big")
    wal = path.with_name(path.name + "-wal")
    if header[24:28] == header[92:96] and pages * page_size > size and not (wal.exists() and wal.stat().st_size):
        return f"the file holds {size // page_size} pages but its header counts {pages}: it was cut short"
    return None


def _examine_file(path: Path, key, thorough: bool, found: Examination) -> None:
    short = _cut_short(path)
    if short:
        found.damaged = True
        found.problems.append(f"the database file is damaged: {short}")
        return
    db = connect_readonly(path)
    try:
        check = [row[0] for row in db.execute(f"PRAGMA {'integrity_check' if thorough else 'quick_check'}(20)")]
        if check != ["ok"]:
            found.damaged = True
            found.problems.append("the database file is damaged: " + "; ".join(check[:3]))
            return
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'results'").fetchone():
            return
        columns = {row[1] for row in db.execute("PRAGMA table_info(results)")}
        signed = "chain_count, signature" if "signature" in columns else "NULL, NULL"
        since = found.checkpoint.seq if found.checkpoint and not thorough else 0
        unsigned, mismatched = [], []
        signed_yet = False
        for row, fault in _chain(db.execute(f"SELECT {_CHAIN}, {signed} FROM results ORDER BY seq")):
            seq, digest, count, sig = row[0], row[8], row[9], row[10]
            found.records, found.head_seq = found.records + 1, seq
            if fault:
                found.problems.append(f"record #{seq}: {fault}")
            if found.checkpoint and seq == found.checkpoint.seq:
                found.hash_at_checkpoint = digest
            if sig is None:
                if signed_yet:
                    unsigned.append(seq)
                continue
            signed_yet, found.signed = True, found.signed + 1
            if key is not None and seq > since and not _signed_by(key, sig, count, seq, digest):
                mismatched.append(seq)
        if unsigned:
            found.problems.append(f"{_records(unsigned)} carry no signature: added without the device key")
        if mismatched:
            found.problems.append(f"{_records(mismatched)}: the signature does not match (record #{mismatched[0]} "
                                  "was altered and the hash chain recomputed after it, or signed by another key)")
        if key is None and signed_yet:
            found.notes.append("signatures not checked: the device key is not readable here (pass --public-key)")
    finally:
        db.close()


def _chain(rows):
    """Each row (seq first, then `_CHAIN`'s columns) with what is wrong with its link, or None."""
    prev = GENESIS
    for row in rows:
        seq, result_id, stored_at, patient, operator, status, result_json, prev_hash, digest = row[:9]
        fault = None
        if prev_hash != prev:
            fault = "a record before this one was removed or inserted"
        elif _record_hash(prev_hash, result_id, stored_at, patient, operator, status, result_json) != digest:
            fault = "this record was altered after it was stored"
        prev = digest
        yield row, fault


def _signed_by(key: signing.PublicKey, signature: str, count: int, seq: int, digest: str) -> bool:
    key_id, _, value = signature.partition(":")
    return key_id == key.id and key.verify(value, count, seq, digest)


def _records(seqs: list[int]) -> str:
    """"record #4" or "records #4-#9" (or the first few of a scattered list)."""
    if len(seqs) == 1:
        return f"record #{seqs[0]}"
    if seqs == list(range(seqs[0], seqs[-1] + 1)):
        return f"records #{seqs[0]}-#{seqs[-1]}"
    return "records " + ", ".join(f"#{s}" for s in seqs[:8]) + (" ..." if len(seqs) > 8 else "")


def _compare_checkpoint(found: Examination, key: signing.PublicKey | None) -> None:
    """Does the store still reach the head its checkpoint vouches for?"""
    point = found.checkpoint
    if point is None:
        if found.signed:
            found.problems.append(f"the checkpoint beside the database is missing although {found.signed} record(s)"
                                  f" up to #{found.head_seq} are signed: it was removed, and records after "
                                  f"#{found.head_seq} may have gone with it")
        elif found.records:
            found.notes.append("no checkpoint yet (a store from before signing: the service writes one when it "
                               "starts)")
        return
    if key is not None and not point.valid_under(key):
        found.problems.append(f"the checkpoint (written {point.written_at}) is not signed by this device's key "
                              f"{key.id} (it names key {point.key_id}): replaced or forged")
    if found.records < point.count or (found.head_seq or 0) < point.seq:
        held = (f"the store holds {found.records} record(s), newest #{found.head_seq}" if found.records
                else "the store is empty (the file was emptied, truncated or replaced)")
        missing = _records(list(range((found.head_seq or 0) + 1, point.seq + 1)))
        found.problems.append(f"{missing} missing: the checkpoint written {point.written_at} vouches for "
                              f"{point.count} record(s) up to #{point.seq}, {held}")
        return
    if found.hash_at_checkpoint != point.hash:
        found.problems.append(f"record #{point.seq} no longer has the hash its signed checkpoint names: a record at"
                              " or before it was altered and the hash chain recomputed")
        return
    found.notes.append(f"checkpoint: {point.count} record(s) up to #{point.seq}, written {point.written_at}"
                       + (f"; {found.head_seq - point.seq} newer record(s), each signed"
                          if found.head_seq > point.seq else ""))



class StoreUnavailable(Exception):
    """The service cannot keep results at all (a read-only data folder, an unreadable key): a clear
    message for the operator, not a traceback."""


def storage_failure(exc: BaseException) -> bool:
    """A failure of the medium or the file (full, read-only, I/O error, damaged), not of the code:
    the reading is kept and storing it is tried again later."""
    return isinstance(exc, OSError) or type(exc) in (sqlite3.OperationalError, sqlite3.DatabaseError)


def open_for_service(path: Path | str) -> ResultStore:
    """The store the service writes into, after checking it: a damaged or tampered file is never
    written to: it is set aside (with its WAL and checkpoint) for a technician and a fresh store
    takes its name; a store from before signing gets its checkpoint."""
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(f"cannot create the data folder {folder}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise StoreUnavailable(f"the data folder {folder} is read-only: results cannot be stored (remount it "
                               "read-write or point STRIPREAD_DATA / --db at a writable folder)")
    try:
        key = signing.DeviceKey.load(signing.key_path(path))
    except (OSError, ValueError) as exc:
        raise StoreUnavailable(f"the device key {signing.key_path(path)} cannot be read or created: {exc}") from None
    found = examine(path, key, thorough=False)
    if not found.sound:
        kept = set_aside(path)
        what = "damaged" if found.damaged else "damaged or tampered with"
        log.error(f"result store {what}: {found.problems[0]}; kept as {kept.name} for a technician, storing into a "
                  f"fresh {path.name}", extra={"fields": {"problems": len(found.problems), "kept": str(kept)}})
    try:
        store = ResultStore(path, key)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"the result store {path} cannot be opened for writing: {exc}") from None
    try:
        if store.seal():
            log.info("checkpoint written for a store from before signing", extra={"fields": {"records": found.records}})
        elif found.checkpoint and found.head_seq and found.head_seq > found.checkpoint.seq:
            store.write_checkpoint()          # the last commit before a crash, not yet checkpointed
    except (OSError, sqlite3.Error) as exc:
        log.warning("checkpoint not written", extra={"fields": {"error": str(exc)}})
    return store


def set_aside(path: Path) -> Path:
    """Rename the store's files (database, WAL, shared memory, checkpoint) to `<name>.damaged-<UTC
    time><suffix>`, bytes untouched; return the new database name."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kept = path.with_name(f"{path.stem}.damaged-{stamp}{path.suffix}")
    n = 1
    while kept.exists():
        n += 1
        kept = path.with_name(f"{path.stem}.damaged-{stamp}-{n}{path.suffix}")
    for tail in ("", "-wal", "-shm", ".checkpoint"):
        source = path.with_name(path.name + tail)
        if source.exists():
            os.replace(source, kept.with_name(kept.name + tail))
    signing.fsync_folder(path.parent)
    return kept
