"""What the technicians' records make of this reader: the card as measured, the camera's flat field
and locked settings, the strip lot's correction, and whether quality control lets patients test.

The read path takes these as a `ReaderCalibration`; each record's id goes into the provenance of
every result it shaped. QC locks patient reading when the latest run of any control failed, or,
once a schedule is set, when a scheduled control has no passing run within its interval; the lock
is derived from the stored records, so it survives a restart, and only a passing run lifts it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Protocol

from calibration.specs import Card, card_from_document


class StoredRecord(Protocol):
    id: str
    subject: str
    created_at: str
    payload: dict


class RecordSource(Protocol):
    """The technicians' records as this module reads them (`device.store.records.Records` keeps
    them: calibration/ never imports the device's store)."""

    def latest(self, kind: str, subject: str | None = None) -> StoredRecord | None: ...

    def history(self, kind: str, subject: str | None = None, limit: int | None = None) -> list[StoredRecord]: ...

    def latest_per_subject(self, kind: str) -> dict[str, StoredRecord]: ...

    def add(self, kind: str, subject: str, payload: dict, operator: str | None = None) -> StoredRecord: ...


@dataclass(frozen=True)
class ReaderCalibration:
    camera_id: str = "factory"          # the camera calibration record (provenance: calibration_id)
    flat_field: object | None = None    # calibration.camera_calibration.FlatField
    camera_settings: dict = field(default_factory=dict)
    card_id: str | None = None          # the card measurement record, when the card was measured
    strip_lot: str | None = None
    lot_id: str | None = None           # the lot calibration record
    lot: object | None = None           # calibration.lot.LotCalibration
    lot_expires: date | None = None

    def provenance(self) -> dict:
        return {"calibration_id": self.camera_id, "card_calibration_id": self.card_id,
                "strip_lot": self.strip_lot, "lot_calibration_id": self.lot_id}


def load_calibration(records: RecordSource, card: Card, product_id: str,
                     strip_lot: str | None = None) -> tuple[Card, ReaderCalibration]:
    """The card to read with (the measured one, if the technician measured this card) and the
    calibration in force for it, the product and the strip lot."""
    settings: dict = {"strip_lot": strip_lot}
    camera = records.latest("camera")
    if camera is not None:
        from calibration.camera_calibration import CameraCalibration
        measured = CameraCalibration.from_dict(camera.payload)
        settings.update(camera_id=camera.id, flat_field=measured.flat_field, camera_settings=measured.camera_settings)
    measured_card = records.latest("card", card.id)
    if measured_card is not None:
        card = card_from_document(measured_card.payload["card"], f"calibration record {measured_card.id}")
        settings["card_id"] = measured_card.id
    if strip_lot is not None:
        lot = records.latest("lot", strip_lot)
        if lot is not None and lot.payload.get("product") == product_id:
            from calibration.lot import LotCalibration
            calibration = LotCalibration.from_dict(lot.payload)
            settings.update(lot_id=lot.id, lot=calibration, lot_expires=calibration.expires)
    return card, ReaderCalibration(**settings)


@dataclass(frozen=True)
class QcStatus:
    locked: bool
    message: str                   # for the display: why patients cannot test, or that they can
    last_passing_id: str | None    # the newest passing run (provenance: qc_run_id)


NOT_LOCKED = QcStatus(False, "", None)      # no QC asked of this session (a control strip, or no gate)


def qc_status(records: RecordSource, now: datetime | None = None) -> QcStatus:
    """Locked after a failed run until that control passes again; locked when a scheduled
    control is overdue."""
    now = now or datetime.now(timezone.utc)
    latest = records.latest_per_subject("qc")
    passing = next((r.id for r in records.history("qc") if r.payload["passed"]), None)
    failed = [control for control, run in latest.items() if not run.payload["passed"]]
    if failed:
        return QcStatus(True, f"Quality control failed ({', '.join(sorted(failed))}): patient tests are locked "
                              "until a technician runs a passing QC.", passing)
    schedule = records.latest("qc_schedule")
    if schedule is not None:
        every = timedelta(hours=schedule.payload["interval_hours"])
        overdue = [c for c in schedule.payload["controls"]
                   if c not in latest or now - datetime.fromisoformat(latest[c].created_at) > every]
        if overdue:
            return QcStatus(True, f"Quality control is due ({', '.join(overdue)}): patient tests are locked "
                                  "until a technician runs it.", passing)
    return QcStatus(False, "Quality control passed." if latest else "No quality control is set up.", passing)


def control_runs(records: RecordSource, control_id: str, control=None):
    """(the control, its stored runs of that control's material lot, oldest first): the history the
    Westgard rules and the Levey-Jennings chart see. Without `control`, the definition kept with the
    newest run; (None, []) when the control never ran."""
    from calibration.qc import QcRun, load_control
    stored = list(reversed(records.history("qc", control_id)))
    if control is None:
        if not stored:
            return None, []
        control = load_control(stored[-1].payload["control_toml"])
    return control, [QcRun.from_dict(r.payload["run"]) for r in stored
                     if r.payload["run"]["material_lot"] == control.material_lot]


def find_control(name_or_path: str):
    """A control definition: a file, or one shipped with the reader (negative, positive)."""
    from calibration.qc import load_control
    path = Path(name_or_path)
    if not path.is_file():
        path = Path(str(resources.files("calibration") / "data" / "controls" / f"{name_or_path}.toml"))
    return load_control(path), path.read_text(encoding="utf-8")


def _history(records, control) -> dict:
    """This control material's earlier z-scores (same lot), oldest first."""
    from calibration.qc import history_from
    return history_from(control_runs(records, control.id, control)[1])


def judge_qc_run(records: RecordSource, controls, results: list[dict], operator: str | None):
    """Judge control strips' readings against their targets and earlier runs (Westgard), store
    each run, and return (the runs, the QC status after them): the CLI's and the web page's QC."""
    from calibration.qc import evaluate_run
    histories = {control.id: _history(records, control) for control, _ in controls}
    runs = evaluate_run([(control, result) for (control, _), result in zip(controls, results)], histories)
    for (control, text), run, result in zip(controls, runs, results):
        records.add("qc", control.id, {"passed": run.passed, "run": run.to_dict(), "control_toml": text,
                                       "image_sha256": result.get("provenance", {}).get("image_sha256")},
                    operator=operator)
    return runs, qc_status(records)


def qc_guidance(control) -> str:
    """What the technician does with a control strip (the CLI prints it; the web page shows it)."""
    return f"Dip a strip in {control.name} (lot {control.material_lot}) and put it in the tray."
