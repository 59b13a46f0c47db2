"""Evidence beyond the file (signed chain heads, the checkpoint beside the database) and a store
that knows it is hurt (damaged files set aside, never written; a full disk or a read-only folder
handled without a crash)."""
import base64
import hashlib
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from device.store import signing
from device.cli.commands import main
from device.store.results import ResultStore, StoreUnavailable, _record_hash, examine, open_for_service
from test_session import _session, reader  # noqa: F401  (the module-scoped reader fixture)

RESULT = {"schema": "stripread.read/1", "status": "ok", "product": "generic-10",
          "analytes": [{"analyte": "GLU", "level": "250", "value": 240.0, "confidence": 0.9, "flags": []}]}


def _filled(path: Path, n: int = 6) -> Path:
    rng = random.Random(n)
    with ResultStore(path) as store:
        for i in range(n):
            store.add({**RESULT, "n": i}, patient_id=f"P-{i}", thumbnails={"GLU": rng.randbytes(3000)})
    return path


def _verify(db: Path, capsys, *extra) -> tuple[int, str]:
    code = main(["verify", "--db", str(db), *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_commit_is_signed_and_checkpointed_beside_the_database(tmp_path, capsys):
    db = _filled(tmp_path / "results.db", 3)
    key = signing.DeviceKey.load(tmp_path / "device-key.pem", create=False)
    assert (tmp_path / "device-key.pem").stat().st_mode & 0o777 == 0o600
    point = signing.read_checkpoint(signing.checkpoint_path(db))
    assert (point.count, point.seq) == (3, 3) and point.valid_under(key)
    with ResultStore(db, readonly=True) as store:
        head = store.history(limit=1)[0]
    assert point.hash == head.hash and head.seal()["signature"] == point.signature
    code, out = _verify(db, capsys)
    assert code == 0 and f"3 records, hash chain intact, signatures valid (key {key.id})" in out


def test_deleting_the_newest_records_shows(tmp_path, capsys):
    db = _filled(tmp_path / "results.db")
    raw = sqlite3.connect(db)
    raw.execute("PRAGMA foreign_keys=OFF")
    raw.execute("DELETE FROM results WHERE seq > 3")
    raw.commit()
    raw.close()
    code, out = _verify(db, capsys)
    assert code == 1 and "records #4-#6 missing" in out and "the store holds 3 record(s), newest #3" in out


@pytest.mark.parametrize("how", ["truncate", "replace"])
def test_an_emptied_file_shows_and_verify_does_not_write_into_it(tmp_path, capsys, how):
    db = _filled(tmp_path / "results.db")
    for tail in ("-wal", "-shm"):
        Path(f"{db}{tail}").unlink(missing_ok=True)
    if how == "truncate":
        os.truncate(db, 0)
    else:
        db.unlink()
        db.touch()
    code, out = _verify(db, capsys)
    assert code == 1 and "records #1-#6 missing" in out and "the store is empty" in out
    assert db.stat().st_size == 0
    assert main(["history", "--db", str(db)]) == 0 and db.stat().st_size == 0


def test_an_edit_with_the_hashes_recomputed_shows_by_its_signature(tmp_path, capsys):
    db = _filled(tmp_path / "results.db")
    raw = sqlite3.connect(db)
    rows = raw.execute("SELECT seq, result_id, stored_at, patient_id, operator_id, status, result_json, prev_hash"
                       " FROM results ORDER BY seq").fetchall()
    prev = None
    for seq, result_id, stored_at, patient, operator, status, result_json, prev_hash in rows:
        if seq == 4:
            result_json = result_json.replace('"level":"250"', '"level":"100"')
        prev_hash = prev or prev_hash
        prev = _record_hash(prev_hash, result_id, stored_at, patient, operator, status, result_json)
        raw.execute("UPDATE results SET result_json = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                    (result_json, prev_hash, prev, seq))
    raw.commit()
    raw.close()
    with ResultStore(db, readonly=True) as store:
        assert store.verify().first_broken_seq is None           # the hash chain alone is fooled
    code, out = _verify(db, capsys)
    assert code == 1 and "records #4-#6: the signature does not match (record #4 was altered" in out
    assert "record #6 no longer has the hash its signed checkpoint names" in out


def test_another_key_or_a_replaced_checkpoint_fails(tmp_path, capsys):
    db = _filled(tmp_path / "results.db", 2)
    code, exported = _verify(db, capsys, "--export-key")
    assert code == 0 and exported.startswith("-----BEGIN PUBLIC KEY-----")
    (tmp_path / "device.pub").write_text(exported.split("key id")[0])
    assert _verify(db, capsys, "--public-key", str(tmp_path / "device.pub"))[0] == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "other.pub").write_text(signing.DeviceKey.load(other / "k.pem").pem())
    code, out = _verify(db, capsys, "--public-key", str(other / "other.pub"))
    assert code == 1 and "records #1-#2: the signature does not match" in out and "not signed by this" in out
    signing.checkpoint_path(db).unlink()
    code, out = _verify(db, capsys)
    assert code == 1 and "checkpoint beside the database is missing" in out


def test_a_store_from_before_signing_gets_its_checkpoint_when_the_service_opens_it(tmp_path, capsys):
    db = _filled(tmp_path / "results.db", 3)
    raw = sqlite3.connect(db)
    raw.execute("UPDATE results SET chain_count = NULL, signature = NULL")
    raw.commit()
    raw.close()
    signing.checkpoint_path(db).unlink()
    code, out = _verify(db, capsys)
    assert code == 0 and "no checkpoint yet" in out and "3 records, hash chain intact" in out
    open_for_service(db).close()
    assert signing.read_checkpoint(signing.checkpoint_path(db)).seq == 3
    with ResultStore(db) as store:
        store.add(RESULT)
    code, out = _verify(db, capsys)
    assert code == 0 and "4 records, hash chain intact, signatures valid" in out


def _damaged(kind: str, db: Path) -> None:
    """Ways a database file gets hurt: cut short, its header or its pages overwritten, not one at all."""
    data = bytearray(db.read_bytes())
    rng = random.Random(kind)
    if kind.startswith("truncated"):
        data = data[:{"truncated-header": 50, "truncated-page": 4096 + 100, "truncated-half": len(data) // 2}[kind]]
    elif kind == "random-header":
        data[:100] = rng.randbytes(100)
    elif kind.startswith("overwritten"):                # whole pages (a torn write, a bad flash block)
        for page in rng.sample(range(1, len(data) // 4096), int(kind.split("-")[1])):
            data[page * 4096:(page + 1) * 4096] = rng.randbytes(4096)
    elif kind == "flipped-record":                     # one byte of a stored value
        at = data.index(b'"n":7')
        data[at + 4] ^= 0x01
    elif kind == "not-a-database":
        data = bytearray(b"this is a shopping list, not a database\n" * 200)
    db.write_bytes(bytes(data))


DAMAGE = ["truncated-header", "truncated-page", "truncated-half", "random-header", "overwritten-3",
          "overwritten-10", "flipped-record", "not-a-database"]


def test_a_crash_between_commit_and_checkpoint_is_no_false_alarm(tmp_path, capsys):
    db = _filled(tmp_path / "results.db", 3)
    behind = signing.checkpoint_path(db).read_bytes()
    with ResultStore(db) as store:
        store.add(RESULT)
    signing.checkpoint_path(db).write_bytes(behind)          # as if killed before the checkpoint was written
    code, out = _verify(db, capsys)
    assert code == 0 and "1 newer record(s), each signed" in out
    open_for_service(db).close()                             # the service catches the checkpoint up
    assert signing.read_checkpoint(signing.checkpoint_path(db)).seq == 4 and not list(tmp_path.glob("*.damaged-*"))


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_store_is_recognised_set_aside_untouched_and_a_fresh_one_used(tmp_path, capsys, caplog, kind):
    db = _filled(tmp_path / "results.db", 40)
    _damaged(kind, db)
    before = _sha(db)
    code, out = _verify(db, capsys)
    assert code == 1 and "internal error" not in out and ("damaged" in out or "missing" in out or "altered" in out)
    code, out = main(["history", "--db", str(db)]), capsys.readouterr()     # what can be read, or why not
    assert (code == 0 and "stored (UTC)" in out.out) or (code == 1 and "cannot be used" in out.err)
    assert _sha(db) == before
    with open_for_service(db) as store:
        store.add(RESULT)
    kept, = tmp_path.glob("results.damaged-*.db")
    said, = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]       # one clear line
    assert said.startswith("result store damaged") and kept.name in said
    assert _sha(kept) == before                                    # never written into
    assert signing.read_checkpoint(signing.checkpoint_path(kept)).count == 40     # its evidence kept with it
    assert examine(db, signing.DeviceKey.load(tmp_path / "device-key.pem")).sound
    assert _verify(db, capsys)[0] == 0


class FullDisk:
    """A connection whose writes fail as SQLite's do on a full disk, until `room` is made."""

    def __init__(self, db):
        self.db, self.full = db, True

    def execute(self, sql, *args):
        if self.full and sql.startswith("INSERT INTO results"):
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode, error.sqlite_errorname = 13, "SQLITE_FULL"
            raise error
        return self.db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)


def test_a_full_disk_mid_test_keeps_the_reading_until_the_store_takes_it(reader, tmp_path):  # noqa: F811
    session, _, _, store = _session(reader, tmp_path, [])
    store._db = full = FullDisk(store._db)
    report = session.run(patient_id="P-1")
    assert report.outcome == "completed" and report.record is None and len(session.held) == 1
    assert session.store_held() is None and store.history() == []          # still full: still held
    full.full = False
    stored = session.store_held()
    assert stored.patient_id == "P-1" and stored.result["status"] == "ok" and session.held == []
    assert store.outbox_counts()["pending"] == 1


@contextmanager
def _tmpfs(path: Path, size: str, read_only: bool = False):
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode:
        pytest.skip("tmpfs cannot be mounted here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_real_full_disk_is_refused_before_a_test_and_survived_during_one(reader, tmp_path):  # noqa: F811
    with _tmpfs(tmp_path / "small", "3m") as small:
        session, _, _, store = _session(reader, small, [])
        store.add(RESULT)
        filler = small / "filler"
        with open(filler, "wb") as out:
            try:
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            except OSError:
                pass
        refused = session.run()                         # below the margin: not started
        assert refused.outcome == "storage_full" and "storage is almost full" in (
            refused.record.result["message"] if refused.record else session.held[-1]["result"].to_dict()["message"])
        session.held.clear()
        session.min_free_mb = 0                         # the disk fills up during the test
        assert session.run(patient_id="P-3").record is None and len(session.held) == 1
        filler.unlink()
        assert session.store_held().patient_id == "P-3" and session.held == []
        store.close()
        assert examine(small / "r.db", signing.DeviceKey.load(small / "device-key.pem")).sound


def test_a_read_only_data_folder_still_reads_and_the_service_says_why_it_cannot_store(tmp_path, capsys):
    photo = tmp_path / "strip.jpg"
    assert main(["simulate", "--out", str(photo), "--seed", "3"]) == 0
    with _tmpfs(tmp_path / "data", "4m") as data:
        _filled(data / "results.db", 2)
        from device.store.records import Records
        with Records(data / "results.db") as records:
            records.add("qc_schedule", "device", {"every_days": 7})
        subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True)
        capsys.readouterr()
        assert main(["read", str(photo), "--db", str(data / "results.db")]) == 0
        assert "GLU" in capsys.readouterr().out
        assert main(["history", "--db", str(data / "results.db")]) == 0
        with pytest.raises(StoreUnavailable, match="is read-only"):
            open_for_service(data / "results.db")


def test_a_backup_while_storing_restores_whole_with_its_checkpoint(tmp_path, capsys):
    db = _filled(tmp_path / "live" / "results.db", 5)
    shutil.copy(tmp_path / "live" / "device-key.pem", tmp_path / "device-key.pem")
    with ResultStore(db) as writing:                    # a connection holding the WAL open, as the service does
        writing.add(RESULT)
        assert main(["backup", str(tmp_path / "copy.db"), "--db", str(db)]) == 0
        assert "6 records up to #6" in capsys.readouterr().out
        writing.add(RESULT)
    assert main(["backup", str(tmp_path / "copy.db"), "--db", str(db)]) == 2     # never over an existing file
    code, out = _verify(tmp_path / "copy.db", capsys)
    assert code == 0 and "6 records, hash chain intact, signatures valid" in out


def test_the_lab_gets_each_records_signed_head(tmp_path):
    db = _filled(tmp_path / "results.db", 2)
    with ResultStore(db, readonly=True) as store:
        record = store.history(limit=1)[0]
    seal = record.seal()
    key = signing.DeviceKey.load(tmp_path / "device-key.pem", create=False)
    assert seal["key"] == key.id and (seal["count"], seal["seq"], seal["sha256"]) == (2, 2, record.hash)
    assert key.verify(seal["signature"], 2, 2, record.hash)
    assert not key.verify(base64.b64encode(b"x" * 64).decode(), 2, 2, record.hash)
    assert signing.seal_line(seal).startswith(f"stripread-checkpoint/1 key={key.id} count=2 seq=2 sha256=")


def test_two_writers_leave_the_newest_head_in_the_checkpoint(tmp_path):
    db = tmp_path / "results.db"
    ResultStore(db).close()
    writer = ("import sys\nfrom device.store.results import ResultStore\ns = ResultStore(sys.argv[1])\n"
              "for i in range(30): s.add({'status': 'ok', 'i': i})\n")
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(db)]) for _ in range(2)]
    assert all(p.wait() == 0 for p in procs)
    point = signing.read_checkpoint(signing.checkpoint_path(db))
    assert (point.count, point.seq) == (60, 60)
    assert examine(db, signing.DeviceKey.load(tmp_path / "device-key.pem")).sound
