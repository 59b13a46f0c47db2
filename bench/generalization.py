"""How the read holds under lights and cameras it never saw: a leave-one-domain-out benchmark.

Renders scenes from the whole simulated world (`simulator.world`: measured CIE lamps and synthesised
LEDs, mixtures of two lights across the card, random and measured camera sensitivities, white
balance up to +-40 % off or fixed to a preset for another light, exposure to the edge of clipping,
strong vignetting and gradients, reagent dyes spectrally unlike the card's inks) on seeds no model
was trained on, plus every fault, and reports:

- per product: good photos refused, pads exact and within one for the shipped ONNX model and for
  nearest colour, the ceiling that ideal physics allows on the same scenes (noiseless, ideal
  geometry, root-polynomial correction on the 24 patches: `simulator.ceiling`), the confidence's
  expected calibration error, and each fault refused with the right code;
- leave-one-domain-out: for every light family, camera label, reagent-dye model (absorption bands
  or smooth spectra) and card-ink model (CMYK or smooth), the pad model
  trained (exactly as `stripread train` does, on the training seeds) WITHOUT that domain, combined
  with nearest colour at the shipped model's margins, and tested on it, against nearest colour on
  the same photos, with the good photos refused there.

Photos are kept in bench/results/world-photos/ and observed scenes cached in
bench/results/generalization-cache.pkl (neither committed): a second run only re-fits models, and
`--reobserve` measures a change to the reader on the same photos. Figures go to bench/results/generalization.json.

    python bench/generalization.py [--scenes 600] [--train-scenes 1500] [--faults 8] [--jobs 2]
"""
from __future__ import annotations

import argparse
import pickle
import sys
import time
from collections import defaultdict

import numpy as np
from report import RESULTS, write_results

PRODUCTS = {"generic-10": 0.75, "acr-2": 0.25}   # share of the scenes
TEST_SEED = 7001                                 # training uses the `stripread train` seeds (1, 2)
TRAIN_SEEDS = {"generic-10": 1, "acr-2": 2}


def _rows(args) -> dict:
    """Observed test, fault and training scenes per product, rendered once and cached."""
    from models import dataset
    from simulator.scene import FAULTS
    cache = RESULTS / "generalization-cache.pkl"
    photos = RESULTS / "world-photos"
    photos.mkdir(parents=True, exist_ok=True)
    key = (args.scenes, args.train_scenes, args.faults)
    if cache.is_file() and not args.reobserve:
        stored = pickle.loads(cache.read_bytes())
        if stored["key"] == key:
            return stored["rows"]
    rows = {}
    for product, share in PRODUCTS.items():
        n_test, n_train = round(args.scenes * share), round(args.train_scenes * share)
        print(f"{product}: rendering {n_test} test, {n_train} training and fault scenes", file=sys.stderr)
        test = dataset.world_rows(product, "card-v1", [TEST_SEED * 100_000 + i for i in range(n_test)],
                                  jobs=args.jobs, photos=photos)
        faults = []
        for k, fault in enumerate(sorted(FAULTS)):
            seeds = [TEST_SEED * 100_000 + 50_000 + 1000 * k + i for i in range(args.faults)]
            faults += dataset.world_rows(product, "card-v1", seeds, fault=fault, jobs=args.jobs, photos=photos)
        train = dataset.world_rows(product, "card-v1", dataset.training_seeds(TRAIN_SEEDS[product], n_train),
                                   jobs=args.jobs, photos=photos)   # the shipped models' own training photos
        rows[product] = {"test": test, "faults": faults, "train": train}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps({"key": key, "rows": rows}))
    return rows


def _readings(model, rows) -> list[dict]:
    """Per read pad of the good photos: truth, reading and ceiling."""
    from models.dataset import true_level
    out = []
    for row in rows:
        if row.observation is None:
            continue
        for pad, reading in zip(row.observation.product.pads, model.read(row.observation)):
            t = row.positions.get(pad.analyte)
            if t is None:
                continue
            truth = true_level(pad, t)
            got = next((i for i, lv in enumerate(pad.levels) if lv.code == reading.level), None)
            out.append({"analyte": pad.analyte, "truth": truth, "got": got, "confidence": reading.confidence,
                        "ceiling": bool(row.ceiling.get(pad.analyte)), "light": row.light_family,
                        "camera": row.camera})
    return out


def _score(pads: list[dict], photos: int, refused: int) -> dict:
    """Exact and within-one over every pad of the good photos (a refused photo's pads count as
    wrong, as an outside evaluator counts them) and over the pads read."""
    read = [p for p in pads if p["got"] is not None]
    exact = sum(p["got"] == p["truth"] for p in read)
    per_photo = len(pads) / max(photos - refused, 1)
    all_pads = len(pads) + refused * per_photo
    return {"pads": len(pads), "exact_read": exact / max(len(read), 1), "exact_all": exact / max(all_pads, 1),
            "within_one": sum(abs(p["got"] - p["truth"]) <= 1 for p in read) / max(len(read), 1),
            "ceiling": sum(p["ceiling"] for p in pads) / max(len(pads), 1)}


def expected_calibration_error(pads: list[dict], bins: int = 10) -> float:
    read = [p for p in pads if p["got"] is not None]
    if not read:
        return float("nan")
    confidence = np.array([p["confidence"] for p in read])
    correct = np.array([p["got"] == p["truth"] for p in read], float)
    edges = np.minimum((confidence * bins).astype(int), bins - 1)
    return float(sum(np.mean(edges == b) * abs(correct[edges == b].mean() - confidence[edges == b].mean())
                     for b in range(bins) if np.any(edges == b)))


def _per_analyte(pads: list[dict]) -> dict:
    groups = defaultdict(list)
    for p in pads:
        groups[p["analyte"]].append(p)
    return {a: {**_score(ps, 0, 0), "ece": expected_calibration_error(ps)} for a, ps in sorted(groups.items())}


def _faults(rows) -> dict:
    table = defaultdict(lambda: {"n": 0, "right": 0, "codes": defaultdict(int)})
    for row in rows:
        entry = table[row.fault]
        entry["n"] += 1
        entry["codes"][row.refusal or "ok"] += 1
        if row.expected_error is None:   # out of gamut: read, with the pad flagged (checked by test_read)
            entry["right"] += row.refusal is None
        else:
            entry["right"] += row.refusal == row.expected_error
    return {f: {"n": e["n"], "right_code_rate": e["right"] / e["n"], "codes": dict(e["codes"])}
            for f, e in sorted(table.items())}


def _summary(product, rows: dict, shipped) -> dict:
    from models.pads import NearestChartColour
    test = rows["test"]
    refused = [r for r in test if r.observation is None]
    models = {"onnx": shipped, "nearest": NearestChartColour()}
    pads = {name: _readings(m, test) for name, m in models.items()}
    return {"scenes": len(test), "good_refused": len(refused),
            # a refusal is right where ideal physics cannot read the photo either (the ceiling's own
            # colour correction fails: a Foveon-like sensor under a line-spectrum lamp)
            "refused_though_readable": sum(any(r.ceiling.values()) for r in refused),
            "refused_codes": dict(sorted(defaultdict(int, {c: sum(r.refusal == c for r in refused)
                                                           for c in {r.refusal for r in refused}}).items())),
            "overall": {name: {**_score(p, len(test), len(refused)), "ece": expected_calibration_error(p)}
                        for name, p in pads.items()},
            "analytes": {name: _per_analyte(p) for name, p in pads.items()},
            "faults": _faults(rows["faults"])}


def _lodo(product_id: str, rows: dict, margins: dict) -> dict:
    """Each domain held out of training and tested alone: the classifier `stripread train` fits,
    run in scikit-learn, combined with nearest colour at the shipped model's margins (chosen on its
    training photos, that domain's included; margins chosen again without it would cost a
    leave-one-domain-out inside every fold, 20 times the fitting)."""
    from calibration.specs import load_product
    from models.dataset import DOMAINS
    from models.pads import NearestChartColour
    from models.train import SklearnPads
    product = load_product(product_id)
    table = {}
    for kind, of in DOMAINS.items():
        for held in sorted({of(r) for r in rows["test"]}):
            test = [r for r in rows["test"] if of(r) == held]
            model = SklearnPads(product, [r for r in rows["train"] if of(r) != held], margins)
            refused = sum(r.observation is None for r in test)
            entry = {"photos": len(test), "good_refused": refused}
            for name, m in (("model", model), ("nearest", NearestChartColour())):
                pads = _readings(m, test)
                entry[name] = {**_score(pads, len(test), refused), "ece": expected_calibration_error(pads),
                               "analytes": {a: round(v["exact_read"], 3) for a, v in _per_analyte(pads).items()}}
            table[f"{kind}={held}"] = entry
    return table


def _print(product: str, s: dict, lodo: dict) -> None:
    print(f"\n== {product}: {s['scenes']} good photos, refused {s['good_refused']} {s['refused_codes']}, "
          f"of which physics could read {s['refused_though_readable']}; model margins {s['model_margin']}")
    for name, o in s["overall"].items():
        print(f"  {name:8} exact(all pads) {o['exact_all']:.3f}  exact(read) {o['exact_read']:.3f}  "
              f"within one {o['within_one']:.3f}  ece {o['ece']:.3f}  ceiling {o['ceiling']:.3f}")
    print(f"  {'analyte':8} {'ceiling':>8} {'onnx':>6} {'nearest':>8} {'onnx w/1':>9} {'ece':>6}")
    for a, o in s["analytes"]["onnx"].items():
        n = s["analytes"]["nearest"][a]
        print(f"  {a:8} {o['ceiling']:8.3f} {o['exact_read']:6.3f} {n['exact_read']:8.3f} {o['within_one']:9.3f} "
              f"{o['ece']:6.3f}")
    print("  faults: " + ", ".join(f"{f} {v['right_code_rate']:.2f}" for f, v in s["faults"].items()))
    print(f"  {'held out':40} {'photos':>6} {'refused':>7} {'model':>6} {'nearest':>7} {'ceiling':>7} {'ece':>6}")
    for held, e in lodo.items():
        print(f"  {held:40} {e['photos']:6d} {e['good_refused']:7d} {e['model']['exact_read']:6.3f} "
              f"{e['nearest']['exact_read']:7.3f} {e['model']['ceiling']:7.3f} {e['model']['ece']:6.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=600, help="good test photos, over both products")
    parser.add_argument("--train-scenes", type=int, default=1500, help="training photos for the held-out fits")
    parser.add_argument("--faults", type=int, default=8, help="photos per fault kind and product")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--reobserve", action="store_true",
                        help="observe the kept photos again (after a change to the reader) instead of the cache")
    args = parser.parse_args(argv)
    from calibration.specs import load_product
    from models.onnx_model import OnnxPadModel
    start = time.time()
    rows = _rows(args)
    report = {}
    for product, product_rows in rows.items():
        shipped = OnnxPadModel(load_product(product))
        summary = {"model_margin": shipped.margins, **_summary(product, product_rows, shipped)}
        lodo = _lodo(product, product_rows, shipped.margins)
        _print(product, summary, lodo)
        report[product] = {"summary": summary, "leave_one_domain_out": lodo}
    write_results("generalization", args, start, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
