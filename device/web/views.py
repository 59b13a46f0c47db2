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
from device.monitoring.alerts import in_words, reading_alerts
from device.language.i18n import N_, Words
from device.language import units
from device.language.plain import level_words, next_steps, outcome_words, plain_name, reference_range, value_text

FLAG_WORDS = {"low_confidence": N_("less certain: confirm with a laboratory test"),
              "out_of_gamut": N_("colour not on the chart"), "outside_read_window": N_("read too late"),
              "unreadable": N_("could not be read"), "category_uncertain": N_("between two categories: repeat the test")}
# the shipped rules' advice says the care team "has been told"; until the lab confirms, that becomes a request
# (each catalogue's advice keeps the phrase, so that it can be taken out in every language)
_TOLD = {"en": re.compile(r"Your care team has been\s+told(?::\s*|\s+and may contact you;\s*)(\w)"),
         "zh_CN": re.compile(r"已通知您的医护团队(?:，他们可能会联系您)?[：；]\s*()")}


def is_qc(result: dict) -> bool:
    """A control strip read by a technician: never a patient's result, never patient advice."""
    return result.get("session", {}).get("purpose") == "qc"


def pad_rows(result: dict, words: Words, pictured: set[str] = frozenset()) -> list[dict]:
    """Every pad (and derived ratio) of an `ok` reading in the words' language and report style,
    those that need attention first; `pictured`: the pads whose photographed crop is stored."""
    try:
        product = product_of_record(result["product"])
    except (SpecError, KeyError):
        product = None
    rows = [_pad_row(product, entry, entry["analyte"] in pictured, words) for entry in result.get("analytes", [])]
    rows += [_ratio_row(entry, words) for entry in result.get("derived", [])]
    return sorted(rows, key=lambda row: not row["attention"])        # stable: chart order within each group


def _pad_row(product, entry: dict, pictured: bool, words: Words) -> dict:
    pad = None
    if product is not None:
        try:
            pad = product.pad(entry["analyte"])
        except KeyError:
            pass
    level = next((lv for lv in pad.levels if lv.code == entry.get("level")), None) if pad else None
    abnormal = "abnormal" in entry.get("flags", [])
    return {"analyte": entry["analyte"], "name": plain_name(entry["analyte"], words), "level": entry.get("level"),
            "level_text": level_words(pad, entry.get("level"), words),
            "value_text": value_text(pad, entry.get("value"), words) if entry.get("level") is not None else None,
            "range": reference_range(pad, words) if pad else None, "chart": level.srgb if level else None,
            "thumbnail": pictured, "abnormal": abnormal, "attention": abnormal or entry.get("level") is None,
            "flags": entry.get("flags", []), "notes": _notes(entry.get("flags", []), words)}


def _ratio_row(entry: dict, words: Words) -> dict:
    abnormal = "abnormal" in entry.get("flags", [])
    first = None
    if entry.get("code") == "ACR":         # category A1 ends at 30 mg/g (KDIGO)
        limit, unit = units.converted("ACR", "mg/g", 30.0, words.style)
        first = words("A1 (below {limit})", limit=f"{words.number(limit, units.significant(limit))} {unit}")
    value_shown = None
    if entry.get("value") is not None:
        value, unit = units.converted(entry["code"], entry.get("unit"), entry["value"], words.style)
        amount = words.number(round(value, -1) if value >= 100 else value, units.significant(value))
        value_shown = words("about {value}", value=f"{amount} {unit}")
    return {"analyte": entry["code"], "name": plain_name(entry["code"], words), "level": entry.get("category"),
            "level_text": entry.get("category") or words("not read"), "value_text": value_shown,
            "range": first, "chart": None, "thumbnail": False,
            "abnormal": abnormal, "attention": abnormal or entry.get("category") is None,
            "flags": entry.get("flags", []), "notes": _notes(entry.get("flags", []), words)}


def _notes(flags: list[str], words: Words) -> str:
    return words("; ").join(words.gettext(FLAG_WORDS[f]) for f in flags if f in FLAG_WORDS)


def verdict(result: dict, rows: list[dict], words: Words) -> tuple[str, str]:
    """(the one line a person reads first, its tone: ok, attention, neutral)."""
    if is_qc(result):
        return words("Quality-control strip: a check of the reader, not a patient's result."), "neutral"
    if result.get("status") != "ok":
        code = result.get("outcome") or result.get("error", {}).get("code")
        reason = outcome_words(code, words) if code else words("not read")
        return words("No result: {reason}.", reason=reason), "attention"
    abnormal = sum(row["abnormal"] for row in rows)
    unread = sum(row["level"] is None for row in rows)
    if not abnormal and not unread:
        return words("All results are in the normal range."), "ok"
    parts = []
    if abnormal:
        parts.append(words.ngettext("{n} result needs attention", "{n} results need attention", abnormal)
                     .format(n=abnormal))
    if unread:
        parts.append(words.ngettext("{n} pad could not be read", "{n} pads could not be read", unread).format(n=unread))
    if len(parts) == 2:
        return words("{first}, {second}.", first=parts[0], second=parts[1]), "attention"
    return words("{only}.", only=parts[0]), "attention"


def advice(result: dict, rows: list[dict], words: Words) -> list[str]:
    return [] if is_qc(result) or result.get("status") != "ok" else next_steps(rows, words)


def safety(rules, record, history, stored: list[dict], lab: bool, words: Words) -> dict:
    """The warnings this reading raises under the alert rules, each with what the clinic knows.
    `history`: the patient's StoredResults up to and including `record`, oldest first ([record]
    when no patient is linked); `stored`: the patient's stored alerts (any state)."""
    if is_qc(record.result) or record.result.get("status") != "ok":
        return {"unlinked": False, "alerts": []}
    unlinked = record.patient_id is None
    told_phrase = _TOLD[words.locale]
    shown = []
    for alert in reading_alerts(rules, history):
        filed = max((a for a in stored if a["condition_key"] == alert.condition_key and a["seq"] <= record.seq),
                    key=lambda a: a["seq"], default=None)
        told = not unlinked and lab and filed is not None and filed["delivery"] == "sent"
        texts = alert_words(rules, alert, words)
        shown.append({"severity": alert.severity, "severity_text": severity_words(alert.severity, words),
                      "title": texts["title"],
                      "advice": texts["advice"] if told else told_phrase.sub(lambda m: m[1].upper(), texts["advice"]),
                      "clinic": _clinic_line(unlinked, lab, filed, words)})
    return {"unlinked": unlinked, "alerts": shown}


def alert_words(rules, alert, words: Words) -> dict[str, str]:
    """An alert (raised now, or stored) in the words' language."""
    return in_words(rules, alert, words, lambda code: plain_name(code, words))


SEVERITY_WORDS = {"info": N_("info"), "warning": N_("warning"), "urgent": N_("urgent")}


def severity_words(severity: str, words: Words) -> str:
    return words.gettext(SEVERITY_WORDS.get(severity, severity))


def _clinic_line(unlinked: bool, lab: bool, filed: dict | None, words: Words) -> str:
    if unlinked:
        return words("No clinic has been told: this reading is not linked to a patient. "
                     "Contact your care team yourself.")
    if not lab:
        return words("This reader does not send results to a clinic: contact your care team and show them "
                     "this result.")
    if filed is None:
        return words("Your clinic has not been told about this reading: contact them and show them this result.")
    if filed["delivery"] == "sent":
        return words("Your clinic has been told: it confirmed receiving this alert.")
    if filed["delivery"] == "failed":
        return words("The reader could not tell your clinic: contact them yourself and show them this result.")
    return words("Your clinic will be told when the reader next reaches it; if you feel unwell, contact them now.")


def findings(result: dict, words: Words) -> str:
    """One line for a list: the pads needing attention in plain words, or why there is no reading."""
    if is_qc(result):
        return words("quality-control strip")
    if result.get("status") != "ok":
        code = result.get("outcome") or result.get("error", {}).get("code")
        return words("no reading: {reason}", reason=outcome_words(code, words) if code else words("not read"))
    rows = [row for row in pad_rows(result, words) if row["attention"]]
    if not rows:
        return words("all in the normal range")
    return words(", ").join(f"{row['name']} {row['level_text']}" for row in rows)
