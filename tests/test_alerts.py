"""Alert rules on constructed patient histories: each default rule fires when it should and stays
silent when it should not; deduplication; a clinic's own rules file and bad ones."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from calibration.specs import load_product
from device.monitoring.alerts import DEFAULT_RULES, AlertRulesError, Taken, evaluate, load_rules, new_alerts
from device.reading.result import Reading

T0 = datetime(2024, 3, 1, 8, 30, tzinfo=timezone.utc)
GENERIC = load_product("generic-10")
ACR_VALUES = {"A1": 12.5, "A2": 45.2, "A3": 420.0}
PATIENT_ID = "MRN-555123"


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def strip(confidence: float = 0.95, **levels: str | None) -> dict:
    """A generic-10 result: each pad at its lowest level unless given (None: not read), its value
    the chart value of its level. It names a patient, as a stored record may: alerts must not."""
    analytes = []
    for pad in GENERIC.pads:
        level = levels.pop(pad.analyte, pad.levels[0].code)
        value = next((lv.value for lv in pad.levels if lv.code == level), None)
        analytes.append({"analyte": pad.analyte, "level": level, "value": value, "unit": pad.unit,
                         "confidence": confidence, "flags": [] if level is None else ["abnormal"]})
    assert not levels, f"not pads of generic-10: {levels}"
    return {"schema": "stripread.read/1", "status": "ok", "product": "generic-10", "analytes": analytes,
            "patient_id": PATIENT_ID}


def acr(category: str | None, albumin: str = "30", confidence: float = 0.95) -> dict:
    """An acr-2 result whose albumin-to-creatinine ratio falls in `category` (None: not computed)."""
    value = ACR_VALUES.get(category)
    pads = [{"analyte": "ALB", "level": albumin, "value": float(albumin), "unit": "mg/L",
             "confidence": confidence, "flags": []},
            {"analyte": "CRE", "level": "100", "value": 100.0, "unit": "mg/dL", "confidence": confidence, "flags": []}]
    ratio = {"code": "ACR", "value": value, "unit": "mg/g", "category": category,
             "interval": None if value is None else [value * 0.8, value * 1.25]}
    return {"schema": "stripread.read/1", "status": "ok", "product": "acr-2", "analytes": pads,
            "derived": [ratio], "patient_id": PATIENT_ID}


# a refused reading, here still carrying what its pads looked like: it must not count as a test
REFUSED = {**strip(), "status": "error", "error": {"code": "glare", "message": "Too much glare."}}


def history(*tests: tuple[float, dict]) -> list[Taken]:
    """Readings (days after T0, result), oldest first, numbered from 101."""
    return [Taken(101 + i, T0 + timedelta(days=day), Reading.from_dict(result))
            for i, (day, result) in enumerate(tests)]


def weekly(*results: dict) -> list[Taken]:
    return history(*((7 * week, result) for week, result in enumerate(results)))


def fired(rules, readings) -> dict[str, list]:
    alerts = {}
    for alert in evaluate(rules, readings):
        alerts.setdefault(alert.rule_id, []).append(alert)
    return alerts


# --- the defaults ---------------------------------------------------------------------------------

def test_the_shipped_rules_load_with_words_for_clinic_and_patient(rules):
    assert [r.id for r in rules] == ["acr_persistent", "protein_consecutive", "glucose_high", "ketone_with_glucose",
                                     "nitrite_with_leukocytes", "rising_trend"]
    for rule in rules:
        for step in rule.steps:
            assert step.title and step.message and step.advice
    assert [s.severity for s in rules[0].steps] == ["warning", "urgent"]
    assert load_rules(DEFAULT_RULES) == rules


# --- acr_persistent -------------------------------------------------------------------------------

def test_acr_a2_on_two_of_the_last_three_tests_warns_naming_the_evidence(rules):
    readings = history((0, acr("A2")), (30, acr("A1")), (60, acr("A2")))
    [alert] = fired(rules, readings)["acr_persistent"]
    assert alert.severity == "warning"
    assert alert.condition_key == "acr_persistent:ACR>=A2"
    assert alert.evidence_seqs == (101, 103)
    assert "#101 on 2024-03-01 08:30 UTC: ACR A2 (45.2 mg/g)" in alert.message
    assert "#103 on 2024-04-30 08:30 UTC" in alert.message and "#102" not in alert.message
    assert "2 of the last 3" in alert.message


def test_acr_a3_that_persists_is_urgent_and_raised_once(rules):
    [alert] = fired(rules, history((0, acr("A3")), (20, acr("A2")), (40, acr("A3"))))["acr_persistent"]
    assert (alert.severity, alert.condition_key) == ("urgent", "acr_persistent:ACR>=A3")
    assert "A3" in alert.title and alert.advice != rules[0].steps[0].advice


def test_acr_a3_once_among_a2_is_persistent_a2_not_a3(rules):
    [alert] = fired(rules, history((0, acr("A2")), (20, acr("A3"))))["acr_persistent"]
    assert (alert.severity, alert.condition_key) == ("warning", "acr_persistent:ACR>=A2")


@pytest.mark.parametrize("tests", [
    [(0, acr("A1")), (30, acr("A1")), (60, acr("A2"))],                     # A2 only once in 3
    [(0, acr("A2")), (120, acr("A2"))],                                      # twice, but 120 days apart
    [(0, acr("A2")), (10, acr("A1")), (20, acr("A1")), (30, acr("A2"))],    # twice, but not in the last 3
    [(0, acr("A2")), (10, acr("A2")), (20, acr("A1"))],                     # persisted, but the newest is A1
    [(0, acr("A2")), (10, acr(None))],                                       # the newest ratio was not computed
], ids=["once-in-three", "120-days-apart", "not-in-last-three", "newest-normal", "newest-null"])
def test_acr_without_persistence_is_silent(rules, tests):
    assert "acr_persistent" not in fired(rules, history(*tests))


# --- protein_consecutive --------------------------------------------------------------------------

@pytest.mark.parametrize("results", [
    [strip(PRO="30"), strip(PRO="30")],
    [strip(PRO="300"), strip(PRO="30")],
    [strip(PRO="30"), strip(PRO=None), REFUSED, acr("A1"), strip(PRO="100")],   # no protein test in between
], ids=["30-30", "300-30", "unread-refused-and-acr-strips-between"])
def test_protein_on_two_consecutive_tests_warns(rules, results):
    readings = weekly(*results)
    [alert] = fired(rules, readings)["protein_consecutive"]
    assert alert.severity == "warning" and alert.condition_key == "protein_consecutive:PRO>=30"
    assert alert.evidence_seqs == (101, readings[-1].seq)


@pytest.mark.parametrize("results", [
    [strip(PRO="30"), strip(PRO="neg")],
    [strip(PRO="neg"), strip(PRO="30")],
    [strip(PRO="trace"), strip(PRO="100")],
    [strip(PRO="100"), strip(PRO=None)],
], ids=["30-then-neg", "neg-then-30", "trace-then-100", "then-not-read"])
def test_protein_not_on_two_consecutive_tests_is_silent(rules, results):
    assert "protein_consecutive" not in fired(rules, weekly(*results))


def test_protein_tests_months_apart_are_not_consecutive(rules):
    assert "protein_consecutive" not in fired(rules, history((0, strip(PRO="30")), (100, strip(PRO="30"))))


# --- glucose_high ---------------------------------------------------------------------------------

def test_glucose_250_warns_by_chart_level_not_by_the_estimate(rules):
    result = strip(GLU="250")
    next(a for a in result["analytes"] if a["analyte"] == "GLU")["value"] = 243.7   # below 250 as a number
    [alert] = fired(rules, weekly(result))["glucose_high"]
    assert (alert.severity, alert.condition_key) == ("warning", "glucose_high:GLU>=250")
    assert alert.evidence_seqs == (101,) and "GLU 250 (243.7 mg/dL)" in alert.message


@pytest.mark.parametrize("level", ["500", "2000"])
def test_glucose_500_or_more_is_one_urgent_alert(rules, level):
    [alert] = fired(rules, weekly(strip(GLU=level)))["glucose_high"]
    assert (alert.severity, alert.condition_key) == ("urgent", "glucose_high:GLU>=500")


@pytest.mark.parametrize("level", ["neg", "100", None])
def test_glucose_below_250_or_not_read_is_silent(rules, level):
    assert "glucose_high" not in fired(rules, weekly(strip(GLU=level)))


def test_glucose_high_is_about_the_newest_reading_only(rules):
    assert fired(rules, weekly(strip(GLU="1000"), strip())) == {}


# --- ketone_with_glucose --------------------------------------------------------------------------

def test_moderate_ketones_with_glucose_are_urgent(rules):
    [alert] = fired(rules, weekly(strip(KET="moderate", GLU="100")))["ketone_with_glucose"]
    assert alert.severity == "urgent" and alert.condition_key == "ketone_with_glucose:KET>=moderate,GLU>neg"
    assert "KET moderate (40 mg/dL), GLU 100 (100 mg/dL)" in alert.message


@pytest.mark.parametrize("levels", [
    {"KET": "moderate", "GLU": "neg"},
    {"KET": "small", "GLU": "250"},
    {"KET": None, "GLU": "500"},
    {"KET": "xlarge", "GLU": None},
], ids=["glucose-neg", "ketone-small", "ketone-not-read", "glucose-not-read"])
def test_ketones_without_glucose_or_below_moderate_are_silent(rules, levels):
    assert "ketone_with_glucose" not in fired(rules, weekly(strip(**levels)))


def test_ketones_and_glucose_from_different_readings_are_silent(rules):
    assert "ketone_with_glucose" not in fired(rules, weekly(strip(GLU="250"), strip(KET="large")))


# --- nitrite_with_leukocytes ----------------------------------------------------------------------

@pytest.mark.parametrize("leukocytes", ["trace", "large"])
def test_nitrite_with_leukocytes_warns(rules, leukocytes):
    [alert] = fired(rules, weekly(strip(NIT="pos", LEU=leukocytes)))["nitrite_with_leukocytes"]
    assert alert.severity == "warning" and f"NIT pos, LEU {leukocytes}" in alert.message


@pytest.mark.parametrize("levels", [{"NIT": "pos", "LEU": "neg"}, {"NIT": "neg", "LEU": "large"},
                                    {"NIT": None, "LEU": "large"}, {"NIT": "pos", "LEU": None}],
                         ids=["leukocytes-neg", "nitrite-neg", "nitrite-not-read", "leukocytes-not-read"])
def test_nitrite_or_leukocytes_alone_are_silent(rules, levels):
    assert "nitrite_with_leukocytes" not in fired(rules, weekly(strip(**levels)))


# --- rising_trend ---------------------------------------------------------------------------------

def test_protein_rising_over_four_tests_warns(rules):
    readings = weekly(strip(PRO="neg"), strip(PRO="trace"), strip(PRO="30"), strip(PRO="100"))
    [alert] = fired(rules, readings)["rising_trend"]
    assert (alert.severity, alert.condition_key) == ("warning", "rising_trend:PRO")
    assert alert.evidence_seqs == (101, 102, 103, 104)
    assert alert.title == "Protein rising over recent tests"
    assert "rose 3 chart levels over the last 4 tests" in alert.message and "#104 on 2024-03-22" in alert.message
    assert "Protein" in alert.advice


def test_albumin_rising_on_the_acr_strip_warns(rules):
    readings = weekly(acr("A1", "10"), acr("A1", "10"), acr("A1", "30"), acr("A1", "80"))
    assert [a.condition_key for a in fired(rules, readings)["rising_trend"]] == ["rising_trend:ALB"]


@pytest.mark.parametrize("tests", [
    [(0, strip(PRO="30")), (7, strip(PRO="30")), (14, strip(PRO="30")), (21, strip(PRO="30"))],
    [(0, strip(PRO="neg")), (7, strip(PRO="neg")), (14, strip(PRO="trace")), (21, strip(PRO="trace"))],
    [(0, strip(PRO="neg")), (7, strip(PRO="trace")), (14, strip(PRO="100"))],
    [(0, strip(PRO="neg")), (40, strip(PRO="trace")), (50, strip(PRO="30")), (70, strip(PRO="100"))],
    [(0, strip(PRO="trace")), (1, strip(PRO="2000")), (2, strip(PRO="300")), (50, strip(PRO="100"))],
    [(0, strip(PRO="neg")), (7, strip(PRO="trace")), (14, strip(PRO="30")), (21, strip(PRO="100")),
     (28, strip(PRO=None))],
], ids=["flat", "rise-of-one-level", "three-tests", "first-outside-60-days", "spike-then-decline",
        "rose-but-newest-null"])
def test_no_rising_trend_is_silent(rules, tests):
    assert "rising_trend" not in fired(rules, history(*tests))


@pytest.mark.parametrize("results", [
    [strip(0.3, PRO="neg"), strip(0.3, PRO="neg"), strip(PRO="trace"), strip(PRO="30")],
    [strip(PRO="neg"), strip(PRO="trace"), strip(PRO="30"), strip(0.3, PRO="100")],
], ids=["only-two-confident-tests", "newest-not-confident"])
def test_low_confidence_readings_are_no_part_of_a_trend(rules, results):
    assert "rising_trend" not in fired(rules, weekly(*results))
    confident = [strip(PRO=next(a["level"] for a in r["analytes"] if a["analyte"] == "PRO")) for r in results]
    assert "rising_trend" in fired(rules, weekly(*confident))     # the same levels read confidently do rise


# --- every rule -----------------------------------------------------------------------------------

def test_pads_not_read_never_fire_whatever_came_before(rules):
    nothing_read = strip(**{pad.analyte: None for pad in GENERIC.pads})
    readings = weekly(strip(PRO="100", GLU="1000", KET="large", NIT="pos", LEU="large"), nothing_read)
    assert evaluate(rules, readings) == []


def test_a_refused_newest_reading_raises_nothing(rules):
    assert evaluate(rules, weekly(strip(PRO="100"), strip(PRO="100", GLU="1000"), REFUSED)) == []
    assert evaluate(rules, []) == []


def test_alerts_come_most_severe_first_with_the_evidence_and_no_patient_id(rules):
    readings = weekly(strip(PRO="30"), strip(PRO="100", GLU="500", KET="large", NIT="pos", LEU="small"))
    alerts = evaluate(rules, readings)
    assert [(a.rule_id, a.severity) for a in alerts] == [
        ("glucose_high", "urgent"), ("ketone_with_glucose", "urgent"), ("protein_consecutive", "warning"),
        ("nitrite_with_leukocytes", "warning")]
    for alert in alerts:
        text = json.dumps(alert.to_dict())
        assert PATIENT_ID not in text and "{" not in alert.message + alert.advice + alert.title
        assert all(f"#{seq} on 2024-03-" in alert.message for seq in alert.evidence_seqs)
        assert json.loads(text)["evidence_seqs"] == list(alert.evidence_seqs)


# --- deduplication --------------------------------------------------------------------------------

def test_an_open_condition_is_not_raised_again(rules):
    first = evaluate(rules, weekly(strip(PRO="30"), strip(PRO="30")))
    again = evaluate(rules, weekly(strip(PRO="30"), strip(PRO="30"), strip(PRO="100")))
    assert [a.condition_key for a in again] == [a.condition_key for a in first] == ["protein_consecutive:PRO>=30"]
    assert new_alerts(again, [a.to_dict() for a in first]) == []
    assert new_alerts(again, []) == again                               # acknowledged: no longer open


def test_an_escalation_is_not_a_duplicate(rules):
    open_a2 = evaluate(rules, history((0, acr("A2")), (30, acr("A2"))))
    escalated = evaluate(rules, history((0, acr("A2")), (30, acr("A3")), (60, acr("A3"))))
    assert new_alerts(escalated, [a.to_dict() for a in open_a2]) == escalated
    open_warning = evaluate(rules, weekly(strip(GLU="250")))
    urgent = evaluate(rules, weekly(strip(GLU="250"), strip(GLU="1000")))
    assert [a.severity for a in new_alerts(urgent, [a.to_dict() for a in open_warning])] == ["urgent"]


def test_the_same_condition_made_more_severe_by_the_clinic_gets_through(rules):
    [alert] = evaluate(rules, weekly(strip(NIT="pos", LEU="trace")))
    assert new_alerts([alert], [{"condition_key": alert.condition_key, "severity": "info"}]) == [alert]
    assert new_alerts([alert], [{"condition_key": alert.condition_key, "severity": "urgent"}]) == []


def test_another_condition_of_the_same_rule_is_not_a_duplicate(rules):
    protein = {"condition_key": "rising_trend:PRO", "severity": "warning"}
    readings = weekly(strip(GLU="neg"), strip(GLU="neg"), strip(GLU="100"), strip(GLU="250"))
    rising = [a for a in evaluate(rules, readings) if a.rule_id == "rising_trend"]
    assert [a.condition_key for a in new_alerts(rising, [protein])] == ["rising_trend:GLU"]


# --- a clinic's rules file ------------------------------------------------------------------------

def clinic_file(tmp_path, text: str):
    path = tmp_path / "alert-rules.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_clinics_edited_threshold_changes_what_fires(tmp_path, rules):
    shipped = DEFAULT_RULES.read_text(encoding="utf-8")
    edited = shipped.replace('{ analyte = "GLU", at_least = "250" }', '{ analyte = "GLU", at_least = "100" }')
    assert edited != shipped
    clinic = load_rules(clinic_file(tmp_path, edited))
    readings = weekly(strip(GLU="100"))
    assert "glucose_high" not in fired(rules, readings)
    [alert] = fired(clinic, readings)["glucose_high"]
    assert alert.condition_key == "glucose_high:GLU>=100" and "GLU >= 100" in alert.message


VALID = '''schema = "stripread.alert-rules/1"

[[rule]]
id = "blood_repeated"
kind = "threshold"
when = [{ analyte = "BLD", at_least = "small" }]
count = 2
of_last = 3
within_days = 30
severity = "info"
title = "Blood in the urine"
message = "{condition} on {count} of {of_last} tests: {evidence}"
advice = "Repeat the test in a few days."
'''


def test_a_clinic_may_add_a_rule_of_its_own(tmp_path):
    [rule] = load_rules(clinic_file(tmp_path, VALID))
    readings = weekly(strip(BLD="moderate"), strip(), strip(BLD="small"))
    [alert] = evaluate([rule], readings)
    assert (alert.rule_id, alert.severity, alert.evidence_seqs) == ("blood_repeated", "info", (101, 103))
    assert alert.message.startswith("BLD >= small on 2 of 3 tests: #101")


@pytest.mark.parametrize("old,new,error", [
    ('schema = "stripread.alert-rules/1"', 'schema = "stripread.alert-rules/1"\nrules = 1', "unknown key(s) rules"),
    ('schema = "stripread.alert-rules/1"', 'schema = "stripread.alert-rules/2"', "not a stripread.alert-rules/1 file"),
    ("[[rule]]", "[rule]", "[[rule]]"),
    ("within_days = 30", "within_day = 30", "rule 'blood_repeated': unknown key(s) within_day"),
    ('kind = "threshold"', 'kind = "persistence"', "unknown kind 'persistence' (known: threshold, trend)"),
    ('kind = "threshold"', 'kind = ["threshold"]', "unknown kind ['threshold']"),
    ('severity = "info"', 'severity = ["info"]', "severity must be one of"),
    ('analyte = "BLD"', 'analyte = "BLOOD"', "no product reports 'BLOOD'"),
    ('at_least = "small"', 'at_least = "some"', "BLD has no level 'some' on generic-10 (levels: neg, trace, small"),
    ('at_least = "small"', "at_least = 10", 'write the BLD level in quotes'),
    ('at_least = "small"', 'at_least = "small", below = "large"', "unknown key(s) in a condition: below"),
    ('at_least = "small"', 'at_least = "small", above = "neg"', "exactly one of at_least or above"),
    ('severity = "info"', 'severity = "critical"', "severity must be one of info, warning, urgent, not 'critical'"),
    ("count = 2", "count = 4", "count (4) cannot be more than of_last (3)"),
    ("count = 2", "count = 0", "count: must be a whole number of at least 1, not 0"),
    ("within_days = 30", "within_days = -1", "within_days: must be a number above 0"),
    ("within_days = 30", "within_days = 30\nmin_confidence = 1.5", "min_confidence: must be a number from 0 to 1"),
    ("{evidence}", "{evidence} for {patient_id}", "message uses the unknown placeholder {patient_id}"),
    ("{evidence}", "{evidence", "message is not a valid template"),
    ('advice = "Repeat the test in a few days."\n', "", "rule 'blood_repeated': needs a advice"),
    ('when = [{ analyte = "BLD", at_least = "small" }]\n', "", "rule 'blood_repeated': needs when"),
    ('id = "blood_repeated"\n', "", "rule 1 needs an id"),
    ("= [{", "= [[", "not valid TOML"),
])
def test_a_bad_rules_file_is_refused_naming_the_problem(tmp_path, old, new, error):
    assert old in VALID
    with pytest.raises(AlertRulesError) as caught:
        load_rules(clinic_file(tmp_path, VALID.replace(old, new, 1)))
    assert error in str(caught.value)


@pytest.mark.parametrize("escalation,error", [
    ('severity = "info"\ncount = 3', "escalation 1: an escalation must be more severe than 'info'"),
    ('severity = "urgent"', "escalation 1: an escalation must change at least one of when"),
    ('severity = "urgent"\ncount = 3\nsummary = "x"', "escalation 1: unknown key(s) summary"),
])
def test_a_bad_escalation_is_refused(tmp_path, escalation, error):
    with pytest.raises(AlertRulesError, match="rule 'blood_repeated' " + error.split(":")[0]) as caught:
        load_rules(clinic_file(tmp_path, VALID + "\n[[rule.escalate]]\n" + escalation + "\n"))
    assert error.split(": ", 1)[1] in str(caught.value)


def test_two_rules_with_one_id_and_a_missing_file_are_refused(tmp_path):
    with pytest.raises(AlertRulesError, match="two rules have the id 'blood_repeated'"):
        load_rules(clinic_file(tmp_path, VALID + VALID.split("\n", 1)[1]))
    with pytest.raises(AlertRulesError, match="cannot read the alert rules"):
        load_rules(tmp_path / "missing.toml")


def test_a_valid_escalation_loads(tmp_path):
    [rule] = load_rules(clinic_file(tmp_path, VALID + '\n[[rule.escalate]]\nseverity = "warning"\ncount = 3\n'))
    assert [(s.severity, s.params.count, s.title) for s in rule.steps] == [
        ("info", 2, "Blood in the urine"), ("warning", 3, "Blood in the urine")]
