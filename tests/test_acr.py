"""The ACR strip end to end: albumin and creatinine read across their charts, the derived
albumin-to-creatinine ratio with its KDIGO category and propagated interval, and its way to the lab."""
import dataclasses
import math

import numpy as np
import pytest

from calibration.errors import SpecError
from calibration.specs import load_card
from device.reading.reader import Reader
from device.reading.result import PadResult, Reading
from models.derived import derive, ratios
from models.onnx_model import OnnxPadModel
from simulator.scene import photograph, random_scene


def _entry(analyte, value, interval=None):
    entry = {"analyte": analyte, "level": "x", "value": value, "confidence": 0.9, "flags": []}
    if interval:
        entry["value_interval"] = interval
    return entry


def _pad(analyte, value, interval=None):
    return PadResult.from_dict(_entry(analyte, value, interval))


def test_the_ratio_its_category_and_its_interval(acr_product):
    acr, = derive(acr_product, [_pad("ALB", 80.0, [72.0, 88.0]), _pad("CRE", 100.0, [90.0, 110.0])])
    assert acr.code == "ACR" and acr.loinc == "9318-7" and acr.unit == "mg/g"
    assert acr.value == 80.0 and acr.category == "A2" and acr.flags == ("abnormal",)
    low, high = acr.interval
    expected = math.hypot(math.log(88 / 72) / 2, math.log(110 / 90) / 2)       # relative errors in quadrature
    assert low == pytest.approx(80 * math.exp(-expected), abs=0.01) and high == pytest.approx(80 * math.exp(expected),
                                                                                             abs=0.01)
    normal, = derive(acr_product, [_pad("ALB", 10.0, [9.0, 11.0]), _pad("CRE", 100.0, [95.0, 105.0])])
    assert normal.category == "A1" and normal.flags == ()
    edge, = derive(acr_product, [_pad("ALB", 30.0, [20.0, 40.0]), _pad("CRE", 100.0, [90.0, 110.0])])
    assert edge.category == "A2" and "category_uncertain" in edge.flags  # 30 mg/g, interval 20-45
    severe, = derive(acr_product, [_pad("ALB", 150.0), _pad("CRE", 10.0)])
    assert severe.category == "A3" and severe.interval == (1500.0, 1500.0)


def test_an_unread_pad_leaves_the_ratio_unreported(acr_product):
    acr, = derive(acr_product, [_pad("ALB", None), _pad("CRE", 100.0)])
    assert acr.value is None and acr.category is None and acr.flags == ("no_alb",)


def test_a_formula_the_reader_cannot_compute_is_refused_when_the_product_loads(acr_product):
    odd = dataclasses.replace(acr_product, derived=({**acr_product.derived[0], "formula": "ALB + CRE"},))
    with pytest.raises(SpecError, match="only a ratio of two of its pads"):
        ratios(odd)


def test_acr_strips_across_their_charts_read_with_the_right_category(acr_product):
    """Every albumin level with every creatinine level (20 strips), rendered and read."""
    reader = Reader(load_card(), acr_product, OnnxPadModel(acr_product))
    ratio = ratios(acr_product)[0]
    rng = np.random.default_rng(17)
    albumin, creatinine = acr_product.pad("ALB"), acr_product.pad("CRE")
    pads_exact = categories = strips = 0
    for a in range(len(albumin.levels)):
        for c in range(len(creatinine.levels)):
            spec = random_scene(rng, product=acr_product.id, resolution=(1456, 1088), glare=None,
                                levels={"ALB": float(a), "CRE": float(c)})
            photo, truth = photograph(spec, rng)
            result = reader.read(photo)
            assert result["status"] == "ok", result.get("error")
            strips += 1
            pads_exact += sum(e["level"] == truth.pads[e["analyte"]].level for e in result["analytes"])
            true_ratio = ratio.factor * albumin.levels[a].value / creatinine.levels[c].value
            # a ratio on a category's boundary (150 / 50 mg: 300 mg/g) is rightly read on either side
            either = {ratio.category(true_ratio * f) for f in (0.99, 1.0, 1.01)}
            categories += result["derived"][0]["category"] in either
    assert pads_exact >= 0.9 * 2 * strips
    assert categories >= 0.9 * strips


def test_the_ratio_goes_to_the_lab_as_its_own_observation(tmp_path, acr_product):
    from device.lab.fhir import transaction
    from device.lab.hl7 import oru_message
    from device.lab.config import Hl7Settings, LabConfig
    from device.store.results import ResultStore
    result = {"schema": "stripread.read/1", "status": "ok", "product": "acr-2",
              "analytes": [{**_entry("ALB", 80.0, [72.0, 88.0]), "loinc": "14957-5", "unit": "mg/L", "level": "80"},
                           {**_entry("CRE", 100.0, [90.0, 110.0]), "loinc": "2161-8", "unit": "mg/dL", "level": "100"}],
              "provenance": {"calibration_id": "factory", "captured_at": "2026-11-23T09:15:00+00:00",
                             "card": "card-v1", "device_id": "sr-1", "model_version": "m", "product": "acr-2",
                             "software": "stripread", "software_version": "0.1.0"}}
    result = Reading.from_dict(result)
    result = dataclasses.replace(result, stored_derived=derive(acr_product, result.pads))
    with ResultStore(tmp_path / "r.db") as store:
        record = store.add(result, patient_id="P-1")
    config = LabConfig(fhir=None, hl7=None)
    entries = transaction(record, config)["entry"]
    acr = next(e["resource"] for e in entries if e["resource"].get("code", {}).get("coding", [{}])[0].get("code")
               == "9318-7")
    assert acr["valueQuantity"]["value"] == 80.0 and acr["valueQuantity"]["code"] == "mg/g"
    sources = {e["fullUrl"] for e in entries if e["resource"]["resourceType"] == "Observation"
               and e["resource"]["code"]["text"] in ("Albumin", "Creatinine")}
    assert {ref["reference"] for ref in acr["derivedFrom"]} == sources
    assert "Category A2" in acr["note"][0]["text"]
    segments = oru_message(record, Hl7Settings("h", 1, None), config).split("\r")
    obx = next(s for s in segments if "9318-7" in s).split("|")
    assert obx[2] == "NM" and obx[5] == "80" and obx[6].startswith("mg/g") and obx[8] == "A"
