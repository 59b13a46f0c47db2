"""Quantities a product derives from its pads, such as the albumin-to-creatinine ratio (ACR) of the
`acr-2` strip, with the uncertainty carried over from the pads' intervals and the category.

A product's `derived` entry gives a formula of the form `A[unit] / B[unit] * k` (the ratio of two
pads' values, scaled), a LOINC code, a unit and ordered categories (`max` is the exclusive upper
bound, null for the last): KDIGO's A1 < 30, A2 30-300, A3 > 300 mg/g for the ACR. The ratio's
interval comes from the pads' intervals in log space (a ratio's relative errors add in
quadrature, assuming the two pads' errors independent); a ratio whose interval straddles a
category boundary says so (`category_uncertain`), because the category is what a clinician acts on.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from calibration.errors import SpecError
from calibration.specs import Product

_RATIO = re.compile(r"^\s*(\w+)\s*\[[^\]]*\]\s*/\s*(\w+)\s*\[[^\]]*\]\s*\*\s*([0-9.eE+-]+)\s*$")


@dataclass(frozen=True)
class Ratio:
    code: str
    name: str
    loinc: str | None
    unit: str
    numerator: str       # pad analytes
    denominator: str
    factor: float
    categories: tuple[tuple[str, float | None], ...]   # (code, exclusive upper bound or None)

    def category(self, value: float) -> str:
        return next(code for code, upper in self.categories if upper is None or value < upper)


@lru_cache(maxsize=16)
def ratios(product: Product) -> tuple[Ratio, ...]:
    """The product's derived ratios (parsed once per product, not per reading); a formula of another
    form is refused when the product loads into the reader, not silently skipped."""
    found = []
    for entry in product.derived:
        match = _RATIO.match(entry.get("formula", ""))
        if not match or {match[1], match[2]} - {p.analyte for p in product.pads}:
            raise SpecError(f"product {product.id}: derived {entry.get('code')!r}: only a ratio of two of its pads "
                            f"('A[unit] / B[unit] * k') is supported, not {entry.get('formula')!r}")
        categories = tuple((c["code"], None if c.get("max") is None else float(c["max"]))
                           for c in entry.get("categories", ()))
        found.append(Ratio(entry["code"], entry.get("name", entry["code"]), entry.get("loinc"), entry["unit"],
                           match[1], match[2], float(match[3]), categories))
    return tuple(found)


def derive(product: Product, analytes: list[dict]) -> list[dict]:
    """The derived entries of a result from its pad entries (`value`, `value_interval`)."""
    by_analyte = {a["analyte"]: a for a in analytes}
    return [_ratio_entry(ratio, by_analyte[ratio.numerator], by_analyte[ratio.denominator])
            for ratio in ratios(product)]


def _ratio_entry(ratio: Ratio, top: dict, bottom: dict) -> dict:
    entry = {"code": ratio.code, "name": ratio.name, "loinc": ratio.loinc, "unit": ratio.unit,
             "from": [ratio.numerator, ratio.denominator]}
    if not top.get("value") or not bottom.get("value"):
        missing = ratio.numerator if not top.get("value") else ratio.denominator
        return {**entry, "value": None, "interval": None, "category": None, "flags": [f"no_{missing.lower()}"]}
    value = ratio.factor * top["value"] / bottom["value"]
    spread = math.hypot(_log_half_width(top), _log_half_width(bottom))
    low, high = value * math.exp(-spread), value * math.exp(spread)
    category = ratio.category(value)
    flags = [] if category == ratio.categories[0][0] else ["abnormal"]
    if ratio.category(low) != ratio.category(high):
        flags.append("category_uncertain")
    return {**entry, "value": round(value, 2), "interval": [round(low, 2), round(high, 2)], "category": category,
            "flags": flags}


def _log_half_width(pad: dict) -> float:
    """Half the width of a pad's interval in log units (0 without one: the pad's own value only)."""
    interval = pad.get("value_interval")
    if not interval:
        return 0.0
    low, high = (max(v, 1e-3 * pad["value"]) for v in interval)
    return max(0.0, math.log(high / low) / 2)
