"""Importing a technician's measurement of a printed card: a misprinted card read better with its
measured references than with the intended ones, and mis-measured or malformed files refused with a
message that says what is wrong."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from functools import lru_cache

import numpy as np
import pytest

from calibration.card_measurement import MeasurementError, card_residual, import_measurements
from calibration.colour import delta_e_2000
from calibration.correction import MAX_RESIDUAL_DE00
from calibration.errors import ReadError
from calibration.observe import StripObserver
from calibration.specs import Card, load_card, load_product
from device.reading.reader import Reader
from models.pads import NearestChartColour
from simulator import scene

CARD = load_card()
PRODUCT = load_product("generic-10")
SMALL = (1456, 1088)
METADATA = "# instrument: X-Rite i1Pro 3\n# measured_at: 2026-11-20\n# illuminant: D50\n# observer: 2\n"


def misprinted_lab(seed: int, de00_range: tuple[float, float]) -> np.ndarray:
    """card-v1's references with every chromatic patch moved by a print error of a size drawn from
    `de00_range` (CIEDE2000) in a random direction; the greys stay grey."""
    rng = np.random.default_rng(seed)
    chromatic = np.array([p.role == "chromatic" for p in CARD.patches])
    intended = CARD.patch_lab[chromatic]
    step = rng.standard_normal(intended.shape)
    size = rng.uniform(*de00_range, len(intended))
    for _ in range(3):   # CIEDE2000 is not linear in CIELAB: rescale until the sizes are right
        step *= (size / delta_e_2000(intended + step, intended))[:, None]
    lab = CARD.patch_lab.copy()
    lab[chromatic] += step
    return lab


def card_with(lab: np.ndarray, card_id: str) -> Card:
    """The physical card: card-v1's artwork with these patch colours."""
    return dataclasses.replace(CARD, id=card_id, patches=tuple(
        dataclasses.replace(p, lab_d50=tuple(map(float, v))) for p, v in zip(CARD.patches, lab)))


def measurement_csv(lab: np.ndarray) -> str:
    """What the spectrophotometer exports for a card of these colours: the colours plus its
    repeatability noise (0.15 per CIELAB coordinate)."""
    lab = lab + np.random.default_rng(0).normal(0.0, 0.15, lab.shape)
    return METADATA + "patch,L,a,b\n" + "".join(
        f"{p.id},{v[0]:.2f},{v[1]:.2f},{v[2]:.2f}\n" for p, v in zip(CARD.patches, lab))


@lru_cache(maxsize=None)
def printed(seed: int, low: float, high: float) -> tuple[np.ndarray, Card]:
    """A misprinted card's true colours and the card as physically printed (cached, so its photos are too)."""
    lab = misprinted_lab(seed, (low, high))
    return lab, card_with(lab, f"card-v1-printed-{seed}")


@lru_cache(maxsize=None)
def card_photos(physical: Card, count: int = 3) -> tuple[bytes, ...]:
    """Photos of the printed card in the reader with the slot empty, as a technician takes them."""
    photos = []
    for seed in range(count):
        rng = np.random.default_rng(500 + seed)
        spec = scene.random_scene(rng, product=PRODUCT, card=physical, fault="no_strip", resolution=SMALL)
        photos.append(scene.photograph(spec, rng)[0])
    return tuple(photos)


def strip_photos(physical: Card, count: int):
    """Photos of strips on the printed card with every pad exactly on a chart level (and a lot of
    nominal dye load), so each pad's true colour is its chart colour."""
    for seed in range(count):
        rng = np.random.default_rng(700 + seed)
        levels = {pad.analyte: float(rng.integers(len(pad.levels))) for pad in PRODUCT.pads}
        spec = scene.random_scene(rng, product=PRODUCT, card=physical, resolution=SMALL, levels=levels,
                                  lot_absorbance={})
        data, _ = scene.photograph(spec, rng)
        truth_lab = np.array([pad.level_lab[int(levels[pad.analyte])] for pad in PRODUCT.pads])
        codes = [pad.levels[int(levels[pad.analyte])].code for pad in PRODUCT.pads]
        yield data, truth_lab, codes


def test_measured_references_read_a_misprinted_card_better_than_the_intended_ones(tmp_path):
    """A card printed 1.5-3 dE00 off the file's colours still reads with the intended references,
    but worse; with its measurement imported (and saved as a card file the reader loads) the card
    residual and the pads' colours are back to a well-printed card's."""
    true_lab, physical = printed(11, 1.5, 3.0)
    measured = import_measurements(CARD, measurement_csv(true_lab), card_photos(physical))
    path = measured.write(tmp_path / "card.json")
    observers = {"intended": StripObserver(CARD, PRODUCT), "measured": StripObserver(load_card(path), PRODUCT)}
    residual = {name: [] for name in observers}
    pad_error = {name: [] for name in observers}
    exact = {name: 0 for name in observers}
    for data, truth_lab, codes in strip_photos(physical, 6):
        for name, observer in observers.items():
            observation = observer.observe(data)
            residual[name].append(observation.residual_de00)
            pad_error[name].append(delta_e_2000(observation.pad_lab, truth_lab).mean())
            exact[name] += sum(r.level == c for r, c in zip(NearestChartColour().read(observation), codes))
    figures = {name: (np.mean(residual[name]), np.mean(pad_error[name]), exact[name]) for name in observers}
    assert np.all(np.array(residual["measured"]) < np.array(residual["intended"]) - 0.5), figures
    assert np.mean(residual["measured"]) < 1.6, figures
    assert np.all(np.array(pad_error["measured"]) < np.array(pad_error["intended"])), figures
    assert np.mean(pad_error["measured"]) < np.mean(pad_error["intended"]) - 0.15, figures
    assert exact["measured"] >= exact["intended"], figures
    result = Reader(load_card(path), PRODUCT, NearestChartColour()).read(next(strip_photos(physical, 1))[0])
    assert result["status"] == "ok"
    assert result["provenance"]["card"] == result["qc"]["card_id"] == measured.card.id


def test_a_badly_misprinted_card_is_refused_until_it_is_measured():
    """5-9 dE00 of print error: the intended references cannot calibrate any photo (every reading
    would be refused), the measured ones calibrate all of them."""
    true_lab, physical = printed(12, 5.0, 9.0)
    photos = card_photos(physical)
    assert all(card_residual(CARD, photo) is None for photo in photos)
    measured = import_measurements(CARD, measurement_csv(true_lab), photos)
    residuals = measured.card_json["measurement"]["photo_residual_de00"]
    assert residuals["nominal"] == [None] * len(photos)
    assert max(residuals["measured"]) < 2.0
    assert f">{MAX_RESIDUAL_DE00:g} " * 3 + "-> " in measured.report()


def test_the_card_document_is_a_card_file_with_the_measurement_recorded():
    true_lab, physical = printed(11, 1.5, 3.0)
    text = measurement_csv(true_lab)
    measured = import_measurements(CARD, text, card_photos(physical))
    doc = measured.card_json
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert doc["schema"] == "stripread.card/1" and doc["id"] == f"card-v1-m{digest[:8]}"
    assert {k: doc[k] for k in ("size_mm", "markers", "strip_slot")} == \
           {k: CARD.source[k] for k in ("size_mm", "markers", "strip_slot")}
    assert [p["srgb"] for p in doc["patches"]] == [p.srgb for p in CARD.patches]   # the artwork is unchanged
    assert np.allclose(measured.card.patch_lab, true_lab, atol=0.8)
    m = doc["measurement"]
    assert (m["instrument"], m["measured_at"], m["source_sha256"]) == ("X-Rite i1Pro 3", "2026-11-20", digest)
    de00 = np.array(list(m["de00_from_nominal"]["patches"].values()))
    assert 1.0 < m["de00_from_nominal"]["mean"] < 3.0 and m["de00_from_nominal"]["max"] == de00.max()
    assert len(m["photo_residual_de00"]["measured"]) == 3
    assert json.loads(json.dumps(doc)) == doc
    assert "no photos given" in import_measurements(CARD, text).report()
    assert import_measurements(CARD, "\ufeff" + text).card_json["patches"] == doc["patches"]   # a spreadsheet's BOM


def test_swapped_rows_are_refused_and_named():
    lab = misprinted_lab(11, (1.5, 3.0))
    six, thirteen = (next(i for i, p in enumerate(CARD.patches) if p.id == name) for name in ("P06", "P13"))
    lab[[six, thirteen]] = lab[[thirteen, six]]
    with pytest.raises(MeasurementError, match=r"rows P06 \(line 12\) and P13 \(line 19\) look swapped"):
        import_measurements(CARD, measurement_csv(lab))


def _another_design() -> np.ndarray:
    """Same greys, other colours: a measurement of another card design."""
    lab = CARD.patch_lab.copy()
    chromatic = np.array([p.role == "chromatic" for p in CARD.patches])
    rng = np.random.default_rng(4)
    count = chromatic.sum()
    lab[chromatic] = np.column_stack([rng.uniform(30, 85, count), rng.uniform(-50, 50, (count, 2))])
    return lab


@pytest.mark.parametrize("lab", [_another_design(), np.roll(misprinted_lab(11, (1.5, 3.0)), -1, axis=0)],
                         ids=["another-card", "rows-shifted-by-one"])
def test_another_cards_measurement_or_rows_out_of_order_are_refused(lab):
    with pytest.raises(MeasurementError, match="another card, or are the rows out of order"):
        import_measurements(CARD, measurement_csv(lab))


@pytest.mark.parametrize("print_error,message", [
    ((1.0, 2.0), "fit the photos worse than the card's intended values"),
    ((3.0, 6.0), "cannot calibrate photo"),
], ids=["fits-worse", "cannot-calibrate"])
def test_a_plausible_measurement_of_another_print_is_refused_by_the_photos(print_error, message):
    """Every value within a print error of the intended colours, so the file alone looks fine; but
    it was measured on another print of the card, and the photos of this one say so."""
    _, physical = printed(11, *print_error)
    other_print = measurement_csv(misprinted_lab(13, print_error))
    import_measurements(CARD, other_print)   # plausible on its own
    with pytest.raises(MeasurementError, match=f"{message}.*does not match this card"):
        import_measurements(CARD, other_print, card_photos(physical))


def test_a_photo_without_the_card_is_named():
    rng = np.random.default_rng(5)
    photo, _ = scene.photograph(scene.random_scene(rng, product=PRODUCT, fault="no_card", resolution=SMALL), rng)
    with pytest.raises(ReadError):
        card_residual(CARD, photo)
    with pytest.raises(MeasurementError, match="photo 1 cannot be used"):
        import_measurements(CARD, measurement_csv(CARD.patch_lab), [photo])


def _edit(line_start: str, replacement: str | None) -> str:
    """The intended colours as a measurement file with the row starting `line_start` replaced
    (None: removed)."""
    lines = measurement_csv(CARD.patch_lab).splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(line_start))
    lines[index:index + 1] = [] if replacement is None else [replacement]
    return "\n".join(lines)


@pytest.mark.parametrize("text,message", [
    (_edit("P07,", None), r"no row for patch\(es\) P07"),
    (_edit("P07,", "P08,34.9,-19.5,-7.3"), r"patch P08 is measured twice \(lines \d+ and \d+\)"),
    (_edit("P07,", "P07,33.0,abc,26.9"), r"line \d+ \(P07\): a 'abc' is not a number"),
    (_edit("P07,", "P07,133.0,14.8,26.9"), r"line \d+ \(P07\): L 133.0 is outside 0..100"),
    (_edit("P07,", "P07,33.0,nan,26.9"), r"line \d+ \(P07\): a nan is outside -128..128"),
    (_edit("P07,", "P07,33.0,14.8"), r"line \d+: 3 cells, expected 4"),
    (_edit("P07,", "P99,33.0,14.8,26.9"), r"'P99' is not a patch of card-v1"),
    (_edit("P02,", "P02,62.1,4.0,-7.0"), r"P02 \(line \d+\) is a grey patch but measured with chroma 8.1"),
    (_edit("patch,", "id,L*,a*,b*"), r"start with the header line patch,L,a,b"),
    (_edit("# illuminant", "# illuminant: D65"), r"illuminant D65 .* D50 with the 2-degree observer"),
    (_edit("# observer", "# observer: 10°"), r"observer 10°: .* D50 with the 2-degree observer"),
    (_edit("# measured_at", "# measured_at: 20/11/2026"), r"measured_at '20/11/2026' is not an ISO date"),
], ids=["missing", "duplicate", "not-a-number", "out-of-range", "nan", "short-row", "unknown-patch",
        "tinted-grey", "header", "illuminant", "observer", "date"])
def test_malformed_files_are_refused_with_what_to_fix(text, message):
    with pytest.raises(MeasurementError, match=message):
        import_measurements(CARD, text)


def test_every_problem_of_a_file_is_reported_at_once():
    text = _edit("P07,", None).replace("P09,", "P08,").replace("P10,65.", "P10,165.")
    with pytest.raises(MeasurementError) as err:
        import_measurements(CARD, text)
    assert all(part in str(err.value) for part in ("P07", "P08 is measured twice", "L 165"))
