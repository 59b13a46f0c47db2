"""The device's database file, opened one way by everything kept in it: the results
(`device.store.results`), the technicians' records (`device.store.records`) and the staff accounts
(`device.web.auth`). Each brings its schema, its additive migrations and, where records must show
tampering, a hash chain (`chain_hash`).

Written connections are WAL with `synchronous=FULL` (a committed record survives a power cut),
autocommit (each owner takes `BEGIN IMMEDIATE` where it reads and extends a chain) and usable from
another thread than the one that opened them. Read-only connections never write a byte.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Self


def open_database(path: Path | str, schema: str, version: int = 0, columns: Mapping[str, Mapping[str, str]] = {},
                  upgrades: Mapping[int, str] = {}) -> sqlite3.Connection:
    """A connection for writing, the schema created and brought up to date: `columns` added where
    missing ({table: {column: declaration}}), each `upgrades[n]` statement run on a file at a
    version from 1 to n, `PRAGMA user_version` set to `version`. A file already at `version` (not 0)
    is opened without taking the writer lock (a web request opens one per page)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    if version and db.execute("PRAGMA user_version").fetchone()[0] == version:
        return db
    with Transaction(db):
        found = db.execute("PRAGMA user_version").fetchone()[0]
        for statement in filter(str.strip, schema.split(";")):
            db.execute(statement)
        for upto, statement in sorted(upgrades.items()):
            if 0 < found <= upto:
                db.execute(statement)
        for table, wanted in columns.items():
            present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            for column, declaration in wanted.items():
                if column not in present:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        if version:
            db.execute(f"PRAGMA user_version={version}")
    return db


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection that cannot write to the file. A WAL database on a read-only medium whose
    shared-memory file is gone can only be opened as immutable (nobody can be writing it)."""
    if not path.exists():
        raise sqlite3.OperationalError(f"no database at {path}")
    uri = f"file:{path.resolve()}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1")
        return db
    except sqlite3.OperationalError:
        if os.access(path.parent, os.W_OK):
            raise
    return sqlite3.connect(uri + "&immutable=1", uri=True, check_same_thread=False)


def open_readonly(path: Path | str, table: str, schema: str, missing_ok: bool = True) -> sqlite3.Connection:
    """The file as it is, read-only; a file without `table` (empty, or, `missing_ok`, absent) reads
    as an empty database of `schema` held in memory: nothing is created on the medium."""
    path = Path(path)
    if not missing_ok or (path.is_file() and path.stat().st_size > 0):
        db = connect_readonly(path)                     # no file at all: an error unless `missing_ok`
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
            return db
        db.close()
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.executescript(schema)
    return db


def chain_hash(fields: list, ascii_only: bool = False) -> str:
    """SHA-256 (hex) of a record's fields, the previous record's hash among them, serialised
    canonically (`ascii_only`: with non-ASCII characters escaped, as the technicians' records
    always were): what chains each record to the one before it."""
    canonical = json.dumps(fields, separators=(",", ":"), ensure_ascii=ascii_only)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class Database:
    """The owner of one connection (`_db`), closed by `close()` or at the end of a `with` block."""
    _db: sqlite3.Connection

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception: the writer lock is taken up front,
    so two processes extending a chain cannot both read the same head."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.db.execute("COMMIT")
        finally:               # a failed COMMIT (a full disk) must not leave the transaction open
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        return False
