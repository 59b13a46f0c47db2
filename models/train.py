"""Training the pad models with scikit-learn and exporting them as one ONNX file per product.

Per analyte: a standardised multinomial logistic regression over the chart's levels (its
probabilities are the reading's `confidence`) and, for quantitative pads, gradient-boosted trees for
the fractional level position (the reading's `value`). The value's interval is split-conformal and
normalised: the regressor is fitted on 80 % of the data; on the other 20 % its absolute errors are
divided by the photo's difficulty, the card's held-out colour residual plus an offset, and the
interval's half-width is the 90th percentile of that ratio times the new photo's difficulty. It
covers about 90 % of pads like those it was measured on without assuming a distribution, and
widens by itself under light the colour correction handles less well.

Every analyte's models sit in one ONNX graph with one input and outputs per analyte, so a strip is
one `InferenceSession.run`. The file carries what it was made for and from (`metadata_props`),
which `models.onnx_model` checks before using it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
from onnx import compose, helper
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from models.dataset import TrainingSet
from models.features import feature_names
from models.onnx_model import DIFFICULTY_OFFSET, META, MODEL_VERSION

REFERENCE_ROWS = 12          # training rows per analyte whose scikit-learn outputs the file carries
INTERVAL_COVERAGE = 0.9
CALIBRATION_SHARE = 0.2
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
RESIDUAL_FEATURE = -1        # the card's held-out residual is the last feature of every pad


@dataclass
class AnalyteModel:
    classifier: Pipeline
    classes: list[int]                     # level index of each probability column
    regressor: GradientBoostingRegressor | None
    interval_scale: float                  # half-width in level units per unit of difficulty (0: nominal)


def fit_analyte(x: np.ndarray, levels: np.ndarray, positions: np.ndarray, quantitative: bool,
                seed: int) -> AnalyteModel:
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=3.0, max_iter=5000))
    classifier.fit(x, levels)
    if not quantitative:
        return AnalyteModel(classifier, [int(c) for c in classifier.classes_], None, 0.0)
    difficulty = x[:, RESIDUAL_FEATURE] + DIFFICULTY_OFFSET
    order = np.random.default_rng(seed).permutation(len(x))
    held = order[: int(len(x) * CALIBRATION_SHARE)]
    fit = order[len(held):]
    regressor = GradientBoostingRegressor(n_estimators=120, max_depth=3, learning_rate=0.08, subsample=0.8,
                                          random_state=seed)
    regressor.fit(x[fit], positions[fit])
    scores = np.abs(regressor.predict(x[held]) - positions[held]) / difficulty[held]
    # the conformal quantile: the ceil((n + 1) q)-th smallest score
    k = min(len(scores) - 1, int(np.ceil((len(scores) + 1) * INTERVAL_COVERAGE)) - 1)
    scale = float(np.sort(scores)[k]) if len(scores) else float("inf")
    return AnalyteModel(classifier, [int(c) for c in classifier.classes_], regressor, scale)


def train(data: TrainingSet, seed: int = 0) -> dict[str, AnalyteModel]:
    models = {}
    for pad in data.product.pads:
        if pad.analyte not in data.features:
            raise ValueError(f"no usable training pads for {pad.analyte}")
        x, levels, positions = data.arrays(pad.analyte)
        models[pad.analyte] = fit_analyte(x, levels, positions, pad.quantitative, seed)
    return models


def _analyte_graph(analyte: str, model: AnalyteModel, width: int) -> onnx.ModelProto:
    """The analyte's classifier (and regressor) as one model with input `<analyte>`."""
    sample = np.zeros((1, width), np.float32)
    parts = [compose.add_prefix(to_onnx(model.classifier, sample, target_opset=TARGET_OPSET,
                                        options={LogisticRegression: {"zipmap": False}}), f"{analyte}_c_")]
    if model.regressor is not None:
        parts.append(compose.add_prefix(to_onnx(model.regressor, sample, target_opset=TARGET_OPSET),
                                        f"{analyte}_r_"))
    nodes = [helper.make_node("Identity", [analyte], [part.graph.input[0].name]) for part in parts]
    graph = helper.make_graph(
        nodes + [n for part in parts for n in part.graph.node], analyte,
        [helper.make_tensor_value_info(analyte, onnx.TensorProto.FLOAT, [None, width])],
        [o for part in parts for o in part.graph.output],
        [i for part in parts for i in part.graph.initializer])
    return helper.make_model(graph, opset_imports=list(parts[0].opset_import))


def reference_outputs(models: dict[str, AnalyteModel], data: TrainingSet) -> dict:
    """A fixed input set (the first training rows of each analyte) with scikit-learn's own outputs:
    the ONNX file must reproduce them (checked on every load and by the tests)."""
    reference = {}
    for analyte, model in models.items():
        x = data.arrays(analyte)[0][:REFERENCE_ROWS]
        entry = {"x": x.tolist(), "probabilities": model.classifier.predict_proba(x).tolist()}
        if model.regressor is not None:
            entry["position"] = model.regressor.predict(x).tolist()
        reference[analyte] = entry
    return reference


def export(models: dict[str, AnalyteModel], data: TrainingSet, path: Path) -> Path:
    """Write all analytes' models to one ONNX file with the metadata the loader checks."""
    product = data.product
    graphs = [_analyte_graph(p.analyte, models[p.analyte], len(feature_names(p))) for p in product.pads]
    merged = graphs[0]
    for g in graphs[1:]:
        merged = compose.merge_models(merged, g, io_map=[])
    merged.producer_name = "stripread"
    meta = {
        "model_version": MODEL_VERSION,
        "product": product.id,
        "chart_sha256": product.chart_digest,
        "training_data_sha256": data.digest(),
        "training_photos": str(data.photos),
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "features": json.dumps({p.analyte: feature_names(p) for p in product.pads}),
        "classes": json.dumps({a: m.classes for a, m in models.items()}),
        "interval_scale": json.dumps({a: m.interval_scale for a, m in models.items()}),
        "interval_coverage": str(INTERVAL_COVERAGE),
        "sklearn_reference": json.dumps(reference_outputs(models, data)),
    }
    for key, value in meta.items():
        entry = merged.metadata_props.add()
        entry.key, entry.value = META + key, value
    onnx.checker.check_model(merged)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(merged.SerializeToString())
    return path
