"""Training the pad models with scikit-learn and exporting them as one ONNX file per product.

Per analyte: a standardised multinomial logistic regression over the chart's levels (its
probabilities are the reading's `confidence`) and, for quantitative pads, gradient-boosted trees for
the fractional level position (the reading's `value`). The value's interval is split-conformal and
normalised: the regressor is fitted on 80 % of the data; on the other 20 % its absolute errors are
divided by the photo's difficulty, the card's held-out colour residual plus an offset, and the
interval's half-width is the 90th percentile of that ratio times the new photo's difficulty. It
covers about 90 % of pads like those it was measured on without assuming a distribution, and
widens by itself under light the colour correction handles less well.

How far the classifier may overrule the nearest chart colour (`model_margin`, per analyte: each
reagent's dye parts from the card's inks in its own way) is chosen from the training scenes
themselves by leaving out one light family, camera, dye or ink model at a time (`choose_margins`):
a property of each trained model, never of the test photos.

Every analyte's models sit in one ONNX graph with one input and outputs per analyte, so a strip is
one `InferenceSession.run`. The file carries what it was made for and from (`metadata_props`),
which `models.onnx_model` checks before using it.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
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

from calibration.observe import StripObservation
from calibration.specs import Product
from models.dataset import DOMAINS, SceneRow, TrainingSet, from_rows, true_level
from models.features import feature_names, strip_features
from models.onnx_model import (DEFAULT_MARGIN, DIFFICULTY_OFFSET, META, MODEL_VERSION, NEAREST_ONLY, level_readings,
                               uniform_margins)
from models.pads import chart_positions

REFERENCE_ROWS = 12          # training rows per analyte whose scikit-learn outputs the file carries
INTERVAL_COVERAGE = 0.9
CALIBRATION_SHARE = 0.2
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
RESIDUAL_FEATURE = -1        # the card's held-out residual is the last feature of every pad
MARGINS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, NEAREST_ONLY)   # candidates, smallest first
MARGIN_TOLERANCE = 0.002     # how far below nearest colour a held-out domain may read an analyte: one pad in 500
MIN_DOMAIN_PHOTOS = 20       # a held-out domain with fewer training photos is too small to judge on


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


class SklearnPads:
    """The level classifiers `train` fits, run in scikit-learn (the ONNX export reproduces them to
    1e-4, checked on every load), so validating on held-out domains needs no export."""

    name = "sklearn"
    version = "sklearn"

    def __init__(self, product: Product, rows: Iterable[SceneRow], margins: dict | None = None, seed: int = 0):
        data = from_rows(product, rows)
        self.product = product
        self.margins = margins or uniform_margins(product)
        self.models = {pad.analyte: fit_analyte(*data.arrays(pad.analyte), False, seed) for pad in product.pads}
        self.classes = {a: m.classes for a, m in self.models.items()}

    def probabilities(self, observations: list[StripObservation]) -> tuple[list, list[dict]]:
        """Each observation's chart positions and per-analyte probabilities (one batch per analyte)."""
        charts = [chart_positions(self.product.pads, o.pad_lab) for o in observations]
        features = [strip_features(o, c) for o, c in zip(observations, charts)]
        columns = {pad.analyte: self.models[pad.analyte].classifier.predict_proba(np.array([f[i] for f in features]))
                   for i, pad in enumerate(self.product.pads)}
        return charts, [{a: p[k] for a, p in columns.items()} for k in range(len(observations))]

    def read(self, observation: StripObservation) -> list:
        charts, probabilities = self.probabilities([observation])
        return level_readings(self.product, charts[0], probabilities[0], self.classes, self.margins)


def choose_margins(product: Product, rows: Iterable[SceneRow], seed: int = 0) -> tuple[dict, dict]:
    """The rule, per analyte: the smallest of `MARGINS` at which no held-out domain reads that
    analyte worse than nearest colour does by more than `MARGIN_TOLERANCE` (exact, on the pads read).
    Each light family, camera, dye model and ink model with at least `MIN_DOMAIN_PHOTOS` of the
    training photos is held out in turn (when the others are as many): the classifiers are fitted
    on the other photos and read it at every candidate margin. `NEAREST_ONLY` always passes (the
    levels are then nearest colour's, the model only gives the confidence). Without a domain that
    large (real captures carry none): `DEFAULT_MARGIN`.
    Returns {analyte: margin} and the table {'<kind>=<value>': {'photos', <analyte>: {'pads', <margin>: exact}}}."""
    rows = list(rows)
    table = {}
    for kind, of in DOMAINS.items():
        for held in sorted({of(r) for r in rows}):
            inside = [r for r in rows if of(r) == held]
            if min(len(inside), len(rows) - len(inside)) < MIN_DOMAIN_PHOTOS or \
                    all(r.observation is None for r in inside):
                continue   # too few photos to judge on, or to fit on without them
            model = SklearnPads(product, [r for r in rows if of(r) != held], seed=seed)
            table[f"{kind}={held}"] = {"photos": len(inside), **_exact_by_margin(model, inside)}
    if not table:
        return uniform_margins(product), table
    return {pad.analyte: next(m for m in MARGINS if all(_lead(e[pad.analyte], m) >= -MARGIN_TOLERANCE
                                                        for e in table.values() if pad.analyte in e))
            for pad in product.pads}, table


def _lead(entry: dict, margin: float) -> float:
    """How far the model at `margin` reads above nearest colour (rounded, so equal is exactly 0)."""
    return round(entry[margin] - entry[NEAREST_ONLY], 9)


def _exact_by_margin(model: SklearnPads, rows: list[SceneRow]) -> dict:
    """Per analyte, the share of read pads at their true level at every candidate margin, and the
    pads read (the same at every margin: whether a pad is read at all does not depend on it)."""
    observed = [r for r in rows if r.observation is not None]
    charts, probabilities = model.probabilities([r.observation for r in observed])
    truth = [{pad.analyte: pad.levels[true_level(pad, r.positions[pad.analyte])].code
              for pad in model.product.pads if r.positions.get(pad.analyte) is not None} for r in observed]
    marks = {pad.analyte: {m: [] for m in MARGINS} for pad in model.product.pads}
    for margin in MARGINS:
        every = uniform_margins(model.product, margin)
        for c, p, t in zip(charts, probabilities, truth):
            for reading in level_readings(model.product, c, p, model.classes, every):
                if reading.analyte in t and reading.level is not None:
                    marks[reading.analyte][margin].append(reading.level == t[reading.analyte])
    return {a: {"pads": len(m[NEAREST_ONLY]), **{k: sum(v) / len(v) for k, v in m.items()}}
            for a, m in marks.items() if m[NEAREST_ONLY]}


def format_margin_table(margins: dict, table: dict) -> str:
    """The table as text: per analyte, the pads read over the held-out domains and, per candidate
    margin, how far the worst held-out domain reads it below nearest colour; then the margin kept."""
    head = f"{'analyte':8} {'pads':>6} " + " ".join(f"{m:>6.2f}" for m in MARGINS[:-1]) + "   margin"
    lines = [head]
    for analyte, margin in margins.items():
        entries = [e[analyte] for e in table.values() if analyte in e]
        if entries:
            lines.append(f"{analyte:8} {sum(e['pads'] for e in entries):6d} "
                         + " ".join(f"{min(_lead(e, m) for e in entries):+6.3f}" for m in MARGINS[:-1])
                         + f"   {margin}")
    lines.append(f"{len(table)} held-out domains; " + (
        f"each analyte's margin is the smallest at which no held-out domain reads it worse than nearest "
        f"colour by more than {MARGIN_TOLERANCE} ({NEAREST_ONLY}: levels always nearest colour's)" if table else
        f"the default margin {DEFAULT_MARGIN}: no light, camera, dye or ink domain of rendered scenes with "
        f"{MIN_DOMAIN_PHOTOS} photos to hold out (real captures carry none)"))
    return "\n".join(lines)


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


def export(models: dict[str, AnalyteModel], data: TrainingSet, path: Path, margins: dict | None = None,
           margin_table: dict | None = None) -> Path:
    """Write all analytes' models to one ONNX file with the metadata the loader checks, the margins
    the model reads with (`choose_margins`) and the table they were chosen from."""
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
        "model_margin": json.dumps(margins or uniform_margins(product)),
        "model_margin_table": json.dumps({held: {a: v if a == "photos" else {str(k): x for k, x in v.items()}
                                                 for a, v in e.items()}
                                          for held, e in (margin_table or {}).items()}),
        "sklearn_reference": json.dumps(reference_outputs(models, data)),
    }
    for key, value in meta.items():
        entry = merged.metadata_props.add()
        entry.key, entry.value = META + key, value
    onnx.checker.check_model(merged)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(merged.SerializeToString())
    return path
