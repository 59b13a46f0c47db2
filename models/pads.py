"""The pad-level interface: colour-corrected observations of a strip in, one reading per pad out.

Every reader of pad levels (the nearest-colour baseline here, the trained ONNX models later)
implements `PadModel.read`, so the read path does not care which one it runs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Protocol

import numpy as np

from calibration.colour import delta_e_2000
from calibration.specs import Pad, Product

OUT_OF_GAMUT_DE00 = 10.0     # further than this from every colour of the chart: not a chart colour
LOW_CONFIDENCE = 0.6


@dataclass(frozen=True)
class StripObservation:
    product: Product
    pad_lab: np.ndarray          # (pads, 3) CIELAB D50 after colour correction
    base_lab: np.ndarray         # (3,) the strip's bare base, same space
    residual_de00: float         # held-out residual of the card's colour correction


@dataclass
class PadReading:
    analyte: str
    level: str | None
    value: float | None
    confidence: float
    flags: list[str] = field(default_factory=list)
    chart_distance_de00: float | None = None


class PadModel(Protocol):
    name: str
    version: str

    def read(self, observation: StripObservation) -> list[PadReading]: ...


@lru_cache(maxsize=1)
def _normal_levels() -> dict:
    text = (resources.files("models") / "data" / "normal-levels.json").read_text(encoding="utf-8")
    return {k: set(v) for k, v in json.loads(text).items() if k != "comment"}


def interpret(pad: Pad, reading: PadReading) -> PadReading:
    """Add the flags every model shares: abnormal level, low confidence."""
    normal = _normal_levels().get(pad.analyte)
    if reading.level is not None and normal is not None and reading.level not in normal:
        reading.flags.append("abnormal")
    if reading.level is not None and reading.confidence < LOW_CONFIDENCE:
        reading.flags.append("low_confidence")
    return reading


def chart_position(pad: Pad, lab: np.ndarray) -> tuple[int, float, float]:
    """Nearest chart level, the fractional position between it and its closer neighbour (level
    units, measured by projection onto the straight step between their colours in CIELAB), and the
    CIEDE2000 distance from the chart's colour path."""
    levels = pad.level_lab
    d = delta_e_2000(lab[None, :], levels)
    nearest = int(np.argmin(d))
    best = (nearest, float(nearest), float(d[nearest]))
    for neighbour in (nearest - 1, nearest + 1):
        if not 0 <= neighbour < len(levels):
            continue
        step = levels[neighbour] - levels[nearest]
        f = float(np.clip(np.dot(lab - levels[nearest], step) / np.dot(step, step), 0.0, 1.0))
        gap = float(delta_e_2000(lab, levels[nearest] + f * step))
        if gap < best[2]:
            best = (nearest, nearest + f * (neighbour - nearest), gap)
    return best


def value_at(pad: Pad, position: float) -> float | None:
    """The pad's quantity at a fractional level position (linear between neighbouring levels)."""
    if not pad.quantitative:
        return None
    values = np.array([level.value for level in pad.levels])
    return float(np.interp(position, np.arange(len(values)), values))


class NearestChartColour:
    """The transparent baseline: the level whose chart colour is nearest in CIEDE2000, the value
    interpolated between it and the closer neighbour, and a confidence from how much nearer it is
    than the other levels, given the colour correction's own error."""

    name = "baseline"
    version = "nearest-colour/1"

    def read(self, observation: StripObservation) -> list[PadReading]:
        sigma = max(2.0, 1.5 * observation.residual_de00)
        readings = []
        for pad, lab in zip(observation.product.pads, observation.pad_lab):
            nearest, position, gap = chart_position(pad, lab)
            if gap > OUT_OF_GAMUT_DE00:
                readings.append(PadReading(pad.analyte, None, None, 0.0, ["out_of_gamut"], round(gap, 2)))
                continue
            d = delta_e_2000(lab[None, :], pad.level_lab)
            weights = np.exp(-0.5 * ((d - d.min()) / sigma) ** 2)
            confidence = float(weights[nearest] / weights.sum())
            reading = PadReading(pad.analyte, pad.levels[nearest].code, value_at(pad, position),
                                 round(confidence, 3), [], round(gap, 2))
            readings.append(interpret(pad, reading))
        return readings
