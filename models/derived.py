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
from typing import TYPE_CHECKING

from calibration.errors import SpecError

if TYPE_CHECKING:        # a stored reading's derived entries are read back without the chart stack (numpy)
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


@dataclass(frozen=True)
class Derived:
    """One derived quantity of a reading (None value: a pad it needs was not read, `flags` says which)."""
    code: str
    name: str
    loinc: str | None
    unit: str | None
    sources: tuple[str, ...]             # the pads it is computed from (numerator, denominator)
    value: float | None
    interval: tuple[float, float] | None
    category: str | None
    flags: tuple[str, ...] = ()


def derive(product: Product, pads) -> tuple[Derived, ...]:
    """The product's derived quantities from its pads' results (objects with `analyte`, `value` and
    `interval`, as `device.reading.result.PadResult`), computed once per reading."""
    by_analyte = {pad.analyte: pad for pad in pads}
    return tuple(_ratio_of(ratio, by_analyte[ratio.numerator], by_analyte[ratio.denominator])
                 for ratio in ratios(product))


def _ratio_of(ratio: Ratio, top, bottom) -> Derived:
    named = (ratio.code, ratio.name, ratio.loinc, ratio.unit, (ratio.numerator, ratio.denominator))
    if not top.value or not bottom.value:
        missing = ratio.numerator if not top.value else ratio.denominator
        return Derived(*named, None, None, None, (f"no_{missing.lower()}",))
    value = ratio.factor * top.value / bottom.value
    spread = math.hypot(_log_half_width(top), _log_half_width(bottom))
    low, high = value * math.exp(-spread), value * math.exp(spread)
    category = ratio.category(value)
    flags = [] if category == ratio.categories[0][0] else ["abnormal"]
    if ratio.category(low) != ratio.category(high):
        flags.append("category_uncertain")
    return Derived(*named, round(value, 2), (round(low, 2), round(high, 2)), category, tuple(flags))


def _log_half_width(pad) -> float:
    """Half the width of a pad's interval in log units (0 without one: the pad's own value only)."""
    if not pad.interval:
        return 0.0
    low, high = (max(v, 1e-3 * pad.value) for v in pad.interval)
    return max(0.0, math.log(high / low) / 2)
