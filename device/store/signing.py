"""The device's signing key and the checkpoint of its result store: evidence that lives outside the
database file, so that editing a record and recomputing the hash chain, deleting the newest records
or emptying the file still shows.

Every stored record's chain head (how many records, the newest record's number and hash) is signed
with a per-device Ed25519 key kept in its own file (mode 0600, created on first use, never in the
database). After each commit the newest signed head is also written to a checkpoint file beside the
database (temp file, fsync, rename, fsync of the folder), and it travels to the lab with the result.
Whoever can rewrite the database but not read the key cannot forge a signature; whoever deletes
records leaves the checkpoint (and the lab's copies) pointing past the end of the store.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

STATEMENT = "stripread-checkpoint/1"


def key_path(db_path: Path) -> Path:
    """The device key: $STRIPREAD_KEY if set (e.g. on another partition than the data), else
    `device-key.pem` in the database's folder."""
    return Path(os.environ.get("STRIPREAD_KEY") or Path(db_path).parent / "device-key.pem")


def checkpoint_path(db_path: Path) -> Path:
    db_path = Path(db_path)
    return db_path.with_name(db_path.name + ".checkpoint")


def statement(key_id: str, count: int, seq: int, digest: str) -> bytes:
    """What is signed: the chain head and its length, under the key's id."""
    return f"{STATEMENT} key={key_id} count={count} seq={seq} sha256={digest}".encode("ascii")


def seal_line(seal: dict) -> str:
    """A record's seal (`StoredResult.seal`) as one line: the signed statement, then the signature."""
    return f"{STATEMENT} " + " ".join(f"{name}={value}" for name, value in seal.items())


def key_id_of(public: Ed25519PublicKey) -> str:
    """A short fingerprint of the public key (the first 16 hex digits of SHA-256 of its raw bytes)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class PublicKey:
    """Checks signatures: the device's own key, or a public key exported earlier (a replaced device
    key then fails every signature made before)."""

    def __init__(self, public: Ed25519PublicKey):
        self.public = public
        self.id = key_id_of(public)

    @classmethod
    def from_pem(cls, data: bytes) -> PublicKey:
        key = serialization.load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return cls(key)

    def pem(self) -> str:
        return self.public.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")

    def verify(self, signature_b64: str | None, count: int, seq: int, digest: str) -> bool:
        if not signature_b64:
            return False
        try:
            self.public.verify(base64.b64decode(signature_b64, validate=True), statement(self.id, count, seq, digest))
        except (InvalidSignature, ValueError):
            return False
        return True


class DeviceKey(PublicKey):
    """The private key, loaded from its file or created there on first use."""

    def __init__(self, private: Ed25519PrivateKey, path: Path):
        super().__init__(private.public_key())
        self.private, self.path = private, path

    @classmethod
    def load(cls, path: Path, create: bool = True) -> DeviceKey:
        """The key in `path`; with `create`, a new one if there is none yet (two processes starting
        at once agree on one: the file appears whole, by a hard link, or not at all)."""
        path = Path(path)
        if not path.exists() and create:
            _create(path)
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return cls(private, path)

    def sign(self, count: int, seq: int, digest: str) -> str:
        return base64.b64encode(self.private.sign(statement(self.id, count, seq, digest))).decode("ascii")


def _create(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _synced_temp(path, pem, 0o600)
    try:
        os.link(temp, path)            # fails if another process made one meanwhile: theirs stands
    except FileExistsError:
        pass
    finally:
        temp.unlink()
    fsync_folder(path.parent)


@dataclass(frozen=True)
class Checkpoint:
    """The newest signed chain head, as written beside the database."""
    count: int
    seq: int
    hash: str
    signature: str
    key_id: str
    written_at: str

    def valid_under(self, key: PublicKey) -> bool:
        return self.key_id == key.id and key.verify(self.signature, self.count, self.seq, self.hash)


def read_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint in `path`, None when there is none; ValueError when it is unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return Checkpoint(int(data["count"]), int(data["seq"]), str(data["hash"]), str(data["signature"]),
                          str(data["key_id"]), str(data["written_at"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"the checkpoint {path} cannot be read: {exc}") from None


@contextlib.contextmanager
def checkpoint_lock(path: Path):
    """Held while a writer reads the store's head and writes it out: two processes storing at once
    then leave the newer head in the file, never the older."""
    fd = os.open(Path(path).with_name(Path(path).name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_checkpoint(path: Path, count: int, seq: int, digest: str, signature: str, key_id: str) -> Checkpoint:
    """Replace the checkpoint durably: temp file, fsync, rename, fsync of the folder."""
    path = Path(path)
    checkpoint = Checkpoint(count, seq, digest, signature, key_id,
                            datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    os.replace(_synced_temp(path, json.dumps(asdict(checkpoint), indent=1).encode("utf-8"), 0o644), path)
    fsync_folder(path.parent)
    return checkpoint


def _synced_temp(path: Path, data: bytes, mode: int) -> Path:
    """`data` in a temporary file beside `path`, on the disk (fsynced); removed again if that fails."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    except OSError:
        temp.unlink()
        raise
    finally:
        os.close(fd)
    return temp


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
