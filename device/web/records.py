"""Stored records as the pages and the JSON API show them (the API in language-neutral English, a
page in its browser's words): the one place a StoredResult becomes JSON for the web."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from fastapi import HTTPException

from device.language.i18n import Words
from device.store.results import ResultStore
from device.web import views

ENGLISH = Words()          # the JSON API's words: language-neutral, whatever a browser chose


def local(stored_at: str, words: Words = ENGLISH) -> str:
    """A stored UTC time as the reader's local time, to the minute (the API's ISO-like, a page's by its locale)."""
    moment = datetime.fromisoformat(stored_at).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M") if words is ENGLISH else words.datetime(moment)


def record_json(record, words: Words = ENGLISH) -> dict:
    return {"seq": record.seq, "result_id": record.result_id, "stored_at": record.stored_at,
            "stored_at_local": local(record.stored_at, words), "patient_id": record.patient_id,
            "qc": views.is_qc(record.result), "findings": views.findings(record.result, words), "result": record.result}


def stored(db: Path, seq: int) -> dict:
    """One record, or 404."""
    with ResultStore(db) as store:
        record = store.get(seq)
    if record is None:
        raise HTTPException(404, f"no record #{seq}")
    return record_json(record)


def results(db: Path, patient: str | None, limit: int, words: Words = ENGLISH) -> list[dict]:
    """The newest records (of one patient, or all), newest first."""
    with ResultStore(db) as store:
        return [record_json(r, words) for r in store.history(patient, limit)]
