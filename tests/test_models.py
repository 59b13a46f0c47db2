"""Training, ONNX export and inference of the pad models, and their refusal of a bad model file."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from calibration.errors import ReadError
from calibration.specs import builtin_products, load_card, load_product
from device.cli.commands import main
from device.reading.reader import Reader
from models import dataset, train
from models.onnx_model import DEFAULT_MARGIN, MODEL_VERSION, NEAREST_ONLY, OnnxPadModel, default_model_path
from simulator import scene

TINY = 40   # scenes: enough for every pad to see several levels, quick enough for a test


def _synthetic(product_id: str, count: int, seed: int, jobs: int) -> dataset.TrainingSet:
    return dataset.from_rows(load_product(product_id), dataset.synthetic_rows(product_id, "card-v1", count, seed, jobs))


@pytest.fixture(scope="module")
def tiny_set():
    return _synthetic("generic-10", TINY, seed=5, jobs=2)


@pytest.fixture(scope="module")
def tiny_models(tiny_set):
    return train.train(tiny_set, seed=0)


@pytest.fixture(scope="module")
def tiny_file(tiny_set, tiny_models, tmp_path_factory):
    return train.export(tiny_models, tiny_set, tmp_path_factory.mktemp("m") / "tiny.onnx")


def test_training_set_holds_every_pad_of_every_observed_scene(tiny_set, product):
    # the wide world includes photos no colour correction can read (a Foveon-like sensor under a
    # line-spectrum lamp): a few are refused and skipped
    assert tiny_set.photos == TINY and tiny_set.refused <= 0.15 * TINY
    for pad in product.pads:
        x, levels, positions = tiny_set.arrays(pad.analyte)
        assert x.shape == (TINY - tiny_set.refused, len(pad.levels) + 9)
        assert np.all(levels == np.round(positions)) and levels.max() < len(pad.levels)


def test_onnx_reproduces_scikit_learn(tiny_set, tiny_models, tiny_file, product):
    model = OnnxPadModel(product, tiny_file)
    feeds = {p.analyte: tiny_set.arrays(p.analyte)[0] for p in product.pads}
    out = dict(zip(model.outputs, model.session.run(None, feeds)))
    for pad in product.pads:
        x, m = feeds[pad.analyte], tiny_models[pad.analyte]
        assert np.allclose(out[f"{pad.analyte}_c_probabilities"], m.classifier.predict_proba(x), atol=1e-4)
        if m.regressor is not None:
            assert np.allclose(out[f"{pad.analyte}_r_variable"].ravel(), m.regressor.predict(x), atol=1e-4)


@pytest.mark.parametrize("product_id", builtin_products())
def test_shipped_models_reproduce_their_scikit_learn_reference(product_id):
    """The shipped file carries a fixed input set with scikit-learn's outputs from training; loading
    runs it (a mismatch would raise model_error) and here it is checked once more, explicitly."""
    product = load_product(product_id)
    model = OnnxPadModel(product)
    meta = onnx.load(str(default_model_path(product))).metadata_props
    reference = json.loads(next(m.value for m in meta if m.key == "stripread.sklearn_reference"))
    assert set(reference) == {p.analyte for p in product.pads}
    results = dict(zip(model.outputs, model.session.run(
        None, {a: np.array(r["x"], np.float32) for a, r in reference.items()})))
    for analyte, r in reference.items():
        assert len(r["x"]) == train.REFERENCE_ROWS
        assert np.allclose(results[f"{analyte}_c_probabilities"], r["probabilities"], atol=1e-4)
    assert default_model_path(product).stat().st_size < 3_000_000


def test_shipped_model_reads_better_than_chance_and_names_itself(product):
    rng = np.random.default_rng(60)
    spec = scene.random_scene(rng, product="generic-10")
    data, truth = scene.photograph(spec, rng)
    result = Reader(load_card(), product, OnnxPadModel(product)).read(data)
    assert result["status"] == "ok"
    assert sum(a["level"] == truth.pads[a["analyte"]].level for a in result["analytes"]) >= 9
    assert result["provenance"]["model"] == "onnx" and result["provenance"]["model_version"].startswith(MODEL_VERSION + "+")
    glu = next(a for a in result["analytes"] if a["analyte"] == "GLU")
    lo, hi = glu["value_interval"]
    assert lo <= glu["value"] <= hi


def test_training_is_deterministic(tiny_set):
    a, b = train.train(tiny_set, seed=3), train.train(tiny_set, seed=3)
    x = tiny_set.arrays("GLU")[0]
    assert np.array_equal(a["GLU"].classifier.predict_proba(x), b["GLU"].classifier.predict_proba(x))
    assert np.array_equal(a["GLU"].regressor.predict(x), b["GLU"].regressor.predict(x))
    assert a["GLU"].interval_scale == b["GLU"].interval_scale


def test_same_seed_same_training_data():
    first = _synthetic("acr-2", 6, seed=9, jobs=2)
    again = _synthetic("acr-2", 6, seed=9, jobs=1)
    assert first.digest() == again.digest()
    assert first.digest() != _synthetic("acr-2", 6, seed=10, jobs=2).digest()


def _refused(product, path) -> ReadError:
    with pytest.raises(ReadError) as err:
        OnnxPadModel(product, path)
    assert err.value.code == "model_error"
    return err.value


def test_missing_or_corrupt_model_is_refused(tmp_path, product, tiny_file):
    assert "no model file" in _refused(product, tmp_path / "absent.onnx").detail
    data = tiny_file.read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    _refused(product, tmp_path / "truncated.onnx")
    (tmp_path / "noise.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    _refused(product, tmp_path / "noise.onnx")


def test_model_for_another_product_or_an_edited_chart_is_refused(tmp_path, product, acr_product, tiny_file):
    assert "made for product 'generic-10'" in _refused(acr_product, tiny_file).detail
    pad = product.pads[0]
    level = dataclasses.replace(pad.levels[0], srgb="FFFFFF")
    edited = dataclasses.replace(product, pads=(dataclasses.replace(pad, levels=(level,) + pad.levels[1:]),)
                                 + product.pads[1:])
    assert "chart changed" in _refused(edited, tiny_file).detail


def _rewrite(path: Path, out: Path, key: str, value: str) -> Path:
    model = onnx.load(str(path))
    next(m for m in model.metadata_props if m.key == "stripread." + key).value = value
    out.write_bytes(model.SerializeToString())
    return out


def test_mismatched_features_or_tampered_weights_are_refused(tmp_path, product, tiny_file):
    features = json.loads(next(m.value for m in onnx.load(str(tiny_file)).metadata_props
                               if m.key == "stripread.features"))
    features["GLU"] = features["GLU"][::-1]
    bad = _rewrite(tiny_file, tmp_path / "features.onnx", "features", json.dumps(features))
    assert "features for GLU" in _refused(product, bad).detail
    model = onnx.load(str(tiny_file))
    node = next(n for n in model.graph.node if n.name == "GLU_c_LinearClassifier")
    next(a for a in node.attribute if a.name == "coefficients").floats[0] += 0.5
    (tmp_path / "weights.onnx").write_bytes(model.SerializeToString())
    assert "reference outputs" in _refused(product, tmp_path / "weights.onnx").detail


def test_cli_read_with_a_corrupt_model_refuses_with_model_error(tmp_path, capsys):
    rng = np.random.default_rng(61)
    data, _ = scene.photograph(scene.random_scene(rng, product="generic-10"), rng)
    (tmp_path / "p.jpg").write_bytes(data)
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    assert main(["read", str(tmp_path / "p.jpg"), "--json", "--model", str(tmp_path / "bad.onnx")]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "model_error"
    assert main(["read", str(tmp_path / "p.jpg"), "--json", "--model", "baseline"]) == 0
    assert json.loads(capsys.readouterr().out)["provenance"]["model"] == "baseline"


def test_cli_train_on_a_tiny_set(tmp_path, capsys):
    out = tmp_path / "acr.onnx"
    assert main(["train", "--product", "acr-2", "--synthetic", "8", "--jobs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    report = json.loads(printed.out)
    assert report["photos"] == 8 and len(report["training_data_sha256"]) == 64
    # eight scenes hold no domain of 20 photos to leave out: the default margin, said so
    assert report["model_margin"] == {"ALB": DEFAULT_MARGIN, "CRE": DEFAULT_MARGIN} and "the default" in printed.err
    assert OnnxPadModel(load_product("acr-2"), out).version.endswith(report["training_data_sha256"][:12])


def test_real_captures_folder(tmp_path, product):
    """A technician's folder: photos plus labels.csv with level codes or concentrations."""
    rows = ["photo,product," + ",".join(p.analyte for p in product.pads)]
    for i in range(3):
        rng = np.random.default_rng(70 + i)
        data, truth = scene.photograph(scene.random_scene(rng, product="generic-10"), rng)
        (tmp_path / f"{i}.jpg").write_bytes(data)
        cells = [truth.pads[p.analyte].level for p in product.pads]
        if i == 0:
            cells[-1] = ""                                    # glucose unknown on this strip
        if i == 1:
            cells[-1] = "180"                                 # a calibrator between 100 and 250 mg/dL
        rows.append(f"{i}.jpg,generic-10," + ",".join(cells))
    rows.append("other.jpg,acr-2," + "," * (len(product.pads) - 1))   # another product's row: ignored
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    data = dataset.real_captures(product, load_card(), tmp_path)
    assert data.photos == 3 and data.refused == 0
    assert len(data.features["LEU"]) == 3 and len(data.features["GLU"]) == 2
    assert data.positions["GLU"][0] == pytest.approx(1 + 80 / 150)


@pytest.mark.parametrize("cell,expected", [("neg", 0.0), ("250", 2.0), ("175", 1.5), ("", None)])
def test_label_cells(cell, expected, product):
    assert product.pad("GLU").cell_position(cell) == expected


@pytest.mark.parametrize("cell", ["lots", "5000", "-1"])
def test_bad_label_cells_are_refused(cell, product):
    with pytest.raises(ValueError, match="GLU"):
        product.pad("GLU").cell_position(cell)


def _observation_at_levels(product, levels: dict, residual: float = 1.0):
    """A strip whose pads show exactly the chart colour of the given level indices."""
    from calibration.colour import hex_to_lab_d50
    from calibration.observe import StripObservation
    lab = np.array([pad.level_lab[levels.get(pad.analyte, 0)] for pad in product.pads])
    return StripObservation(product, lab, hex_to_lab_d50(product.strip_base_srgb), residual,
                            np.zeros(len(product.pads)))


class _ForcedSession:
    """Stands in for onnxruntime: every pad's classifier puts its mass on the last level."""

    def __init__(self, real, product):
        self.real, self.product = real, product

    def run(self, names, feeds):
        out = dict(zip([o.name for o in self.real.get_outputs()], self.real.run(names, feeds)))
        for pad in self.product.pads:
            probabilities = np.zeros((1, len(pad.levels)), np.float32)
            probabilities[0, -1] = 0.9
            probabilities[0, 0] = 0.1
            out[f"{pad.analyte}_c_probabilities"] = probabilities
        return list(out.values())


def test_model_never_moves_a_level_more_than_one_step_from_the_chart_colour(product, tiny_file):
    model = OnnxPadModel(product, tiny_file)
    model.session = _ForcedSession(model.session, product)
    readings = {r.analyte: r for r in model.read(_observation_at_levels(product, {"GLU": 0}))}
    glu = readings["GLU"]
    assert glu.level in ("neg", "100")            # chart says neg; the model may move one step at most
    assert "low_confidence" in glu.flags          # and the mass it put elsewhere shows as low confidence


def test_value_interval_widens_when_the_colour_correction_was_harder(product, tiny_file):
    model = OnnxPadModel(product, tiny_file)
    easy = {r.analyte: r for r in model.read(_observation_at_levels(product, {"GLU": 2}, residual=0.5))}
    hard = {r.analyte: r for r in model.read(_observation_at_levels(product, {"GLU": 2}, residual=3.0))}
    width = lambda r: r.interval[1] - r.interval[0]   # noqa: E731
    assert easy["GLU"].interval[0] <= easy["GLU"].value <= easy["GLU"].interval[1]
    assert width(hard["GLU"]) > width(easy["GLU"])


def _scene_rows(product, shift_by_light: dict, per_light: int = 24) -> list:
    """Strips whose pads sit 30 % of the way from a level's chart colour to the next, so nearest
    colour reads that level; under each light the true level is that level plus its shift (a dye
    that reads darker than its colour under that light), one for all pads or {analyte: shift}.
    One camera, dye and ink: never held out."""
    from calibration.colour import hex_to_lab_d50
    from calibration.observe import StripObservation
    rng = np.random.default_rng(3)
    base = hex_to_lab_d50(product.strip_base_srgb)
    rows = []
    for light, shift in shift_by_light.items():
        for i in range(per_light):
            ks = [int(rng.integers(0, len(pad.levels) - 1)) for pad in product.pads]
            lab = np.array([pad.level_lab[k] + 0.3 * (pad.level_lab[k + 1] - pad.level_lab[k]) + rng.normal(0, 0.2, 3)
                            for pad, k in zip(product.pads, ks)])
            observation = StripObservation(product, lab, base, 1.0, np.zeros(len(product.pads)))
            positions = {pad.analyte: float(k + (shift[pad.analyte] if isinstance(shift, dict) else shift))
                         for pad, k in zip(product.pads, ks)}
            rows.append(dataset.SceneRow(i, product.id, light, "cam", "bands/cmyk", None, None, observation, None,
                                         positions, {}))
    return rows


def test_margin_rule_keeps_nearest_colour_when_a_held_out_domain_is_hurt(acr_product):
    # under light c the dye reads as its colour; trained on a and b alone, the model confidently
    # moves every pad up a level, which is wrong under c at any margin the model can reach
    margins, table = train.choose_margins(acr_product, _scene_rows(acr_product, {"a": 1, "b": 1, "c": 0}))
    assert set(table) == {"light=a", "light=b", "light=c"}          # one camera/dye/ink: nothing to hold out
    under_c = table["light=c"]["ALB"]
    assert under_c[NEAREST_ONLY] > 0.9 and under_c[0.9] < under_c[NEAREST_ONLY] - 0.5
    assert margins == {"ALB": NEAREST_ONLY, "CRE": NEAREST_ONLY}


def test_margin_rule_takes_the_smallest_margin_when_no_held_out_domain_is_hurt(acr_product):
    margins, table = train.choose_margins(acr_product, _scene_rows(acr_product, {"a": 1, "b": 1, "c": 1}))
    # the model beats the colour everywhere
    assert all(e[a][0.0] > e[a][NEAREST_ONLY] + 0.5 for e in table.values() for a in ("ALB", "CRE"))
    assert margins == {"ALB": 0.0, "CRE": 0.0}
    assert "each analyte's margin is the smallest" in train.format_margin_table(margins, table)


def test_margin_rule_is_per_analyte_each_dye_parting_from_the_inks_its_own_way(acr_product):
    # creatinine's dye reads a level above its colour under every light; albumin's does so under a
    # and b but reads as its colour under c: only albumin must keep to nearest colour
    shifts = {"a": 1, "b": 1, "c": {"ALB": 0, "CRE": 1}}
    margins, table = train.choose_margins(acr_product, _scene_rows(acr_product, shifts))
    assert margins == {"ALB": NEAREST_ONLY, "CRE": 0.0}
    printed = train.format_margin_table(margins, table)
    assert any(line.startswith("ALB") and line.endswith(str(NEAREST_ONLY)) for line in printed.splitlines())


def _delete(path: Path, out: Path, key: str) -> Path:
    model = onnx.load(str(path))
    kept = [m for m in model.metadata_props if m.key != "stripread." + key]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    out.write_bytes(model.SerializeToString())
    return out


def test_the_files_margin_is_the_one_the_model_reads_with(tmp_path, product, tiny_set, tiny_models, tiny_file):
    """Trained model -> file with its margins -> OnnxPadModel reads each pad with its analyte's
    margin; a file from before margins were chosen reads with the default, one from before they
    were chosen per analyte with its one margin for all; a margin out of range is refused."""
    table = {"light=x": {"photos": 20, "GLU": {"pads": 200, **{m: 0.9 for m in train.MARGINS}}}}
    every = lambda m: {pad.analyte: m for pad in product.pads}   # noqa: E731
    files = {m: train.export(tiny_models, tiny_set, tmp_path / f"{m}.onnx", every(m), table) for m in (0.8, NEAREST_ONLY)}
    meta = {m.key: m.value for m in onnx.load(str(files[0.8])).metadata_props}
    assert json.loads(meta["stripread.model_margin_table"])["light=x"]["GLU"]["0.8"] == 0.9
    glu = product.pad("GLU")
    below_top = len(glu.levels) - 2        # the forced classifier prefers the top level by 0.9 to this one
    levels = {}
    for margin, path in files.items():
        model = OnnxPadModel(product, path)
        assert model.margins == every(margin)
        model.session = _ForcedSession(model.session, product)
        readings = model.read(_observation_at_levels(product, {"GLU": below_top}))
        levels[margin] = next(r.level for r in readings if r.analyte == "GLU")
    assert levels == {0.8: glu.levels[-1].code, NEAREST_ONLY: glu.levels[below_top].code}
    assert OnnxPadModel(product, _delete(tiny_file, tmp_path / "old.onnx", "model_margin")).margins == every(DEFAULT_MARGIN)
    assert OnnxPadModel(product, _rewrite(tiny_file, tmp_path / "one.onnx", "model_margin", "0.8")).margins == every(0.8)
    assert "outside" in _refused(product, _rewrite(tiny_file, tmp_path / "far.onnx", "model_margin", "2")).detail
    far = json.dumps({**every(0.8), "GLU": 2})
    assert "of GLU outside" in _refused(product, _rewrite(tiny_file, tmp_path / "far2.onnx", "model_margin", far)).detail
    lacking = json.dumps({a: m for a, m in every(0.8).items() if a != "GLU"})
    assert "incomplete" in _refused(product, _rewrite(tiny_file, tmp_path / "lack.onnx", "model_margin", lacking)).detail
