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
from calibration.observe import StripObservation
from calibration.specs import Pad

OUT_OF_GAMUT_DE00 = 10.0     # further than this from every colour of the chart: not a chart colour
LOW_CONFIDENCE = 0.6


@dataclass
class PadReading:
    analyte: str
    level: str | None
    value: float | None
    confidence: float
    flags: list[str] = field(default_factory=list)
    chart_distance_de00: float | None = None
    interval: tuple[float, float] | None = None    # of `value`, where the model can give one honestly


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


@dataclass(frozen=True)
class ChartPosition:
    distances: np.ndarray   # CIEDE2000 to every chart level
    nearest: int            # index of the nearest level
    position: float         # fractional level position between `nearest` and its closer neighbour
    gap: float              # CIEDE2000 from the chart's colour path (straight steps between levels)


def chart_positions(pads: tuple[Pad, ...], labs: np.ndarray) -> list[ChartPosition]:
    """Where each pad colour sits on its chart. The position between two levels comes from
    projecting onto the straight CIELAB step between their colours. Two vectorised CIEDE2000 calls
    serve the whole strip (the per-call overhead dominates for a few colours)."""
    counts = [len(p.levels) for p in pads]
    owner = np.repeat(np.arange(len(pads)), counts)
    levels = np.vstack([p.level_lab for p in pads])
    d_all = delta_e_2000(labs[owner], levels)
    starts = np.cumsum([0] + counts[:-1])
    nearest = [int(np.argmin(d_all[s:s + n])) for s, n in zip(starts, counts)]
    pairs = [(i, n, m) for i, n in enumerate(nearest) for m in (n - 1, n + 1) if 0 <= m < counts[i]]
    idx = np.array(pairs)
    base = levels[starts[idx[:, 0]] + idx[:, 1]]
    steps = levels[starts[idx[:, 0]] + idx[:, 2]] - base
    f = np.clip(((labs[idx[:, 0]] - base) * steps).sum(axis=1) / (steps * steps).sum(axis=1), 0.0, 1.0)
    gaps = delta_e_2000(labs[idx[:, 0]], base + f[:, None] * steps)
    result = []
    for i, (s, n) in enumerate(zip(starts, counts)):
        d = d_all[s:s + n]
        best = ChartPosition(d, nearest[i], float(nearest[i]), float(d[nearest[i]]))
        for k in np.nonzero(idx[:, 0] == i)[0]:
            if gaps[k] < best.gap:
                best = ChartPosition(d, nearest[i], nearest[i] + float(f[k]) * (idx[k, 2] - nearest[i]),
                                     float(gaps[k]))
        result.append(best)
    return result


def out_of_gamut(pad: Pad, gap: float) -> PadReading:
    """A pad whose colour is on no chart: flagged, never forced to a level (every model)."""
    return PadReading(pad.analyte, None, None, 0.0, ["out_of_gamut"], round(gap, 2))


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
        pads = observation.product.pads
        for pad, chart in zip(pads, chart_positions(pads, observation.pad_lab)):
            if chart.gap > OUT_OF_GAMUT_DE00:
                readings.append(out_of_gamut(pad, chart.gap))
                continue
            d = chart.distances
            weights = np.exp(-0.5 * ((d - d.min()) / sigma) ** 2)
            confidence = float(weights[chart.nearest] / weights.sum())
            reading = PadReading(pad.analyte, pad.levels[chart.nearest].code, value_at(pad, chart.position),
                                 round(confidence, 3), [], round(chart.gap, 2))
            readings.append(interpret(pad, reading))
        return readings
