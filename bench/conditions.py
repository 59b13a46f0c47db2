"""The read under named conditions, each forced onto world scenes: what outside evaluations reported.

`bench/generalization.py` draws conditions at random; this one sets one condition on every scene of
a class (the rest of the scene drawn from `simulator.world` as usual) and counts, per class, the
good photos read and refused (by code) and the pads exact for the ONNX model and nearest colour:
perfectly even light (a diffuser, lens shading corrected), a fixed daylight white balance under
lamps it was not made for near clipping, strong vignetting and gradients, two lights mixed across
the card, a sodium lamp, dim photos, heavy JPEG, high analog gain, grey-world white balance.

    python bench/conditions.py [--scenes 30] [--seed 9100]

Figures go to bench/results/conditions.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter

import numpy as np
from report import write_results


def _even(spec):
    return dataclasses.replace(spec, light_gradient=(0.0, 0.0), light_falloff=(0.0, 70.0, 25.0), vignetting=0.0,
                               second_illuminant=None)


def _exposed(spec, fraction: float):
    from simulator.ceiling import white_clip_exposure
    return dataclasses.replace(spec, exposure=fraction * white_clip_exposure(spec))


def _preset(light: str):
    """A fixed daylight white balance under another light, exposed from 0.85 to 1.1 of clipping."""
    def condition(rng, spec):
        lit = dataclasses.replace(spec, illuminant=light, second_illuminant=None, white_balance="preset:daylight",
                                  wb_error=(1.0, 1.0, 1.0))
        return _exposed(lit, float(rng.uniform(0.85, 1.1)))
    return condition


CONDITIONS = {
    "even light, 0.6 of clipping": lambda rng, s: _exposed(_even(s), 0.6),
    "even light, 0.95 of clipping": lambda rng, s: _exposed(_even(s), 0.95),
    "even light, daylight preset under A": lambda rng, s: _exposed(_even(_preset("cie:A")(rng, s)), 0.9),
    "daylight preset under A": _preset("cie:A"),
    "daylight preset under FL2": _preset("cie:FL2"),
    "daylight preset under LED-RGB1": _preset("cie:LED-RGB1"),
    "vignetting 0.45": lambda rng, s: dataclasses.replace(s, vignetting=0.45),
    "gradient 35 %": lambda rng, s: dataclasses.replace(s, light_gradient=(0.35, float(rng.uniform(0, 360)))),
    "daylight and tungsten mixed": lambda rng, s: dataclasses.replace(
        s, illuminant="D:6500", second_illuminant="cie:A", light_mix=(0.0, 0.8, float(rng.uniform(0, 360)))),
    "sodium lamp": lambda rng, s: dataclasses.replace(s, illuminant="sodium", second_illuminant=None),
    "dim, 0.25 of clipping": lambda rng, s: _exposed(s, 0.25),
    "JPEG quality 50": lambda rng, s: dataclasses.replace(s, jpeg_quality=50),
    "analog gain 8": lambda rng, s: dataclasses.replace(s, analog_gain=8.0, noise=True),
    "grey-world white balance": lambda rng, s: _exposed(dataclasses.replace(s, white_balance="grey_world",
                                                                            wb_error=(1.0, 1.0, 1.0)), 0.8),
}


def measure(condition, scenes: int, seed: int, reader) -> dict:
    from calibration.errors import ReadError
    from simulator import scene
    from simulator.world import random_world_scene
    observer, models = reader
    codes, exact, pads = Counter(), Counter(), 0
    for i in range(scenes):
        rng = np.random.default_rng(seed + i)
        spec = condition(rng, random_world_scene(rng, product="generic-10", resolution=(1456, 1088)))
        data, truth = scene.photograph(spec, rng)
        try:
            observation = observer.observe(data)
        except ReadError as err:
            codes[err.code] += 1
            continue
        codes["read"] += 1
        pads += len(observation.product.pads)
        for name, model in models.items():
            exact[name] += sum(r.level == truth.pads[r.analyte].level for r in model.read(observation))
    return {"photos": dict(codes), **{name: exact[name] / max(pads, 1) for name in models}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=30, help="generic-10 scenes per condition")
    parser.add_argument("--seed", type=int, default=9100)
    args = parser.parse_args(argv)
    from calibration.observe import StripObserver
    from calibration.specs import load_card, load_product
    from models.onnx_model import OnnxPadModel
    from models.pads import NearestChartColour
    product = load_product("generic-10")
    reader = StripObserver(load_card(), product), {"onnx": OnnxPadModel(product), "nearest": NearestChartColour()}
    start = time.time()
    report = {}
    print(f"{'condition':38} {'onnx':>6} {'nearest':>7}  photos")
    for name, condition in CONDITIONS.items():
        r = report[name] = measure(condition, args.scenes, args.seed, reader)
        print(f"{name:38} {r['onnx']:6.3f} {r['nearest']:7.3f}  {r['photos']}", flush=True)
    write_results("conditions", args, start, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
