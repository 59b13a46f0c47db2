"""Quality control with control strips: definitions, chart positions, the Westgard multirule, the
verdict on a run and the Levey-Jennings chart."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration import qc
from device.language.i18n import Words
from calibration.qc import (ControlAnalyte, QcRun, chart_position, evaluate, evaluate_run, history_from,
                            levey_jennings_png, load_control, westgard)

EXAMPLES = Path(qc.__file__).parent / "data" / "controls"
AT = datetime(2026, 11, 23, 9, 15, tzinfo=timezone.utc)
WOBBLE = [0.3, -0.5, 0.8, -0.2, 0.1, -0.7, 0.4, -0.3, 0.6, -0.1, 0.2, -0.4]   # a well-behaved reader


def control_toml(analytes: str, *, control_id: str = "test-ctl") -> str:
    return (f'id = "{control_id}"\nname = "Test control"\nproduct = "generic-10"\nmaterial_lot = "L-1"\n'
            f'expires = 2027-06-30\n\n[analytes]\n{analytes}\n')


BASE = control_toml('PRO = { accepted = ["30", "100"] }\nGLU = { accepted = ["250", "500"] }')


def entry(target: ControlAnalyte, z: float = 0.0) -> dict:
    """The result entry of a pad read `z` SD from the control's target, as the pad model writes it
    (the nearest level, the value interpolated at the position)."""
    levels = target.pad.levels
    position = min(max(target.target + z * target.sd, 0.0), len(levels) - 1.0)
    value = float(np.interp(position, range(len(levels)), [lv.value for lv in levels])) \
        if target.pad.quantitative else None
    return {"analyte": target.analyte, "level": levels[round(position)].code, "value": value}


def result(control: qc.Control, z: dict[str, float] | None = None, **overrides: dict) -> dict:
    """A stripread.read/1 result of the control: every pad at z (default 0), `overrides` replacing
    whole pad entries."""
    analytes = [overrides.get(t.analyte, entry(t, (z or {}).get(t.analyte, 0.0))) for t in control.analytes]
    return {"schema": "stripread.read/1", "status": "ok", "product": "generic-10", "analytes": analytes,
            "provenance": {"captured_at": AT.isoformat()}}


@pytest.fixture(scope="module")
def positive():
    return load_control(EXAMPLES / "positive.toml")


@pytest.fixture(scope="module")
def negative():
    return load_control(EXAMPLES / "negative.toml")


# --- definitions -----------------------------------------------------------------------------

def test_example_controls_load_and_match_the_product(product, negative, positive):
    assert (negative.id, positive.id) == ("generic-10-neg", "generic-10-pos")
    pads = [pad.analyte for pad in product.pads]
    for control in (negative, positive):
        assert control.product == product.id and [t.analyte for t in control.analytes] == pads
        for target in control.analytes:
            codes = [lv.code for lv in product.pad(target.analyte).levels]
            first = codes.index(target.accepted[0])
            assert list(target.accepted) == codes[first:first + len(target.accepted)]
    assert {t.analyte: t.accepted for t in negative.analytes}["GLU"] == ("neg",)
    assert {t.analyte: t.accepted for t in positive.analytes}["NIT"] == ("pos",)
    assert evaluate(negative, result(negative), {}).passed and evaluate(positive, result(positive), {}).passed


def test_target_and_sd_default_to_the_accepted_range_at_2_sd():
    control = load_control(control_toml('PRO = { accepted = ["30", "100"], target = 2.2, sd = 0.3 }\n'
                                        'KET = { accepted = ["moderate", "small"] }\nGLU = { accepted = ["neg"] }'))
    pro, ket, glu = control.analytes
    assert (pro.target, pro.sd) == (2.2, 0.3)
    assert (ket.accepted, ket.target, ket.sd) == (("small", "moderate"), 2.5, 0.5)   # put in chart order
    assert (glu.target, glu.sd, glu.target_at_chart_end) == (0.0, 0.25, True)


@pytest.mark.parametrize("old,new,message", [
    ('material_lot = "L-1"\n', "", "missing key 'material_lot'"),
    ("expires = 2027-06-30", "expiry = 2027-06-30", "unknown key 'expiry'"),
    ("expires = 2027-06-30", 'expires = "2027-06-30"', "'expires' must be a TOML date"),
    ("expires = 2027-06-30", "expires = 2027-06-30T10:00:00", "'expires' must be a TOML date"),
    ('product = "generic-10"', 'product = "generic-11"', "product 'generic-11' cannot be loaded"),
    ("GLU = ", "GLUC = ", "analyte 'GLUC' is not a pad of product generic-10"),
    ('["250", "500"]', '["250", "750"]', "GLU: level '750' is not on the chart (neg, 100, 250"),
    ('["250", "500"]', '["100", "500"]', "GLU: accepted levels must be contiguous"),
    ('["250", "500"]', '["250", "250"]', "GLU: accepted levels must be contiguous on the chart without repeats"),
    ('["250", "500"]', "[]", "GLU: 'accepted' must be a non-empty list"),
    ('["250", "500"] }', '["250", "500"], target = 9 }', "GLU: 'target' 9.0 is off the chart (0 to 5)"),
    ('["250", "500"] }', '["250", "500"], sd = 0 }', "GLU: 'sd' must be positive"),
    ('["250", "500"] }', '["250", "500"], sd = "wide" }', "GLU: 'sd' must be a number"),
    ('["250", "500"] }', '["250", "500"], mean = 2 }', "GLU: unknown key 'mean'"),
    ("[analytes]", "[analytes", "not valid TOML"),
])
def test_a_bad_definition_is_refused_naming_the_problem(old, new, message):
    assert old in BASE
    with pytest.raises(ValueError, match="^control text: .*" + re.escape(message)):
        load_control(BASE.replace(old, new))


def test_a_bad_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="missing.toml: cannot read"):
        load_control(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE.replace('["30", "100"]', '["30", "1000"]'), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.toml: PRO: level '1000' is not on the chart"):
        load_control(str(bad))


# --- chart positions -------------------------------------------------------------------------

def test_chart_position(product):
    glu, nit, ph = product.pad("GLU"), product.pad("NIT"), product.pad("PH")
    assert chart_position(glu, "250", 243.7) == pytest.approx(1 + 143.7 / 150)        # ~1.96
    assert chart_position(glu, "500", 750.0) == pytest.approx(3.5)
    assert chart_position(ph, "6.5", 6.6) == pytest.approx(2.2)
    assert chart_position(glu, "2000", 5000.0) == 5.0 and chart_position(glu, "neg", -3.0) == 0.0  # clamped
    assert chart_position(glu, "100", None) == 1.0          # an ordinal pad read without a value
    assert chart_position(nit, "pos", None) == 1.0          # nominal
    assert chart_position(glu, None, None) is None          # not reported
    with pytest.raises(ValueError, match="GLU: '300' is not one of the levels"):
        chart_position(glu, "300", 300.0)


# --- Westgard rules --------------------------------------------------------------------------

@pytest.mark.parametrize("earlier,z,same_run,rules,warned", [
    ([], 1.9, [], (), False),
    ([], 2.1, [], (), True),                                          # 1-2s: a warning only
    ([], 2.9, [], (), True),
    ([], 3.2, [], ("1-3s",), True),
    ([], -3.2, [], ("1-3s",), True),
    ([2.3], 2.1, [], ("2-2s",), True),
    ([-2.5], -2.2, [], ("2-2s",), True),
    ([-2.3], 2.1, [], (), True),                                      # 2-2s across the mean: silent
    ([1.9], 2.5, [], (), True),                                       # the earlier one was inside
    ([2.5, 0.0], 2.5, [], (), True),                                  # not consecutive
    ([1.2, 1.5, 1.1], 1.3, [], ("4-1s",), False),
    ([-1.2, -1.5, -1.1], -1.3, [], ("4-1s",), False),
    ([1.2, 0.8, 1.1], 1.3, [], (), False),                            # one point back inside
    ([1.2, 1.5, 1.1], 0.9, [], (), False),
    ([-1.2, 1.5, 1.1], 1.3, [], (), False),                           # one on the other side
    ([1.5, 1.5], 1.5, [], (), False),                                 # only three so far
    ([0.3] * 9, 0.2, [], ("10-x",), False),
    ([-0.3] * 9, -0.2, [], ("10-x",), False),
    ([0.3] * 4 + [-0.1] + [0.3] * 4, 0.2, [], (), False),             # broken by one on the other side
    ([0.3] * 8, 0.2, [], (), False),                                  # only nine so far
    ([0.3] * 9, -0.2, [], (), False),
    ([1.5] * 9, 1.5, [], ("4-1s", "10-x"), False),
    ([], 2.3, [-2.4], ("R-4s",), True),                               # across controls in this run
    ([], -2.3, [0.1, 2.4], ("R-4s",), True),
    ([], 2.3, [-1.9], (), True),
    ([], 2.3, [2.4], ("2-2s",), True),                                # 2-2s across controls
    ([], 1.9, [-2.4], (), False),
])
def test_westgard_rules(earlier, z, same_run, rules, warned):
    assert westgard(z, earlier, same_run) == (rules, ("1-2s",) if warned else ())


def test_10x_is_not_applied_to_a_target_at_the_end_of_the_chart():
    assert westgard(0.2, [0.3] * 9, target_at_chart_end=True) == ((), ())
    assert westgard(1.5, [1.5] * 9, target_at_chart_end=True) == (("4-1s",), ())


def test_a_negative_control_reading_slightly_tinted_drifts_only_through_4_1s(negative):
    glu = {t.analyte: t for t in negative.analytes}["GLU"]
    tinted = result(negative, {"GLU": 0.4})
    assert entry(glu, 0.4)["level"] == "neg"
    assert evaluate(negative, tinted, {"GLU": [0.4] * 9}, at=AT).passed
    shifted = evaluate(negative, result(negative, {"GLU": 1.2}), {"GLU": [1.2] * 3}, at=AT)
    assert shifted.summary == "4-1s on GLU"


# --- a run's verdict -------------------------------------------------------------------------

def test_one_level_outside_the_accepted_range_fails(positive):
    glu = {"analyte": "GLU", "level": "1000", "value": 1000.0}
    run = evaluate(positive, result(positive, GLU=glu), {}, at=AT)
    assert not run.passed and run.summary == "GLU out of range (1000, accepted 250-500)"
    assert run.analyte("GLU").position == 4.0 and run.analyte("GLU").z == pytest.approx(3.0)
    low = evaluate(positive, result(positive, GLU={"analyte": "GLU", "level": "100", "value": 100.0}), {}, at=AT)
    assert low.failures == ["GLU out of range (100, accepted 250-500)"]
    top = evaluate(positive, result(positive, GLU={"analyte": "GLU", "level": "500", "value": 500.0}), {}, at=AT)
    assert top.passed and top.summary == "passed"


def test_an_expired_control_fails(positive):
    assert evaluate(positive, result(positive), {}, at=datetime(2027, 6, 30, 12, tzinfo=timezone.utc)).passed
    after = datetime(2027, 7, 1, 12, tzinfo=timezone.utc)
    run = evaluate(positive, result(positive), {}, at=after)
    assert not run.passed and run.summary == "control expired 2027-06-30"
    read_late = {**result(positive), "provenance": {"captured_at": after.isoformat()}}
    assert evaluate(positive, read_late, {}).summary == "control expired 2027-06-30"   # time of the reading


def test_an_unreported_pad_fails(positive):
    unreported = {"analyte": "KET", "level": None, "value": None, "flags": ["out_of_gamut"]}
    run = evaluate(positive, result(positive, KET=unreported), {}, at=AT)
    assert not run.passed and run.summary == "KET not reported"
    missing = result(positive)
    missing["analytes"] = [a for a in missing["analytes"] if a["analyte"] != "BIL"]
    assert evaluate(positive, missing, {}, at=AT).summary == "BIL not reported"


def test_a_refused_reading_or_another_product_fails(positive):
    refused = {"schema": "stripread.read/1", "status": "error", "error": {"code": "glare", "message": "m"}}
    run = evaluate(positive, refused, {}, at=AT)
    assert not run.passed and run.summary == "reading failed (glare)" and run.analytes == ()
    other = {**result(positive), "product": "acr-2"}
    assert evaluate(positive, other, {}, at=AT).summary == "strip is acr-2, the control is for generic-10"


def test_summary_names_ranges_then_rules():
    control = load_control(control_toml('PRO = { accepted = ["30", "100"], sd = 0.2 }\n'
                                        'GLU = { accepted = ["250", "500"], sd = 1.5 }'))
    reading = result(control, {"PRO": 2.5}, GLU={"analyte": "GLU", "level": "neg", "value": 0.0})
    run = evaluate(control, reading, {"PRO": [2.2]}, at=AT)
    assert run.summary == "GLU out of range (neg, accepted 250-500); 2-2s on PRO"
    assert run.analyte("PRO").rules == ("2-2s",) and run.analyte("PRO").in_range
    across_the_mean = evaluate(control, reading, {"PRO": [-2.2]}, at=AT)
    assert across_the_mean.summary == "GLU out of range (neg, accepted 250-500)"


def test_r4s_across_two_controls_of_a_run():
    definition = 'GLU = { accepted = ["100", "250", "500", "1000"], sd = 0.25 }'
    high, low = (load_control(control_toml(definition, control_id=name)) for name in ("ctl-high", "ctl-low"))
    reads = [(high, result(high, {"GLU": 2.2})), (low, result(low, {"GLU": -2.2}))]
    alone = [evaluate(control, reading, {}, at=AT) for control, reading in reads]
    assert all(run.passed and run.analyte("GLU").warnings == ("1-2s",) for run in alone)
    together = evaluate_run(reads, {}, at=AT)
    assert [run.summary for run in together] == ["R-4s on GLU", "R-4s on GLU"]
    inside = evaluate_run([reads[0], (low, result(low, {"GLU": -1.5}))], {}, at=AT)
    assert all(run.passed for run in inside)
    with pytest.raises(ValueError, match="each control once"):
        evaluate_run([reads[0], reads[0]], {}, at=AT)


def test_a_run_round_trips_through_json_and_feeds_the_next_history():
    control = load_control(BASE.replace('["250", "500"] }', '["250", "500"], sd = 0.2 }'))
    runs = [evaluate(control, result(control, {"GLU": z}), {}, at=AT + timedelta(days=i))
            for i, z in enumerate((2.2, 2.4))]
    stored = [QcRun.from_dict(json.loads(json.dumps(run.to_dict()))) for run in runs]
    assert stored == runs
    assert stored[0].to_dict()["summary"] == "passed (1-2s warning on GLU)"
    history = history_from(stored)
    assert history == {"PRO": [0.0, 0.0], "GLU": pytest.approx([2.2, 2.4])}
    assert evaluate(control, result(control, {"GLU": 2.1}), history, at=AT).summary == "2-2s on GLU"


# --- Levey-Jennings chart --------------------------------------------------------------------

def series(control: qc.Control, zs: list[dict[str, float]]) -> list[QcRun]:
    """The control's runs, one a day, each judged with the runs before it as history."""
    runs: list[QcRun] = []
    for day, z in enumerate(zs):
        runs.append(evaluate(control, result(control, z), history_from(runs), at=AT + timedelta(days=day)))
    return runs


def red_pixels(image: np.ndarray) -> np.ndarray:
    b, g, r = (image[..., i].astype(int) for i in range(3))
    return (r > 180) & (g < 90) & (b < 90)


def test_levey_jennings_png_is_1200_px_wide_with_a_row_per_two_panels(tmp_path, positive):
    runs = series(positive, [{t.analyte: z for t in positive.analytes} for z in WOBBLE])
    assert all(run.passed for run in runs)
    path = levey_jennings_png(positive, runs[::-1], tmp_path / "lj.png", Words())      # any order: sorted by time
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(path))
    assert image.shape == (80 + 5 * 200, 1200, 3)
    assert not red_pixels(image).any()


def test_red_marks_the_run_where_a_rule_fired(tmp_path):
    control = load_control(control_toml('GLU = { accepted = ["250", "500"], sd = 0.2 }'))
    calm = series(control, [{"GLU": z} for z in WOBBLE])
    drifting = series(control, [{"GLU": z} for z in WOBBLE[:-2] + [2.3, 2.2]])
    assert [run.passed for run in calm].count(False) == 0
    assert [run.passed for run in drifting].count(False) == 1 and drifting[-1].summary == "2-2s on GLU"
    images = {}
    for name, runs in (("calm", calm), ("drifting", drifting)):
        images[name] = cv2.imread(str(levey_jennings_png(control, runs, tmp_path / f"{name}.png", Words())))
    assert images["calm"].shape == images["drifting"].shape == (280, 1200, 3)
    assert not red_pixels(images["calm"]).any()
    columns = np.nonzero(red_pixels(images["drifting"]).any(axis=0))[0]
    assert columns.size and columns.min() > 1200 * 0.75        # the last run, at the right


def test_a_pad_out_of_range_is_red_and_the_other_pads_of_that_run_ringed(tmp_path):
    control = load_control(BASE)            # PRO (left panel), GLU (right panel)
    runs = series(control, [{"PRO": z, "GLU": -z} for z in WOBBLE[:-1]] + [{"GLU": 3.0}])
    assert runs[-1].summary == "GLU out of range (1000, accepted 250-500)"      # and no rule fired
    assert not runs[-1].analyte("PRO").failed and all(run.passed for run in runs[:-1])
    red = red_pixels(cv2.imread(str(levey_jennings_png(control, runs, tmp_path / "lj.png", Words()))))
    left, right = red[:, :600].sum(), red[:, 600:].sum()
    assert 0 < left < right / 2             # a thin ring on PRO; GLU's filled point and its rule's name
    with pytest.raises(ValueError, match="runs of other-ctl"):
        levey_jennings_png(control, [QcRun("other-ctl", "L-9", AT, (), ())], tmp_path / "x.png", Words())
