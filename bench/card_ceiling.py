"""Does the card limit accuracy? The physics ceiling of better corrections and of a proposed card (issue #16).

Draws world scenes (`simulator.world`: measured lamps, foreign cameras, presets, clipping; dyes
spectrally unlike the card's inks in half of them) on seeds disjoint from training (`stripread
train` uses seed x 1_000_003 + i for seeds 1 and 2; here `--seed` + i, default 777000), observes
each noiselessly once (`simulator.ceiling.observe`, no rendering) and reads it every way in
`simulator.ceiling.VARIANTS`:

    global     today: one root-polynomial fit on the card's 24 patches (== `ceiling_read`)
    local      per analyte, the fit weighted toward the patches near that analyte's chart colours
    residual   the global fit plus the residuals of the patches near the pad's corrected colour
    chart_fit  proposed card (the product's chart printed beside the slot, in the scene's ink model):
               the chart swatches join the global fit
    chart_lab  proposed card: each pad matched to its own printed chart, in corrected Lab
    chart_rgb  proposed card: each pad matched to its own printed chart, in white-relative camera RGB
    lot        strip-lot calibration: the lot's dye colours per level measured under the reader's LEDs
               and camera, used as the references under the scene's light
    dye_chart  a bound, not a card: swatches of the lot's own dye beside the slot, matched in camera RGB
    spectral   a spectral prior for dyes: the camera-and-light sensitivities estimated from the patches'
               spectra, each chart level's dye the smoothest spectrum of its colour, predicted and matched

Exact and within-one chart level per analyte, by dye/ink model, light family and camera. The local
kernels were chosen on seeds 888000+ (200 generic-10 scenes), not on these. Figures go to
bench/results/card_ceiling.json and .txt.

    python bench/card_ceiling.py [--scenes 600] [--products generic-10 acr-2] [--seed 777000] [--nominal-lot]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
NEAR_CHART_DE = 10.0   # a card patch this close (CIEDE2000) to a chart colour counts as "near" it


def _score(products: list[str], scenes: int, seed: int, nominal_lot: bool) -> dict:
    """product -> variant -> group -> ([exact flags], [within-one flags], [readable flags]) per pad."""
    from simulator import ceiling, world
    tally = {p: {v: defaultdict(lambda: ([], [], [])) for v in ceiling.VARIANTS} for p in products}
    for product in products:
        for i in range(scenes):
            spec = world.random_world_scene(np.random.default_rng(seed + i), product=product,
                                            **({"lot_absorbance": {}} if nominal_lot else {}))
            obs = ceiling.observe(spec, printed_chart=True)
            family, camera = world.domain(spec)
            mixed = "mixed light" if spec.second_illuminant else "one light"
            position = {p.analyte: _position(spec, p) for p in obs.pads}
            for variant in ceiling.VARIANTS:
                read = ceiling.read_as(obs, variant)
                for analyte, exact in read.exact.items():
                    for group in ("all", f"analyte:{analyte}", f"model:{world.reflectance_label(spec)}",
                                  f"light:{family}", f"camera:{camera}", f"mixture:{mixed}",
                                  f"position:{position[analyte]}"):
                        tally[product][variant][group][0].append(exact)
                        tally[product][variant][group][1].append(read.within_one[analyte])
                        tally[product][variant][group][2].append(read.readable)
    return tally


def _position(spec, pad) -> str:
    """Whether the pad lies near a chart level (as 80 % of world pads are drawn) or between two."""
    from simulator.scene import NEAR_LEVEL_SPREAD, truth_level
    t, nearest = truth_level(spec, pad)
    return "near a level" if abs(t - nearest) <= NEAR_LEVEL_SPREAD else "between levels"


def _summary(tally: dict) -> dict:
    return {p: {v: {g: {"exact": float(np.mean(e)), "within_one": float(np.mean(w)), "readable": float(np.mean(r)),
                        "n": len(e)}
                    for g, (e, w, r) in sorted(groups.items())}
                for v, groups in variants.items()}
            for p, variants in tally.items()}


def _paired(tally: dict) -> dict:
    """product -> variant -> pads it reads exactly where today's global fit does not, and the reverse
    (every variant reads the same pads in the same order): the sign test z = (gained - lost) /
    sqrt(gained + lost) tells a gain from noise (pads of one scene are not independent: read it
    as optimistic)."""
    out = {}
    for product, variants in tally.items():
        base = np.array(variants["global"]["all"][0])
        out[product] = {}
        for variant, groups in variants.items():
            exact = np.array(groups["all"][0])
            gained, lost = int((exact & ~base).sum()), int((~exact & base).sum())
            out[product][variant] = {"gained": gained, "lost": lost,
                                     "z": round((gained - lost) / max(np.sqrt(gained + lost), 1.0), 2)}
    return out


def _card_coverage(products: list[str]) -> dict:
    """Per analyte: how far its chart colours lie from the card's nearest patch, and how many patches
    lie within NEAR_CHART_DE of any of its levels (a local fit has only those to bend on)."""
    from calibration.colour import delta_e_2000
    from calibration.specs import load_card, load_product
    card = load_card()
    out = {}
    for product in products:
        for pad in load_product(product).pads:
            distance = delta_e_2000(pad.level_lab[:, None, :], card.patch_lab[None, :, :])
            out[f"{product}:{pad.analyte}"] = {"mean_nearest_patch_de00": float(distance.min(axis=1).mean()),
                                               "max_nearest_patch_de00": float(distance.min(axis=1).max()),
                                               "patches_near": int((distance.min(axis=0) <= NEAR_CHART_DE).sum())}
    return out


def _table(rows: dict, groups: list[str], label: str) -> list[str]:
    """Group rows x variant columns of 'exact/within-one'."""
    width = max(len(g.split(":")[-1]) for g in groups + [label])
    lines = [f"  {label:{width}}" + "".join(f"{v:>12}" for v in rows)]
    for group in groups:
        cells = [f"{figures[group]['exact']:.3f}/{figures[group]['within_one']:.2f}" for figures in rows.values()]
        lines.append(f"  {group.split(':')[-1]:{width}}" + "".join(f"{c:>12}" for c in cells))
    return lines


def _report(summary: dict, paired: dict, coverage: dict, args, seconds: float) -> str:
    lot = "every strip at the chart's dye load" if args.nominal_lot else "strip lots' dye load drawn as the world does"
    lines = [f"card ceiling: {args.scenes} world scenes per product, seeds {args.seed}..{args.seed + args.scenes - 1}, "
             f"{lot}, {seconds:.0f} s; cells are exact/within-one"]
    for product, rows in summary.items():
        groups = list(rows["global"])
        refused = ", ".join(f"{v} {1 - figures['all']['readable']:.3f}" for v, figures in rows.items())
        lines.append(f"\n{product} ({rows['global']['all']['n']} pads; refused by the colour fit: {refused})")
        lines.append("  against global, pads gained/lost (z): " + ", ".join(
            f"{v} +{c['gained']}/-{c['lost']} ({c['z']:+.1f})" for v, c in paired[product].items() if v != "global"))
        for prefix, label in (("analyte:", "analyte"), ("model:", "dye/ink"), ("light:", "light"),
                              ("camera:", "camera"), ("mixture:", "mixture"), ("position:", "pad position")):
            chosen = (["all"] if prefix == "analyte:" else []) + [g for g in groups if g.startswith(prefix)]
            lines += _table(rows, chosen, label)
        lines.append("  card coverage (CIEDE2000 from each chart level to the nearest card patch; patches "
                     f"within {NEAR_CHART_DE:.0f}):")
        lines += [f"    {key.split(':')[1]:5} mean {c['mean_nearest_patch_de00']:5.1f}  max "
                  f"{c['max_nearest_patch_de00']:5.1f}  near {c['patches_near']}"
                  for key, c in coverage.items() if key.startswith(product + ":")]
    return "\n".join(lines)


def main(argv=None) -> None:
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=600)
    parser.add_argument("--products", nargs="+", default=["generic-10", "acr-2"])
    parser.add_argument("--seed", type=int, default=777000)
    parser.add_argument("--nominal-lot", action="store_true",
                        help="every strip at the chart's dye load (no lot-to-lot spread), to tell it from metamerism")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    tally = _score(args.products, args.scenes, args.seed, args.nominal_lot)
    summary, paired = _summary(tally), _paired(tally)
    seconds = time.perf_counter() - start
    coverage = _card_coverage(args.products)
    text = _report(summary, paired, coverage, args, seconds)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    name = "card_ceiling-nominal-lot" if args.nominal_lot else "card_ceiling"
    (RESULTS / f"{name}.txt").write_text(text + "\n")
    command = "python bench/card_ceiling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (RESULTS / f"{name}.json").write_text(json.dumps(
        {"command": command.strip(), "scenes_per_product": args.scenes, "nominal_lot": args.nominal_lot,
         "seeds": [args.seed, args.seed + args.scenes - 1], "seconds": round(seconds, 1), "variants": summary,
         "paired_vs_global": paired, "card_coverage": coverage}, indent=1) + "\n")


if __name__ == "__main__":
    main()
