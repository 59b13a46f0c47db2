"""A patient's readings as series over time, one per analyte and derived quantity, for the trend
plots of the web interface and `stripread trend`, and for the alert rules' sense of a trend.

Each point is the reading's place on its chart (level steps, fractional between levels: 1.96 is
just under the third level), with its confidence and, where the pad has an interval, the interval's
ends on the same scale. A derived ratio (the ACR) is placed on its category scale: its category
boundaries are the steps (30 and 300 mg/g), log-spaced between them, a decade beyond each end.
"""
from __future__ import annotations

import math

from calibration.specs import product_of_record
from models.derived import Ratio, ratios


def series(records) -> list[dict]:
    """`records` (StoredResult, oldest first) -> [{analyte, name, unit, levels, points: [...]}] in the
    order the products list their pads; refused readings and unread pads are left out."""
    found: dict[str, dict] = {}
    for record in records:
        reading = record.reading
        if not reading.ok or reading.product is None:
            continue            # refused, or a product file no longer on this reader: nothing to place
        for entry in reading.pads:
            pad = reading.product.pad(entry.analyte)
            if entry.level is None:
                continue
            line = found.setdefault(pad.analyte, {"analyte": pad.analyte, "name": pad.name, "unit": pad.unit,
                                                  "product": reading.product.id,
                                                  "levels": [lv.code for lv in pad.levels], "points": []})
            interval = None if not entry.interval else [pad.value_position(v) for v in entry.interval]
            line["points"].append(_point(record, entry.level, entry.value, entry.confidence, entry.abnormal,
                                         pad.position(entry.level, entry.value), interval))
        for ratio, entry in zip(ratios(reading.product), reading.derived):
            if entry.value is None:
                continue
            line = found.setdefault(ratio.code, {"analyte": ratio.code, "name": ratio.name, "unit": ratio.unit,
                                                 "levels": [_fmt(b) for b in _bounds(ratio)], "points": []})
            confidence = 0.5 if "category_uncertain" in entry.flags else 1.0
            line["points"].append(_point(record, entry.category, entry.value, confidence, "abnormal" in entry.flags,
                                         _ratio_position(ratio, entry.value),
                                         [_ratio_position(ratio, v) for v in entry.interval]))
    return list(found.values())


def _point(record, level, value, confidence, abnormal, position, interval) -> dict:
    return {"seq": record.seq, "at": record.stored_at, "date": record.stored_at[:10], "level": level,
            "value": value, "confidence": confidence, "abnormal": abnormal, "position": round(position, 3),
            "interval": None if interval is None else [round(v, 3) for v in interval]}


def _bounds(ratio: Ratio) -> list[float]:
    """The category scale's steps: a decade below the first boundary, the boundaries, a decade above."""
    inner = [upper for _, upper in ratio.categories if upper is not None]
    return [inner[0] / 10, *inner, inner[-1] * 10]


def _ratio_position(ratio: Ratio, value: float) -> float:
    bounds = _bounds(ratio)
    value = min(max(value, bounds[0]), bounds[-1])
    step = next(i for i in range(len(bounds) - 1) if value <= bounds[i + 1])
    return step + math.log(value / bounds[step]) / math.log(bounds[step + 1] / bounds[step])


def _fmt(value: float) -> str:
    return f"{value:g}"


def trend_png(lines: list[dict], path, words=None) -> None:
    """All series as small multiples (matplotlib, Agg): each point at its chart place, its interval
    as a bar, its opacity its confidence, red when abnormal; the chart's levels on the y axis, in
    the words' language and report style (device.language.i18n.Words; English and conventional without)."""
    from matplotlib import rc_context
    from device.language.i18n import Words
    words = words or Words()
    with rc_context({"font.family": words.plot_fonts()}):
        _trend_figure(lines, path, words)


def pad_of(line: dict):
    """The chart a series' levels come from; None for a derived ratio (its levels are numbers)."""
    return product_of_record(line["product"]).pad(line["analyte"]) if line.get("product") else None


def _trend_figure(lines: list[dict], path, words) -> None:
    from device.language.plain import axis_label, plain_name, unit_words
    from device.language import units
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure
    from datetime import datetime
    columns = 2 if len(lines) > 1 else 1
    rows = math.ceil(len(lines) / columns)
    figure = Figure(figsize=(12, 1.0 + 2.3 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, sharex=True, squeeze=False).ravel()
    for ax, line in zip(axes, lines):
        when = [datetime.fromisoformat(p["at"]) for p in line["points"]]
        ax.plot(when, [p["position"] for p in line["points"]], color="0.6", linewidth=1, zorder=1)
        for at, point in zip(when, line["points"]):
            colour = "#a30000" if point["abnormal"] else "#0b5394"
            if point["interval"]:
                ax.vlines(at, *point["interval"], color=colour, alpha=0.5, linewidth=2, zorder=2)
            ax.scatter([at], [point["position"]], s=30 + 60 * point["confidence"], color=colour,
                       alpha=0.35 + 0.65 * point["confidence"], zorder=3)
        pad = pad_of(line)
        ax.set_yticks(range(len(line["levels"])), [axis_label(pad, code, words) for code in line["levels"]], fontsize=8)
        ax.set_ylim(-0.4, len(line["levels"]) - 0.6)
        ax.grid(axis="y", color="0.9")
        unit = unit_words(units.converted(line["analyte"], line["unit"], 1.0, words.style)[1], words)
        name = plain_name(line["analyte"], words)
        ax.set_title(words("{name} ({unit})", name=name, unit=unit) if unit else name, fontsize=10, loc="left")
    for ax in axes[len(lines):]:
        ax.set_visible(False)
    locator = AutoDateLocator()
    axes[0].xaxis.set_major_locator(locator)
    axes[0].xaxis.set_major_formatter(ConciseDateFormatter(locator))
    figure.suptitle(words("Results over time"), fontsize=12)
    figure.supxlabel(words("each dot one test at its place on the chart; bar: its interval; paler: less confident; "
                           "red: outside the usual range"), fontsize=8, color="0.35")
    figure.savefig(path, format="png")
