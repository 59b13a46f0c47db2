"""Pad-model inference on one core: model load time and the time to read a whole strip.

For each shipped product model: load it (onnxruntime session, metadata checks and the scikit-learn
self-test) a few times, then time `OnnxPadModel.read` on a real observation of a rendered strip
(features included) and the bare `session.run`, and the baseline's `read`, median of many runs.
Figures go to bench/results/inference.json.

    python bench/inference.py [--repeats 2000]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import median_seconds  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import numpy as np
    from calibration.observe import StripObserver
    from calibration.specs import builtin_products, load_card, load_product
    from models.features import strip_features
    from models.onnx_model import OnnxPadModel, default_model_path
    from models.pads import NearestChartColour
    from simulator import scene

    report = {}
    for product_id in builtin_products():
        product = load_product(product_id)
        rng = np.random.default_rng(3)
        data, _ = scene.photograph(scene.random_scene(rng, product=product), rng)
        observation = StripObserver(load_card(), product).observe(data)
        loads = []
        for _ in range(5):
            t = time.perf_counter()
            model = OnnxPadModel(product)
            loads.append(time.perf_counter() - t)
        feeds = {p.analyte: row[None] for p, row in zip(product.pads, strip_features(observation))}
        baseline = NearestChartColour()
        report[product_id] = {
            "pads": len(product.pads),
            "model_bytes": default_model_path(product).stat().st_size,
            "load_ms": round(1000 * min(loads), 1),
            "strip_read_us": round(1e6 * median_seconds(lambda: model.read(observation), args.repeats), 1),
            "session_run_us": round(1e6 * median_seconds(lambda: model.session.run(None, feeds), args.repeats), 1),
            "baseline_read_us": round(1e6 * median_seconds(lambda: baseline.read(observation), args.repeats), 1),
        }
        print(f"{product_id:11} {report[product_id]}")
    out = RESULTS / "inference.json"
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
