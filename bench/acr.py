"""The ACR strip end to end: albumin and creatinine levels and the derived albumin-to-creatinine
ratio's KDIGO category, on rendered scenes across the charts (random lights, cameras, poses, lots).

Per pad: exact and within-one level agreement with the simulator's truth. For the ratio: the
category (A1/A2/A3) of the reading against the category of the true concentrations, how often the
reading flags its category as uncertain, and how often the true ratio lies inside the reported
interval. Figures go to bench/results/acr.json.

    python bench/acr.py [--scenes 300] [--seed 11]
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from calibration.specs import load_card, load_product
from device.reading.reader import Reader
from models.derived import ratios
from models.onnx_model import OnnxPadModel
from simulator import photograph, random_scene

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    product = load_product("acr-2")
    ratio = ratios(product)[0]
    reader = Reader(load_card(), product, OnnxPadModel(product))
    rng = np.random.default_rng(args.seed)
    pads = {p.analyte: {"exact": 0, "within_one": 0} for p in product.pads}
    read = refused = category_agree = uncertain = covered = 0
    confusion: dict[str, dict[str, int]] = {}
    for _ in range(args.scenes):
        photo, truth = photograph(random_scene(rng, product=product.id), rng)
        result = reader.read(photo)
        if result["status"] != "ok":
            refused += 1
            continue
        read += 1
        for entry in result["analytes"]:
            codes = [lv.code for lv in product.pad(entry["analyte"]).levels]
            true_index = codes.index(truth.pads[entry["analyte"]].level)
            got = codes.index(entry["level"]) if entry["level"] is not None else -99
            pads[entry["analyte"]]["exact"] += got == true_index
            pads[entry["analyte"]]["within_one"] += abs(got - true_index) <= 1
        true_ratio = ratio.factor * truth.pads[ratio.numerator].value / truth.pads[ratio.denominator].value
        derived = result["derived"][0]
        true_category = ratio.category(true_ratio)
        confusion.setdefault(true_category, {}).setdefault(str(derived["category"]), 0)
        confusion[true_category][str(derived["category"])] += 1
        category_agree += derived["category"] == true_category
        uncertain += "category_uncertain" in derived["flags"]
        covered += derived["interval"] is not None and derived["interval"][0] <= true_ratio <= derived["interval"][1]
    figures = {
        "scenes": args.scenes, "read": read, "refused": refused,
        "pads": {a: {k: round(v / read, 3) for k, v in c.items()} for a, c in pads.items()},
        "acr_category_agreement": round(category_agree / read, 3),
        "acr_category_uncertain_flagged": round(uncertain / read, 3),
        "acr_interval_coverage": round(covered / read, 3),
        "acr_confusion_true_to_read": confusion,
        "python": platform.python_version(), "machine": platform.machine(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "acr.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
