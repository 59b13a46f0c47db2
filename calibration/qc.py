"""Quality control of the reader with control strips: control definitions, the Westgard multirule
on each control reading, and Levey-Jennings charts.

A technician reads strips dipped in control solutions of known composition. Each control reading
(a `stripread.read/1` result) is judged against the control's definition and its recent history;
a run that fails means patient results cannot be trusted until the cause is found. This module is
pure (no database, no CLI; the clock only for a reading that carries no capture time): storing
runs and locking patient reading live with the caller.

Control definition, one TOML file per control material (unknown keys are an error)::

    id = "generic-10-pos"                 # names the control in histories and charts
    name = "Urinalysis control, level 2 (positive)"
    product = "generic-10"                # the strip product (built-in id) it is read on
    material_lot = "UC2-24118"
    expires = 2027-06-30                  # a TOML date: the last day the material may be used

    [analytes]                            # the pads this control checks, by analyte code
    GLU = { accepted = ["250", "500"] }   # acceptable level codes, contiguous on the chart
    PRO = { accepted = ["30", "100"], target = 2.4, sd = 0.3 }

Everything statistical is in chart steps: a reading's position is its level's index on the chart
plus the fraction toward the neighbouring level given by its value (`chart_position`). `target`
defaults to the middle of the accepted levels and `sd` to a quarter of their width: a level covers
half a step either side, so n accepted levels are n steps wide and the accepted range then lies at
+-2 SD, the usual reading of a manufacturer's range. With these defaults the range check decides
single readings and the multirule adds drift (4-1s, 10-x); a `target` and `sd` from the lab's own
runs of the lot (the customary twenty) make every rule bite inside the range.

Westgard rules on z = (position - target) / sd, each applied on its own (no 1-2s gate), every one
including the current reading, so old outliers alone never reject a new run:
1-2s (warning only), 1-3s, 2-2s (two consecutive readings of this control, or two controls of this
run, beyond 2 SD on the same side), R-4s (two controls of this run, one above +2 SD and the other
below -2 SD), 4-1s (four consecutive beyond 1 SD on the same side), 10-x (ten consecutive on the
same side of the target). 10-x is not applied where the target is an end of the chart (a negative
control's "neg"): readings can only fall on one side of it, so ten in a row say nothing.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, IO, Mapping, Sequence


from calibration.specs import Pad, load_product

WARNING_RULE = "1-2s"
REJECTION_RULES = ("1-3s", "2-2s", "R-4s", "4-1s", "10-x")
# (rule, consecutive readings of one control ending with the current one, limit in SD): all of
# them beyond the limit on the same side of the target
_CONSECUTIVE_RULES = (("1-3s", 1, 3.0), ("2-2s", 2, 2.0), ("4-1s", 4, 1.0), ("10-x", 10, 0.0))

_TOP_KEYS = ("id", "name", "product", "material_lot", "expires", "analytes")
_ANALYTE_KEYS = ("accepted", "target", "sd")

CHART_WIDTH_PX = 1200
_CHART_DPI = 100
_CHART_HEADER_IN = 0.8      # title and caption
_CHART_ROW_IN = 2.0         # one row of two panels
_CHART_Z_LIMIT = 4.0        # readings further out are drawn on the edge as triangles
_RED, _ORANGE, _BLUE = "#d62728", "#ff8c00", "#1f77b4"


# --- control definitions ---------------------------------------------------------------------

@dataclass(frozen=True)
class ControlAnalyte:
    """What one pad of the control must read: its accepted levels and where it should sit."""
    pad: Pad
    accepted: tuple[str, ...]     # level codes in chart order
    target: float                 # chart position
    sd: float                     # chart steps

    @property
    def analyte(self) -> str:
        return self.pad.analyte

    @property
    def accepted_label(self) -> str:
        return accepted_label(self.accepted)

    @property
    def target_at_chart_end(self) -> bool:
        return self.target <= 0.0 or self.target >= len(self.pad.levels) - 1


@dataclass(frozen=True)
class Control:
    id: str
    name: str
    product: str
    material_lot: str
    expires: date
    analytes: tuple[ControlAnalyte, ...]    # in the product's pad order

    def expired(self, on: date) -> bool:
        return on > self.expires


def accepted_label(accepted: Sequence[str]) -> str:
    """'250-500' for a range of levels, 'neg' for a single one."""
    return accepted[0] if len(accepted) == 1 else f"{accepted[0]}-{accepted[-1]}"


def load_control(path_or_text: str | Path) -> Control:
    """A control definition from a TOML file, or from TOML text (a str with a line break: a
    definition needs several keys, a path has none). Raises ValueError naming the file and the key,
    analyte or level at fault, so a bad definition is refused before it judges any run."""
    if isinstance(path_or_text, str) and "\n" in path_or_text:
        where, text = "control text", path_or_text
    else:
        where = str(path_or_text)
        try:
            text = Path(path_or_text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{where}: cannot read the control file ({exc})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where}: not valid TOML ({exc})") from None
    return _parse_control(doc, where)


def _check_keys(table: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (expected {', '.join(allowed)})")


def _text(doc: Mapping[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if value is None:
        raise ValueError(f"{where}: missing key {key!r}")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {key!r} must be a non-empty string")
    return value


def _number(spec: Mapping[str, Any], key: str, where: str) -> float:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: {key!r} must be a number of chart steps, not {value!r}")
    return float(value)


def _parse_control(doc: Mapping[str, Any], where: str) -> Control:
    _check_keys(doc, _TOP_KEYS, where)
    product_id = _text(doc, "product", where)
    try:
        product = load_product(product_id)
    except ValueError as exc:
        raise ValueError(f"{where}: product {product_id!r} cannot be loaded ({exc})") from None
    expires = doc.get("expires")
    if type(expires) is not date:       # a TOML datetime is a date subclass: refuse it too
        raise ValueError(f"{where}: 'expires' must be a TOML date such as 2027-06-30 (unquoted), "
                         f"not {expires!r}")
    analytes = doc.get("analytes")
    if not isinstance(analytes, dict) or not analytes:
        raise ValueError(f"{where}: missing key 'analytes' (a table of at least one analyte)")
    pads = {pad.analyte: pad for pad in product.pads}
    for code in analytes:
        if code not in pads:
            raise ValueError(f"{where}: analyte {code!r} is not a pad of product {product.id} "
                             f"(pads: {', '.join(pads)})")
    return Control(
        id=_text(doc, "id", where), name=_text(doc, "name", where), product=product.id,
        material_lot=_text(doc, "material_lot", where), expires=expires,
        analytes=tuple(_parse_analyte(pad, analytes[pad.analyte], f"{where}: {pad.analyte}")
                       for pad in product.pads if pad.analyte in analytes))


def _parse_analyte(pad: Pad, spec: Any, where: str) -> ControlAnalyte:
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: must be a table such as {{ accepted = [...] }}")
    _check_keys(spec, _ANALYTE_KEYS, where)
    accepted = spec.get("accepted")
    if not isinstance(accepted, list) or not accepted or not all(isinstance(c, str) for c in accepted):
        raise ValueError(f"{where}: 'accepted' must be a non-empty list of level codes")
    codes = [level.code for level in pad.levels]
    for code in accepted:
        if code not in codes:
            raise ValueError(f"{where}: level {code!r} is not on the chart ({', '.join(codes)})")
    indices = sorted(codes.index(code) for code in accepted)
    if indices != list(range(indices[0], indices[0] + len(accepted))):
        raise ValueError(f"{where}: accepted levels must be contiguous on the chart without repeats "
                         f"({', '.join(accepted)}; chart: {', '.join(codes)})")
    target = _number(spec, "target", where) if "target" in spec else (indices[0] + indices[-1]) / 2
    if not 0.0 <= target <= len(codes) - 1:
        raise ValueError(f"{where}: 'target' {target} is off the chart (0 to {len(codes) - 1})")
    sd = _number(spec, "sd", where) if "sd" in spec else len(accepted) / 4
    if sd <= 0:
        raise ValueError(f"{where}: 'sd' must be positive, not {sd}")
    return ControlAnalyte(pad, tuple(codes[i] for i in indices), target, sd)


# --- positions and rules ---------------------------------------------------------------------

def chart_position(pad: Pad, level: str | None, value: float | None) -> float | None:
    """Where a reading sits on its chart, in level steps: the inverse of the pad model's
    interpolation, so the value's fraction between two levels is kept (GLU 243.7 mg/dL -> 1.96).
    Clamped to the chart; the level's index where there is no value (nominal pads); None for a
    pad that was not reported."""
    return None if level is None else pad.position(level, value)


def _beyond_on_one_side(values: Sequence[float], limit: float) -> bool:
    return all(v > limit for v in values) or all(v < -limit for v in values)


def westgard(z: float, earlier: Sequence[float] = (), same_run: Sequence[float] = (), *,
             target_at_chart_end: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(rejection rules fired, warnings) for one reading's z, given this control's earlier z of
    the same analyte (oldest first) and the other controls' z of the same analyte in this run."""
    series = [*earlier, z]
    fired = {name for name, count, limit in _CONSECUTIVE_RULES
             if len(series) >= count and _beyond_on_one_side(series[-count:], limit)
             and not (limit == 0.0 and target_at_chart_end)}
    if any(_beyond_on_one_side((z, other), 2.0) for other in same_run):
        fired.add("2-2s")
    if any(min(z, other) < -2.0 and max(z, other) > 2.0 for other in same_run):
        fired.add("R-4s")
    warnings = (WARNING_RULE,) if abs(z) > 2.0 else ()
    return tuple(rule for rule in REJECTION_RULES if rule in fired), warnings


# --- judging a run ---------------------------------------------------------------------------

@dataclass(frozen=True)
class AnalyteQc:
    analyte: str
    level: str | None            # as read; None: not reported
    accepted: tuple[str, ...]
    position: float | None
    z: float | None
    in_range: bool
    rules: tuple[str, ...]       # rejection rules fired
    warnings: tuple[str, ...]

    @property
    def failed(self) -> bool:
        return not self.in_range or bool(self.rules)

    @property
    def range_problem(self) -> str | None:
        if self.level is None:
            return f"{self.analyte} not reported"
        if not self.in_range:
            return f"{self.analyte} out of range ({self.level}, accepted {accepted_label(self.accepted)})"
        return None


@dataclass(frozen=True)
class QcRun:
    """The verdict on one control reading. `run_problems` are those of the run as a whole
    (reading refused, wrong product, expired control); the pads' own are in `analytes`."""
    control_id: str
    material_lot: str
    at: datetime
    run_problems: tuple[str, ...]
    analytes: tuple[AnalyteQc, ...]

    @property
    def failures(self) -> list[str]:
        return [*self.run_problems,
                *(a.range_problem for a in self.analytes if a.range_problem),
                *(f"{', '.join(a.rules)} on {a.analyte}" for a in self.analytes if a.rules)]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def summary(self) -> str:
        """One line naming what failed, or 'passed' with any 1-2s warnings."""
        if not self.passed:
            return "; ".join(self.failures)
        warned = [a.analyte for a in self.analytes if a.warnings]
        return f"passed ({WARNING_RULE} warning on {', '.join(warned)})" if warned else "passed"

    @property
    def z(self) -> dict[str, float]:
        """z per analyte that has one: what the next run's history and `same_run` are made of."""
        return {a.analyte: a.z for a in self.analytes if a.z is not None}

    def analyte(self, code: str) -> AnalyteQc | None:
        return next((a for a in self.analytes if a.analyte == code), None)

    def to_dict(self) -> dict[str, Any]:
        return {"control_id": self.control_id, "material_lot": self.material_lot,
                "at": self.at.isoformat(), "passed": self.passed, "summary": self.summary,
                "run_problems": list(self.run_problems),
                "analytes": [{"analyte": a.analyte, "level": a.level, "accepted": list(a.accepted),
                              "position": a.position, "z": a.z, "in_range": a.in_range,
                              "rules": list(a.rules), "warnings": list(a.warnings)} for a in self.analytes]}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> QcRun:
        """A stored `to_dict()` back, for the next run's history and for charts."""
        return cls(doc["control_id"], doc["material_lot"], datetime.fromisoformat(doc["at"]),
                   tuple(doc["run_problems"]),
                   tuple(AnalyteQc(a["analyte"], a["level"], tuple(a["accepted"]), a["position"], a["z"],
                                   a["in_range"], tuple(a["rules"]), tuple(a["warnings"]))
                         for a in doc["analytes"]))


def history_from(runs: Sequence[QcRun]) -> dict[str, list[float]]:
    """`evaluate`'s history from this control's earlier runs (oldest first): the z of every run
    that has one, per analyte. Which runs to include (e.g. only this lot, only since the last
    corrective action) is the caller's policy."""
    history: dict[str, list[float]] = {}
    for run in runs:
        for analyte, z in run.z.items():
            history.setdefault(analyte, []).append(z)
    return history


def _reading_time(result: Mapping[str, Any]) -> datetime:
    captured = (result.get("provenance") or {}).get("captured_at")
    return datetime.fromisoformat(captured) if captured else datetime.now(timezone.utc)


def _reading_problem(control: Control, result: Mapping[str, Any]) -> str | None:
    if result.get("status") != "ok":
        return f"reading failed ({(result.get('error') or {}).get('code', 'no result')})"
    if result.get("product") != control.product:
        return f"strip is {result.get('product')}, the control is for {control.product}"
    return None


def _judge_analyte(target: ControlAnalyte, reading: Mapping[str, Any], earlier: Sequence[float],
                   same_run: Sequence[float]) -> AnalyteQc:
    """One pad; `reading` is its entry of the result ({} when the result has none)."""
    level = reading.get("level")
    position = chart_position(target.pad, level, reading.get("value"))
    if position is None:
        return AnalyteQc(target.analyte, None, target.accepted, None, None, False, (), ())
    z = (position - target.target) / target.sd
    rules, warnings = westgard(z, earlier, same_run, target_at_chart_end=target.target_at_chart_end)
    return AnalyteQc(target.analyte, level, target.accepted, position, z, level in target.accepted,
                     rules, warnings)


def evaluate(control: Control, result: Mapping[str, Any], history: Mapping[str, Sequence[float]], *,
             same_run: Mapping[str, Mapping[str, float]] | None = None,
             at: datetime | None = None) -> QcRun:
    """Judge one control reading.

    history: this control's earlier z per analyte, oldest first (`history_from`); same_run: the
    other controls' z per analyte in this run, by control id (`QcRun.z`), for 2-2s across controls
    and R-4s (`evaluate_run` does this for a whole run); at: when the control was read (default:
    the result's provenance `captured_at`, else now), which decides expiry."""
    at = at or _reading_time(result)
    reading_problem = _reading_problem(control, result)
    run_problems = [reading_problem] if reading_problem else []
    if control.expired(at.astimezone().date()):
        run_problems.append(f"control expired {control.expires.isoformat()}")
    analytes: tuple[AnalyteQc, ...] = ()
    if reading_problem is None:
        readings = {entry["analyte"]: entry for entry in result.get("analytes", ())}
        others = [zs for control_id, zs in (same_run or {}).items() if control_id != control.id]
        analytes = tuple(
            _judge_analyte(target, readings.get(target.analyte, {}), history.get(target.analyte, ()),
                           [zs[target.analyte] for zs in others if target.analyte in zs])
            for target in control.analytes)
    return QcRun(control.id, control.material_lot, at, tuple(run_problems), analytes)


def evaluate_run(reads: Sequence[tuple[Control, Mapping[str, Any]]],
                 histories: Mapping[str, Mapping[str, Sequence[float]]], *,
                 at: datetime | None = None) -> list[QcRun]:
    """Judge all control readings of one run together, so the across-control rules see every
    control: each reading is measured alone first, then judged with the others' z.
    histories: by control id, as `evaluate`'s history. The run passes when every QcRun passes."""
    ids = [control.id for control, _ in reads]
    if len(set(ids)) != len(ids):
        raise ValueError(f"a run reads each control once (got {', '.join(ids)})")
    alone = [evaluate(control, result, {}, at=at) for control, result in reads]
    same_run = {run.control_id: run.z for run in alone}
    return [evaluate(control, result, histories.get(control.id, {}), same_run=same_run, at=at)
            for control, result in reads]


# --- Levey-Jennings chart --------------------------------------------------------------------

def levey_jennings_png(control: Control, series: Sequence[QcRun], path: str | Path | IO[bytes],
                       words) -> str | Path | IO[bytes]:
    """One PNG, 1200 px wide (80 px of title plus 200 px per row of two panels): a Levey-Jennings
    panel per analyte of the control, z of each run over time against the target and +-1/2/3 SD.
    Red: the pad failed in that run (out of range, not reported, or a rule, named beside it);
    orange: a 1-2s warning; a red ring: the run failed on something else. matplotlib is imported
    here, with the Agg canvas and no pyplot state, so importing this module stays light. Its text
    in `words`' language (the device's translator, device.language.i18n.Words, passed in: calibration/ sits
    below device/ and imports nothing of it)."""
    from matplotlib import rc_context
    with rc_context({"font.family": words.plot_fonts()}):
        return _levey_jennings_figure(control, series, path, words)


def _levey_jennings_figure(control: Control, series: Sequence[QcRun], path, words):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    foreign = sorted({run.control_id for run in series} - {control.id})
    if foreign:
        raise ValueError(f"the chart of {control.id} was given runs of {', '.join(foreign)}")
    runs = sorted(series, key=lambda run: run.at)
    columns = min(2, len(control.analytes))
    rows = math.ceil(len(control.analytes) / columns)
    figure = Figure(figsize=(CHART_WIDTH_PX / _CHART_DPI, _CHART_HEADER_IN + rows * _CHART_ROW_IN),
                    dpi=_CHART_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, sharex=True, squeeze=False).ravel()
    for ax, target in zip(axes, control.analytes):
        _draw_panel(ax, target, runs, words)
    for index in range(len(control.analytes), len(axes)):
        axes[index].set_visible(False)
        axes[index - columns].xaxis.set_tick_params(labelbottom=True)   # it is now its column's last
    locator = AutoDateLocator()
    axes[0].xaxis.set_major_locator(locator)
    axes[0].xaxis.set_major_formatter(ConciseDateFormatter(locator))
    failed = sum(not run.passed for run in runs)
    figure.suptitle(words("{id}: {name}, material lot {lot} (expires {expires}); {runs} runs, {failed} failed",
                          id=control.id, name=control.name, lot=control.material_lot,
                          expires=words.date(control.expires), runs=len(runs), failed=failed), fontsize=12)
    figure.supxlabel(words("blue: z of each run; orange: 1-2s warning; red: this pad failed (rule or level "
                           "beside it; x: not reported); red ring: the run failed on another pad"),
                     fontsize=8, color="0.35")
    figure.savefig(path, format="png")      # a file name, or a binary stream (the web page serves it)
    return path


def _draw_panel(ax, target: ControlAnalyte, runs: Sequence[QcRun], words) -> None:
    """One analyte's Levey-Jennings panel (z axis clipped to +-4 SD, outliers as edge triangles)."""
    ax.axhline(0.0, color="0.15", linewidth=1.0)
    for k, style in ((1, ":"), (2, "--"), (3, "-.")):
        for side in (-k, k):
            ax.axhline(side, color="0.55", linestyle=style, linewidth=0.8)
    edge = _CHART_Z_LIMIT - 0.2
    points = [(run, qc) for run in runs if (qc := run.analyte(target.analyte)) is not None]
    measured = [(run.at, max(-edge, min(edge, qc.z))) for run, qc in points if qc.z is not None]
    if measured:
        ax.plot(*zip(*measured), color=_BLUE, linewidth=0.8, zorder=2)
    for run, qc in points:
        y = -edge if qc.z is None else max(-edge, min(edge, qc.z))
        marker = "x" if qc.z is None else "^" if qc.z > edge else "v" if qc.z < -edge else "o"
        if qc.failed:
            ax.scatter([run.at], [y], color=_RED, marker=marker, s=36, zorder=4)
            ax.annotate(", ".join(qc.rules) or qc.level or words("not reported"), (run.at, y), xytext=(4, 4),
                        textcoords="offset points", color=_RED, fontsize=8)
        elif not run.passed:
            ax.scatter([run.at], [y], facecolors="white", edgecolors=_RED, marker=marker, s=36, zorder=3)
        else:
            ax.scatter([run.at], [y], color=_ORANGE if qc.warnings else _BLUE, marker=marker, s=25,
                       zorder=3)
    ax.set_ylim(-_CHART_Z_LIMIT, _CHART_Z_LIMIT)
    ax.set_yticks(range(-3, 4), ["-3 SD", "-2 SD", "-1 SD", words("target"), "+1 SD", "+2 SD", "+3 SD"])
    ax.tick_params(labelsize=8)
    ax.set_title(words("{analyte}: target {target} ({accepted}), 1 SD = {sd} step", analyte=target.analyte,
                       target=f"{target.target:g}", accepted=target.accepted_label, sd=f"{target.sd:g}"),
                 fontsize=9, loc="left")
