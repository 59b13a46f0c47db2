"""What a result means, in words a patient can act on: plain names for pads, levels and units (no
codes, no UCUM brackets), reference ranges, values rounded to what the chart can tell, and trend
plots a person would rather look at than a table: inline SVG drawn on the server on a time axis
(no script, no external files, readable offline), each with a table of its values beside it."""
from __future__ import annotations

import json
import math
from datetime import datetime
from functools import lru_cache
from html import escape
from importlib import resources

# what a patient calls each pad; the chart's own name follows in brackets where it differs
PLAIN_NAMES = {
    "LEU": "White blood cells", "NIT": "Nitrite (infection sign)", "URO": "Urobilinogen", "PRO": "Protein",
    "PH": "Acidity (pH)", "BLD": "Blood", "SG": "Concentration (specific gravity)", "KET": "Ketones",
    "BIL": "Bilirubin", "GLU": "Sugar (glucose)", "ALB": "Albumin", "CRE": "Creatinine",
    "ACR": "Albumin-to-creatinine ratio",
}
LEVEL_WORDS = {"neg": "negative", "pos": "positive", "trace": "trace", "small": "small", "moderate": "moderate",
               "large": "large", "xlarge": "very large"}
# UCUM units a person does not read: pH and specific gravity have none, arbitrary units name what they count
UNIT_WORDS = {"[pH]": "", "{SG}": "", "Leu/uL": "cells/µL", "Ery/uL": "cells/µL", "uL": "µL"}

NEXT_STEPS = {
    "GLU": "If you have diabetes, check your blood glucose now and follow your plan; otherwise tell your doctor.",
    "PRO": "Repeat the test with the next morning's urine; if it shows again, tell your doctor or kidney nurse.",
    "KET": "If you have diabetes and your blood glucose is high, contact your care team today.",
    "BLD": "Repeat the test in a few days (not during a period); if it shows again, tell your doctor.",
    "NIT": "A possible urinary infection: contact your doctor, especially with pain or fever.",
    "LEU": "A sign of infection or inflammation: tell your doctor if you have symptoms.",
    "BIL": "Tell your doctor; it can point to the liver.",
    "URO": "Tell your doctor at your next visit.",
    "PH": "Diet can cause this. Mention it at your next visit.",
    "SG": "Drinking more or less can cause this. Repeat the test another day.",
    "ALB": "An early sign of kidney strain: tell your doctor or kidney nurse.",
    "CRE": "It is used to correct the albumin result; repeat the test another day.",
    "ACR": "An early sign of kidney strain: tell your doctor or kidney nurse.",
}
NOT_READ = {
    "outside_read_window": "read too late to be trusted; repeat the test with a new strip.",
    "out_of_gamut": "its colour is not on the chart (a damaged or wrong strip?); repeat the test.",
}
# why a session ended without a reading, for lists (the record's own message says it in full)
OUTCOMES = {
    "strip_removed": "strip taken out too early", "cancelled": "cancelled", "locked": "not started: QC lock",
    "no_strip": "no strip put in", "board_lost": "reader stopped responding", "camera_lost": "camera stopped",
    "climate_out_of_range": "room too hot, cold or damp", "shutdown": "reader switched off",
    "storage_full": "storage full", "outside_read_window": "read too late",
}


def plain_name(code: str) -> str:
    return PLAIN_NAMES.get(code, code)


def unit_words(unit: str | None) -> str:
    return UNIT_WORDS.get(unit or "", unit or "")


def level_words(code: str | None, unit: str | None, plus: str | None = None) -> str:
    """A chart level as a person reads it: "negative", "250 mg/dL (2+)", "pH 6.5"."""
    if code is None:
        return "not read"
    words = LEVEL_WORDS.get(code)
    if words is None:
        words = f"{code} {unit_words(unit)}".strip()
    return f"{words} ({plus})" if plus and plus not in ("-", "+") else words


def outcome_words(code: str) -> str:
    return OUTCOMES.get(code, code.replace("_", " "))


@lru_cache(maxsize=1)
def _normal_levels() -> dict[str, list[str]]:
    """The chart levels the read path treats as normal (models/data/normal-levels.json)."""
    text = (resources.files("models") / "data" / "normal-levels.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if k != "comment"}


def reference_range(pad) -> str | None:
    """The usual range of a healthy adult, in the chart's terms: "negative", "0.2 to 1 mg/dL"."""
    normal = [lv for lv in pad.levels if lv.code in _normal_levels().get(pad.analyte, [])]
    if not normal:
        return None
    first, last = (level_words(lv.code, pad.unit) for lv in (normal[0], normal[-1]))
    if first == last:
        return first
    unit = unit_words(pad.unit)
    if unit and first.endswith(unit):                  # "0.2 to 1 mg/dL", not "0.2 mg/dL to 1 mg/dL"
        first = first[: -len(unit)].strip()
    return f"{first} to {last}"


def chart_rounded(pad, value: float | None) -> str | None:
    """A pad's estimate rounded to what its chart resolves: to a power of ten no finer than half
    the step between the two chart levels around it (883.5 mg/dL between 500 and 1000 is "900")."""
    values = [lv.value for lv in pad.levels]
    if value is None or None in values:
        return None
    k = min(max(sum(v <= value for v in values), 1), len(values) - 1)
    step = abs(values[k] - values[k - 1]) or 1.0
    quantum = 10.0 ** math.floor(math.log10(step / 2))
    rounded = round(value / quantum) * quantum
    decimals = max(0, -int(math.floor(math.log10(quantum))))
    return f"{rounded:.{decimals}f}"


def next_steps(pads: list[dict]) -> list[str]:
    """One sentence per pad that needs attention (rows from `device.web.views`, plain names first);
    an all-clear sentence otherwise."""
    steps = []
    for pad in pads:
        if pad["level"] is None:
            reason = next((NOT_READ[f] for f in pad["flags"] if f in NOT_READ), "not read; repeat the test.")
            steps.append(f"{pad['name']}: {reason}")
        elif pad["abnormal"]:
            steps.append(f"{pad['name']} {pad['level_text']}: {NEXT_STEPS.get(pad['analyte'], 'Tell your doctor.')}")
    return steps or ["Every pad is within the usual range. Keep testing as your care team advised."]


def trend_svg(unit: str | None, levels: list[str], points: list[dict], labelled_by: str) -> str:
    """One analyte over time: chart levels as labelled horizontal lines, each reading a dot at its
    date and chart position, larger the more confident, red when abnormal."""
    steps = max(len(levels) - 1, 1)
    shown = _spaced(len(levels), PLOT_H - PLOT_TOP - PLOT_BOTTOM, 18)   # level labels at least 18 units apart
    lines = [(i, AXIS_WORDS.get(level, LEVEL_WORDS.get(level, level)) if i in shown else "")
             for i, level in enumerate(levels)]
    dots = [(p["at"], p["position"], 3 + 4 * max(0.0, min(1.0, p["confidence"])),
             "abnormal" if p["abnormal"] else "normal") for p in points]
    unit = unit_words(unit)
    return _time_plot(dots, lines, (0, steps), labelled_by, "date" + (f", level in {unit}" if unit else ""))


def levey_jennings_svg(runs: list[tuple[str, float, str]], labelled_by: str) -> str:
    """One analyte of a control over its runs (at, z, kind: ok, warning or failed) against the
    target and 1-3 SD: the Levey-Jennings chart, on the same readable time axis as the trends."""
    lines = [(z, {-3: "-3 SD", -2: "-2 SD", 0: "target", 2: "+2 SD", 3: "+3 SD"}.get(z, "")) for z in range(-3, 4)]
    dots = [(at, max(-3.4, min(3.4, z)), 5.0, kind) for at, z, kind in runs]
    return _time_plot(dots, lines, (-3.5, 3.5), labelled_by, "date of the QC run")


PLOT_W, PLOT_H, PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 360, 230, 92, 14, 12, 48
AXIS_WORDS = {"neg": "neg", "pos": "pos", "xlarge": "v. large"}   # 15-unit labels fit the 86 units left of the plot


def _time_plot(dots: list[tuple[str, float, float, str]], lines: list[tuple[float, str]], y_range: tuple[float, float],
               labelled_by: str, x_title: str) -> str:
    """A small plot on a true time axis: horizontal reference lines with their labels, and dots
    (ISO time, y, radius, CSS class) joined in time order. Drawn 360 units wide and never scaled
    up (the stylesheet caps its width), so its 15-unit text is at least 14 px on a 390 px phone."""
    inner_w, inner_h = PLOT_W - PLOT_LEFT - PLOT_RIGHT, PLOT_H - PLOT_TOP - PLOT_BOTTOM
    times = [datetime.fromisoformat(at).timestamp() for at, *_ in dots]
    t0, t1 = (min(times), max(times)) if times else (0.0, 0.0)
    low, high = y_range

    def x(t: float) -> float:          # 12 units in from each end: a dot never covers a level's label
        return PLOT_LEFT + inner_w / 2 if t1 == t0 else PLOT_LEFT + 12 + (t - t0) / (t1 - t0) * (inner_w - 24)

    def y(value: float) -> float:
        return PLOT_TOP + inner_h - (value - low) / (high - low) * inner_h

    parts = [f'<svg class="trend" role="img" viewBox="0 0 {PLOT_W} {PLOT_H}" aria-labelledby="{escape(labelled_by)}">']
    for value, label in lines:
        parts.append(f'<line x1="{PLOT_LEFT}" x2="{PLOT_W - PLOT_RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" class="grid"/>')
        if label:
            parts.append(f'<text x="{PLOT_LEFT - 6}" y="{y(value) + 5:.1f}" text-anchor="end" class="axis">'
                         f'{escape(label)}</text>')
    if len(dots) > 1:
        path = " ".join(f"{'M' if k == 0 else 'L'}{x(t):.1f},{y(d[1]):.1f}" for k, (t, d) in enumerate(zip(times, dots)))
        parts.append(f'<path d="{path}" class="line"/>')
    for t, (_, value, radius, kind) in zip(times, dots):
        parts.append(f'<circle cx="{x(t):.1f}" cy="{y(value):.1f}" r="{radius:.1f}" class="{kind}"/>')
    for t, label, anchor in _date_ticks(t0, t1, times):
        parts.append(f'<text x="{x(t):.1f}" y="{PLOT_H - PLOT_BOTTOM + 20}" text-anchor="{anchor}" class="axis">'
                     f'{escape(label)}</text>')
    parts.append(f'<text x="{PLOT_LEFT + inner_w / 2:.1f}" y="{PLOT_H - 6}" text-anchor="middle" class="axis">'
                 f'{escape(x_title)}</text></svg>')
    return "".join(parts)


def _spaced(count: int, inner_h: float, min_gap: float) -> set[int]:
    """Which of `count` evenly spaced labels to draw so that neighbours are `min_gap` apart."""
    gap = inner_h / max(count - 1, 1)
    every = max(1, math.ceil(min_gap / gap))
    return {i for i in range(count) if i % every == 0 or i == count - 1 and (count - 1) % every >= every / 2}


def _date_ticks(t0: float, t1: float, times: list[float]) -> list[tuple[float, str, str]]:
    """Date labels: the first and the last reading, and the middle one when the span allows (three
    labels of 15-unit text fit 270 units)."""
    if not times:
        return []
    fmt = "%d %b %H:%M" if t1 - t0 < 2 * 86400 else "%d %b %Y" if t1 - t0 > 300 * 86400 else "%d %b"
    label = lambda t: datetime.fromtimestamp(t).strftime(fmt)   # noqa: E731 (local time, as the patient lives it)
    if t1 == t0:
        return [(t0, label(t0), "middle")]
    ticks = [(t0, label(t0), "start"), (t1, label(t1), "end")]
    if fmt == "%d %b":
        ticks.insert(1, ((t0 + t1) / 2, label((t0 + t1) / 2), "middle"))
    return ticks
