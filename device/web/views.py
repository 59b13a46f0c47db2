"""A stored record as the screens show it: a one-line verdict, the pads that need attention before
the rest (plain names, levels with units, reference ranges, values rounded as the chart resolves
them), and the safety messages of the reading itself.

Safety messages never depend on what else is open: the alert rules are evaluated again on this
reading (and the patient's history up to it) every time the page is drawn, so an alert already open
from an earlier reading does not silence this one's, a reading with no patient still shows its
warnings (with a notice that no clinic sees it), and "your clinic has been told" is said only
when the lab acknowledged the stored alert.
"""
from __future__ import annotations

import re

from calibration.errors import SpecError
from calibration.specs import product_of_record
from device.alerts import reading_alerts
from device.web.plain import (chart_rounded, level_words, next_steps, outcome_words, plain_name, reference_range,
                              unit_words)

FLAG_WORDS = {"low_confidence": "less certain: confirm with a laboratory test", "out_of_gamut": "colour not on the chart",
              "outside_read_window": "read too late", "unreadable": "could not be read",
              "category_uncertain": "between two categories: repeat the test"}
# the shipped rules' advice says the care team "has been told"; until the lab confirms, that becomes a request
_TOLD = re.compile(r"Your care team has been\s+told(?::\s*|\s+and may contact you;\s*)(\w)")


def is_qc(result: dict) -> bool:
    """A control strip read by a technician: never a patient's result, never patient advice."""
    return result.get("session", {}).get("purpose") == "qc"


def pad_rows(result: dict, pictured: set[str] = frozenset()) -> list[dict]:
    """Every pad (and derived ratio) of an `ok` reading, those that need attention first;
    `pictured`: the pads whose photographed crop is stored."""
    try:
        product = product_of_record(result["product"])
    except (SpecError, KeyError):
        product = None
    rows = [_pad_row(product, entry, entry["analyte"] in pictured) for entry in result.get("analytes", [])]
    rows += [_ratio_row(entry) for entry in result.get("derived", [])]
    return sorted(rows, key=lambda row: not row["attention"])        # stable: chart order within each group


def _pad_row(product, entry: dict, pictured: bool) -> dict:
    pad = None
    if product is not None:
        try:
            pad = product.pad(entry["analyte"])
        except KeyError:
            pass
    level = next((lv for lv in pad.levels if lv.code == entry.get("level")), None) if pad else None
    unit = pad.unit if pad else entry.get("unit")
    abnormal = "abnormal" in entry.get("flags", [])
    return {"analyte": entry["analyte"], "name": plain_name(entry["analyte"]), "level": entry.get("level"),
            "level_text": level_words(entry.get("level"), unit, _plus(product, entry["analyte"], entry.get("level"))),
            "value_text": value_text(pad, entry.get("value"), unit) if entry.get("level") is not None else None,
            "range": reference_range(pad) if pad else None, "chart": level.srgb if level else None,
            "thumbnail": pictured, "abnormal": abnormal, "attention": abnormal or entry.get("level") is None,
            "flags": entry.get("flags", []), "notes": _notes(entry.get("flags", []))}


def _plus(product, analyte: str, code: str | None) -> str | None:
    """The level's plus grade ("2+") where the product file gives one (the Level type does not keep it)."""
    pads = product.source.get("pads", []) if product is not None else []
    levels = next((p["levels"] for p in pads if p.get("analyte") == analyte), [])
    return next((lv.get("plus") for lv in levels if lv.get("code") == code), None)


def _ratio_row(entry: dict) -> dict:
    unit = entry.get("unit")
    abnormal = "abnormal" in entry.get("flags", [])
    first = "A1 (below 30 mg/g)" if entry.get("code") == "ACR" else None
    value = entry.get("value")
    return {"analyte": entry["code"], "name": plain_name(entry["code"]), "level": entry.get("category"),
            "level_text": entry.get("category") or "not read",
            "value_text": None if value is None else f"about {value:.2g} {unit}" if value < 100 else
            f"about {round(value, -1):.0f} {unit}", "range": first, "chart": None, "thumbnail": False,
            "abnormal": abnormal, "attention": abnormal or entry.get("category") is None,
            "flags": entry.get("flags", []), "notes": _notes(entry.get("flags", []))}


def value_text(pad, value: float | None, unit: str | None) -> str | None:
    """"about 900 mg/dL": the estimate as far as the chart resolves it; None without a numeric chart."""
    rounded = chart_rounded(pad, value) if pad else None
    if rounded is None:
        return None
    return f"about {rounded} {unit_words(unit)}".strip()


def _notes(flags: list[str]) -> str:
    return "; ".join(FLAG_WORDS[f] for f in flags if f in FLAG_WORDS)


def verdict(result: dict, rows: list[dict]) -> tuple[str, str]:
    """(the one line a person reads first, its tone: ok, attention, neutral)."""
    if is_qc(result):
        return "Quality-control strip: a check of the reader, not a patient's result.", "neutral"
    if result.get("status") != "ok":
        return "No result: " + (result.get("message") or result.get("error", {}).get("message", "not read")), \
            "attention"
    abnormal = sum(row["abnormal"] for row in rows)
    unread = sum(row["level"] is None for row in rows)
    if not abnormal and not unread:
        return "All results are in the normal range.", "ok"
    parts = []
    if abnormal:
        parts.append(f"{abnormal} result{'s' if abnormal > 1 else ''} need{'' if abnormal > 1 else 's'} attention")
    if unread:
        parts.append(f"{unread} pad{'s' if unread > 1 else ''} could not be read")
    return ", ".join(parts).capitalize() + ".", "attention"


def advice(result: dict, rows: list[dict]) -> list[str]:
    return [] if is_qc(result) or result.get("status") != "ok" else next_steps(rows)


def safety(rules, record, history, stored: list[dict], lab: bool) -> dict:
    """The warnings this reading raises under the alert rules, each with what the clinic knows.
    `history`: the patient's StoredResults up to and including `record`, oldest first ([record]
    when no patient is linked); `stored`: the patient's stored alerts (any state)."""
    if is_qc(record.result) or record.result.get("status") != "ok":
        return {"unlinked": False, "alerts": []}
    unlinked = record.patient_id is None
    shown = []
    for alert in reading_alerts(rules, history):
        filed = max((a for a in stored if a["condition_key"] == alert.condition_key and a["seq"] <= record.seq),
                    key=lambda a: a["seq"], default=None)
        told = not unlinked and lab and filed is not None and filed["delivery"] == "sent"
        shown.append({"severity": alert.severity, "title": alert.title,
                      "advice": alert.advice if told else _TOLD.sub(lambda m: m[1].upper(), alert.advice),
                      "clinic": _clinic_line(unlinked, lab, filed)})
    return {"unlinked": unlinked, "alerts": shown}


def _clinic_line(unlinked: bool, lab: bool, filed: dict | None) -> str:
    if unlinked:
        return "No clinic has been told: this reading is not linked to a patient. Contact your care team yourself."
    if not lab:
        return "This reader does not send results to a clinic: contact your care team and show them this result."
    if filed is None:
        return "Your clinic has not been told about this reading: contact them and show them this result."
    if filed["delivery"] == "sent":
        return "Your clinic has been told: it confirmed receiving this alert."
    if filed["delivery"] == "failed":
        return "The reader could not tell your clinic: contact them yourself and show them this result."
    return "Your clinic will be told when the reader next reaches it; if you feel unwell, contact them now."


def findings(result: dict) -> str:
    """One line for a list: the pads needing attention in plain words, or why there is no reading."""
    if is_qc(result):
        return "quality-control strip"
    if result.get("status") != "ok":
        code = result.get("outcome") or result.get("error", {}).get("code")
        return "no reading: " + (outcome_words(code) if code else "not read")
    rows = [row for row in pad_rows(result) if row["attention"]]
    if not rows:
        return "all in the normal range"
    return ", ".join(f"{row['name']} {row['level_text']}" for row in rows)
