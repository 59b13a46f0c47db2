"""What the reader knows about the lab: its configuration file, how a lab's answer is classified,
and the TLS context towards it (what a lab message says of a pad: `device.lab.messages`).

The configuration is a TOML file (keys documented in `device/data/lab.example.toml`); it is looked
for at `--lab-config`, `$STRIPREAD_LAB_CONFIG`, `/etc/stripread/lab.toml`, then
`~/.config/stripread/lab.toml`. Secrets live in their own files (`token_file`, `password_file`) so
the configuration itself may be world-readable; a URL carrying credentials is refused. Plain HTTP
or plain MLLP is refused unless the configuration says `allow_insecure_loopback = true` and the
lab is on this machine. Every key is checked when the file is loaded (type, range, the files it
names usable: a CA file must hold certificates), so a mistake is a `LabConfigError` naming the key
before anything is sent, not a failure at the first send.
"""
from __future__ import annotations

import ipaddress
import os
import ssl
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

SEARCH_PATH = (Path("/etc/stripread/lab.toml"), Path.home() / ".config" / "stripread" / "lab.toml")
MAX_SECONDS = 86400      # the longest timeout, interval or backoff a configuration may set


class LabConfigError(Exception):
    """The lab configuration cannot be used (the message names the key or file)."""


class LabError(Exception):
    """A send that did not get through; `detail` may quote the lab and is stored, never logged."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail or message


class LabUnavailable(LabError):
    """Down, too slow, overloaded (5xx, 429) or no acknowledgement: retry later, with backoff."""

    def __init__(self, message: str, detail: str = "", retry_after: float | None = None):
        super().__init__(message, detail)
        self.retry_after = retry_after


class LabRejected(LabError):
    """The lab refused this result for good (invalid content, HL7 AE/AR): kept for a person to see."""


class LabRefusedReader(LabError):
    """The lab refused the reader itself (credentials, certificate): no retry until a person fixes it."""


def patient_of(patient_id: str | None, config: LabConfig) -> str:
    """Whom a result is about, as the lab files it; none at all is a result a person must sort out."""
    patient = patient_id or config.default_patient
    if not patient:
        raise LabRejected("the result has no patient identifier",
                          "no patient identifier: the reading was taken without one and the lab configuration"
                          " has no [lab] default_patient")
    return patient


def tls_failure(exc: ssl.SSLError, table: str) -> LabError:
    """A failed TLS exchange, classified: an untrusted certificate or the lab's alert (refusing the
    reader's certificate) needs a person; anything else may pass with a retry."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return LabRefusedReader(f"the lab's TLS certificate is not trusted: check [{table}] ca_file", str(exc))
    if "ALERT" in str(exc).upper():
        return LabRefusedReader("the lab refused the reader's TLS connection (client certificate?)", str(exc))
    return LabUnavailable("the TLS connection to the lab failed", str(exc))


@dataclass(frozen=True)
class Tls:
    ca_file: Path | None = None          # the lab's CA bundle; None: the system's
    client_cert: Path | None = None      # the reader's certificate, where the lab asks for one
    client_key: Path | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.client_cert:
            context.load_cert_chain(self.client_cert, self.client_key, _no_passphrase)
        return context


@dataclass(frozen=True)
class FhirSettings:
    url: str
    tls: Tls | None                      # None only for an allowed plain-HTTP loopback lab
    token_file: Path | None = None       # bearer token
    username: str | None = None          # or HTTP basic
    password_file: Path | None = None
    timeout_s: float = 15.0

    def authorization(self) -> str | None:
        """The Authorization header, read from its file each time so a rotated secret is picked up."""
        import base64
        if self.token_file:
            return "Bearer " + _secret(self.token_file)
        if self.username:
            pair = f"{self.username}:{_secret(self.password_file)}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        return None


@dataclass(frozen=True)
class Hl7Settings:
    host: str
    port: int
    tls: Tls | None
    timeout_s: float = 15.0
    sending_application: str = "STRIPREAD"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""


@dataclass(frozen=True)
class LabConfig:
    fhir: FhirSettings | None
    hl7: Hl7Settings | None
    patient_system: str = "urn:stripread:patient"   # the identifier system of the patient ids given to the reader
    default_patient: str | None = None              # a home reader's one patient
    interval_s: float = 60.0                        # background pass when nothing new arrives
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 600.0
    source: Path | None = None


def _no_passphrase() -> bytes:
    """For a private key: an encrypted one fails at once instead of OpenSSL prompting on a terminal."""
    return b""


def find_config(explicit: str | Path | None = None) -> Path | None:
    """The configuration file to use, or None when this reader has no lab configured."""
    if explicit:
        return Path(explicit)
    if os.environ.get("STRIPREAD_LAB_CONFIG"):
        return Path(os.environ["STRIPREAD_LAB_CONFIG"])
    return next((p for p in SEARCH_PATH if p.is_file()), None)


def load_config(path: str | Path) -> LabConfig:
    """Parse and check the whole file; a misspelt key is an error, not silently ignored."""
    path = Path(path)
    if path.exists() and not path.is_file():       # a FIFO or a device would be waited on or read forever
        raise LabConfigError(f"the lab configuration {path} is not a regular file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise LabConfigError(f"cannot read the lab configuration {path}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    except tomllib.TOMLDecodeError as exc:
        raise LabConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(raw, path)


def parse_config(raw: dict, path: Path) -> LabConfig:
    """The checked configuration from a parsed file: every key's type and range, every named file
    usable, credentials only in their files. Any problem is a `LabConfigError` naming the key."""
    tables = {}
    for name, table in raw.items():
        if name not in _SCHEMA:
            raise LabConfigError(f"{path}: unknown table [{name}] (known: {', '.join(sorted(_SCHEMA))})")
        if not isinstance(table, dict):
            raise LabConfigError(f"{path}: {name} must be a table ([{name}] on a line of its own), not {_kind(table)}")
        unknown = set(table) - set(_SCHEMA[name])
        if unknown:
            raise LabConfigError(f"{path}: unknown key(s) in [{name}]: {', '.join(sorted(unknown))}")
        tables[name] = {key: _SCHEMA[name][key](value, f"{path}: [{name}] {key}", path.parent)
                        for key, value in table.items()}
    lab, sync = tables.get("lab", {}), tables.get("sync", {})
    insecure_ok = lab.get("allow_insecure_loopback", False)
    fhir = _fhir(tables["fhir"], insecure_ok, path) if "fhir" in tables else None
    hl7 = _hl7(tables["hl7"], insecure_ok, path) if "hl7" in tables else None
    if fhir is None and hl7 is None:
        raise LabConfigError(f"{path}: configure at least one of [fhir] or [hl7]")
    config = LabConfig(fhir=fhir, hl7=hl7,
                       patient_system=lab.get("patient_identifier_system", LabConfig.patient_system),
                       default_patient=lab.get("default_patient") or None,
                       interval_s=sync.get("interval_s", LabConfig.interval_s),
                       backoff_initial_s=sync.get("backoff_initial_s", LabConfig.backoff_initial_s),
                       backoff_max_s=sync.get("backoff_max_s", LabConfig.backoff_max_s), source=path)
    if config.backoff_initial_s > config.backoff_max_s:
        raise LabConfigError(f"{path}: [sync] backoff_initial_s is longer than backoff_max_s")
    return config


def _fhir(table: dict, insecure_ok: bool, path: Path) -> FhirSettings:
    url = _required(table, "url", "fhir", path)
    secure = urlsplit(url).scheme == "https"
    if not secure:
        _insecure_allowed(urlsplit(url).hostname, insecure_ok, "[fhir] url is plain http://", path)
    if "username" in table and "password_file" not in table:
        raise LabConfigError(f"{path}: [fhir] username needs password_file")
    return FhirSettings(url=url.rstrip("/"), tls=_tls(table, "fhir", path) if secure else None,
                        token_file=table.get("token_file"), username=table.get("username"),
                        password_file=table.get("password_file"),
                        timeout_s=table.get("timeout_s", FhirSettings.timeout_s))


def _hl7(table: dict, insecure_ok: bool, path: Path) -> Hl7Settings:
    host, port = _required(table, "host", "hl7", path), _required(table, "port", "hl7", path)
    secure = table.get("tls", True)
    if not secure:
        _insecure_allowed(host, insecure_ok, "[hl7] tls = false", path)
    names = {k: table[k] for k in ("sending_application", "sending_facility", "receiving_application",
                                   "receiving_facility") if k in table}
    return Hl7Settings(host=host, port=port, tls=_tls(table, "hl7", path) if secure else None,
                       timeout_s=table.get("timeout_s", Hl7Settings.timeout_s), **names)


def _insecure_allowed(host: str, insecure_ok: bool, what: str, path: Path) -> None:
    if not (insecure_ok and _is_loopback(host)):
        raise LabConfigError(f"{path}: {what}; results go to a lab only over TLS (plain connections are allowed"
                             " only to this machine, with [lab] allow_insecure_loopback = true)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls(table: dict, name: str, path: Path) -> Tls:
    """The TLS settings, with the reader's certificate and key tried together now, not at the first send."""
    tls = Tls(ca_file=table.get("ca_file"), client_cert=table.get("client_cert"), client_key=table.get("client_key"))
    if tls.client_key and not tls.client_cert:
        raise LabConfigError(f"{path}: [{name}] client_key needs client_cert")
    if tls.client_cert:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(tls.client_cert, tls.client_key, _no_passphrase)
        except ssl.SSLError as exc:
            raise LabConfigError(f"{path}: [{name}] client_cert / client_key: not a usable certificate and "
                                 f"unencrypted private key that belong together ({exc.reason or exc})") from None
    return tls


def _required(table: dict, key: str, name: str, path: Path):
    if key not in table:
        raise LabConfigError(f"{path}: [{name}] needs {key!r}")
    return table[key]


def _kind(value) -> str:
    """How a wrong value is named in an error: a number as it is, anything else by its type (a
    value put under the wrong key might be a secret)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    if isinstance(value, str):
        return "text" if value.strip() else "empty text"
    return {bool: "true/false", list: "a list", dict: "a table"}.get(type(value), "a date or time")


def _checker(accept, wanted: str, convert=lambda value: value):
    """A key's check: `accept(value)` or a `LabConfigError` saying what the key must be."""
    def check(value, where: str, folder: Path):
        if not accept(value):
            raise LabConfigError(f"{where} must be {wanted}, not {_kind(value)}")
        return convert(value)
    return check


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_text = _checker(lambda v: isinstance(v, str) and bool(v.strip()), "non-empty text")
_label = _checker(lambda v: isinstance(v, str), "text")
_flag = _checker(lambda v: isinstance(v, bool), "true or false (without quotes)")
_port = _checker(lambda v: _whole(v) and 0 < v < 65536, "a port number from 1 to 65535")
_seconds = _checker(lambda v: (_whole(v) or isinstance(v, float)) and 0 < v <= MAX_SECONDS,
                    f"a number of seconds above 0 and at most {MAX_SECONDS}", float)


def _host(value, where: str, folder: Path) -> str:
    host = _text(value, where, folder)
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if len(host) > 253 or any(c.isspace() or c in "/@:[]" for c in host):
        raise LabConfigError(f"{where} must be a host name or an IP address (no scheme, port or path)")
    return host


def _url(value, where: str, folder: Path) -> str:
    """An https:// (or, for a lab on this machine, http://) URL with a host and no credentials."""
    url = _text(value, where, folder)
    try:
        parts = urlsplit(url)
        parts.port                                   # noqa: B018 (a malformed port raises here)
    except ValueError:
        raise LabConfigError(f"{where} is not a valid URL (check its host and port)") from None
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise LabConfigError(f"{where} contains credentials or a query: remove them from the URL; the reader's "
                             "secrets belong in their own files (token_file, or username with password_file)")
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise LabConfigError(f"{where} must be an https:// URL with a host, not {parts.scheme or 'no'}://")
    return url


def _file(value, where: str, folder: Path) -> Path:
    """A readable regular file, named relative to the configuration's folder."""
    file = folder / _text(value, where, folder)
    try:
        info = os.stat(file)
    except (OSError, ValueError) as exc:             # ValueError: a NUL in the name
        raise LabConfigError(f"{where}: cannot use {file}: {getattr(exc, 'strerror', None) or exc}") from None
    if not stat.S_ISREG(info.st_mode) or not os.access(file, os.R_OK):
        raise LabConfigError(f"{where}: {file} is not a readable file")
    return file


def _ca_bundle(value, where: str, folder: Path) -> Path:
    file = _file(value, where, folder)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=file)
    except ssl.SSLError as exc:
        raise LabConfigError(f"{where}: {file} is not a certificate bundle (PEM) ({exc.reason or exc})") from None
    return file


_SCHEMA = {"lab": {"patient_identifier_system": _text, "default_patient": _label, "allow_insecure_loopback": _flag},
           "sync": {"interval_s": _seconds, "backoff_initial_s": _seconds, "backoff_max_s": _seconds},
           "fhir": {"url": _url, "ca_file": _ca_bundle, "client_cert": _file, "client_key": _file,
                    "token_file": _file, "username": _text, "password_file": _file, "timeout_s": _seconds},
           "hl7": {"host": _host, "port": _port, "tls": _flag, "ca_file": _ca_bundle, "client_cert": _file,
                   "client_key": _file, "timeout_s": _seconds, "sending_application": _label,
                   "sending_facility": _label, "receiving_application": _label, "receiving_facility": _label}}


def _secret(path: Path | None) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, TypeError) as exc:
        raise LabRefusedReader(f"cannot read the lab credential file {path}: {exc}") from None
