"""The report styles a screen shows a pad's level and value in; what is stored and sent to the lab
stays in the product's UCUM units whatever the style.

- `conventional`: the product's own units (US conventional: glucose mg/dL), as the chart prints them;
- `si`: SI units, each value converted with the factor written once below, next to its UCUM unit;
- `plus`: the dry-chemistry report's grade (-, +-, 1+ ... 4+) from the product file, the SI value
  beside it; pads without grades (pH, specific gravity) keep their values.

SI factors (molar masses from the IUPAC atomic weights; the same factors as the laboratory
conversion tables, e.g. AMA Manual of Style SI conversion table, and the Chinese dry-chemistry
analyzer manuals: glucose 1+ at 5.6 mmol/L, urobilinogen normal up to 17 umol/L):
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Conversion:
    unit: str           # the SI unit, UCUM
    factor: float       # SI value = conventional value * factor
    why: str


# (analyte, conventional UCUM unit) -> its SI unit and factor
SI: dict[tuple[str, str], Conversion] = {
    ("GLU", "mg/dL"): Conversion("mmol/L", 0.0555, "glucose 180.16 g/mol: 10 mg/L / 180.16"),
    ("PRO", "mg/dL"): Conversion("g/L", 0.01, "a mass concentration: 1 mg/dL = 0.01 g/L"),
    ("BIL", "mg/dL"): Conversion("umol/L", 17.1, "bilirubin 584.66 g/mol: 10 mg/L / 584.66 * 1000"),
    # the chart's mg/dL are Ehrlich units per dL (1 EU ~ 1 mg of urobilinogen, 590.7 g/mol)
    ("URO", "mg/dL"): Conversion("umol/L", 16.9, "urobilinogen 590.7 g/mol: 10 mg/L / 590.7 * 1000"),
    ("KET", "mg/dL"): Conversion("mmol/L", 0.098, "acetoacetate 102.09 g/mol: 10 mg/L / 102.09"),
    ("CRE", "mg/dL"): Conversion("mmol/L", 0.0884, "creatinine 113.12 g/mol: 10 mg/L / 113.12"),
    ("ACR", "mg/g"): Conversion("mg/mmol", 0.113, "per gram of creatinine to per mmol: 113.12 mg/mmol / 1000"),
}


def si(analyte: str, unit: str | None) -> Conversion | None:
    """The SI conversion of an analyte's unit; None where the unit is already SI or has none
    (cells/uL, mg/L, pH, specific gravity)."""
    return SI.get((analyte, unit or ""))


def converted(analyte: str, unit: str | None, value: float, style: str) -> tuple[float, str | None]:
    """A value in the style's unit (conventional: as given)."""
    conversion = si(analyte, unit) if style in ("si", "plus") else None
    return (value * conversion.factor, conversion.unit) if conversion else (value, unit)


def significant(value: float, digits: int = 2) -> int:
    """Decimals that show `value` to `digits` significant figures, none at and above 100
    (glucose 5.55 -> 1 decimal: 5.6; 111 -> 0: 111; protein 0.15 -> 2)."""
    if value == 0 or abs(value) >= 100:
        return 0
    return max(0, digits - 1 - math.floor(math.log10(abs(value))))


def chart_quantum(values: list[float | None], value: float | None) -> float | None:
    """The power of ten an estimate is rounded to on this chart: no finer than half the step between
    the two chart levels around it (883.5 mg/dL between 500 and 1000: to the hundred). None when the
    chart is not numeric."""
    if value is None or not values or None in values:
        return None
    k = min(max(sum(v <= value for v in values), 1), len(values) - 1)
    step = abs(values[k] - values[k - 1]) or 1.0
    return 10.0 ** math.floor(math.log10(step / 2))
