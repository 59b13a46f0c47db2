"""The result store under faults, tried for real with the installed `stripread`: SIGKILLs mid-session,
damaged database files, tampering, a full disk and a read-only data folder (issue 18).

`ROWS` is a list of (name, check); each check runs its fault for real and returns (figure, passed).
bench/faults.py prints them as the fault table. The full disk and the read-only folder mount small
tmpfs filesystems and so need root (they fail, saying so, without it).
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from device.store import signing
from device.store.results import ResultStore, _record_hash, examine

STRIPREAD = str(Path(sys.executable).with_name("stripread"))
SPEED = "200"                     # a 2-minute strip in 0.6 s of session time


class Service:
    """`stripread run --simulate` in the background, its JSON log lines collected as they come."""

    def __init__(self, data: Path, *extra: str):
        self.lines: list[str] = []
        self.proc = subprocess.Popen([STRIPREAD, "run", "--simulate", "--speed", SPEED, "--web", "off", *extra],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=_env(data))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, count: int = 1, timeout: float = 30.0, since: int = 0) -> bool:
        """Until `count` log lines from line `since` on contain `text` (False: timed out or exited)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.count(text, since) >= count:
                return True
            time.sleep(0.02)
        return self.count(text, since) >= count

    def count(self, text: str, since: int = 0) -> int:
        return sum(text in line for line in list(self.lines)[since:])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self._reader.join(5)
        return code

    def log(self) -> str:
        return "".join(self.lines)


def _env(data: Path) -> dict:
    env = dict(os.environ, STRIPREAD_DATA=str(data))
    env.pop("STRIPREAD_LAB_CONFIG", None)
    env.pop("STRIPREAD_KEY", None)
    return env


def _cli(data: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([STRIPREAD, *args], capture_output=True, text=True, env=_env(data), timeout=120)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _key(data: Path) -> signing.DeviceKey:
    return signing.DeviceKey.load(data / "device-key.pem", create=False)


@functools.cache
def _base_store() -> Path:
    """A store written by the service itself: 5 sessions, stopped cleanly (no WAL left)."""
    data = Path(tempfile.mkdtemp(prefix="stripread-faults-base-"))
    atexit.register(shutil.rmtree, data, ignore_errors=True)
    service = Service(data)
    service.wait_for('"session ', 5, timeout=120)
    service.stop()
    return data


def _copy_base(dest: Path) -> Path:
    shutil.copytree(_base_store(), dest)
    return dest / "results.db"


def kills_mid_session(kills: int = 20, seed: int = 18) -> tuple[str, bool]:
    """SIGKILL the service at random moments; every session it logged as stored must still be
    there, the chain, signatures and checkpoint intact, nothing set aside."""
    rng = random.Random(seed)
    acknowledged: set[int] = set()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        for _ in range(kills):
            service = Service(data)
            service.wait_for("reader ready")
            time.sleep(rng.uniform(0.5, 5.0))
            service.stop(signal.SIGKILL)
            acknowledged |= {int(line.split('"record": ')[1].split(",")[0]) for line in service.lines
                             if '"msg": "session ' in line and '"record": null' not in line}
        found = examine(data / "results.db", _key(data))
        with contextlib.closing(sqlite3.connect(f"file:{data / 'results.db'}?mode=ro", uri=True)) as db:
            stored = {row[0] for row in db.execute("SELECT seq FROM results")}
        lost = len(acknowledged - stored)
        set_aside = len(list(data.glob("results.damaged-*")))
    passed = lost == 0 and found.sound and set_aside == 0 and len(acknowledged) >= kills // 2
    return (f"{kills} SIGKILLs: {len(acknowledged)} sessions acknowledged, {lost} lost, {len(stored)} stored; "
            f"chain, signatures and checkpoint {'intact' if found.sound else found.problems[0]}"), passed


def _damage(kind: str, db: Path) -> None:
    """One way a database file gets hurt (deterministic per kind)."""
    data = bytearray(db.read_bytes())
    rng = random.Random(kind)
    pages = len(data) // 4096
    if kind.startswith("truncated"):
        size = {"truncated to 50 bytes": 50, "truncated to 1 page": 4096, "truncated to half": len(data) // 2,
                "truncated mid-page": len(data) - 1000}[kind]
        data = data[:size]
    elif kind == "random header":
        data[:100] = rng.randbytes(100)
    elif kind == "zeroed first page":
        data[:4096] = bytes(4096)
    elif kind.startswith("random pages"):
        for page in rng.sample(range(1, pages), min(int(kind.split()[-1]), pages - 1)):
            data[page * 4096:(page + 1) * 4096] = rng.randbytes(4096)
    elif kind == "zeroed last page":
        data[(pages - 1) * 4096:] = bytes(len(data) - (pages - 1) * 4096)
    elif kind == "one flipped byte in a result":
        at = data.index(b'"status":"') + 10
        data[at] ^= 0x20
    elif kind == "a text file":
        data = bytearray(b"patient list, not a database\n" * 300)
    elif kind == "a JPEG photo":
        data = bytearray(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + rng.randbytes(20000) + b"\xff\xd9")
    elif kind == "another SQLite database":
        db.unlink()
        with contextlib.closing(sqlite3.connect(db)) as other:
            other.execute("CREATE TABLE notes (text TEXT)")
            other.commit()
        return
    db.write_bytes(bytes(data))


DAMAGE = ["truncated to 50 bytes", "truncated to 1 page", "truncated to half", "truncated mid-page", "random header",
          "zeroed first page", "random pages 1", "random pages 3", "random pages 10", "zeroed last page",
          "one flipped byte in a result", "a text file", "a JPEG photo", "another SQLite database"]


def damaged_files() -> tuple[str, bool]:
    """Each damaged file: `verify` and `history` answer clearly (never `internal`), and the service
    logs it, sets it aside byte for byte and stores its next session in a fresh file."""
    failures = []
    for kind in DAMAGE:
        with tempfile.TemporaryDirectory() as tmp:
            db = _copy_base(Path(tmp) / "data")
            _damage(kind, db)
            before = _sha(db)
            verify, history = _cli(db.parent, "verify"), _cli(db.parent, "history")
            service = Service(db.parent)
            stored = service.wait_for('"session ', timeout=30)
            code = service.stop()
            kept = list(db.parent.glob("results.damaged-*.db"))
            fresh = examine(db, _key(db.parent))
            problem = ("verify did not refuse" if verify.returncode != 1 else
                       "internal error" if "internal" in verify.stderr + history.stderr else
                       "history crashed" if history.returncode not in (0, 1) else
                       "not recognised by the service" if service.count("result store ") == 0 or len(kept) != 1 else
                       "written into" if _sha(kept[0]) != before else
                       "no fresh session stored" if not stored or fresh.records < 1 or not fresh.sound else
                       f"service exit {code}" if code != 0 else None)
            if problem:
                failures.append(f"{kind}: {problem}")
    figure = (f"{len(DAMAGE) - len(failures)} of {len(DAMAGE)} damaged files recognised, set aside unwritten, "
              "a fresh store used" + ("; " + "; ".join(failures) if failures else ""))
    return figure, not failures


def _rewrite_chain(db: Path, seq: int) -> None:
    """Change record `seq`'s reading and recompute every hash after it, as a careful forger would."""
    with contextlib.closing(sqlite3.connect(db)) as raw:
        rows = raw.execute("SELECT seq, result_id, stored_at, patient_id, operator_id, status, result_json, prev_hash"
                           " FROM results ORDER BY seq").fetchall()
        prev = None
        for number, result_id, stored_at, patient, operator, status, result_json, prev_hash in rows:
            if number == seq:
                result_json = result_json.replace('"level":"', '"level":"x', 1)
            prev_hash = prev or prev_hash
            prev = _record_hash(prev_hash, result_id, stored_at, patient, operator, status, result_json)
            raw.execute("UPDATE results SET result_json = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                        (result_json, prev_hash, prev, number))
        raw.commit()


def _delete_newest(db: Path, n: int) -> None:
    with contextlib.closing(sqlite3.connect(db)) as raw:
        keep = raw.execute("SELECT MAX(seq) FROM results").fetchone()[0] - n
        for table in ("thumbnails", "outbox", "deliveries", "alerts"):
            raw.execute(f"DELETE FROM {table} WHERE result_id IN (SELECT result_id FROM results WHERE seq > ?)",
                        (keep,))
        raw.execute("DELETE FROM results WHERE seq > ?", (keep,))
        raw.commit()


TAMPERING = {
    "newest 3 deleted": lambda db: _delete_newest(db, 3),
    "file emptied": lambda db: os.truncate(db, 0),
    "file replaced by a new empty store": lambda db: (db.unlink(), ResultStore(db).close()),
    "record 2 edited, hashes recomputed": lambda db: _rewrite_chain(db, 2),
    "newest edited, hashes recomputed": lambda db: _rewrite_chain(db, 5),
    "newest 2 deleted with the checkpoint": lambda db: (_delete_newest(db, 2),
                                                        signing.checkpoint_path(db).unlink()),
}


def tampering() -> tuple[str, bool]:
    """Each tampering: `verify` exits 1 naming the records and why; the service then sets the store
    aside rather than sign on top of it."""
    failures = []
    for name, tamper in TAMPERING.items():
        with tempfile.TemporaryDirectory() as tmp:
            db = _copy_base(Path(tmp) / "data")
            tamper(db)
            verify = _cli(db.parent, "verify")
            service = Service(db.parent)
            service.wait_for('"session ', timeout=30)
            service.stop()
            named = "#" in verify.stdout
            if verify.returncode != 1 or not named:
                failures.append(f"{name}: verify exit {verify.returncode}")
            elif service.count("tampered with") + service.count("damaged") == 0:
                failures.append(f"{name}: the service extended it")
    figure = (f"{len(TAMPERING) - len(failures)} of {len(TAMPERING)} tamperings detected by verify (exit 1, records "
              "named) and set aside by the service" + ("; " + "; ".join(failures) if failures else ""))
    return figure, not failures


@contextlib.contextmanager
def _tmpfs(size: str):
    """A small filesystem of its own (root only), unmounted afterwards whatever happens."""
    folder = Path(tempfile.mkdtemp(prefix="stripread-faults-fs-"))
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                           capture_output=True).returncode:
        folder.rmdir()
        raise PermissionError("mounting a small tmpfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
        folder.rmdir()


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 65536)
                out.flush()
    return filler


def full_disk() -> tuple[str, bool]:
    """The disk fills during a test: the service keeps the readings in memory and stores them once
    there is room, never crashing; with too little room a test is refused before it starts."""
    try:
        with _tmpfs("12m") as data:
            service = Service(data, "--min-free-mb", "0")
            service.wait_for('"session ')
            filler = _fill(data)
            held = service.wait_for("result kept in memory", timeout=30)
            filler.unlink()
            freed = len(service.lines)                  # the held readings go in with the next store
            caught_up = service.wait_for('"record": ', since=freed) and not service.wait_for(
                '"record": null', since=freed, timeout=3)
            code, log = service.stop(), service.log()
            sessions = service.count('"msg": "session ')
            found = examine(data / "results.db", _key(data))
            refusing = Service(data, "--min-free-mb", "100")           # 12 MB disk: below the margin
            refused = refusing.wait_for("storage_full", timeout=30)
            refusing_code = refusing.stop()
    except PermissionError as exc:
        return str(exc), False
    passed = (held and caught_up and code == 0 and "Traceback" not in log and found.sound
              and found.records == sessions and refused and refusing_code == 0)
    return (f"disk filled mid-test: readings held in memory {'yes' if held else 'NO'}, stored once freed "
            f"{'yes' if caught_up else 'NO'}, {found.records} of {sessions} sessions stored, service exit {code}; "
            f"below the margin tests refused {'yes' if refused else 'NO'}"), passed


def read_only_folder() -> tuple[str, bool]:
    """A data folder remounted read-only: `read` still reads, history and verify work, the service
    refuses to start with one clear line (exit 2), no traceback."""
    try:
        with tempfile.TemporaryDirectory() as tmp, _tmpfs("8m") as data:
            photo = Path(tmp) / "strip.jpg"
            _cli(data, "simulate", "--out", str(photo), "--seed", "3")
            service = Service(data)
            service.wait_for('"session ')
            service.stop()
            subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True)
            read, history, verify = _cli(data, "read", str(photo)), _cli(data, "history"), _cli(data, "verify")
            refused = Service(data)
            try:
                code = refused.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                code = refused.stop()
            refused._reader.join(5)
    except PermissionError as exc:
        return str(exc), False
    clear = "is read-only" in refused.log() and "Traceback" not in refused.log()
    passed = (read.returncode in (0, 1) and "internal" not in read.stderr + read.stdout and history.returncode == 0
              and verify.returncode == 0 and code == 2 and clear)
    return (f"read exit {read.returncode}, history exit {history.returncode}, verify exit {verify.returncode}; "
            f"service exit {code}{' with a clear read-only message' if clear else ' WITHOUT a clear message'}"), passed


ROWS = [
    ("kills mid-session", kills_mid_session),
    ("damaged store files", damaged_files),
    ("tampering", tampering),
    ("full disk", full_disk),
    ("read-only data folder", read_only_folder),
]
