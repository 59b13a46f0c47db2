"""Accuracy benchmark of `stripread read` on a fixed, seeded set of synthetic scenes.

Renders N normal scenes across every illuminant and camera of the simulator, three resolutions and
JPEG qualities, plus every fault scene; reads each JPEG exactly as `stripread read` does; prints per
analyte the exact-level and within-one-level agreement and how often a good scene was refused, and
per fault how often it was refused with the right code. Figures go to bench/results/accuracy.json.

    python bench/accuracy.py [--scenes 300] [--faults 12] [--seed 2026] [--jobs 2] [--holdout]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
RESOLUTIONS = ((1456, 1088), (2028, 1520), (4056, 3040))
HOLDOUT_ILLUMINANTS = ("HO_rgb_led", "HO_metal_halide", "HO_shade", "HO_led_5000", "HO_incandescent")
HOLDOUT_CAMERAS = ("HO_dslr", "HO_wide", "HO_narrow")


def register_holdout() -> None:
    """Lights and cameras defined only here and never used while the reader was tuned: an estimate
    of how it does on spectra it has not seen (as an outside evaluator's will be)."""
    from simulator import spectra as sp
    lights = {
        "HO_rgb_led": lambda: sp.mix_to_cct([sp.band(462, 22), sp.band(528, 30), sp.band(626, 18)], 5000.0),
        "HO_metal_halide": lambda: sp.mix_to_cct([sp.lines((436, 4, 1.0), (546, 4, 1.2), (589, 6, 1.0),
                                                           (535, 4, 0.6), (671, 4, 0.4)),
                                                  sp.band(470, 60), sp.band(610, 70)], 4200.0),
        "HO_shade": lambda: sp.daylight(9000.0),
        "HO_led_5000": lambda: sp.phosphor_led(5000.0, pump_nm=444.0, phosphor_nm=540.0, red_nm=650.0),
        "HO_incandescent": lambda: sp.planck(2400.0),
    }
    for name, spd in lights.items():
        sp.register_illuminant(name, spd)
    for model in (
        sp.CameraModel("HO_dslr", (((1.0, 595, 28), (0.10, 450, 25)), ((1.0, 530, 36),), ((1.0, 460, 26),)),
                       660.0, "gamma2.2", 20000.0, 2.0, 12),
        sp.CameraModel("HO_wide", (((1.0, 590, 45),), ((1.0, 540, 50),), ((1.0, 465, 38),)),
                       700.0, "filmic", 5000.0, 5.0, 10),
        sp.CameraModel("HO_narrow", (((1.0, 610, 18), (0.05, 440, 15)), ((1.0, 535, 22),), ((1.0, 455, 18),)),
                       650.0, "srgb", 6000.0, 3.0, 10),
    ):
        sp.register_camera(model)


def _reader(product_id: str):
    from calibration.specs import load_card, load_product
    from device.read import Reader
    from models.pads import NearestChartColour
    return Reader(load_card(), load_product(product_id), NearestChartColour())


def run_case(case: tuple[int, str | None, bool]) -> dict:
    """Render one seeded scene and read it; returns what the table needs."""
    import dataclasses
    from simulator import scene
    seed, fault, holdout = case
    rng = np.random.default_rng(seed)
    spec = scene.random_scene(rng, fault=fault, illuminants=HOLDOUT_ILLUMINANTS if holdout else None,
                              cameras=HOLDOUT_CAMERAS if holdout else None)
    spec = dataclasses.replace(spec, resolution=RESOLUTIONS[seed % len(RESOLUTIONS)])
    data, truth = scene.photograph(spec, rng)
    result = _reader(spec.product).read(data)
    out = {"seed": seed, "fault": fault, "illuminant": spec.illuminant, "camera": spec.camera,
           "expected_error": truth.expected_error, "status": result["status"],
           "error": result.get("error", {}).get("code"), "pads": {}}
    if result["status"] == "ok":
        levels = {pad.analyte: [lv.code for lv in pad.levels] for pad in _reader(spec.product).product.pads}
        for a in result["analytes"]:
            t = truth.pads.get(a["analyte"])
            if t is None or t.level is None:
                continue
            codes = levels[a["analyte"]]
            got = codes.index(a["level"]) if a["level"] in codes else None
            out["pads"][a["analyte"]] = {"truth": codes.index(t.level), "got": got,
                                         "flags": a["flags"]}
        out["residual"] = result["qc"]["color_residual_de00"]
        flagged = {a["analyte"] for a in result["analytes"] if "out_of_gamut" in a["flags"] and a["level"] is None}
        out["out_of_gamut_flagged"] = set(truth.out_of_gamut_pads) <= flagged
    return out


def summarise(rows: list[dict]) -> dict:
    good = [r for r in rows if r["fault"] is None]
    per = defaultdict(lambda: {"n": 0, "exact": 0, "within_one": 0, "unread": 0})
    for r in good:
        for analyte, p in r["pads"].items():
            s = per[analyte]
            s["n"] += 1
            if p["got"] is None:
                s["unread"] += 1
                continue
            s["exact"] += p["got"] == p["truth"]
            s["within_one"] += abs(p["got"] - p["truth"]) <= 1
    analytes = {a: {"n": s["n"], "exact": s["exact"] / s["n"], "within_one": s["within_one"] / s["n"],
                    "unread": s["unread"] / s["n"]} for a, s in per.items()}
    refused = [r for r in good if r["status"] != "ok"]
    faults = defaultdict(lambda: {"n": 0, "right_code": 0, "refused": 0, "codes": defaultdict(int)})
    for r in rows:
        if r["fault"] is None:
            continue
        f = faults[r["fault"]]
        f["n"] += 1
        f["codes"][r["error"] or "ok"] += 1
        if r["expected_error"] is None:   # out-of-gamut: read, with that pad flagged rather than levelled
            f["right_code"] += r["status"] == "ok" and r["out_of_gamut_flagged"]
        else:
            f["right_code"] += r["error"] == r["expected_error"]
            f["refused"] += r["status"] == "error"
    by_condition = defaultdict(lambda: [0, 0])
    for r in good:
        for p in r["pads"].values():
            key = f"{r['illuminant']}/{r['camera']}"
            by_condition[key][0] += 1
            by_condition[key][1] += p["got"] == p["truth"]
    residuals = [r["residual"] for r in good if "residual" in r]
    return {
        "scenes": len(good), "good_scenes_refused": len(refused),
        "refused_codes": sorted({r["error"] for r in refused}),
        "color_residual_de00": {"median": float(np.median(residuals)), "p95": float(np.percentile(residuals, 95))}
        if residuals else None,
        "analytes": analytes,
        "faults": {k: {"n": v["n"], "right_code_rate": v["right_code"] / v["n"],
                       "refusal_rate": v["refused"] / v["n"], "codes": dict(v["codes"])} for k, v in faults.items()},
        "exact_by_illuminant_camera": {k: v[1] / v[0] for k, v in sorted(by_condition.items())},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--faults", type=int, default=12, help="scenes per fault kind")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--holdout", action="store_true",
                        help="render only with lights and cameras the reader was never tuned on")
    parser.add_argument("--out", default=None, help="default bench/results/accuracy[-holdout].json")
    args = parser.parse_args(argv)
    from simulator.scene import FAULTS
    cases = [(args.seed * 100_000 + i, None, args.holdout) for i in range(args.scenes)]
    cases += [(args.seed * 100_000 + 50_000 + k * 1000 + i, fault, args.holdout)
              for k, fault in enumerate(sorted(FAULTS)) for i in range(args.faults)]
    start = time.time()
    with ProcessPoolExecutor(args.jobs, initializer=register_holdout) as pool:
        rows = list(pool.map(run_case, cases, chunksize=4))
    summary = summarise(rows)
    summary["seconds"] = round(time.time() - start, 1)
    summary["args"] = vars(args)
    print(f"{'analyte':8} {'n':>4} {'exact':>7} {'within1':>8} {'unread':>7}")
    for a, s in summary["analytes"].items():
        print(f"{a:8} {s['n']:4d} {s['exact']:7.3f} {s['within_one']:8.3f} {s['unread']:7.3f}")
    print(f"\ngood scenes refused: {summary['good_scenes_refused']}/{summary['scenes']} "
          f"{summary['refused_codes']}")
    print(f"colour residual dE00: {summary['color_residual_de00']}")
    print(f"\n{'fault':14} {'n':>3} {'right code':>10} {'refused':>8}  codes")
    for f, s in sorted(summary["faults"].items()):
        print(f"{f:14} {s['n']:3d} {s['right_code_rate']:10.3f} {s['refusal_rate']:8.3f}  {s['codes']}")
    out = Path(args.out or RESULTS / f"accuracy{'-holdout' if args.holdout else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    print(f"\nwritten {out} in {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
