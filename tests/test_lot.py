"""Strip-lot calibration: a lot whose dyes run strong is read a level off until its calibrator strips
give the reader a correction; a typical lot is left practically alone; bad input is refused.

Scenes are rendered on the reader itself (its LED light and camera, the card flat, no sheen) at the smallest
frame, so the whole module renders about forty strips in a few seconds.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pytest

from calibration.colour import delta_e_2000
from calibration.lot import (LotCalibration, agreement, fit_lot, format_agreement, load_calibrators,
                             observe_calibrators)
from calibration.observe import StripObservation, StripObserver
from calibration.specs import Product, load_card
from models.onnx_model import OnnxPadModel
from simulator.scene import photograph, random_scene

STRONG_LOT = 1.35            # dye-load scale: the darker levels of this lot read a level high
NORMAL_LOT = 1.0
REPEATS = 3                  # strips dipped in each calibrator solution
HELD_OUT = 12                # later strips of the same lot, never used in a fit
EXPIRES = date(2031, 6, 30)


@dataclass
class Strips:
    photos: list[bytes]
    observations: list[StripObservation]
    expected: list[dict[str, str]]     # analyte -> level code


def _solutions(product: Product) -> list[dict[str, int]]:
    """Three calibrator solutions: every pad at the bottom, the middle and the top of its chart."""
    return [{p.analyte: step * (len(p.levels) - 1) // 2 for p in product.pads} for step in range(3)]


def _random_levels(product: Product, count: int, seed: int) -> list[dict[str, int]]:
    rng = np.random.default_rng(seed)
    return [{p.analyte: int(rng.integers(len(p.levels))) for p in product.pads} for _ in range(count)]


def _strips(product: Product, observer: StripObserver, levels: list[dict[str, int]], lot: float,
            seed: int) -> Strips:
    rng = np.random.default_rng(seed)
    photos, observations = [], []
    for strip in levels:
        spec = random_scene(rng, product=product, illuminants=["LED_reader"], cameras=["imx477"],
                            resolution=(1456, 1088), tilt_deg=(0.0, 0.0), glare=None,
                            levels={a: float(i) for a, i in strip.items()},
                            lot_absorbance={p.analyte: lot for p in product.pads})
        data, _ = photograph(spec, rng)
        photos.append(data)
        observations.append(observer.observe(data))
    expected = [{p.analyte: p.levels[strip[p.analyte]].code for p in product.pads} for strip in levels]
    return Strips(photos, observations, expected)


@pytest.fixture(scope="module")
def observer(product):
    return StripObserver(load_card(), product)


@pytest.fixture(scope="module")
def model(product):
    return OnnxPadModel(product)


@pytest.fixture(scope="module")
def strong_calibrators(product, observer):
    return _strips(product, observer, [s for s in _solutions(product) for _ in range(REPEATS)], STRONG_LOT, 1)


@pytest.fixture(scope="module")
def strong_held_out(product, observer):
    return _strips(product, observer, _random_levels(product, HELD_OUT, 2), STRONG_LOT, 3)


@pytest.fixture(scope="module")
def strong_lot(product, strong_calibrators):
    return fit_lot(product, "L-STRONG", EXPIRES, strong_calibrators.observations, strong_calibrators.expected)


def _chart_error(product: Product, observations: list[StripObservation], expected: list[dict[str, str]]) -> float:
    """Mean CIEDE2000 of the pads from their expected level's chart colour."""
    chart = np.array([[p.level_lab[[lv.code for lv in p.levels].index(e[p.analyte])] for p in product.pads]
                      for e in expected])
    return float(delta_e_2000(np.array([o.pad_lab for o in observations]), chart).mean())


def test_strong_lot_reads_right_after_its_calibration(product, model, strong_lot, strong_held_out):
    result = agreement(model, product, strong_held_out.observations, strong_held_out.expected, strong_lot)
    print("\n" + format_agreement(result))
    rows = {row["analyte"]: row for row in result["rows"]}
    assert rows["all"]["exact_before"] < 0.9 and rows["all"]["exact_after"] >= 0.97
    assert rows["all"]["within_one_after"] == 1.0
    assert all(row["exact_after"] >= row["exact_before"] for row in result["rows"])


def test_leave_one_strip_out_grades_the_calibrators_without_their_own_fit(product, model, strong_calibrators):
    result = agreement(model, product, strong_calibrators.observations, strong_calibrators.expected)
    print("\n" + format_agreement(result))
    everything = result["rows"][-1]
    assert result["method"] == "leave-one-strip-out" and everything["strips"] == 3 * REPEATS * len(product.pads)
    assert everything["exact_before"] < everything["exact_after"] and everything["within_one_after"] == 1.0


def test_offsets_follow_the_level_so_pale_and_dark_pads_both_land_on_the_chart(product, strong_lot, strong_held_out):
    """A stronger dye load darkens the top of a chart far more than its bottom: one offset per analyte
    would leave either end off the chart (measured: 2.5 dE00 left, against 0.8 with level offsets)."""
    glucose = strong_lot.corrections["GLU"]
    assert len(glucose.knots) == 3 and glucose.strips == 3 * REPEATS
    assert delta_e_2000(glucose.offsets[0], glucose.offsets[-1]) > 3
    corrected = [strong_lot.apply(o) for o in strong_held_out.observations]
    assert _chart_error(product, strong_held_out.observations, strong_held_out.expected) > 5
    assert _chart_error(product, corrected, strong_held_out.expected) < 1.5


def test_a_typical_lot_gets_a_small_correction_that_does_no_harm(product, observer, model):
    calibrators = _strips(product, observer, [s for s in _solutions(product) for _ in range(REPEATS)], NORMAL_LOT, 4)
    held_out = _strips(product, observer, _random_levels(product, 8, 5), NORMAL_LOT, 6)
    calibration = fit_lot(product, "L-TYPICAL", EXPIRES, calibrators.observations, calibrators.expected)
    # what remains is the reader's own error on a few dark chart colours (3 dE00 at ketone's xlarge),
    # against 5-11 dE00 for the strong lot
    assert max(c.shift_de00 for c in calibration.corrections.values()) < 4
    everything = agreement(model, product, held_out.observations, held_out.expected, calibration)["rows"][-1]
    assert everything["exact_after"] >= everything["exact_before"] and everything["within_one_after"] == 1.0


def test_one_bad_strip_is_outvoted(product, model, strong_calibrators, strong_lot, strong_held_out):
    """The first strip was dipped in the top solution but logged as the bottom one: its colour is far
    from its level's, which a mean of three would follow a third of the way; the median does not."""
    observations = list(strong_calibrators.observations)
    observations[0] = observations[-1]
    spoilt = fit_lot(product, "L-STRONG", EXPIRES, observations, strong_calibrators.expected)
    for i, pad in enumerate(product.pads):
        clean, bad = strong_lot.corrections[pad.analyte], spoilt.corrections[pad.analyte]
        bottom = pad.level_lab[0] + clean.offsets[0]
        assert delta_e_2000(observations[0].pad_lab[i], bottom) > 5
        assert np.array_equal(clean.knots, bad.knots)
        at_knots = pad.level_lab[clean.knots.astype(int)]
        assert np.all(delta_e_2000(at_knots + clean.offsets, at_knots + bad.offsets) < 1.5)
    everything = agreement(model, product, strong_held_out.observations, strong_held_out.expected, spoilt)["rows"][-1]
    assert everything["exact_after"] >= 0.97


def test_an_analyte_without_calibrators_is_refused(product, strong_calibrators):
    expected = [{a: code for a, code in e.items() if a != "GLU"} for e in strong_calibrators.expected]
    with pytest.raises(ValueError, match="no calibrator strip for GLU"):
        fit_lot(product, "L-STRONG", EXPIRES, strong_calibrators.observations, expected)


@pytest.mark.parametrize("mistake", ["wrong_solution", "wrong_lot"])
def test_an_implausible_shift_is_refused(product, strong_calibrators, mistake):
    top = slice(-REPEATS, None)
    observations, expected = strong_calibrators.observations[top], strong_calibrators.expected[top]
    if mistake == "wrong_solution":     # the top solution's strips logged as the bottom one's
        expected = strong_calibrators.expected[:REPEATS]
    else:                               # every colour 25 L* darker than any lot runs
        observations = [dataclasses.replace(o, pad_lab=o.pad_lab - [25, 0, 0]) for o in observations]
    with pytest.raises(ValueError, match="implausibly much for a strip lot"):
        fit_lot(product, "L-STRONG", EXPIRES, observations, expected)


def test_expiry_is_inclusive(strong_lot):
    assert not strong_lot.expired(EXPIRES - timedelta(days=200))
    assert not strong_lot.expired(EXPIRES)
    assert strong_lot.expired(EXPIRES + timedelta(days=1))


def test_stored_and_reloaded_it_corrects_identically(strong_lot, strong_held_out):
    reloaded = LotCalibration.from_dict(json.loads(json.dumps(strong_lot.to_dict())))
    assert reloaded.to_dict() == strong_lot.to_dict() and reloaded.expires == EXPIRES
    observation = strong_held_out.observations[0]
    assert np.array_equal(reloaded.apply(observation).pad_lab, strong_lot.apply(observation).pad_lab)
    assert not np.array_equal(strong_lot.apply(observation).pad_lab, observation.pad_lab)
    with pytest.raises(ValueError, match="malformed"):
        LotCalibration.from_dict({**strong_lot.to_dict(), "expires": "soon"})


def test_another_product_is_refused(strong_lot, strong_held_out, acr_product):
    from calibration.errors import ReadError
    with pytest.raises(ReadError, match="generic-10"):
        strong_lot.apply(dataclasses.replace(strong_held_out.observations[0], product=acr_product))


def test_calibrator_file_to_lot_calibration(tmp_path, product, observer, strong_calibrators, strong_lot):
    """The same strips through the CSV give the same fit; glucose given as concentrations (mg/dL)
    and a photo without its nitrite row are read as the file says."""
    glucose = {lv.code: lv.value for lv in product.pad("GLU").levels}
    rows = ["photo,analyte,level,concentration"]
    for i, (data, expected) in enumerate(zip(strong_calibrators.photos, strong_calibrators.expected)):
        (tmp_path / f"cal-{i}.jpg").write_bytes(data)
        rows += [f"cal-{i}.jpg,GLU,,{glucose[code]:g}" if analyte == "GLU" else f"cal-{i}.jpg,{analyte},{code},"
                 for analyte, code in expected.items() if (analyte, i) != ("NIT", 0)]
    (tmp_path / "calibrators.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    calibrators = load_calibrators(tmp_path / "calibrators.csv", product)
    assert [c.photo.name for c in calibrators] == [f"cal-{i}.jpg" for i in range(3 * REPEATS)]
    assert "NIT" not in calibrators[0].expected and calibrators[-1].expected["GLU"] == "2000"
    calibration = fit_lot(product, "L-STRONG", EXPIRES, *observe_calibrators(observer, calibrators))
    assert calibration.corrections["NIT"].strips == 3 * REPEATS - 1
    fitted, reference = calibration.to_dict()["analytes"], strong_lot.to_dict()["analytes"]
    assert {a: c for a, c in fitted.items() if a != "NIT"} == {a: c for a, c in reference.items() if a != "NIT"}


@pytest.mark.parametrize("row, problem", [
    ("cal.jpg,GLX,neg,", "unknown analyte 'GLX'"),
    ("cal.jpg,GLU,lots,", "'lots' is not a level of GLU"),
    ("missing.jpg,GLU,neg,", "photo 'missing.jpg' not found"),
    ("cal.jpg,GLU,,5000", "outside GLU's chart"),
    ("cal.jpg,GLU,,plenty", "not a number"),
    ("cal.jpg,NIT,,3", "NIT has no concentration scale"),
    ("cal.jpg,GLU,neg,0", "either a level or a concentration"),
    ("cal.jpg,PRO,30,", "PRO of cal.jpg is given twice"),
])
def test_calibrator_file_mistakes_are_named_by_line(tmp_path, product, row, problem):
    (tmp_path / "cal.jpg").write_bytes(b"")
    path = tmp_path / "calibrators.csv"
    path.write_text(f"photo,analyte,level,concentration\ncal.jpg,PRO,30,\n{row}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"line 3: .*{problem}"):
        load_calibrators(path, product)


def test_a_refused_calibrator_photo_stops_the_calibration(tmp_path, product, observer):
    (tmp_path / "cal.jpg").write_bytes(b"not a photo")
    (tmp_path / "calibrators.csv").write_text("photo,analyte,level\ncal.jpg,GLU,neg\n", encoding="utf-8")
    with pytest.raises(ValueError, match="cal.jpg: refused \\(image_unreadable\\)"):
        observe_calibrators(observer, load_calibrators(tmp_path / "calibrators.csv", product))


def test_a_lot_calibrated_for_an_edited_chart_refuses_the_reading_instead_of_crashing(product, strong_lot,
                                                                                    strong_held_out):
    """The lot's offsets were measured from another chart (the product file was edited since): the
    reading is refused with a code of the schema, so a session stores it and the service goes on."""
    from calibration.errors import ReadError
    from calibration.in_force import ReaderCalibration
    from device.reading.reader import Reader
    stale = dataclasses.replace(strong_lot, chart_sha256="0" * 64)
    with pytest.raises(ReadError) as err:
        stale.apply(strong_held_out.observations[0])
    assert err.value.code == "calibration_failed" and err.value.reason == "lot_chart_changed"
    reader = Reader(load_card(), product, OnnxPadModel(product),
                    ReaderCalibration(strip_lot="L1", lot_id="lot-x", lot=stale, lot_expires=EXPIRES))
    result = reader.read(strong_held_out.photos[0])
    assert result["status"] == "error" and result["error"]["code"] == "calibration_failed"
    assert result["error"]["reason"] == "lot_chart_changed"
