"""Alert rules: the turns in a patient's home results that the clinic must hear about.

After each stored reading the reader evaluates the rules over that patient's history and raises the
alerts the newest reading triggers; older readings only give context (persistence, trends), so a
condition is raised by the reading that completes it, not again by an unrelated later one. The rules
are a TOML file a clinic may edit (the defaults, `device/data/alert-rules.toml`, document every key
in their comments); a misspelt key, kind, analyte, level or placeholder is an error naming it, so a
typo cannot silently switch an alert off. Two kinds of rule:

- `threshold`: every condition in `when` (`{ analyte = "PRO", at_least = "30" }`, or `above`) holds
  on `count` of the last `of_last` tests within `within_days` days, the newest among them;
- `trend`: an analyte rose `min_rise` chart levels or more over its last `points` tests within
  `within_days` days, with a positive least-squares slope over time.

Levels are compared by their position on the reading's product chart (`Pad.position`; the ACR by its
KDIGO category, A1 < A2 < A3), never as strings. A pad that was not read (null level), or read with
less confidence than the rule's `min_confidence`, is no test at all: it never satisfies a condition.
A rule may `escalate` to a higher severity under stricter parameters; the most severe step met wins.

Each alert has a `condition_key` (rule id and the condition met, e.g. `acr_persistent:ACR>=A3`);
`new_alerts` drops alerts whose condition is already open, so an ongoing condition pages the clinic
once, while an escalation still gets through.
"""
from __future__ import annotations

import logging
import statistics
import tomllib
from dataclasses import MISSING, asdict, dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Callable, ClassVar, Sequence

from calibration.errors import SpecError
from calibration.specs import Product, builtin_products, product_of_record
from device.language.i18n import values_in
from device.reading.result import PadResult, Reading
from models.derived import Derived

log = logging.getLogger("stripread.alerts")

SCHEMA = "stripread.alert-rules/1"
DEFAULT_RULES = Path(str(resources.files("device") / "data" / "alert-rules.toml"))
SEVERITIES = ("info", "warning", "urgent")           # least to most severe: the one order on the device
_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}
_TEXTS = ("title", "message", "advice")


class AlertRulesError(Exception):
    """The rules file cannot be used; the message names the file, the rule and the key."""


def severity_rank(severity: str) -> int:
    """A severity's place in `SEVERITIES` (0: info): how alerts and patients are ordered for review."""
    return _RANK[severity]


@dataclass(frozen=True)
class Taken:
    """One stored reading of a patient: its record number, when the strip was taken (UTC, aware)
    and the reading."""
    seq: int
    taken_at: datetime
    reading: Reading


@dataclass(frozen=True)
class Alert:
    rule_id: str
    severity: str
    title: str
    message: str                     # for the clinic: the condition and the readings behind it
    advice: str                      # for the patient: what to do next, in plain words
    evidence_seqs: tuple[int, ...]   # the readings that made the rule fire, oldest first, the newest last
    condition_key: str               # rule id and condition: unchanged while the condition goes on

    def to_dict(self) -> dict:
        return {**asdict(self), "evidence_seqs": list(self.evidence_seqs)}


@dataclass(frozen=True)
class _Observation:
    """One pad (or derived ratio) of one reading, placed on its product's chart."""
    code: str
    entry: PadResult | Derived
    level: str                       # the pad's level, or the ratio's category
    position: float
    confidence: float                # a ratio's: that of the least confident pad it is computed from
    product: Product

    def __str__(self) -> str:
        value, unit = self.entry.value, self.entry.unit
        if value is None:
            return f"{self.code} {self.level}"
        return f"{self.code} {self.level} ({value:.4g}{' ' + unit if unit else ''})"


@dataclass(frozen=True)
class Condition:
    """An analyte at or above (`strict`: above) a level of its chart."""
    analyte: str
    level: str
    strict: bool

    def holds(self, observation: _Observation) -> bool:
        # the threshold is placed on the reading's own product chart, as the reading is
        threshold = _position(observation.product, self.analyte, self.level)
        return observation.position > threshold if self.strict else observation.position >= threshold

    @property
    def key(self) -> str:
        return f"{self.analyte}{'>' if self.strict else '>='}{self.level}"

    def __str__(self) -> str:
        return f"{self.analyte} {'>' if self.strict else '>='} {self.level}"


_Test = tuple[Taken, tuple[_Observation, ...]]


@dataclass(frozen=True)
class _Finding:
    """What one rule step found at the newest reading, for one subject."""
    condition: str                   # the condition key after the rule id
    evidence: tuple[_Test, ...]
    fields: dict[str, str]           # the template placeholders besides {evidence}


@dataclass(frozen=True)
class Threshold:
    """Conditions met by the newest test and, for persistence, by enough of the recent ones:
    one reading can be a fluke of the strip or the day, a repeated one is a finding."""
    when: tuple[Condition, ...]
    count: int = 1
    of_last: int = 1
    within_days: float = 365.0
    min_confidence: float = 0.0
    PLACEHOLDERS: ClassVar = ("condition", "evidence", "count", "of_last", "within_days")

    def __post_init__(self) -> None:
        if self.count > self.of_last:
            raise ValueError(f"count ({self.count}) cannot be more than of_last ({self.of_last})")

    def findings(self, readings: list[Taken]) -> dict[str, _Finding]:
        codes = [condition.analyte for condition in self.when]
        tests = _recent_tests(readings, codes, self.within_days, self.min_confidence)[-self.of_last:]
        hits = tuple((reading, observations) for reading, observations in tests
                     if all(c.holds(o) for c, o in zip(self.when, observations)))
        if len(hits) < self.count or hits[-1][0] is not readings[-1]:
            return {}
        return {"": _Finding(",".join(c.key for c in self.when), hits, {
            "condition": " and ".join(map(str, self.when)), "count": str(self.count),
            "of_last": str(self.of_last), "within_days": f"{self.within_days:g}"})}


@dataclass(frozen=True)
class Trend:
    """An analyte climbing its chart over recent tests: the early turn, before a threshold is
    crossed. The slope is over time, so a single spike followed by a decline is not a rise."""
    analytes: tuple[str, ...]
    points: int = 4
    within_days: float = 60.0
    min_rise: float = 2.0
    min_confidence: float = 0.0
    PLACEHOLDERS: ClassVar = ("analyte", "analyte_name", "evidence", "points", "within_days", "min_rise", "rise",
                              "slope")

    def __post_init__(self) -> None:
        if self.points < 2:
            raise ValueError("points must be at least 2: a trend needs two tests")

    def findings(self, readings: list[Taken]) -> dict[str, _Finding]:
        newest = readings[-1]
        found = {}
        for analyte in self.analytes:
            tests = _recent_tests(readings, [analyte], self.within_days, self.min_confidence)[-self.points:]
            if len(tests) < self.points:
                continue
            days = [(reading.taken_at - newest.taken_at).total_seconds() / 86400 for reading, _ in tests]
            positions = [observations[0].position for _, observations in tests]
            rise, slope = positions[-1] - positions[0], _slope(days, positions)
            if rise >= self.min_rise and slope > 0:
                found[analyte] = _Finding(analyte, tuple(tests), {
                    "analyte": analyte, "analyte_name": _name(tests[-1][1][0].product, analyte),
                    "points": str(self.points), "within_days": f"{self.within_days:g}",
                    "min_rise": f"{self.min_rise:g}", "rise": f"{rise:g}", "slope": f"{slope * 30:.2g}"})
        return found


_KINDS: dict[str, type[Threshold] | type[Trend]] = {"threshold": Threshold, "trend": Trend}


@dataclass(frozen=True)
class Step:
    """One severity of a rule: its parameters and its words (an escalation overrides some of them)."""
    severity: str
    title: str
    message: str
    advice: str
    params: Threshold | Trend


@dataclass(frozen=True)
class Rule:
    id: str
    kind: str
    steps: tuple[Step, ...]          # the rule itself first, then each escalation, more severe each time


def load_rules(path: str | Path | None = None) -> list[Rule]:
    """The shipped default rules, or a clinic's rules file; the whole file is checked at once so a
    bad file is refused when loaded, not when a patient's alert should have been raised."""
    path = DEFAULT_RULES if path is None else Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AlertRulesError(f"cannot read the alert rules {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AlertRulesError(f"{path} is not valid TOML: {exc}") from None
    _check_keys(doc, {"schema", "rule"}, str(path))
    if doc.get("schema") != SCHEMA:
        raise AlertRulesError(f"{path}: not a {SCHEMA} file (schema = {doc.get('schema')!r})")
    tables = doc.get("rule")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise AlertRulesError(f"{path}: write each rule as a [[rule]] table; a file without rules would never alert")
    rules = [_parse_rule(table, path, number) for number, table in enumerate(tables, 1)]
    seen = set()
    for rule in rules:
        if rule.id in seen:
            raise AlertRulesError(f"{path}: two rules have the id {rule.id!r}; alerts are told apart by it")
        seen.add(rule.id)
    return rules


def evaluate(rules: Sequence[Rule], history: Sequence[Taken]) -> list[Alert]:
    """The alerts the newest reading of a patient's history (oldest first) triggers, most severe
    first; none when the newest reading is not an `ok` one. Refused readings are no tests."""
    if not history or not history[-1].reading.ok:
        return []
    readings = [taken for taken in history if taken.reading.ok]
    alerts = []
    for rule in rules:
        raised: dict[str, tuple[Step, _Finding]] = {}
        for step in rule.steps:      # least severe first: a subject a stricter step also finds is raised there
            for subject, finding in step.params.findings(readings).items():
                raised[subject] = (step, finding)
        alerts.extend(_alert(rule.id, step, finding) for step, finding in raised.values())
    return sorted(alerts, key=lambda alert: _RANK[alert.severity], reverse=True)


def new_alerts(alerts: Sequence[Alert], open_alerts: Sequence[dict]) -> list[Alert]:
    """The alerts to deliver: one whose condition is already open (not yet acknowledged) for this
    patient is dropped, so an ongoing condition does not page the clinic at every test, unless it
    is now more severe than the open one. `open_alerts`: the patient's open alerts as stored
    (`Alert.to_dict()`; `condition_key` and `severity` are used)."""
    open_rank: dict[str, int] = {}
    for alert in open_alerts:
        key = alert["condition_key"]
        open_rank[key] = max(open_rank.get(key, -1), _RANK[alert["severity"]])
    return [alert for alert in alerts if _RANK[alert.severity] > open_rank.get(alert.condition_key, -1)]


def _alert(rule_id: str, step: Step, finding: _Finding) -> Alert:
    values = {**finding.fields, "evidence": _evidence_text(finding.evidence)}
    return Alert(rule_id=rule_id, severity=step.severity, title=step.title.format_map(values),
                 message=step.message.format_map(values), advice=step.advice.format_map(values),
                 evidence_seqs=tuple(reading.seq for reading, _ in finding.evidence),
                 condition_key=f"{rule_id}:{finding.condition}")


def _evidence_text(evidence: Sequence[_Test]) -> str:
    """Each reading by record number and time with the values the rule looked at (no patient id:
    the clinic's system already files the alert under the patient)."""
    return "; ".join(f"#{reading.seq} on {reading.taken_at.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC: "
                     + ", ".join(map(str, observations)) for reading, observations in evidence)


def _recent_tests(readings: list[Taken], codes: list[str], within_days: float,
                  min_confidence: float) -> list[_Test]:
    """The readings within the window that report every code confidently enough, oldest first;
    none unless the newest reading is one of them, since only the newest reading raises alerts."""
    newest = readings[-1]
    since = newest.taken_at - timedelta(days=within_days)
    tests = []
    for reading in readings:
        if reading.taken_at < since:
            continue
        observations = tuple(_observe(reading.reading, code) for code in codes)
        if all(o is not None and o.confidence >= min_confidence for o in observations):
            tests.append((reading, observations))
    return tests if tests and tests[-1][0] is newest else []


def _observe(reading: Reading, code: str) -> _Observation | None:
    """A pad's level in a reading, or a derived ratio's category; None when it was not reported."""
    product = reading.product
    if product is None:
        raise SpecError(f"product {reading.product_id!r} is not on this reader")
    entry = reading.pad(code)
    if entry is not None:
        level, confidence = entry.level, entry.confidence
    else:
        entry = reading.derived_entry(code)
        if entry is None:
            return None
        sources = entry.sources or [p.analyte for p in reading.pads]
        level, confidence = entry.category, min(p.confidence for p in reading.pads if p.analyte in sources)
    if level is None:
        return None
    return _Observation(code, entry, level, _position(product, code, level), confidence, product)


def _position(product: Product, code: str, level: str) -> float:
    """A level's place on the product's chart in level steps: the pad's own `position` (the level,
    not the interpolated value: a reading reported as 250 is at 250 on the chart, even when its
    estimate is 243.7), or a derived ratio's category in the product's order."""
    try:
        return product.pad(code).position(level)
    except KeyError:
        chart = _chart(product, code)
        if level not in chart:
            raise ValueError(f"{product.id}: {code} has no level {level!r} (levels: {', '.join(chart)})") from None
        return float(chart.index(level))


def _chart(product: Product, code: str) -> tuple[str, ...]:
    """The level codes of a pad, or the categories of a derived ratio, lowest first; () for neither."""
    for pad in product.pads:
        if pad.analyte == code:
            return tuple(level.code for level in pad.levels)
    return tuple(c["code"] for ratio in product.derived if ratio["code"] == code for c in ratio.get("categories", ()))


def _name(product: Product, code: str) -> str:
    try:
        return product.pad(code).name
    except KeyError:
        return next(ratio.get("name", code) for ratio in product.derived if ratio["code"] == code)


def _slope(days: list[float], positions: list[float]) -> float:
    """Chart levels per day by least squares; 0 when every test has the same time (no trend seen)."""
    try:
        return statistics.linear_regression(days, positions).slope
    except statistics.StatisticsError:
        return 0.0


# --- the rules file -----------------------------------------------------------------------------

def _parse_rule(table: dict, path: Path, number: int) -> Rule:
    rule_id = table.get("id")
    if not isinstance(rule_id, str) or not rule_id:
        raise AlertRulesError(f"{path}: rule {number} needs an id")
    where = f"{path}: rule {rule_id!r}"
    if table.get("kind") not in tuple(_KINDS):      # a tuple: a misspelt kind may be a list, unhashable
        raise AlertRulesError(f"{where}: unknown kind {table.get('kind')!r} (known: {', '.join(_KINDS)})")
    kind = _KINDS[table["kind"]]
    params = [field.name for field in fields(kind)]
    _check_keys(table, {"id", "kind", "severity", "escalate", *_TEXTS, *params}, where)
    steps = [_parse_step(table, kind, None, where)]
    escalations = table.get("escalate", [])
    if not isinstance(escalations, list) or not all(isinstance(e, dict) for e in escalations):
        raise AlertRulesError(f"{where}: write each escalation as a [[rule.escalate]] table")
    for n, escalation in enumerate(escalations, 1):
        escalation_where = f"{where} escalation {n}"
        _check_keys(escalation, {"severity", *_TEXTS, *params}, escalation_where)
        if not set(escalation) & set(params):
            raise AlertRulesError(f"{escalation_where}: an escalation must change at least one of "
                                  f"{', '.join(params)}")
        steps.append(_parse_step(escalation, kind, steps[-1], escalation_where))
    return Rule(rule_id, table["kind"], tuple(steps))


def _parse_step(table: dict, kind: type[Threshold] | type[Trend], previous: Step | None, where: str) -> Step:
    """The rule's own step (`previous` None: every required key) or an escalation of `previous`
    (more severe; what it leaves out is kept from `previous`)."""
    severity = table.get("severity")
    if severity not in SEVERITIES:
        raise AlertRulesError(f"{where}: severity must be one of {', '.join(SEVERITIES)}, not {severity!r}")
    if previous is not None and _RANK[severity] <= _RANK[previous.severity]:
        raise AlertRulesError(f"{where}: an escalation must be more severe than {previous.severity!r}")
    texts = {}
    for name in _TEXTS:
        if name in table:
            texts[name] = _template(table[name], name, kind.PLACEHOLDERS, where)
        elif previous is None:
            raise AlertRulesError(f"{where}: needs a {name}")
    given = {}
    for field in fields(kind):
        if field.name in table:
            try:
                given[field.name] = _PARSERS[field.name](table[field.name])
            except ValueError as exc:
                raise AlertRulesError(f"{where}: {field.name}: {exc}") from None
        elif previous is None and field.default is MISSING:
            raise AlertRulesError(f"{where}: needs {field.name}")
    try:
        params = kind(**given) if previous is None else replace(previous.params, **given)
    except ValueError as exc:
        raise AlertRulesError(f"{where}: {exc}") from None
    if previous is None:
        return Step(severity=severity, params=params, **texts)
    return replace(previous, severity=severity, params=params, **texts)


def _check_keys(table: dict, known: set[str], where: str) -> None:
    unknown = set(table) - known
    if unknown:
        raise AlertRulesError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(known))})")


def _template(text: object, name: str, placeholders: Sequence[str], where: str) -> str:
    """A title, message or advice, checked now by filling it in: an unknown placeholder would
    otherwise only fail when the alert is raised."""
    if not isinstance(text, str) or not text.strip():
        raise AlertRulesError(f"{where}: {name} must be text")
    try:
        text.format_map(dict.fromkeys(placeholders, "x"))
    except KeyError as exc:
        raise AlertRulesError(f"{where}: {name} uses the unknown placeholder {{{exc.args[0]}}} "
                              f"(known: {', '.join(placeholders)})") from None
    except (IndexError, ValueError, AttributeError) as exc:
        raise AlertRulesError(f"{where}: {name} is not a valid template ({exc}); "
                              "write {{ and }} for a literal brace") from None
    return text


def _charts(code: str) -> list[tuple[str, tuple[str, ...]]]:
    """(product id, levels) of every built-in product that reports `code`; a code none reports is
    a typo (an analyte on no strip would never alert)."""
    charts = [(pid, chart) for pid in builtin_products() if (chart := _chart(product_of_record(pid), code))]
    if not charts:
        raise ValueError(f"no product reports {code!r} (an analyte code such as PRO, GLU, KET, ALB, or ACR)")
    return charts


def _condition(table: object) -> Condition:
    if not isinstance(table, dict) or "analyte" not in table:
        raise ValueError(f'a condition is {{ analyte = "PRO", at_least = "30" }}, not {table!r}')
    unknown = set(table) - {"analyte", "at_least", "above"}
    if unknown:
        raise ValueError(f"unknown key(s) in a condition: {', '.join(sorted(unknown))} "
                         "(known: analyte, at_least, above)")
    analyte = table["analyte"]
    operators = [op for op in ("at_least", "above") if op in table]
    if len(operators) != 1:
        raise ValueError(f"the condition on {analyte} needs exactly one of at_least or above")
    level = table[operators[0]]
    if not isinstance(level, str):
        raise ValueError(f'write the {analyte} level in quotes, as on the chart: "{level}"')
    for product_id, chart in _charts(analyte):
        if level not in chart:
            raise ValueError(f"{analyte} has no level {level!r} on {product_id} (levels: {', '.join(chart)})")
    return Condition(analyte, level, strict=operators[0] == "above")


def _conditions(value: object) -> tuple[Condition, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError('must be a list of conditions, e.g. [{ analyte = "PRO", at_least = "30" }]')
    return tuple(map(_condition, value))


def _analytes(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(code, str) for code in value):
        raise ValueError('must be a list of analyte codes, e.g. ["PRO", "GLU"]')
    for code in value:
        _charts(code)
    return tuple(value)


def _positive(value: object) -> float:
    if not _is_number(value) or value <= 0:
        raise ValueError(f"must be a number above 0, not {value!r}")
    return float(value)


def _fraction(value: object) -> float:
    if not _is_number(value) or not 0 <= value <= 1:
        raise ValueError(f"must be a number from 0 to 1, not {value!r}")
    return float(value)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be a whole number of at least 1, not {value!r}")
    return value


_PARSERS: dict[str, Callable[[object], object]] = {
    "when": _conditions, "analytes": _analytes, "count": _whole, "of_last": _whole, "points": _whole,
    "within_days": _positive, "min_rise": _positive, "min_confidence": _fraction}


def reading_alerts(rules: Sequence[Rule], history) -> list[Alert]:
    """Every alert the newest of `history` (StoredResults, oldest first) raises, open ones elsewhere
    or not: what the reading itself says, for the store's hook and for the screen that shows it. A
    record the rules cannot read (a product no longer on the reader) raises none, and is logged."""
    readings = [Taken(r.seq, r.reading.captured_at or datetime.fromisoformat(r.stored_at), r.reading)
                for r in history]
    try:
        return evaluate(rules, readings)
    except (SpecError, ValueError) as exc:
        log.warning("alert rules skipped a reading", extra={"fields": {"record": history[-1].seq,
                                                                       "reason": type(exc).__name__}})
        return []


def in_words(rules: Sequence[Rule], alert: Alert | dict, words, analyte_name: Callable[[str], str]) -> dict[str, str]:
    """An alert's title, message and advice in the words' language (`device.language.i18n.Words`): its
    rule's templates translated (the shipped rules' texts are in the catalogues, see
    `extract_rules`) and filled with the values read back from the English text it was raised
    with, the analyte's name in `analyte_name(code)`. An alert whose rule or wording is no longer
    in `rules`, or whose template has no translation, keeps the English it was raised with."""
    raised = alert if isinstance(alert, dict) else alert.to_dict()
    rule = next((r for r in rules if r.id == raised["rule_id"]), None)
    step = next((st for st in rule.steps if st.severity == raised["severity"]), None) if rule else None
    found = {name: values_in(getattr(step, name), raised[name]) if step is not None else None for name in _TEXTS}
    analyte = next((values["analyte"] for values in found.values() if values and "analyte" in values), None)
    shown = {}
    for name, values in found.items():
        if values is None:
            shown[name] = raised[name]
            continue
        if analyte is not None:         # a title may name the analyte only by name: its code is in the message
            values["analyte_name"] = analyte_name(analyte)
        shown[name] = words.gettext(getattr(step, name)).format_map(values)
    return shown


def extract_rules(fileobj, keywords, comment_tags, options):
    """Babel's extractor for an alert-rules TOML file (babel.cfg): every title, message and advice,
    so the shipped rules' words are translated in the catalogues like any other message."""
    doc = tomllib.loads(fileobj.read().decode("utf-8"))
    for table in doc.get("rule", []):
        for step in (table, *table.get("escalate", [])):
            for name in _TEXTS:
                if name in step:
                    yield 0, None, step[name], [f"alert rule {table.get('id')}: {name}"]


def judge(rules: Sequence[Rule]):
    """The result store's hook (`ResultStore.add(judge=...)`): the alerts a patient's newest stored
    reading raises over their history, minus those already open; a reading the rules cannot read
    costs the alert, never the result."""
    def raise_alerts(history, open_alerts: list[dict]) -> list[dict]:
        return [alert.to_dict() for alert in new_alerts(reading_alerts(rules, history), open_alerts)]
    return raise_alerts
