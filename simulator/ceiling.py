"""The physics limit of a scene: what a reader could get right with perfect geometry and no noise.

No image is rendered. The card's white, its patches and each pad are lit by the scene's light (for
a mixture, the light where each lies), seen through its camera and ISP (white balance with its
error or preset, colour matrix, clipping, tone curve, 8 bits), divided by the white as the reader
does, corrected by the reader's own fit on the card's patches, and matched to the chart by CIEDE2000.
Whatever is wrong then is metamerism between inks and dyes, clipping or the correction's form: no
reader of these patches can beat it. A few milliseconds per scene.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibration.colour import delta_e_2000, srgb_to_linear
from calibration.correction import fit_correction
from calibration.errors import ReadError
from simulator import scene, spectra
from simulator.scene import SceneSpec

# grey-world white balance averages the frame; without an image it is taken as half card white,
# half tray (the card covers roughly half of a framed photo)
GREY_WORLD_CARD_SHARE = 0.5


@dataclass(frozen=True)
class CeilingRead:
    readable: bool             # False: the reader's colour correction refuses the card
    nearest: dict[str, int]    # analyte -> chart level nearest (CIEDE2000) to the ideally corrected pad
    truth: dict[str, int]      # analyte -> chart level nearest to the pad's true level position

    @property
    def exact(self) -> dict[str, bool]:
        return {a: self.readable and self.nearest.get(a) == t for a, t in self.truth.items()}


def _background(card) -> np.ndarray:
    return spectra.reflectance_from_srgb(card.background_srgb)


def noiseless_gains(spec: SceneSpec) -> np.ndarray:
    """The scene's white-balance gains, with grey world estimated from the card's white and the tray."""
    optics = scene._Optics(spec, scene._mean_share(spec))
    grey = None
    if spec.white_balance == "grey_world":
        card_white = optics.raw(_background(scene._card(spec.card)))
        tray = optics.raw(spectra.reflectance_from_srgb(spec.tray_srgb))
        grey = GREY_WORLD_CARD_SHARE * card_white + (1 - GREY_WORLD_CARD_SHARE) * tray
    return scene.wb_gains(spec, optics, grey)


def white_clip_exposure(spec: SceneSpec) -> float:
    """The exposure at which the first channel clips on the card's white (sensor, white-balanced or
    after the colour matrix) at the card's centre."""
    optics = scene._Optics(spec, scene._mean_share(spec))
    raw = optics.raw(_background(scene._card(spec.card))).astype(float)
    gains = noiseless_gains(spec)
    balanced = raw * gains
    peak = max(raw.max(), balanced.max() / gains.min(), (balanced @ optics.camera.matrix.T).max())
    return float(1.0 / peak)


def _raw_at(spec: SceneSpec, reflectances: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
    """Raw RGB of reflectances (N, wavelengths) at card points (N, 2) under the local light."""
    first = scene._Optics(spec).raw(reflectances).astype(float)
    if spec.second_illuminant is None:
        return first
    second = scene._Optics(spec, share=1.0).raw(reflectances).astype(float)
    share = scene.light_share(spec, scene._card(spec.card), points_mm)[:, None]
    return first + share * (second - first)


def ceiling_read(spec: SceneSpec) -> CeilingRead:
    """Read the scene's pads the way the reader does, from noiseless ideal colours."""
    card = scene._card(spec.card)
    product = scene._product(spec.strip_product or spec.product)
    to_card = scene._strip_placement(spec, card, product.strip_length_mm)
    pads = [p for p in product.pads if p.analyte not in spec.off_chart]
    pad_points = np.array([to_card(scene._pad_along(product, p, spec.fault == "reversed"), 0.0) for p in pads])
    points = np.vstack([np.array([p.center_mm for p in card.patches], float), pad_points.reshape(-1, 2)])
    reflectances = np.vstack([scene.patch_reflectances(card, spec.ink_model)]
                             + [scene.pad_reflectance(spec, p) for p in pads])
    raw = _raw_at(spec, reflectances, points)
    white = _raw_at(spec, np.broadcast_to(_background(card), reflectances.shape), points)
    gains = noiseless_gains(spec)
    cam = spectra.camera(spec.camera)
    rgb, white_rgb = (scene.isp_noiseless(spec.exposure * r, gains, cam) for r in (raw, white))
    rel = srgb_to_linear(rgb) / np.clip(srgb_to_linear(white_rgb), 1e-6, None)
    truth = {p.analyte: scene.truth_level(spec, p)[1] for p in pads}
    neutral = np.array([p.role == "neutral" for p in card.patches])
    n = len(card.patches)
    try:
        correction = fit_correction(rel[:n], card.patch_lab, neutral)
    except ReadError:
        return CeilingRead(False, {}, truth)
    labs = correction.to_lab(rel[n:])
    nearest = {p.analyte: int(np.argmin(delta_e_2000(lab[None, :], p.level_lab)))
               for p, lab in zip(pads, labs)}
    return CeilingRead(True, nearest, truth)


def ceiling(spec: SceneSpec) -> dict[str, bool]:
    """Analyte -> whether the physics of the scene lets its pad be read at the exact chart level."""
    return ceiling_read(spec).exact


def _rates(groups: dict) -> str:
    return ", ".join(f"{k} {np.mean(v):.3f} (n={len(v)})" for k, v in sorted(groups.items()))


def main(argv=None) -> None:
    """Print the ceiling of world scenes: exact per analyte, per light family and per camera."""
    import argparse
    from collections import defaultdict

    from simulator import world
    parser = argparse.ArgumentParser(prog="python -m simulator.ceiling", description=main.__doc__)
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--product", default="generic-10")
    parser.add_argument("--seed", type=int, default=20261201)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    by = {"analyte": defaultdict(list), "within one": defaultdict(list), "light family": defaultdict(list),
          "camera": defaultdict(list)}
    unreadable = 0
    for _ in range(args.scenes):
        spec = world.random_world_scene(rng, product=args.product)
        read = ceiling_read(spec)
        family, camera = world.domain(spec)
        unreadable += not read.readable
        for analyte, exact in read.exact.items():
            by["analyte"][analyte].append(exact)
            by["within one"][analyte].append(read.readable and abs(read.nearest[analyte] - read.truth[analyte]) <= 1)
            by["light family"][family].append(exact)
            by["camera"][camera].append(exact)
    everything = [e for v in by["analyte"].values() for e in v]
    print(f"{args.scenes} world scenes of {args.product} (seed {args.seed}): exact {np.mean(everything):.3f}, "
          f"card refused by the colour correction {unreadable}")
    for name, groups in by.items():
        print(f"{name}: {_rates(groups)}")


if __name__ == "__main__":
    main()
