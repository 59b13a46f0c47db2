"""Pad levels from the trained ONNX models, run by onnxruntime.

The model file is checked before it is used: readable, made for this product (its id and a hash of
its chart), with the features this code computes and an input and output for every pad. Anything
else is refused with `model_error`: a misread strip is worse than no reading. The session is created
once per reader, single-threaded (a Pi core runs a whole strip well under a millisecond).
"""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np

from calibration.errors import ReadError
from calibration.observe import StripObservation
from calibration.specs import Product
from models.features import feature_names, strip_features
from models.ort_session import has_saved_graph, open_session
from models.pads import OUT_OF_GAMUT_DE00, PadReading, chart_positions, interpret, out_of_gamut, value_at

MODEL_VERSION = "pads/2"
DEFAULT_MARGIN = 0.5         # the margin of a file without one (trained before margins were chosen)
NEAREST_ONLY = 1.01          # a margin no probability difference reaches: the nearest colour's levels
DIFFICULTY_OFFSET = 0.5      # a photo's difficulty: card residual (dE00) + this; scales value intervals
META = "stripread."          # prefix of this project's keys in the file's metadata_props
REFERENCE_TOLERANCE = 1e-4   # float32 inference against scikit-learn's float64
_FAIL = "The reader's analysis model is missing or damaged, so no result can be given: contact support."


def uniform_margins(product: Product, margin: float = DEFAULT_MARGIN) -> dict[str, float]:
    """The same margin for every analyte of the product (a file trained before margins were chosen
    per analyte, or training with no domain to choose them on)."""
    return {pad.analyte: float(margin) for pad in product.pads}


def default_model_path(product: Product) -> Path:
    return Path(str(resources.files("models") / "data" / f"{product.id}.onnx"))


def _refuse(detail: str) -> ReadError:
    err = ReadError("model_error", _FAIL)
    err.detail = detail   # for logs and technicians; the patient sees `message`
    return err


class OnnxPadModel:
    """The trained per-product models behind the `PadModel` interface."""

    name = "onnx"

    def __init__(self, product: Product, path: Path | None = None):
        self.product = product
        self.path = Path(path) if path else default_model_path(product)
        if not self.path.is_file():
            raise _refuse(f"no model file at {self.path}")

        def adopt(session) -> None:
            """The checks, on the cached optimised graph or on the file's own (models.ort_session)."""
            self.session = session
            meta = {k[len(META):]: v for k, v in session.get_modelmeta().custom_metadata_map.items()
                    if k.startswith(META)}
            parsed = self._check(meta)
            self.version = f"{meta['model_version']}+{meta['training_data_sha256'][:12]}"
            self.classes = parsed["classes"]
            self.interval_scale = parsed["interval_scale"]
            self.margins = parsed["model_margin"]
            self.outputs = [o.name for o in session.get_outputs()]
            self._self_test(parsed["sklearn_reference"])

        try:
            open_session(self.path, adopt)
        except ReadError:
            raise
        except Exception as exc:   # onnxruntime raises its own types for corrupt or unsupported files
            raise _refuse(f"{self.path}: cannot be loaded ({type(exc).__name__})") from None

    def _check(self, meta: dict) -> dict:
        """Refuse a file not made for this product and this software; return its parsed JSON fields."""
        if meta.get("model_version") != MODEL_VERSION:
            raise _refuse(f"{self.path}: model version {meta.get('model_version')!r}, expected {MODEL_VERSION!r}")
        if meta.get("product") != self.product.id:
            raise _refuse(f"{self.path}: made for product {meta.get('product')!r}, not {self.product.id!r}")
        if meta.get("chart_sha256") != self.product.chart_digest:
            raise _refuse(f"{self.path}: the product's chart changed since the model was trained")
        try:
            parsed = {key: json.loads(meta[key])
                      for key in ("features", "classes", "interval_scale", "sklearn_reference")}
            parsed["model_margin"] = self._margins(json.loads(meta.get("model_margin", str(DEFAULT_MARGIN))))
        except (KeyError, ValueError, TypeError):
            raise _refuse(f"{self.path}: metadata incomplete") from None
        for analyte, margin in parsed["model_margin"].items():
            if not 0.0 <= margin <= NEAREST_ONLY:
                raise _refuse(f"{self.path}: model margin {margin} of {analyte} outside 0..{NEAREST_ONLY}")
        inputs = {i.name for i in self.session.get_inputs()}
        for pad in self.product.pads:
            if parsed["features"].get(pad.analyte) != feature_names(pad) or pad.analyte not in inputs:
                raise _refuse(f"{self.path}: features for {pad.analyte} do not match this software")
        return parsed

    def _margins(self, stored) -> dict[str, float]:
        """Each analyte's margin: a file stores one per analyte, or one for all (trained before
        margins were chosen per analyte)."""
        if isinstance(stored, dict):
            return {pad.analyte: float(stored[pad.analyte]) for pad in self.product.pads}
        return uniform_margins(self.product, stored)

    def _self_test(self, reference: dict) -> None:
        """Run the fixed inputs stored at export and compare with scikit-learn's outputs for them: a
        damaged graph, or a runtime that computes differently, is caught before any reading."""
        feeds = {a: np.array(r["x"], np.float32) for a, r in reference.items()}
        results = dict(zip(self.outputs, self.session.run(None, feeds)))
        for analyte, r in reference.items():
            ok = np.allclose(results[f"{analyte}_c_probabilities"], r["probabilities"], atol=REFERENCE_TOLERANCE)
            if "position" in r:
                ok &= np.allclose(results[f"{analyte}_r_variable"].ravel(), r["position"], atol=REFERENCE_TOLERANCE)
            if not ok:
                raise _refuse(f"{self.path}: {analyte} does not reproduce its scikit-learn reference outputs")

    def read(self, observation: StripObservation) -> list[PadReading]:
        charts = chart_positions(self.product.pads, observation.pad_lab)
        features = strip_features(observation, charts)
        feeds = {pad.analyte: row[None, :] for pad, row in zip(self.product.pads, features)}
        results = dict(zip(self.outputs, self.session.run(None, feeds)))
        probabilities = {pad.analyte: results[f"{pad.analyte}_c_probabilities"][0] for pad in self.product.pads}
        readings = level_readings(self.product, charts, probabilities, self.classes, self.margins)
        difficulty = observation.residual_de00 + DIFFICULTY_OFFSET
        for pad, reading in zip(self.product.pads, readings):
            position = results.get(f"{pad.analyte}_r_variable")
            if position is None or reading.level is None:
                continue
            # the value stays within the reported level's half-step: level and value never disagree
            level = [lv.code for lv in pad.levels].index(reading.level)
            t = float(np.clip(position.ravel()[0], level - 0.5, level + 0.5))
            t = float(np.clip(t, 0, len(pad.levels) - 1))
            w = self.interval_scale[pad.analyte] * difficulty
            reading.value = value_at(pad, t)
            reading.interval = (value_at(pad, max(t - w, 0.0)), value_at(pad, min(t + w, len(pad.levels) - 1)))
        return readings


def optimise_apart(product_ref: str, path: Path) -> None:
    """Load the model at `path` once in a short-lived child process, which optimises its graph,
    checks it and saves it in the cache, so a long-lived process (the service) only loads the saved
    graph: optimising in the service itself keeps ~7 MiB of onnxruntime's optimiser resident for its
    whole life after every install or upgrade. Nothing happens when the graph is saved already; a
    child that fails leaves the service to optimise in-process as before (and to refuse a bad model
    itself)."""
    if not path.is_file() or has_saved_graph(path):
        return
    subprocess.run([sys.executable, "-c", "import sys\nfrom calibration.specs import load_product\n"
                    "from models.onnx_model import OnnxPadModel\nOnnxPadModel(load_product(sys.argv[1]), sys.argv[2])",
                    product_ref, str(path)], capture_output=True, timeout=600, check=False)


def level_readings(product: Product, charts: list, probabilities: dict, classes: dict,
                   margins: dict[str, float]) -> list[PadReading]:
    """Each pad's level from its classifier's probabilities (columns `classes[analyte]` of the
    chart's levels). The model refines the level within one step of the nearest chart colour, never
    beyond (far from its training data it could otherwise be confidently wrong by several levels),
    and only where it prefers that neighbour to the nearest colour by at least its analyte's margin
    in probability: what it learned of one dye's metamerism against the card's inks must not outvote
    the colour under dyes it never saw. The margins are chosen per analyte from the model's own
    training photos (`models.train.choose_margins`); at `NEAREST_ONLY` the levels are nearest colour's."""
    readings = []
    for pad, chart in zip(product.pads, charts):
        if chart.gap > OUT_OF_GAMUT_DE00:
            readings.append(out_of_gamut(pad, chart.gap))
            continue
        p = np.zeros(len(pad.levels))
        p[classes[pad.analyte]] = probabilities[pad.analyte]
        near = np.abs(np.arange(len(pad.levels)) - chart.nearest) <= 1
        level = int(np.argmax(np.where(near, p, -1.0)))
        if p[level] - p[chart.nearest] < margins[pad.analyte]:
            level = chart.nearest
        readings.append(interpret(pad, PadReading(pad.analyte, pad.levels[level].code, None,
                                                  round(float(p[level]), 3), [], round(chart.gap, 2))))
    return readings
