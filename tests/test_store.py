"""The result store: atomic writes with their outbox entry, the hash chain, and crash safety."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from device.store.results import SCHEMA_VERSION, ResultStore

RESULT = {"schema": "stripread.read/1", "status": "ok", "product": "generic-10",
          "analytes": [{"analyte": "GLU", "level": "250", "value": 240.0, "confidence": 0.9, "flags": []}]}


@pytest.fixture
def store(tmp_path):
    with ResultStore(tmp_path / "results.db") as s:
        yield s


def test_a_result_is_stored_with_its_thumbnails_and_queued_for_the_lab(store):
    stored = store.add(RESULT, patient_id="P-17", operator_id="N-2", thumbnails={"GLU": b"\x89PNG..."})
    assert store.history()[0].result == RESULT
    assert store.history(patient_id="P-17")[0].result_id == stored.result_id
    assert store.history(patient_id="someone else") == []
    assert store.thumbnails(stored.result_id) == {"GLU": b"\x89PNG..."}
    assert store.outbox_counts() == {"pending": 1, "sent": 0, "failed": 0}
    assert store.verify().first_broken_seq is None and store.integrity() == "ok"


def test_history_is_newest_first_and_limited(store):
    for i in range(5):
        store.add({**RESULT, "n": i}, patient_id="P")
    assert [r.result["n"] for r in store.history(limit=3)] == [4, 3, 2]
    assert [r.result["n"] for r in store.iter_results()] == [0, 1, 2, 3, 4]


def test_a_write_failing_half_way_leaves_nothing_behind(store):
    """The thumbnail cannot be stored after the result row was inserted: all of it rolls back."""
    with pytest.raises(sqlite3.Error):
        store.add(RESULT, patient_id="P", thumbnails={"GLU": object()})
    assert store.history() == [] and store.outbox_counts()["pending"] == 0
    store.add(RESULT)                               # and the store carries on, chain intact
    assert store.verify().first_broken_seq is None


@pytest.mark.parametrize("sql,reason", [
    ("UPDATE results SET result_json = replace(result_json, '250', '100') WHERE seq = 2", "altered"),
    ("UPDATE results SET patient_id = 'P-99' WHERE seq = 2", "altered"),
    ("DELETE FROM results WHERE seq = 2", "removed or inserted"),
])
def test_the_hash_chain_shows_tampering(tmp_path, sql, reason):
    path = tmp_path / "r.db"
    with ResultStore(path) as s:
        for _ in range(4):
            s.add(RESULT, patient_id="P-1")
    db = sqlite3.connect(path)
    db.execute("PRAGMA foreign_keys=OFF")
    db.execute(sql)
    db.commit()
    db.close()
    with ResultStore(path) as s:
        report = s.verify()
    assert report.first_broken_seq in (2, 3) and reason in report.reason


_WRITER = """
import sys
from device.store.results import SCHEMA_VERSION, ResultStore
store = ResultStore(sys.argv[1])
n = int(sys.argv[2])
while True:
    store.add({"status": "ok", "n": n, "pad": "x" * 2000}, patient_id="P", thumbnails={"A": b"1" * 3000, "B": b"2"})
    print(n, flush=True)          # acknowledged only after the commit returned
    n += 1
"""


def test_sigkill_mid_write_loses_nothing_committed_and_leaves_nothing_half_written(tmp_path):
    path = tmp_path / "r.db"
    acknowledged, next_n = [], 0
    for kill_after in (0.05, 0.13, 0.21, 0.08, 0.3, 0.17, 0.11, 0.25):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(next_n)],
                                  stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
        time.sleep(kill_after + 0.3)     # interpreter start-up, then writes in flight
        writer.send_signal(signal.SIGKILL)
        out, _ = writer.communicate()
        acknowledged += [int(n) for n in out.split()]
        with ResultStore(path) as store:    # a write may have committed just before the kill, unacknowledged
            next_n = max((r.result["n"] for r in store.iter_results()), default=-1) + 1
    assert len(acknowledged) > 20
    with ResultStore(path) as store:
        assert store.integrity() == "ok"
        assert store.verify().first_broken_seq is None
        stored = [r.result["n"] for r in store.iter_results()]
        assert set(acknowledged) <= set(stored)                 # nothing acknowledged was lost
        assert len(stored) == len(set(stored))                  # nothing written twice
        for r in store.iter_results():                          # every record whole: thumbnails and outbox
            assert set(store.thumbnails(r.result_id)) == {"A", "B"}
        assert store.outbox_counts()["pending"] == len(stored)


def test_two_processes_writing_keep_one_unbroken_chain(tmp_path):
    path = tmp_path / "r.db"
    ResultStore(path).close()
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(k * 100_000)],
                                stdout=subprocess.PIPE, text=True) for k in range(2)]
    for w in writers:
        assert w.stdout.readline().strip()      # each has committed at least once
    time.sleep(0.3)                             # then both write concurrently for a while
    for w in writers:
        w.send_signal(signal.SIGKILL)
        w.communicate()
    with ResultStore(path) as store:
        assert store.verify().first_broken_seq is None
        assert {r.result["n"] // 100_000 for r in store.iter_results()} == {0, 1}


def test_stored_json_is_canonical(store):
    stored = store.add(RESULT)
    raw = store._db.execute("SELECT result_json FROM results WHERE result_id = ?", (stored.result_id,)).fetchone()[0]
    assert raw == json.dumps(RESULT, separators=(",", ":"), sort_keys=True)


def test_history_export_and_verify_commands(tmp_path, capsys):
    from device.cli.commands import main
    db = tmp_path / "cli.db"
    with ResultStore(db) as store:
        store.add({**RESULT, "analytes": [{**RESULT["analytes"][0], "flags": ["abnormal"]}]}, patient_id="P-1")
        store.add({"schema": "stripread.read/1", "status": "error", "error": {"code": "glare", "message": "m"}},
                  patient_id="P-2")
    assert main(["history", "--db", str(db), "--patient", "P-1"]) == 0
    out = capsys.readouterr().out
    assert "GLU 250" in out and "glare" not in out
    assert main(["export", "--db", str(db), "--format", "csv", "--out", str(tmp_path / "x.csv")]) == 0
    lines = (tmp_path / "x.csv").read_text().splitlines()
    assert lines[0].startswith("seq,result_id") and len(lines) == 3 and ",GLU,250,240.0," in lines[1]
    assert main(["export", "--db", str(db), "--format", "json"]) == 0
    assert [json.loads(line)["patient_id"] for line in capsys.readouterr().out.splitlines()] == ["P-1", "P-2"]
    assert main(["verify", "--db", str(db)]) == 0
    assert "2 records, hash chain intact" in capsys.readouterr().out
    db_raw = sqlite3.connect(db)
    db_raw.execute("UPDATE results SET status = 'ok' WHERE seq = 2")
    db_raw.commit()
    db_raw.close()
    assert main(["verify", "--db", str(db)]) == 1
    assert "record #2: this record was altered" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["history"], ["verify"], ["export", "--format", "json"]])
def test_store_commands_do_not_load_the_image_or_model_stack(tmp_path, command):
    """On a Pi, looking at past results must not pay for OpenCV, numpy or onnxruntime."""
    check = ("import sys; from device.cli.commands import main; main(sys.argv[1:]); "
             "heavy = [m for m in ('cv2', 'numpy', 'onnxruntime', 'sklearn') if m in sys.modules]; "
             "assert not heavy, heavy")
    run = subprocess.run([sys.executable, "-c", check, *command, "--db", str(tmp_path / "r.db")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_only_readings_are_queued_for_the_lab(store):
    store.add(RESULT)
    store.add({"schema": "stripread.read/1", "status": "error", "error": {"code": "strip_reversed", "message": ""}})
    store.add({"schema": "stripread.session/1", "status": "aborted", "outcome": "cancelled"})
    assert store.outbox_counts() == {"pending": 1, "sent": 0, "failed": 0}
    assert [r.result["status"] for r in store.pending()] == ["ok"]


def test_a_result_is_sent_once_every_destination_acknowledged_it(store):
    stored = store.add(RESULT)
    store.record_delivery(stored.result_id, "fhir", "DiagnosticReport/7", complete=False)
    assert store.outbox_counts()["pending"] == 1 and store.deliveries(stored.result_id) == {"fhir": "DiagnosticReport/7"}
    store.record_attempt(stored.result_id, "hl7: the lab answered AE: unknown patient", permanent=True)
    assert store.failures() == [(stored.seq, stored.result_id, 2, "hl7: the lab answered AE: unknown patient")]
    assert store.retry_failed() == 1 and store.pending()[0].result_id == stored.result_id
    store.record_delivery(stored.result_id, "hl7", "MSA|AA|x", complete=True)
    assert store.outbox_counts() == {"pending": 0, "sent": 1, "failed": 0} and store.pending() == []


def test_a_version_1_store_is_migrated_without_sending_its_refusals(tmp_path):
    """Version 1 queued every record; opening it now drops the refusals from the outbox, nothing else."""
    path = tmp_path / "v1.db"
    with ResultStore(path) as s:
        ok = s.add(RESULT)
        refused = s.add({"schema": "stripread.read/1", "status": "error"})
        s._db.execute("INSERT INTO outbox (result_id) VALUES (?)", (refused.result_id,))
        s._db.execute("DROP TABLE deliveries")
        s._db.execute("PRAGMA user_version=1")
    with ResultStore(path) as s:
        assert [r.result_id for r in s.pending()] == [ok.result_id]
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert s.deliveries(ok.result_id) == {} and s.verify().first_broken_seq is None


def test_a_reading_is_stored_as_its_json_and_judged_as_the_object_itself(store):
    """The store writes a Reading's JSON; the record carries the reading itself, and the alert
    hook sees the patient's earlier records read back and this one as given (not re-parsed)."""
    from device.reading.result import Reading
    earlier = store.add(RESULT, patient_id="P-1")
    reading = Reading.from_dict({**RESULT, "analytes": [{**RESULT["analytes"][0], "flags": ["abnormal"]}]})
    seen = []
    stored = store.add(reading, patient_id="P-1", judge=lambda history, open_alerts: seen.extend(history) or [])
    assert stored.reading is reading and seen[-1].reading is reading
    assert [r.seq for r in seen] == [earlier.seq, stored.seq] and seen[0].reading.findings() == []
    assert store.get(stored.seq).result == reading.to_dict() and store.get(stored.seq).reading.findings() == ["GLU 250"]


def test_results_and_technicians_records_share_one_file_and_one_opener(tmp_path):
    """Both open the device's file the same way (WAL, durable) and neither disturbs the other's
    chain; a read-only look at a file without records writes nothing."""
    from device.store.records import Records
    path = tmp_path / "device.db"
    empty = tmp_path / "empty.db"
    empty.touch()
    with Records(empty, readonly=True) as records:
        assert records.latest("camera") is None
    assert empty.stat().st_size == 0
    with ResultStore(path) as results, Records(path) as records:
        results.add(RESULT)
        record = records.add("qc_schedule", "device", {"interval_hours": 24, "controls": ["negative"]},
                             operator="Jürgen")
        results.add(RESULT)
        assert results.verify().first_broken_seq is None and records.verify() == []
        assert results._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert records._db.execute("PRAGMA synchronous").fetchone()[0] == 2         # FULL
    with Records(path, readonly=True) as records:
        assert records.get(record.id) == record
    with pytest.raises(sqlite3.OperationalError):
        Records(tmp_path / "missing.db", readonly=True)
