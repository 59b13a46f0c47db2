"""The command line's human output: a reading as a table a nurse can read at a glance, in the
device's language and report style (the same words and rounding as the web pages), and the demo's
progress lines said again in that language. `--json` output never passes through here."""
from __future__ import annotations

import unicodedata

from device.language.i18n import N_, Words
from device.web import views
from device.language.plain import outcome_words

# device.runtime.session's progress lines (on_progress), as templates: the longer of two overlapping first
SESSION_LINES = (N_("waiting for the strip"), N_("strip in: developing, reads at {times} s"),
                 N_("{taken} s: read {pads} - refused ({code})"), N_("{taken} s: read {pads}"),
                 N_("{outcome}: stored as record #{seq}"), N_("{outcome}: kept in memory until the store can take it"))


def table(result: dict, words: Words) -> str:
    """Each pad (those needing attention first, marked `!`): its code, plain name, level in the
    report style, the estimate as the chart resolves it, and notes; then what read it."""
    if result["status"] != "ok":
        code = result.get("outcome") or result["error"]["code"]
        said = words("Not read ({code}): {reason}.", code=code, reason=outcome_words(code, words))
        # what the reader said of this reading (which control failed, what to do) is kept under it
        detail = result.get("message") or result.get("error", {}).get("message")
        return f"{said}\n{detail}" if detail else said
    rows = [("", words("Code"), words("Test"), words("Result"), words("Estimate"), words("Notes"))]
    for row in views.pad_rows(result, words):
        rows.append(("!" if row["attention"] else "", row["analyte"], row["name"], row["level_text"],
                     row["value_text"] or "", row["notes"]))
    widths = [max(_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(_pad(c, w) for c, w in zip(r, widths)).rstrip() for r in rows]
    qc = result["qc"]
    lines.append("\n" + words("product {product}, card {card}, colour check {residual} dE00",
                              product=result["product"], card=qc["card_id"],
                              residual=words.number(qc["color_residual_de00"], 2)))
    return "\n".join(lines)


def advice(record, rules, words: Words) -> str:
    """What to do next and the warnings the reading raises, as the result page says them (a
    reader without a lab: the patient is asked to contact the clinic)."""
    if record.result.get("status") != "ok":
        return ""
    steps = views.advice(record.result, views.pad_rows(record.result, words), words)
    lines = [words("What to do next:"), *(f"- {step}" for step in steps)]
    for alert in views.safety(rules, record, [record], [], False, words)["alerts"]:
        lines += ["", "! " + words("{title} ({severity})", title=alert["title"], severity=alert["severity_text"]),
                  f"  {alert['advice']}", f"  {alert['clinic']}"]
    return "\n".join(lines)


def session_line(message: str, words: Words) -> str:
    """A progress line of the reading session in the words' language (pad codes and record numbers
    as they are, an outcome in words)."""
    return words.retell(message, SESSION_LINES, outcome=lambda code: outcome_words(code, words))


def _width(text: str) -> int:
    """Columns a terminal gives `text`: two for each wide (CJK) character."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))
