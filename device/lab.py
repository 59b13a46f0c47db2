"""What the reader knows about the lab: its configuration file, how a lab's answer is classified,
the TLS context towards it, and how one pad's reading is expressed in a lab message.

The configuration is a TOML file (keys documented in `device/data/lab.example.toml`); it is looked
for at `--lab-config`, `$STRIPREAD_LAB_CONFIG`, `/etc/stripread/lab.toml`, then
`~/.config/stripread/lab.toml`. Secrets live in their own files (`token_file`, `password_file`) so
the configuration itself may be world-readable. Plain HTTP or plain MLLP is refused unless the
configuration says `allow_insecure_loopback = true` and the lab is on this machine.
"""
from __future__ import annotations

import ipaddress
import os
import ssl
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

SEARCH_PATH = (Path("/etc/stripread/lab.toml"), Path.home() / ".config" / "stripread" / "lab.toml")
# SNOMED CT qualifier values for the words a chart uses where they have an exact code; other words
# (small, moderate, large) keep only the product's own code, which is exact for that strip
SNOMED = {"neg": ("260385009", "Negative"), "trace": ("260405006", "Trace"), "pos": ("10828004", "Positive")}
LEVEL_SYSTEM = "urn:stripread:level"
PANEL_LOINC = ("50556-0", "Urinalysis dipstick panel - Urine by Automated test strip")


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
            context.load_cert_chain(self.client_cert, self.client_key)
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


_KEYS = {"lab": {"patient_identifier_system", "default_patient", "allow_insecure_loopback"},
         "sync": {"interval_s", "backoff_initial_s", "backoff_max_s"},
         "fhir": {"url", "ca_file", "client_cert", "client_key", "token_file", "username", "password_file",
                  "timeout_s"},
         "hl7": {"host", "port", "tls", "ca_file", "client_cert", "client_key", "timeout_s", "sending_application",
                 "sending_facility", "receiving_application", "receiving_facility"}}


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
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LabConfigError(f"cannot read the lab configuration {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise LabConfigError(f"{path} is not valid TOML: {exc}") from None
    for table, value in raw.items():
        if table not in _KEYS or not isinstance(value, dict):
            raise LabConfigError(f"{path}: unknown table [{table}] (known: {', '.join(sorted(_KEYS))})")
        unknown = set(value) - _KEYS[table]
        if unknown:
            raise LabConfigError(f"{path}: unknown key(s) in [{table}]: {', '.join(sorted(unknown))}")
    lab, sync = raw.get("lab", {}), raw.get("sync", {})
    insecure_ok = bool(lab.get("allow_insecure_loopback", False))
    folder = path.parent
    fhir = _fhir(raw["fhir"], folder, insecure_ok, path) if "fhir" in raw else None
    hl7 = _hl7(raw["hl7"], folder, insecure_ok, path) if "hl7" in raw else None
    if fhir is None and hl7 is None:
        raise LabConfigError(f"{path}: configure at least one of [fhir] or [hl7]")
    return LabConfig(fhir=fhir, hl7=hl7,
                     patient_system=str(lab.get("patient_identifier_system", LabConfig.patient_system)),
                     default_patient=lab.get("default_patient") or None,
                     interval_s=float(sync.get("interval_s", LabConfig.interval_s)),
                     backoff_initial_s=float(sync.get("backoff_initial_s", LabConfig.backoff_initial_s)),
                     backoff_max_s=float(sync.get("backoff_max_s", LabConfig.backoff_max_s)),
                     source=path)


def _fhir(table: dict, folder: Path, insecure_ok: bool, path: Path) -> FhirSettings:
    url = _required(table, "url", "fhir", path)
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise LabConfigError(f"{path}: [fhir] url must be an https:// URL, not {url!r}")
    secure = parts.scheme == "https"
    if not secure:
        _insecure_allowed(parts.hostname, insecure_ok, "[fhir] url is plain http://", path)
    if "username" in table and "password_file" not in table:
        raise LabConfigError(f"{path}: [fhir] username needs password_file")
    return FhirSettings(url=url.rstrip("/"), tls=_tls(table, folder) if secure else None,
                        token_file=_file(table, "token_file", folder), username=table.get("username"),
                        password_file=_file(table, "password_file", folder),
                        timeout_s=float(table.get("timeout_s", FhirSettings.timeout_s)))


def _hl7(table: dict, folder: Path, insecure_ok: bool, path: Path) -> Hl7Settings:
    host, port = _required(table, "host", "hl7", path), int(_required(table, "port", "hl7", path))
    secure = bool(table.get("tls", True))
    if not secure:
        _insecure_allowed(host, insecure_ok, "[hl7] tls = false", path)
    names = {k: str(table[k]) for k in ("sending_application", "sending_facility", "receiving_application",
                                        "receiving_facility") if k in table}
    return Hl7Settings(host=host, port=port, tls=_tls(table, folder) if secure else None,
                       timeout_s=float(table.get("timeout_s", Hl7Settings.timeout_s)), **names)


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


def _tls(table: dict, folder: Path) -> Tls:
    return Tls(ca_file=_file(table, "ca_file", folder), client_cert=_file(table, "client_cert", folder),
               client_key=_file(table, "client_key", folder))


def _required(table: dict, key: str, name: str, path: Path):
    if key not in table:
        raise LabConfigError(f"{path}: [{name}] needs {key!r}")
    return table[key]


def _file(table: dict, key: str, folder: Path) -> Path | None:
    """A file named by the configuration, relative to the configuration's folder."""
    return folder / table[key] if key in table else None


def _secret(path: Path | None) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, TypeError) as exc:
        raise LabRefusedReader(f"cannot read the lab credential file {path}: {exc}") from None


@dataclass(frozen=True)
class PadMessage:
    """One pad as a lab message states it: a quantity where the chart level is a number, a coded
    word (negative, trace, small, ..., positive) otherwise, or why there is no value."""
    analyte: str
    loinc: str
    unit: str | None
    level: str | None
    value: float | None          # the reader's estimate, for a quantity
    abnormal: bool
    absent_reason: str | None    # a flag saying why no level was reported
    note: str
    derived_from: tuple[str, ...] = ()   # a derived quantity (the ACR): the pads it is computed from
    name: str = ""                       # what a person calls it ("Glucose"), from the product file

    @property
    def quantitative(self) -> bool:
        return self.level is not None and self.unit is not None and (bool(self.derived_from) or _is_number(self.level))

    @property
    def snomed(self) -> tuple[str, str] | None:
        return SNOMED.get(self.level or "")


def pad_messages(result: dict) -> list[PadMessage]:
    """Every pad of a stored reading, in the strip's order, then the quantities derived from them."""
    names = _names(result.get("product", ""))
    messages = [_pad_message(entry) for entry in result["analytes"]] + \
        [_derived_message(entry) for entry in result.get("derived", [])]
    return [replace(m, name=names.get(m.analyte, m.analyte)) for m in messages]


def _names(product_id: str) -> dict[str, str]:
    """Pad and derived names of a product; its codes stand in when its file is not on this reader."""
    from calibration.errors import SpecError
    from calibration.specs import product_of_record
    try:
        product = product_of_record(product_id)
    except SpecError:
        return {}
    return {**{p.analyte: p.name for p in product.pads}, **{d["code"]: d.get("name", d["code"]) for d in product.derived}}


def _derived_message(entry: dict) -> PadMessage:
    """A derived ratio (the ACR): its value as a quantity, its category and interval as a note."""
    sources = tuple(entry["from"])
    if entry.get("value") is None:
        return PadMessage(entry["code"], entry["loinc"], entry["unit"], None, None, False, "not_read",
                          f"No result: {' or '.join(sources)} was not read.", sources)
    low, high = entry["interval"]
    note = (f"Category {entry['category']}; interval {_significant(low)}-{_significant(high)} {entry['unit']}"
            + ("; the interval spans two categories: repeat the test" if "category_uncertain" in entry["flags"] else ""))
    return PadMessage(entry["code"], entry["loinc"], entry["unit"], entry["category"], float(entry["value"]),
                      "abnormal" in entry["flags"], None, note + ".", sources)


def _pad_message(entry: dict) -> PadMessage:
    level, flags = entry.get("level"), entry.get("flags", [])
    value = entry.get("value")
    if level is None:
        reason = next((f for f in flags if f != "abnormal"), "not_read")
        return PadMessage(entry["analyte"], entry["loinc"], entry.get("unit"), None, None, False, reason,
                          f"No result: {reason.replace('_', ' ')}.")
    note = f"Chart level {level}"
    if value is not None and entry.get("unit"):
        note += f"; reader estimate {_significant(value)} {entry['unit']}"
        if entry.get("value_interval"):
            low, high = entry["value_interval"]
            note += f" (interval {_significant(low)}-{_significant(high)})"
    note += f"; confidence {entry.get('confidence', 0):.2f}"
    if "low_confidence" in flags:
        note += "; low confidence: confirm with a laboratory test"
    return PadMessage(entry["analyte"], entry["loinc"], entry.get("unit"), level,
                      None if value is None else float(_significant(value)), "abnormal" in flags, None, note + ".")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _significant(x: float) -> str:
    """Four significant figures (a specific gravity needs them): what a strip can tell, not float noise."""
    return f"{float(f'{x:.4g}'):g}"
