"""What a lab message (FHIR Observation, HL7 OBX) says of each pad of a reading: a quantity where
the chart level is a number, a coded word (negative, trace, small, ..., positive) otherwise, or why
there is no value; then the quantities derived from the pads (the ACR), each with a note for a
person reading the message.
"""
from __future__ import annotations

from dataclasses import dataclass

from device.reading.result import PadResult, Reading
from models.derived import Derived

# SNOMED CT qualifier values for the words a chart uses where they have an exact code; other words
# (small, moderate, large) keep only the product's own code, which is exact for that strip
SNOMED = {"neg": ("260385009", "Negative"), "trace": ("260405006", "Trace"), "pos": ("10828004", "Positive")}
LEVEL_SYSTEM = "urn:stripread:level"
PANEL_LOINC = ("50556-0", "Urinalysis dipstick panel - Urine by Automated test strip")


@dataclass(frozen=True)
class PadMessage:
    """One pad (or derived quantity) as a lab message states it."""
    analyte: str
    loinc: str
    unit: str | None
    level: str | None
    value: float | None          # the reader's estimate, for a quantity
    abnormal: bool
    note: str                    # for a pad not reported, why
    derived_from: tuple[str, ...] = ()   # a derived quantity (the ACR): the pads it is computed from
    name: str = ""                       # what a person calls it ("Glucose"), from the product file

    @property
    def quantitative(self) -> bool:
        return self.level is not None and self.unit is not None and (bool(self.derived_from) or _is_number(self.level))

    @property
    def snomed(self) -> tuple[str, str] | None:
        return SNOMED.get(self.level or "")


def pad_messages(reading: Reading) -> list[PadMessage]:
    """Every pad of a reading, in the strip's order, then the quantities derived from them."""
    names = _names(reading)
    return [*(_pad_message(pad, names.get(pad.analyte, pad.analyte)) for pad in reading.pads),
            *(_derived_message(entry, names.get(entry.code, entry.code)) for entry in reading.derived)]


def conclusion(reading: Reading) -> str:
    """The report's one line: the abnormal pads and those not reported."""
    abnormal, missing = reading.findings(), reading.unread()
    text = "Abnormal: " + ", ".join(abnormal) if abnormal else "No abnormal pad"
    return text + (f". Not reported: {', '.join(missing)}." if missing else ".")


def _names(reading: Reading) -> dict[str, str]:
    """Pad and derived names of the reading's product; its codes stand in when its file is not on this reader."""
    product = reading.product
    if product is None:
        return {}
    return {**{p.analyte: p.name for p in product.pads},
            **{d["code"]: d.get("name", d["code"]) for d in product.derived}}


def _derived_message(entry: Derived, name: str) -> PadMessage:
    """A derived ratio (the ACR): its value as a quantity, its category and interval as a note."""
    if entry.value is None:
        return PadMessage(entry.code, entry.loinc, entry.unit, None, None, False,
                          f"No result: {' or '.join(entry.sources)} was not read.", entry.sources, name)
    low, high = entry.interval
    note = (f"Category {entry.category}; interval {_significant(low)}-{_significant(high)} {entry.unit}"
            + ("; the interval spans two categories: repeat the test" if "category_uncertain" in entry.flags else ""))
    return PadMessage(entry.code, entry.loinc, entry.unit, entry.category, float(entry.value),
                      "abnormal" in entry.flags, note + ".", entry.sources, name)


def _pad_message(pad: PadResult, name: str) -> PadMessage:
    if pad.level is None:
        reason = next((f for f in pad.flags if f != "abnormal"), "not_read")
        return PadMessage(pad.analyte, pad.loinc, pad.unit, None, None, False,
                          f"No result: {reason.replace('_', ' ')}.", name=name)
    note = f"Chart level {pad.level}"
    if pad.value is not None and pad.unit:
        note += f"; reader estimate {_significant(pad.value)} {pad.unit}"
        if pad.interval:
            low, high = pad.interval
            note += f" (interval {_significant(low)}-{_significant(high)})"
    note += f"; confidence {pad.confidence:.2f}"
    if "low_confidence" in pad.flags:
        note += "; low confidence: confirm with a laboratory test"
    return PadMessage(pad.analyte, pad.loinc, pad.unit, pad.level,
                      None if pad.value is None else float(_significant(pad.value)), pad.abnormal, note + ".",
                      name=name)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _significant(x: float) -> str:
    """Four significant figures (a specific gravity needs them): what a strip can tell, not float noise."""
    return f"{float(f'{x:.4g}'):g}"
