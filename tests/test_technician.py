"""The technicians' workflows end to end: records that every later reading names, the QC lock that
survives a restart, an expired strip lot refused, and the `calibrate` / `qc` commands."""
import json
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone

import numpy as np

from device.store.records import Records
from calibration.in_force import ReaderCalibration, qc_status
from device.reading.reader import Reader
from device.store.results import ResultStore
from models.pads import NearestChartColour
from simulator.scene import photograph, random_scene

CLI = [sys.executable, "-m", "device.cli.commands"]


def _run(*args, timeout=180):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout)


def _qc(records, control, passed):
    return records.add("qc", control, {"passed": passed, "run": {"summary": "x", "material_lot": "L1"}})


def test_a_failed_qc_locks_patient_tests_across_a_restart_until_that_control_passes(tmp_path):
    db = tmp_path / "results.db"
    with Records(db) as records:
        assert not qc_status(records).locked                       # no QC set up: the factory state
        _qc(records, "neg", True)
        _qc(records, "pos", False)
        _qc(records, "neg", True)                                  # another control passing does not help
        status = qc_status(records)
        assert status.locked and "pos" in status.message
    with Records(db) as records:                                   # the reader restarts
        assert qc_status(records).locked
        passing = _qc(records, "pos", True)
        status = qc_status(records)
        assert not status.locked and status.last_passing_id == passing.id


def test_a_schedule_locks_when_a_control_is_overdue(tmp_path):
    with Records(tmp_path / "r.db") as records:
        records.add("qc_schedule", "reader", {"interval_hours": 24, "controls": ["neg", "pos"]})
        _qc(records, "neg", True)
        assert qc_status(records).locked and "due (pos)" in qc_status(records).message
        _qc(records, "pos", True)
        assert not qc_status(records).locked
        tomorrow = datetime.now(timezone.utc) + timedelta(hours=25)
        assert qc_status(records, now=tomorrow).locked


def _strip_photo(seed=4):
    rng = np.random.default_rng(seed)
    return photograph(random_scene(rng, product="generic-10", resolution=(1456, 1088), glare=None), rng)[0]


def test_an_expired_strip_lot_is_refused_before_reading(card, product):
    photo = _strip_photo()
    yesterday = date.today() - timedelta(days=1)
    expired = Reader(card, product, NearestChartColour(), ReaderCalibration(strip_lot="L-9", lot_expires=yesterday))
    result = expired.read(photo)
    assert result["status"] == "error" and result["error"]["code"] == "wrong_strip"
    assert result["error"]["reason"] == "lot_expired" and "expired on" in result["error"]["message"]
    fresh = Reader(card, product, NearestChartColour(), ReaderCalibration(strip_lot="L-9", lot_expires=date.today()))
    result = fresh.read(photo)
    assert result["status"] == "ok" and result["provenance"]["strip_lot"] == "L-9"


def test_the_error_reason_stays_within_the_output_contract(card, product):
    import jsonschema
    from importlib import resources
    schema = json.loads((resources.files("device") / "data" / "read-output.schema.json").read_text())
    expired = Reader(card, product, NearestChartColour(),
                     ReaderCalibration(strip_lot="L", lot_expires=date(2020, 1, 1))).read(_strip_photo())
    jsonschema.validate(expired, schema)


def test_qc_strips_are_read_on_the_reader_and_failing_qc_locks_the_demo(tmp_path):
    """Controls read in timed sessions on the simulated reader pass; a failing control (a photo of
    no strip) locks patient tests, the demo is refused, and a passing run lifts the lock. QC
    readings are stored but never queued for the lab."""
    db = str(tmp_path / "results.db")
    passing = _run("qc", "run", "--control", "negative", "--control", "positive", "--simulate", "--yes",
                   "--db", db)
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert "generic-10-neg (UC1-24117): PASS" in passing.stdout and "Quality control passed." in passing.stdout
    with ResultStore(db) as store:
        assert [r.result["session"]["purpose"] for r in store.history()] == ["qc", "qc"]
        assert store.outbox_counts()["pending"] == 0
    blank = tmp_path / "blank.jpg"
    blank.write_bytes(b"not a photo")
    failing = _run("qc", "run", "--control", "positive", "--photo", str(blank), "--db", db)
    assert failing.returncode == 1 and "FAIL" in failing.stdout and "locked" in failing.stdout
    locked = _run("demo", "--speed", "40", "--db", db)
    assert locked.returncode == 1 and "Quality control failed (generic-10-pos)" in locked.stdout
    with ResultStore(db) as store:
        assert store.history(limit=1)[0].result["outcome"] == "locked"
    control_strip = tmp_path / "positive.jpg"
    control_strip.write_bytes(_control_photo("positive"))
    _run("qc", "run", "--control", "positive", "--photo", str(control_strip), "--db", db)
    status = _run("qc", "status", "--db", db)
    assert status.returncode == 0 and "Quality control passed." in status.stdout
    report = _run("qc", "report", "--out", str(tmp_path / "charts"), "--db", db)
    assert "generic-10-pos: 3 runs" in report.stdout           # passed, failed, passed
    assert (tmp_path / "charts" / "levey-jennings-generic-10-pos.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _control_photo(name: str) -> bytes:
    """A strip dipped in a shipped control solution, fully developed, on the reader."""
    from calibration.in_force import find_control
    control, _ = find_control(name)
    rng = np.random.default_rng(5)
    spec = random_scene(rng, product=control.product, resolution=(1456, 1088), glare=None,
                        levels={a.analyte: a.target for a in control.analytes})
    return photograph(spec, rng)[0]


def _lot_calibrators(folder, product, dye_load):
    """Calibrator photos of a lot at the bottom, middle and top of every chart, three strips each."""
    rng = np.random.default_rng(21)
    rows = ["photo,analyte,level"]
    for step in range(3):
        for repeat in range(3):
            levels = {p.analyte: step * (len(p.levels) - 1) // 2 for p in product.pads}
            spec = random_scene(rng, product=product, illuminants=["LED_reader"], cameras=["imx477"],
                                resolution=(1456, 1088), tilt_deg=(0.0, 0.0), glare=None,
                                levels={a: float(i) for a, i in levels.items()},
                                lot_absorbance={p.analyte: dye_load for p in product.pads})
            name = f"cal-{step}-{repeat}.jpg"
            (folder / name).write_bytes(photograph(spec, rng)[0])
            rows += [f"{name},{p.analyte},{p.levels[levels[p.analyte]].code}" for p in product.pads]
    (folder / "calibrators.csv").write_text("\n".join(rows) + "\n")
    return folder / "calibrators.csv"


def test_a_lot_calibration_is_stored_applied_and_named_and_its_expiry_enforced(tmp_path, product):
    db = str(tmp_path / "results.db")
    calibrators = _lot_calibrators(tmp_path, product, 1.35)
    fitted = _run("calibrate", "lot", "--lot", "L-2611", "--expires", "2031-01-31", "--calibrators",
                  str(calibrators), "--operator", "tech-3", "--db", db)
    assert fitted.returncode == 0, fitted.stdout + fitted.stderr
    assert "exact" in fitted.stdout and "Stored as lot-" in fitted.stdout
    with Records(db) as records:
        record = records.latest("lot", "L-2611")
    assert record.operator == "tech-3" and record.payload["expires"] == "2031-01-31"
    read = _run("read", str(tmp_path / "cal-2-0.jpg"), "--json", "--lot", "L-2611", "--db", db)
    provenance = json.loads(read.stdout)["provenance"]
    assert provenance["strip_lot"] == "L-2611" and provenance["lot_calibration_id"] == record.id
    _run("calibrate", "lot", "--lot", "L-old", "--expires", "2020-01-31", "--calibrators", str(calibrators),
         "--db", db)
    old = _run("read", str(tmp_path / "cal-2-0.jpg"), "--json", "--lot", "L-old", "--db", db)
    assert old.returncode == 1 and json.loads(old.stdout)["error"]["reason"] == "lot_expired"


def test_a_card_measurement_is_stored_and_read_with(tmp_path, card):
    db = str(tmp_path / "results.db")
    rows = ["# instrument: test spectrophotometer", "# illuminant: D50", "patch,L,a,b"]
    rows += [f"{p.id},{p.lab_d50[0] + 0.4:.2f},{p.lab_d50[1] - 0.3:.2f},{p.lab_d50[2] + 0.2:.2f}" for p in card.patches]
    (tmp_path / "card.csv").write_text("\n".join(rows) + "\n")
    imported = _run("calibrate", "card", "--measurements", str(tmp_path / "card.csv"), "--db", db)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    with Records(db) as records:
        record = records.latest("card", "card-v1")
    photo = tmp_path / "strip.jpg"
    photo.write_bytes(_strip_photo())
    provenance = json.loads(_run("read", str(photo), "--json", "--db", db).stdout)["provenance"]
    assert provenance["card_calibration_id"] == record.id
    assert provenance["card"] == record.payload["card"]["id"] != "card-v1"
    listing = _run("calibrate", "list", "--db", db)
    assert record.id in listing.stdout and listing.returncode == 0
