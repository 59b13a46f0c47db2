"""Which colour-correction model: linear 3x3, root-polynomial degree 2 or 3, measured.

Renders a seeded set of scenes (half under the benchmark's held-out lights and cameras), reads each
with every model in `calibration.correction.TERMS`, and prints the held-out card residual (mean
CIEDE2000 of cross-validated patches) and the exact-level agreement of the pads. Figures go to
bench/results/ccm.json.

    python bench/ccm.py [--scenes 120] [--seed 5]
"""
from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import HOLDOUT_CAMERAS, HOLDOUT_ILLUMINANTS, RESULTS, register_holdout  # noqa: E402


def run_case(seed: int) -> dict:
    from calibration.correction import TERMS
    from calibration.specs import load_card, load_product
    from device.reading.reader import Reader
    from models.pads import NearestChartColour
    from simulator import scene
    rng = np.random.default_rng(seed)
    holdout = seed % 2 == 1
    spec = scene.random_scene(rng, illuminants=HOLDOUT_ILLUMINANTS if holdout else None,
                              cameras=HOLDOUT_CAMERAS if holdout else None)
    data, truth = scene.photograph(spec, rng)
    out = {}
    for terms in TERMS:
        reader = Reader(load_card(), load_product(spec.product), NearestChartColour(), correction_terms=terms)
        result = reader.read(data)
        if result["status"] != "ok":
            out[terms] = {"refused": result["error"]["code"]}
            continue
        hits = [a["level"] == truth.pads[a["analyte"]].level for a in result["analytes"]]
        out[terms] = {"residual": result["qc"]["color_residual_de00"], "exact": sum(hits), "pads": len(hits)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=120)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    seeds = [args.seed * 10_000 + i for i in range(args.scenes)]
    with ProcessPoolExecutor(args.jobs, initializer=register_holdout) as pool:
        rows = list(pool.map(run_case, seeds, chunksize=4))
    summary = {}
    for terms in rows[0]:
        done = [r[terms] for r in rows if "residual" in r[terms]]
        summary[terms] = {
            "refused": len(rows) - len(done),
            "residual_mean_de00": round(float(np.mean([d["residual"] for d in done])), 3),
            "residual_p95_de00": round(float(np.percentile([d["residual"] for d in done], 95)), 3),
            "pad_exact": round(sum(d["exact"] for d in done) / sum(d["pads"] for d in done), 4),
        }
    print(f"{'model':12} {'refused':>7} {'resid mean':>10} {'resid p95':>9} {'pad exact':>9}")
    for terms, s in summary.items():
        print(f"{terms:12} {s['refused']:7d} {s['residual_mean_de00']:10.3f} {s['residual_p95_de00']:9.3f} "
              f"{s['pad_exact']:9.4f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ccm.json").write_text(json.dumps({"summary": summary, "args": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
