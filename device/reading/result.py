"""One reading of a strip as every part of the device carries it: built once by the `Reader`, then
assembled by the session, stored, judged by the alert rules, plotted and sent to the lab as this
object (its product as the `Product`, its derived ratios computed once). It becomes JSON only at
the edges: `to_dict` is the `stripread.read/1` object (`stripread read --json`, the stored record),
`from_dict` reads a stored record back, once.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING

from calibration.errors import SpecError
from models.derived import Derived, derive

if TYPE_CHECKING:        # a stored record is read back (history, export) without the chart stack (numpy)
    from calibration.specs import Product

SCHEMA = "stripread.read/1"


@dataclass(frozen=True)
class PadResult:
    """One pad: its chart level (None: not reported, `flags` says why), the value estimated between
    levels and its interval, and how sure the reader is."""
    analyte: str
    loinc: str | None
    level: str | None
    value: float | None
    unit: str | None
    confidence: float
    flags: tuple[str, ...] = ()
    chart_distance_de00: float | None = None
    interval: tuple[float, float] | None = None

    @property
    def abnormal(self) -> bool:
        return "abnormal" in self.flags

    def unreported(self, flag: str) -> PadResult:
        """The pad kept for the record with no level or value, for the one reason `flag`."""
        return replace(self, level=None, value=None, confidence=0.0, flags=(flag,), interval=None)

    def to_dict(self) -> dict:
        entry = {"analyte": self.analyte, "loinc": self.loinc, "level": self.level, "value": self.value,
                 "unit": self.unit, "confidence": self.confidence, "flags": list(self.flags),
                 "chart_distance_de00": self.chart_distance_de00}
        if self.interval is not None:
            entry["value_interval"] = list(self.interval)
        return entry

    @classmethod
    def from_dict(cls, entry: dict) -> PadResult:
        interval = entry.get("value_interval")
        return cls(entry["analyte"], entry.get("loinc"), entry.get("level"), entry.get("value"), entry.get("unit"),
                   entry.get("confidence", 0.0), tuple(entry.get("flags", ())), entry.get("chart_distance_de00"),
                   tuple(interval) if interval else None)


@dataclass(frozen=True)
class Refusal:
    """Why a photo was not read: a code from the schema, a message for the user, a finer reason."""
    code: str
    message: str
    reason: str | None = None

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, **({"reason": self.reason} if self.reason else {})}


def _derived_dict(entry: Derived) -> dict:
    return {"code": entry.code, "name": entry.name, "loinc": entry.loinc, "unit": entry.unit,
            "from": list(entry.sources), "value": entry.value,
            "interval": None if entry.interval is None else list(entry.interval), "category": entry.category,
            "flags": list(entry.flags)}


def _derived_of(entry: dict) -> Derived:
    interval = entry.get("interval")
    return Derived(entry["code"], entry.get("name", entry["code"]), entry.get("loinc"), entry.get("unit"),
                   tuple(entry.get("from") or ()), entry.get("value"), tuple(interval) if interval else None,
                   entry.get("category"), tuple(entry.get("flags", ())))


@dataclass(frozen=True)
class Reading:
    """A reading: `ok` (pads read), `error` (the photo refused: `error` says why) or, from a session
    that ended early, `aborted`. `extra` keeps what a session adds (its log, outcome, message)."""
    status: str
    product_id: str | None = None
    pads: tuple[PadResult, ...] = ()
    qc: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    error: Refusal | None = None
    schema: str = SCHEMA
    extra: dict = field(default_factory=dict)
    given_product: Product | None = field(default=None, repr=False, compare=False)   # the reader's own
    stored_derived: tuple[Derived, ...] | None = field(default=None, repr=False)   # as read back; None: from pads

    @cached_property
    def product(self) -> Product | None:
        """The product object: the reader's, else loaded once per id; None when its file is not on this reader."""
        if self.given_product is not None or not self.product_id:
            return self.given_product
        from calibration.specs import product_of_record
        try:
            return product_of_record(self.product_id)
        except SpecError:
            return None

    @cached_property
    def derived(self) -> tuple[Derived, ...]:
        """The product's derived quantities, computed once from the pads as they finally are."""
        if self.stored_derived is not None:
            return self.stored_derived
        if self.status != "ok" or self.product is None or not self.product.derived:
            return ()
        return derive(self.product, self.pads)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def captured_at(self) -> datetime | None:
        at = self.provenance.get("captured_at")
        return datetime.fromisoformat(at) if at else None

    def pad(self, analyte: str) -> PadResult | None:
        return next((p for p in self.pads if p.analyte == analyte), None)

    def derived_entry(self, code: str) -> Derived | None:
        return next((d for d in self.derived if d.code == code), None)

    def findings(self) -> list[str]:
        """The abnormal pads as "GLU 250", in the strip's order: what a list or a report names."""
        return [f"{p.analyte} {p.level}" for p in self.pads if p.abnormal]

    def unread(self) -> list[str]:
        """The pads reported without a level."""
        return [p.analyte for p in self.pads if p.level is None]

    def with_provenance(self, **more) -> Reading:
        return replace(self, provenance={**self.provenance, **more})

    def to_dict(self) -> dict:
        """The `stripread.read/1` object, keys in the order `stripread read --json` has always printed them."""
        result = {"schema": self.schema, "status": self.status}
        if self.error is not None:
            result["error"] = self.error.to_dict()
        result.update((k, v) for k, v in self.extra.items() if k != "session")    # an aborted session's outcome
        if self.product_id is not None:
            result["product"] = self.product_id
        if self.ok:
            result["analytes"] = [p.to_dict() for p in self.pads]
            result["qc"] = dict(self.qc)
        if self.provenance:
            result["provenance"] = self.provenance
        if self.derived:
            result["derived"] = [_derived_dict(d) for d in self.derived]
        if "session" in self.extra:
            result["session"] = self.extra["session"]
        return result

    @classmethod
    def from_dict(cls, result: dict) -> Reading:
        """A stored or received `stripread.read/1` (or session) object; keys it does not know are kept."""
        known = {"schema", "status", "error", "product", "analytes", "qc", "provenance", "derived"}
        error = result.get("error")
        return cls(str(result.get("status", "unknown")), result.get("product"),
                   tuple(PadResult.from_dict(e) for e in result.get("analytes", ())), result.get("qc") or {},
                   result.get("provenance") or {},
                   Refusal(error.get("code", ""), error.get("message", ""), error.get("reason")) if error else None,
                   result.get("schema", SCHEMA), {k: v for k, v in result.items() if k not in known}, None,
                   tuple(map(_derived_of, result.get("derived", ()))))      # as stored, never recomputed


def refused(code: str, message: str, reason: str | None = None, product: str | None = None,
            provenance: dict | None = None) -> Reading:
    """A photo the reader refused (`status: error`): the one shape of every refusal."""
    return Reading("error", product, error=Refusal(code, message, reason), provenance=provenance or {})
