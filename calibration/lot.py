"""Strip-lot calibration: a per-lot colour correction fitted from strips dipped in calibrators.

Lots differ: one lot's dyes run a little stronger or weaker, so its pads show colours shifted from
the bottle's chart and a reader trained on typical lots reads that lot a level off. A technician
dips strips of the new lot in calibrator solutions of known concentration and photographs them on
the reader; `fit_lot` measures the lot's shift per analyte and `LotCalibration.apply` removes it
from every later observation of that lot, before the pad model sees it.

The shift is a CIELAB offset (observed minus chart colour) per analyte. A stronger dye load moves
dark levels much more than pale ones, so where the calibrators cover several levels the offset is
known at each of them and interpolated along the chart; with one level it is a constant. (On the
simulator's lot with 1.35 times the dye load, calibrators at three levels brought held-out pads to
0.8 dE00 from their chart colours and between-level pads to 0.94 exact; one offset per analyte left
2.5 dE00 and 0.86.)

Calibrator file (CSV, UTF-8, header row), one row per photo and analyte with a known level:

    photo,analyte,level,concentration
    cal-01.jpg,GLU,neg,
    cal-01.jpg,PRO,30,
    cal-02.jpg,GLU,,180

`photo` is a path relative to the CSV's folder; `level` is a level code of the product's chart;
`concentration`, in the pad's unit (quantitative pads only), may be given instead and stands for its
fractional chart position (180 mg/dL glucose lies between the 100 and 250 levels). Either column
may be left out of the header; each row gives exactly one. A photo has a row for each analyte whose
level is known; an analyte without a row is not used from that photo.
"""
from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Protocol

import numpy as np

from calibration.colour import delta_e_2000
from calibration.errors import ReadError
from calibration.observe import StripObservation, StripObserver
from calibration.specs import Pad, Product


class PadModel(Protocol):
    """What the agreement figures need of a pad model (models.pads.PadModel has it): calibration/
    sits below models/ and does not import it."""

    def read(self, observation: StripObservation) -> Sequence: ...


SCHEMA = "stripread.lot/1"
MIN_STRIPS_PER_KNOT = 3      # a level gets its own offset only from a median that outvotes one bad strip
MAX_SHIFT_DE00 = 15.0        # more than this is not lot variation: the wrong lot or the wrong solution


@dataclass(frozen=True)
class Calibrator:
    """One calibrator photo and the levels known for it."""
    photo: Path
    expected: dict[str, str]     # analyte -> level code, or a concentration in the pad's unit


@dataclass(frozen=True, eq=False)
class AnalyteCorrection:
    """One pad's colour shift as a function of chart position: CIELAB offsets at knots, straight
    between them and held constant beyond (so a single knot is a constant offset)."""
    knots: np.ndarray            # (k,) chart positions, ascending
    offsets: np.ndarray          # (k, 3) observed minus chart colour at each knot
    strips: int                  # calibrator strips of this analyte
    shift_de00: float            # largest shift at a knot: how far this lot is from the chart
    spread_de00: float           # median CIEDE2000 of the strips from the fitted shift: their agreement

    def offset_at(self, positions: np.ndarray) -> np.ndarray:
        return _piecewise(positions, self.knots, self.offsets)

    def correct(self, pad: Pad, lab: np.ndarray) -> np.ndarray:
        """`lab` (n, 3) as the bottle's chart would show it. Where a colour sits is read on the lot's
        own chart (its level colours shifted), so the offset taken is the one for its true level."""
        levels = np.arange(len(pad.levels), dtype=float)
        lot_chart = pad.level_lab + self.offset_at(levels)
        return lab - self.offset_at(_position_on(lot_chart, lab))

    def to_dict(self) -> dict:
        return {"knots": self.knots.tolist(), "offsets": self.offsets.tolist(), "strips": self.strips,
                "shift_de00": self.shift_de00, "spread_de00": self.spread_de00}

    @classmethod
    def from_dict(cls, data: dict) -> AnalyteCorrection:
        knots, offsets = np.array(data["knots"], float), np.array(data["offsets"], float)
        if knots.ndim != 1 or not len(knots) or offsets.shape != (len(knots), 3):
            raise ValueError("knots and offsets do not match")
        return cls(knots, offsets, int(data["strips"]), float(data["shift_de00"]), float(data["spread_de00"]))


@dataclass(frozen=True)
class LotCalibration:
    """The correction every reading of one strip lot applies, until the lot expires."""
    lot_id: str
    product: str                 # product id
    chart_sha256: str            # the chart the offsets are measured from
    expires: date
    corrections: dict[str, AnalyteCorrection]

    def expired(self, on: date) -> bool:
        """Strips are usable through their expiry date, not after it."""
        return on > self.expires

    def apply(self, observation: StripObservation) -> StripObservation:
        """A copy of `observation` with the lot's shift removed from its pad colours. Refuses another
        product or a chart edited since the fit (the offsets would be measured from other colours) as
        a reading error, so a session stores the refusal and the technician sees it."""
        if observation.product.id != self.product or observation.product.chart_digest != self.chart_sha256:
            raise ReadError("calibration_failed", f"This reader's calibration for strip lot {self.lot_id} was made "
                                                  f"for another {self.product} chart: ask a technician to calibrate "
                                                  "the lot again.", reason="lot_chart_changed")
        return _corrected(observation, self.corrections)

    def to_dict(self) -> dict:
        """JSON-serialisable; floats are kept exact, so a reloaded calibration corrects identically."""
        return {"schema": SCHEMA, "lot_id": self.lot_id, "product": self.product,
                "chart_sha256": self.chart_sha256, "expires": self.expires.isoformat(),
                "analytes": {a: c.to_dict() for a, c in self.corrections.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> LotCalibration:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} lot calibration (schema={data.get('schema')!r})")
        try:
            return cls(str(data["lot_id"]), str(data["product"]), str(data["chart_sha256"]),
                       date.fromisoformat(data["expires"]),
                       {a: AnalyteCorrection.from_dict(c) for a, c in data["analytes"].items()})
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"lot calibration incomplete or malformed: {type(exc).__name__} {exc}") from None


def load_calibrators(csv_path: Path | str, product: Product) -> list[Calibrator]:
    """The calibrator file (see the module docstring), checked row by row: a mistake is named by its
    line before any strip is fitted."""
    csv_path = Path(csv_path)
    analytes = {pad.analyte: pad for pad in product.pads}
    photos: dict[Path, dict[str, str]] = {}
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or ())
        if not {"photo", "analyte"} <= columns or not columns & {"level", "concentration"}:
            raise ValueError(f"{csv_path}: the header needs photo, analyte and level or concentration "
                             f"(it has {sorted(columns)})")
        for row in reader:
            where = f"{csv_path} line {reader.line_num}"
            photo, analyte = csv_path.parent / (row["photo"] or "").strip(), (row["analyte"] or "").strip()
            level, concentration = ((row.get(key) or "").strip() for key in ("level", "concentration"))
            if analyte not in analytes:
                raise ValueError(f"{where}: unknown analyte {analyte!r} ({product.id} has {', '.join(analytes)})")
            pad = analytes[analyte]
            codes = [lv.code for lv in pad.levels]
            if bool(level) == bool(concentration):
                raise ValueError(f"{where}: give either a level or a concentration for {analyte}")
            if level and level not in codes:
                raise ValueError(f"{where}: {level!r} is not a level of {analyte} ({', '.join(codes)})")
            if concentration:
                _check_concentration(pad, concentration, where)
            if not photo.is_file():
                raise ValueError(f"{where}: photo {row['photo']!r} not found (looked for {photo})")
            known = photos.setdefault(photo, {})
            if analyte in known:
                raise ValueError(f"{where}: {analyte} of {row['photo']} is given twice")
            known[analyte] = level or concentration
    if not photos:
        raise ValueError(f"{csv_path}: no calibrator rows")
    return [Calibrator(photo, expected) for photo, expected in photos.items()]


def _check_concentration(pad: Pad, cell: str, where: str) -> None:
    """A concentration must be a number on the chart of a quantitative pad."""
    if not pad.quantitative:
        raise ValueError(f"{where}: {pad.analyte} has no concentration scale; give its level")
    try:
        value = float(cell)
    except ValueError:
        raise ValueError(f"{where}: concentration {cell!r} of {pad.analyte} is not a number") from None
    low, high = pad.levels[0].value, pad.levels[-1].value
    if not low <= value <= high:
        raise ValueError(f"{where}: concentration {cell} {pad.unit} is outside {pad.analyte}'s chart "
                         f"({low:g}..{high:g})")


def observe_calibrators(observer: StripObserver, calibrators: Sequence[Calibrator]
                        ) -> tuple[list[StripObservation], list[dict[str, str]]]:
    """The calibrator photos observed as a reading would be: the inputs of `fit_lot`. A photo the
    reader refuses stops the calibration with its reason; it must be retaken, not skipped silently."""
    observations = []
    for calibrator in calibrators:
        try:
            observations.append(observer.observe(calibrator.photo.read_bytes()))
        except ReadError as err:
            raise ValueError(f"{calibrator.photo}: refused ({err.code}): {err.message}") from None
    return observations, [c.expected for c in calibrators]


def fit_lot(product: Product, lot_id: str, expires: date, observations: Sequence[StripObservation],
            expected: Sequence[dict[str, str]]) -> LotCalibration:
    """The lot's correction from calibrator strips (`expected[i]`: analyte -> level code or
    concentration of `observations[i]`). Every analyte of the product needs a calibrator; a shift
    beyond MAX_SHIFT_DE00 is refused as a wrong lot or solution rather than corrected."""
    if len(observations) != len(expected):
        raise ValueError(f"{len(observations)} observations but {len(expected)} expected-level rows")
    if any(o.product.id != product.id for o in observations):
        raise ValueError(f"every calibrator strip must be observed as {product.id}")
    corrections = _fit_corrections(product, observations, _expected_positions(product, expected))
    return LotCalibration(lot_id, product.id, product.chart_digest, expires, corrections)


def agreement(model: PadModel, product: Product, observations: Sequence[StripObservation],
              expected: Sequence[dict[str, str]], calibration: LotCalibration | None = None) -> dict:
    """How often `model` reads the expected level (exact, and within one level) per analyte, before
    and after the lot correction. Without `calibration` the strips are the calibrators themselves and
    each is corrected by a fit on all the others (leave-one-strip-out), so no strip grades its own fit.
    Returns {"method", "rows"}: one row per analyte in product order, then "all"."""
    positions = _expected_positions(product, expected)
    if calibration is not None:
        corrected = [calibration.apply(o) for o in observations]
        method = f"lot {calibration.lot_id}"
    else:
        corrected = [_corrected(o, _fit_without(product, observations, positions, i))
                     for i, o in enumerate(observations)]
        method = "leave-one-strip-out"
    before = _level_errors(model, observations, positions)
    after = _level_errors(model, corrected, positions)
    analytes = [p.analyte for p in product.pads if p.analyte in before]
    rows = [_agreement_row(a, before[a], after[a]) for a in analytes]
    rows.append(_agreement_row("all", np.concatenate([before[a] for a in analytes]),
                               np.concatenate([after[a] for a in analytes])))
    return {"method": method, "rows": rows}


def format_agreement(result: dict) -> str:
    """`agreement`'s result as a plain before -> after table."""
    lines = [f"after: {result['method']}", f"{'analyte':8} {'strips':>6}  {'exact':13}  within one"]
    for row in result["rows"]:
        lines.append(f"{row['analyte']:8} {row['strips']:6d}  {row['exact_before']:.2f} -> {row['exact_after']:.2f}  "
                     f"{row['within_one_before']:.2f} -> {row['within_one_after']:.2f}")
    return "\n".join(lines)

# --- fitting -------------------------------------------------------------------------------------


def _piecewise(positions: np.ndarray, knots: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(n, 3) rows of `values` interpolated straight between `knots`, constant beyond them."""
    positions = np.asarray(positions, float)
    return np.stack([np.interp(positions, knots, values[:, c]) for c in range(values.shape[1])], axis=-1)


def _position_on(path: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Fractional position (n,) of the point nearest each colour on the straight steps of `path`
    (levels, 3), as the chart positions of `models.pads` are measured."""
    start, step = path[:-1], np.diff(path, axis=0)
    rel = lab[:, None, :] - start
    f = np.clip((rel * step).sum(-1) / np.maximum((step * step).sum(-1), 1e-12), 0.0, 1.0)
    distance = np.linalg.norm(rel - f[..., None] * step, axis=-1)
    segment = np.argmin(distance, axis=1)
    return segment + f[np.arange(len(lab)), segment]


def _expected_positions(product: Product, expected: Sequence[dict[str, str]]) -> list[dict[str, float]]:
    """Expected level codes or concentrations -> fractional chart positions, per strip."""
    positions = []
    for i, levels in enumerate(expected):
        strip = {}
        for analyte, cell in levels.items():
            try:
                position = product.pad(analyte).cell_position(cell)
            except KeyError:
                raise ValueError(f"strip {i}: {product.id} has no analyte {analyte!r}") from None
            except ValueError as exc:
                raise ValueError(f"strip {i}: {exc}") from None
            if position is not None:
                strip[analyte] = position
        positions.append(strip)
    return positions


def _fit_corrections(product: Product, observations: Sequence[StripObservation],
                     positions: Sequence[dict[str, float]]) -> dict[str, AnalyteCorrection]:
    corrections = {}
    for index, pad in enumerate(product.pads):
        used = [(p[pad.analyte], o.pad_lab[index]) for o, p in zip(observations, positions) if pad.analyte in p]
        if not used:
            raise ValueError(f"no calibrator strip for {pad.analyte}: every analyte of {product.id} needs "
                             f"at least one strip of known level")
        t, lab = (np.array(column, float) for column in zip(*used))
        corrections[pad.analyte] = _fit_analyte(pad, t, lab)
    return corrections


def _fit_analyte(pad: Pad, positions: np.ndarray, observed: np.ndarray) -> AnalyteCorrection:
    """Median offsets, per level where at least two levels have MIN_STRIPS_PER_KNOT strips each
    (strips at other levels are then left out: too few to outvote an error), else one median over
    all strips: a median is what keeps one bad strip from moving the correction."""
    levels = np.arange(len(pad.levels), dtype=float)
    chart = _piecewise(positions, levels, pad.level_lab)
    offsets = observed - chart
    nearest = np.floor(positions + 0.5)
    values, counts = np.unique(nearest, return_counts=True)
    well_covered = values[counts >= MIN_STRIPS_PER_KNOT]
    groups = [nearest == v for v in well_covered] if len(well_covered) >= 2 else [np.ones(len(positions), bool)]
    knots = np.array([np.median(positions[g]) for g in groups])
    knot_offsets = np.array([np.median(offsets[g], axis=0) for g in groups])
    knot_chart = _piecewise(knots, levels, pad.level_lab)
    shift = float(delta_e_2000(knot_chart, knot_chart + knot_offsets).max())
    if shift > MAX_SHIFT_DE00:
        raise ValueError(f"{pad.analyte}: the strips differ from the chart by {shift:.1f} dE00, implausibly "
                         f"much for a strip lot (limit {MAX_SHIFT_DE00:g}): check the lot, the product "
                         f"and the calibrator solutions")
    spread = float(np.median(delta_e_2000(observed, chart + _piecewise(positions, knots, knot_offsets))))
    return AnalyteCorrection(knots, knot_offsets, len(positions), shift, spread)


def _corrected(observation: StripObservation, corrections: dict[str, AnalyteCorrection]) -> StripObservation:
    pads = observation.product.pads
    pad_lab = np.vstack([corrections[pad.analyte].correct(pad, observation.pad_lab[i:i + 1])
                         for i, pad in enumerate(pads)])
    return dataclasses.replace(observation, pad_lab=pad_lab)


def _fit_without(product: Product, observations: Sequence[StripObservation],
                 positions: Sequence[dict[str, float]], held_out: int) -> dict[str, AnalyteCorrection]:
    keep = [i for i in range(len(observations)) if i != held_out]
    try:
        return _fit_corrections(product, [observations[i] for i in keep], [positions[i] for i in keep])
    except ValueError as exc:
        raise ValueError(f"leave-one-strip-out without strip {held_out}: {exc}") from None

# --- agreement -----------------------------------------------------------------------------------


def _level_errors(model: PadModel, observations: Sequence[StripObservation],
                  positions: Sequence[dict[str, float]]) -> dict[str, np.ndarray]:
    """Per analyte, how many levels each reading is from the expected one (inf: no level read)."""
    errors: dict[str, list[float]] = {}
    for observation, expected in zip(observations, positions):
        for pad, reading in zip(observation.product.pads, model.read(observation)):
            if pad.analyte not in expected:
                continue
            codes = [lv.code for lv in pad.levels]
            truth = np.floor(expected[pad.analyte] + 0.5)
            error = np.inf if reading.level is None else abs(codes.index(reading.level) - truth)
            errors.setdefault(pad.analyte, []).append(error)
    return {a: np.array(e) for a, e in errors.items()}


def _agreement_row(analyte: str, before: np.ndarray, after: np.ndarray) -> dict:
    return {"analyte": analyte, "strips": len(before),
            "exact_before": float(np.mean(before == 0)), "exact_after": float(np.mean(after == 0)),
            "within_one_before": float(np.mean(before <= 1)), "within_one_after": float(np.mean(after <= 1))}
