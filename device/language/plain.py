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

from device.language import units
from device.language.i18n import N_, Words

# what a patient calls each pad (translated where shown)
PLAIN_NAMES = {
    "LEU": N_("White blood cells"), "NIT": N_("Nitrite (infection sign)"), "URO": N_("Urobilinogen"),
    "PRO": N_("Protein"), "PH": N_("Acidity (pH)"), "BLD": N_("Blood"), "SG": N_("Concentration (specific gravity)"),
    "KET": N_("Ketones"), "BIL": N_("Bilirubin"), "GLU": N_("Sugar (glucose)"), "ALB": N_("Albumin"),
    "CRE": N_("Creatinine"), "ACR": N_("Albumin-to-creatinine ratio"),
}
LEVEL_WORDS = {"neg": N_("negative"), "pos": N_("positive"), "trace": N_("trace"), "small": N_("small"),
               "moderate": N_("moderate"), "large": N_("large"), "xlarge": N_("very large")}
# UCUM units a person does not read: pH and specific gravity have none, arbitrary units name what they count
UNIT_WORDS = {"[pH]": "", "{SG}": "", "Leu/uL": N_("cells/µL"), "Ery/uL": N_("cells/µL"), "uL": "µL",
              "umol/L": "µmol/L"}

NEXT_STEPS = {
    "GLU": N_("If you have diabetes, check your blood glucose now and follow your plan; otherwise tell your doctor."),
    "PRO": N_("Repeat the test with the next morning's urine; if it shows again, tell your doctor or kidney nurse."),
    "KET": N_("If you have diabetes and your blood glucose is high, contact your care team today."),
    "BLD": N_("Repeat the test in a few days (not during a period); if it shows again, tell your doctor."),
    "NIT": N_("A possible urinary infection: contact your doctor, especially with pain or fever."),
    "LEU": N_("A sign of infection or inflammation: tell your doctor if you have symptoms."),
    "BIL": N_("Tell your doctor; it can point to the liver."),
    "URO": N_("Tell your doctor at your next visit."),
    "PH": N_("Diet can cause this. Mention it at your next visit."),
    "SG": N_("Drinking more or less can cause this. Repeat the test another day."),
    "ALB": N_("An early sign of kidney strain: tell your doctor or kidney nurse."),
    "CRE": N_("It is used to correct the albumin result; repeat the test another day."),
    "ACR": N_("An early sign of kidney strain: tell your doctor or kidney nurse."),
}
NOT_READ = {
    "outside_read_window": N_("read too late to be trusted; repeat the test with a new strip."),
    "out_of_gamut": N_("its colour is not on the chart (a damaged or wrong strip?); repeat the test."),
}
# why a session ended without a reading, for lists (the record's own message says it in full)
OUTCOMES = {
    "completed": N_("completed"), "strip_removed": N_("strip taken out too early"), "cancelled": N_("cancelled"),
    "locked": N_("not started: QC lock"), "no_strip": N_("no strip put in"),
    "board_lost": N_("reader stopped responding"), "camera_lost": N_("camera stopped"),
    "climate_out_of_range": N_("room too hot, cold or damp"), "shutdown": N_("reader switched off"),
    "storage_full": N_("storage full"), "outside_read_window": N_("read too late"),
    # the read path's refusals (stripread.read/1 error codes)
    "image_unreadable": N_("the photo could not be opened"), "card_not_found": N_("reference card not found"),
    "strip_not_found": N_("no strip found on the card"), "wrong_strip": N_("not the expected strip"),
    "strip_reversed": N_("strip put in the wrong way round"), "glare": N_("too much glare"),
    "too_dark": N_("too dark"), "overexposed": N_("too bright"), "blurred": N_("photo blurred"),
    "calibration_failed": N_("the colour calibration failed"), "model_error": N_("the reading model failed"),
    "internal": N_("an internal error"),
}
NO_GRADE = ("-", "+")        # nominal grades a conventional report does not repeat beside "negative"/"positive"


def plain_name(code: str, words: Words) -> str:
    return words.gettext(PLAIN_NAMES[code]) if code in PLAIN_NAMES else code


def unit_words(unit: str | None, words: Words) -> str:
    shown = UNIT_WORDS.get(unit or "", unit or "")
    return words.gettext(shown) if shown else ""


def level_words(pad, code: str | None, words: Words) -> str:
    """A chart level as a person reads it in the words' report style: conventional "250 mg/dL (2+)",
    "negative", "6.5"; si "14 mmol/L (2+)"; plus "2+ (14 mmol/L)", "negative (-)". `pad`: the
    product's pad (None: a pad of a product no longer on the reader, shown by its code)."""
    if code is None:
        return words.gettext("not read")
    level = next((lv for lv in pad.levels if lv.code == code), None) if pad is not None else None
    if level is None:
        return code
    named = LEVEL_WORDS.get(code)
    amount = _level_amount(pad, level, words)
    if words.style == "plus" and level.plus:
        if level.plus in NO_GRADE and named:
            return words("{text} ({grade})", text=words.gettext(named), grade=level.plus)
        return words("{text} ({grade})", text=level.plus, grade=amount) if amount and level.value else level.plus
    text = words.gettext(named) if named else amount or code
    return words("{text} ({grade})", text=text, grade=level.plus) if level.plus and level.plus not in NO_GRADE else text


def _level_amount(pad, level, words: Words) -> str | None:
    """A chart level's value with its unit in the words' style ("14 mmol/L", "6.5", "1.015");
    None for a nominal pad."""
    if level.value is None:
        return None
    if words.style == "conventional" or units.si(pad.analyte, pad.unit) is None:
        shown = level.code if level.code not in LEVEL_WORDS else words.number(level.value, units.significant(level.value))
        return f"{shown} {unit_words(pad.unit, words)}".strip()
    value, unit = units.converted(pad.analyte, pad.unit, level.value, words.style)
    return f"{words.number(value, units.significant(value))} {unit_words(unit, words)}"


def outcome_words(code: str, words: Words) -> str:
    return words.gettext(OUTCOMES[code]) if code in OUTCOMES else code.replace("_", " ")


@lru_cache(maxsize=1)
def _normal_levels() -> dict[str, list[str]]:
    """The chart levels the read path treats as normal (models/data/normal-levels.json)."""
    text = (resources.files("models") / "data" / "normal-levels.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if k != "comment"}


def reference_range(pad, words: Words) -> str | None:
    """The usual range of a healthy adult, in the chart's terms and the words' style: "negative",
    "0.2 to 1 mg/dL", "3.4 to 17 µmol/L"."""
    normal = [lv for lv in pad.levels if lv.code in _normal_levels().get(pad.analyte, [])]
    if not normal:
        return None
    first, last = (level_words(pad, lv.code, words) for lv in (normal[0], normal[-1]))
    if first == last:
        return first
    unit = unit_words(units.converted(pad.analyte, pad.unit, 1.0, words.style)[1], words)
    if unit and first.endswith(unit):                  # "0.2 to 1 mg/dL", not "0.2 mg/dL to 1 mg/dL"
        first = first[: -len(unit)].strip()
    return words("{low} to {high}", low=first, high=last)


def chart_rounded(pad, value: float | None, words: Words) -> str | None:
    """A pad's estimate in the words' style, rounded to what its chart resolves: to a power of ten
    no finer than half the step between the two chart levels around it (883.5 mg/dL between 500
    and 1000 is "900"; in SI, 49.0 mmol/L between 27.8 and 55.5 is "49")."""
    values = [lv.value for lv in pad.levels]
    if value is None or None in values:
        return None
    shown = [units.converted(pad.analyte, pad.unit, v, words.style)[0] for v in values]
    estimate = units.converted(pad.analyte, pad.unit, value, words.style)[0]
    quantum = units.chart_quantum(shown, estimate)
    decimals = max(0, -int(math.floor(math.log10(quantum))))
    return words.number(round(estimate / quantum) * quantum, decimals)


def value_text(pad, value: float | None, words: Words) -> str | None:
    """"about 900 mg/dL": the estimate as far as the chart resolves it; None without a numeric chart."""
    rounded = chart_rounded(pad, value, words) if pad else None
    if rounded is None:
        return None
    unit = unit_words(units.converted(pad.analyte, pad.unit, 1.0, words.style)[1], words)
    return words("about {value}", value=f"{rounded} {unit}".strip())


def next_steps(pads: list[dict], words: Words) -> list[str]:
    """One sentence per pad that needs attention (rows from `device.web.views`, plain names first);
    an all-clear sentence otherwise."""
    steps = []
    for pad in pads:
        if pad["level"] is None:
            reason = next((NOT_READ[f] for f in pad["flags"] if f in NOT_READ), N_("not read; repeat the test."))
            steps.append(words("{name}: {advice}", name=pad["name"], advice=words.gettext(reason)))
        elif pad["abnormal"]:
            advice = words.gettext(NEXT_STEPS.get(pad["analyte"], N_("Tell your doctor.")))
            steps.append(words("{name} {level}: {advice}", name=pad["name"], level=pad["level_text"], advice=advice))
    return steps or [words("Every pad is within the usual range. Keep testing as your care team advised.")]


def trend_svg(pad, unit: str | None, levels: list[str], points: list[dict], labelled_by: str, words: Words) -> str:
    """One analyte over time: chart levels as labelled horizontal lines (in the words' report
    style), each reading a dot at its date and chart position, larger the more confident, red
    when abnormal. `pad`: the product's pad, None for a derived ratio (its levels are numbers)."""
    steps = max(len(levels) - 1, 1)
    shown = _spaced(len(levels), PLOT_H - PLOT_TOP - PLOT_BOTTOM, 18)   # level labels at least 18 units apart
    lines = [(i, axis_label(pad, level, words) if i in shown else "") for i, level in enumerate(levels)]
    dots = [(p["at"], p["position"], 3 + 4 * max(0.0, min(1.0, p["confidence"])),
             "abnormal" if p["abnormal"] else "normal") for p in points]
    if pad is not None:
        unit = units.converted(pad.analyte, pad.unit, 1.0, words.style)[1]
    unit = unit_words(unit, words)
    title = words("date, level in {unit}", unit=unit) if unit else words("date")
    return _time_plot(dots, lines, (0, steps), labelled_by, title, words)


def axis_label(pad, code: str, words: Words) -> str:
    """A chart level as a plot's axis names it: short (15-unit text fits the 86 units left of the
    plot), without its unit, in the words' style ("neg", "250"; si "14"; plus "2+")."""
    level = next((lv for lv in pad.levels if lv.code == code), None) if pad is not None else None
    if level is None:
        return code
    if words.style == "plus" and level.plus:
        return level.plus
    if code in AXIS_WORDS or code in LEVEL_WORDS:
        return words.gettext(AXIS_WORDS.get(code) or LEVEL_WORDS[code])
    if level.value is not None and words.style != "conventional" and units.si(pad.analyte, pad.unit):
        value = units.converted(pad.analyte, pad.unit, level.value, words.style)[0]
        return words.number(value, units.significant(value))
    return code


def levey_jennings_svg(runs: list[tuple[str, float, str]], labelled_by: str, words: Words) -> str:
    """One analyte of a control over its runs (at, z, kind: ok, warning or failed) against the
    target and 1-3 SD: the Levey-Jennings chart, on the same readable time axis as the trends."""
    marks = {-3: "-3 SD", -2: "-2 SD", 0: words("target"), 2: "+2 SD", 3: "+3 SD"}
    lines = [(z, marks.get(z, "")) for z in range(-3, 4)]
    dots = [(at, max(-3.4, min(3.4, z)), 5.0, kind) for at, z, kind in runs]
    return _time_plot(dots, lines, (-3.5, 3.5), labelled_by, words("date of the QC run"), words)


PLOT_W, PLOT_H, PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 360, 230, 92, 14, 12, 48
AXIS_WORDS = {"neg": N_("neg"), "pos": N_("pos"), "xlarge": N_("v. large")}   # short forms of LEVEL_WORDS


def _time_plot(dots: list[tuple[str, float, float, str]], lines: list[tuple[float, str]], y_range: tuple[float, float],
               labelled_by: str, x_title: str, words: Words) -> str:
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
    for t, label, anchor in _date_ticks(t0, t1, times, words):
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


def _date_ticks(t0: float, t1: float, times: list[float], words: Words) -> list[tuple[float, str, str]]:
    """Date labels: the first and the last reading, and the middle one when the span allows (three
    labels of 15-unit text fit 270 units); local time, as the patient lives it."""
    if not times:
        return []
    with_time, with_year = t1 - t0 < 2 * 86400, t1 - t0 > 300 * 86400
    label = lambda t: words.date(datetime.fromtimestamp(t), with_year, with_time)   # noqa: E731
    if t1 == t0:
        return [(t0, label(t0), "middle")]
    ticks = [(t0, label(t0), "start"), (t1, label(t1), "end")]
    if not with_time and not with_year:
        ticks.insert(1, ((t0 + t1) / 2, label((t0 + t1) / 2), "middle"))
    return ticks
