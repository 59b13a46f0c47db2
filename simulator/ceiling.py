"""The physics limit of a scene: what a reader could get right with perfect geometry and no noise.

No image is rendered. The card's white, its patches and each pad are lit by the scene's light (for
a mixture, the light where each lies), seen through its camera and ISP (white balance with its
error or preset, colour matrix, clipping, tone curve, 8 bits), divided by the white as the reader
does, corrected by the reader's own fit on the card's patches, and matched to the chart by CIEDE2000.
Whatever is wrong then is metamerism between inks and dyes, clipping or the correction's form: no
reader of these patches can beat it. A few milliseconds per scene.

Beside today's reading (`ceiling_read`, variant "global") the same noiseless observation can be
read other ways (`VARIANTS`, compared by `bench/card_ceiling.py`, issue #16): a correction weighted
toward the patches near each pad's chart ("local"), a global fit plus residuals of the nearby
patches ("residual"), a proposed card with the product's chart colours printed beside the slot
("chart_fit": the chart patches join the fit; "chart_lab", "chart_rgb": each pad matched to its own
printed chart), the strip-lot calibration's reference colours measured under the reader's own
light and camera ("lot"), and, as a bound rather than a card, swatches of the lot's own dye beside
the slot ("dye_chart"); and a spectral prior for dyes ("spectral": sensitivities from the patches'
spectra, each chart level's dye taken as the smoothest spectrum of its colour).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from calibration.colour import delta_e_2000, lab_to_xyz, srgb_to_linear, xyz_to_lab
from calibration.correction import TERMS, ColourCorrection, fit_correction
from calibration.errors import ReadError
from calibration.specs import Card, Pad, Product
from simulator import scene, spectra
from simulator.scene import SceneSpec

# grey-world white balance averages the frame; without an image it is taken as half card white,
# half tray (the card covers roughly half of a framed photo)
GREY_WORLD_CARD_SHARE = 0.5
# the proposed card's chart swatches (squares, mm): beside the slot at each pad's place, levels
# alternating sides, two along by two across per side, so up to 8 levels fit between the slot and
# card-v1's patch rows within the pads' 7.5 mm pitch; here only their light share matters
CHART_SWATCH_MM = 2.5
CHART_SWATCH_GAP_MM = 0.75     # from the slot's edge
CHART_SWATCH_PITCH_MM = 3.0
CHART_SWATCH_SLOTS = 8
# the local corrections: a Gaussian kernel in CIEDE2000 and a floor so every patch still counts a little
LOCAL_SIGMA_DE = 12.0
LOCAL_FLOOR = 0.05
LOCAL_RIDGE = 1e-3
RESIDUAL_SIGMA_DE = 8.0
# the strip-lot calibration is photographed on the reader: its LEDs, its camera, exposed below clipping
READER_LIGHT, READER_CAMERA, READER_EXPOSURE_OF_CLIP = "LED_reader", "imx477", 0.8
# the spectral prior: smoothing of the estimated sensitivities (relative to the data's scale; 10 read
# best of 1e-3..10 on 60 scenes) and the dye prior's pull toward a mid grey
SPECTRAL_SMOOTHING, SPECTRAL_PULL = 10.0, 1e-4


@dataclass(frozen=True)
class CeilingRead:
    readable: bool             # False: the reader's colour correction refuses the card
    nearest: dict[str, int]    # analyte -> chart level nearest (CIEDE2000) to the ideally corrected pad
    truth: dict[str, int]      # analyte -> chart level nearest to the pad's true level position

    @property
    def exact(self) -> dict[str, bool]:
        return {a: self.readable and self.nearest.get(a) == t for a, t in self.truth.items()}

    @property
    def within_one(self) -> dict[str, bool]:
        return {a: self.readable and abs(self.nearest[a] - t) <= 1 for a, t in self.truth.items()}


@dataclass(frozen=True, eq=False)
class Observation:
    """Noiseless white-relative camera colours of one scene: the card's patches, the pads and, on the
    proposed card, each pad's chart printed beside the slot. Every variant reads the same one."""
    spec: SceneSpec
    card: Card
    pads: tuple[Pad, ...]
    patch_rel: np.ndarray          # (patches, 3)
    pad_rel: np.ndarray            # (pads, 3)
    chart_rel: tuple[np.ndarray, ...]  # per pad (levels, 3); empty unless observed with the printed chart
    dyed_rel: tuple[np.ndarray, ...]   # the same swatches made of this strip lot's own dye (a bound, not a card)
    truth: dict[str, int]

    @property
    def neutral(self) -> np.ndarray:
        return np.array([p.role == "neutral" for p in self.card.patches])


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


def _relative(spec: SceneSpec, reflectances: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
    """What the reader measures of surfaces at card points: camera colours through the ISP, linearised
    as sRGB and divided by the card's white at the same points."""
    card = scene._card(spec.card)
    raw = _raw_at(spec, reflectances, points_mm)
    white = _raw_at(spec, np.broadcast_to(_background(card), reflectances.shape), points_mm)
    gains = noiseless_gains(spec)
    cam = spectra.camera(spec.camera)
    rgb, white_rgb = (scene.isp_noiseless(spec.exposure * r, gains, cam) for r in (raw, white))
    return srgb_to_linear(rgb) / np.clip(srgb_to_linear(white_rgb), 1e-6, None)


def chart_points(card: Card, pad: Pad) -> np.ndarray:
    """Card millimetres of the centres of the proposed card's swatches of `pad`'s chart: level k on
    side k % 2 of the slot, in a 2 x 2 block per side centred on the pad's nominal place."""
    k = np.arange(len(pad.levels))
    if len(k) > CHART_SWATCH_SLOTS:
        raise ValueError(f"{pad.analyte}: {len(k)} chart levels; the proposed card prints at most {CHART_SWATCH_SLOTS}")
    row, column = (k // 2) // 2, (k // 2) % 2
    across = card.slot_width_mm / 2 + CHART_SWATCH_GAP_MM + CHART_SWATCH_MM / 2 + CHART_SWATCH_PITCH_MM * row
    along = pad.center_mm + CHART_SWATCH_PITCH_MM * (column - 0.5)
    return card.slot_to_card(along, np.where(k % 2, across, -across))


def chart_patches(card: Card, pad: Pad, ink_model: str) -> np.ndarray:
    """Reflectances of `pad`'s chart colours printed on the card with the ink model of its patches."""
    return scene.patch_reflectances(_printed_chart_card(card, pad), ink_model)


def dyed_levels(spec: SceneSpec, pad: Pad) -> np.ndarray:
    """Reflectances of the scene's strip lot's pad at each of its chart levels (its dye model and load)."""
    chart = np.array([scene._chart_reflectance(pad.analyte, level.srgb, spec.dye_model) for level in pad.levels])
    load = spec.lot_absorbance.get(pad.analyte, 1.0)
    return np.array([spectra.absorbance_mix(chart, k, load) for k in range(len(pad.levels))])


def _printed_chart_card(card: Card, pad: Pad) -> Card:
    """The card with only `pad`'s chart as its patches (so the card's own ink model prints them)."""
    patches = tuple(dataclasses.replace(card.patches[0], id=f"{pad.analyte}-{level.code}", srgb=level.srgb,
                                        lab_d50=tuple(lab), role="chart")
                    for level, lab in zip(pad.levels, pad.level_lab))
    return dataclasses.replace(card, patches=patches)


def _pad_points(spec: SceneSpec, card: Card, product: Product, pads: tuple[Pad, ...]) -> np.ndarray:
    """Card millimetres of each pad's centre, with the strip's jitter in the slot."""
    to_card = scene._strip_placement(spec, card, product.strip_length_mm)
    return np.array([to_card(scene._pad_along(product, p, spec.fault == "reversed"), 0.0)
                     for p in pads]).reshape(-1, 2)


def observe(spec: SceneSpec, printed_chart: bool = False) -> Observation:
    """The noiseless observation of the scene's card and pads (and, if asked, its chart printed beside
    the slot, and the same swatches made of the lot's dye)."""
    card = scene._card(spec.card)
    product = scene._product(spec.strip_product or spec.product)
    pads = tuple(p for p in product.pads if p.analyte not in spec.off_chart)
    groups = [(scene.patch_reflectances(card, spec.ink_model), np.array([p.center_mm for p in card.patches], float)),
              (np.array([scene.pad_reflectance(spec, p) for p in pads]), _pad_points(spec, card, product, pads))]
    if printed_chart:
        groups += [(chart_patches(card, p, spec.ink_model), chart_points(card, p)) for p in pads]
        groups += [(dyed_levels(spec, p), chart_points(card, p)) for p in pads]
    rel = _relative(spec, np.vstack([g[0] for g in groups]), np.vstack([g[1] for g in groups]))
    bounds = np.cumsum([0] + [len(g[0]) for g in groups])
    parts = [rel[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    truth = {p.analyte: scene.truth_level(spec, p)[1] for p in pads}
    charts = tuple(parts[2:2 + len(pads)]) if printed_chart else ()
    dyed = tuple(parts[2 + len(pads):]) if printed_chart else ()
    return Observation(spec, card, pads, parts[0], parts[1], charts, dyed, truth)

# --- ways to read an observation: analyte -> nearest chart level, or None when the card is refused ---


def _nearest(pads, labs, references) -> dict[str, int]:
    """Analyte -> index of the reference colour nearest (CIEDE2000) to each pad's Lab."""
    return {p.analyte: int(np.argmin(delta_e_2000(lab[None, :], ref))) for p, lab, ref in zip(pads, labs, references)}


def _global(obs: Observation) -> ColourCorrection | None:
    try:
        return fit_correction(obs.patch_rel, obs.card.patch_lab, obs.neutral)
    except ReadError:
        return None


def read_global(obs: Observation) -> dict[str, int] | None:
    """Today's reader: one root-polynomial fit on the card's patches, nearest chart colour."""
    correction = _global(obs)
    if correction is None:
        return None
    return _nearest(obs.pads, correction.to_lab(obs.pad_rel), [p.level_lab for p in obs.pads])


def chart_distance(card: Card, pad: Pad) -> np.ndarray:
    """CIEDE2000 of each card patch to the nearest colour of the pad's chart."""
    return delta_e_2000(card.patch_lab[:, None, :], pad.level_lab[None, :, :]).min(axis=1)


def read_local(obs: Observation, sigma_de: float = LOCAL_SIGMA_DE) -> dict[str, int] | None:
    """Per analyte, the global fit's matrix refitted (its tone curves kept) with the patches weighted
    by a Gaussian of their CIEDE2000 to the analyte's chart, so the fit bends toward the colours
    that pad takes. The global fit's cross-validated residual still decides whether the card is read."""
    correction = _global(obs)
    if correction is None:
        return None
    terms = TERMS[correction.terms](correction.linearise(obs.patch_rel))
    xyz = lab_to_xyz(obs.card.patch_lab)
    base = 1.0 / np.sqrt(np.clip(xyz[:, 1], 0.02, None))  # relative error, as the global fit weighs it
    labs = []
    for pad, rel in zip(obs.pads, obs.pad_rel):
        weight = base * (LOCAL_FLOOR + np.exp(-0.5 * (chart_distance(obs.card, pad) / sigma_de) ** 2))
        a = terms * weight[:, None]
        matrix = np.linalg.solve(a.T @ a + LOCAL_RIDGE * np.eye(a.shape[1]), a.T @ (xyz * weight[:, None]))
        pad_terms = TERMS[correction.terms](correction.linearise(rel[None, :]))
        labs.append(xyz_to_lab(np.clip(pad_terms @ matrix, 0, None))[0])
    return _nearest(obs.pads, np.array(labs), [p.level_lab for p in obs.pads])


def read_residual(obs: Observation, sigma_de: float = RESIDUAL_SIGMA_DE) -> dict[str, int] | None:
    """The global fit, then each pad moved by the fit's residuals (reference minus corrected, in Lab)
    on the patches near the pad's corrected colour, averaged with a Gaussian kernel in CIEDE2000."""
    correction = _global(obs)
    if correction is None:
        return None
    patch_lab = correction.to_lab(obs.patch_rel)
    residual = obs.card.patch_lab - patch_lab
    pad_lab = correction.to_lab(obs.pad_rel)
    weight = np.exp(-0.5 * (delta_e_2000(pad_lab[:, None, :], patch_lab[None, :, :]) / sigma_de) ** 2)
    shift = weight @ residual / np.clip(weight.sum(axis=1, keepdims=True), 1e-9, None)
    return _nearest(obs.pads, pad_lab + shift, [p.level_lab for p in obs.pads])


def read_chart_fit(obs: Observation) -> dict[str, int] | None:
    """Proposed card: the printed chart swatches join the card's patches in the one global fit."""
    rel = np.vstack([obs.patch_rel, *obs.chart_rel])
    reference = np.vstack([obs.card.patch_lab, *[p.level_lab for p in obs.pads]])
    neutral = np.r_[obs.neutral, np.zeros(len(rel) - len(obs.neutral), bool)]
    try:
        correction = fit_correction(rel, reference, neutral)
    except ReadError:
        return None
    return _nearest(obs.pads, correction.to_lab(obs.pad_rel), [p.level_lab for p in obs.pads])


def read_chart_lab(obs: Observation) -> dict[str, int] | None:
    """Proposed card: each pad matched (CIEDE2000, after the global fit) to its own printed chart
    as seen in the same photo, under the same light: the printed chart is the reference."""
    correction = _global(obs)
    if correction is None:
        return None
    return _nearest(obs.pads, correction.to_lab(obs.pad_rel), [correction.to_lab(c) for c in obs.chart_rel])


def _nearest_camera_colour(obs: Observation, references) -> dict[str, int] | None:
    """Each pad matched to reference swatches beside it in white-relative camera colour (cube root,
    roughly perceptual), with no correction at all; refused where the global fit refuses."""
    if _global(obs) is None:
        return None
    return {p.analyte: int(np.argmin(np.linalg.norm(np.cbrt(chart) - np.cbrt(rel), axis=1)))
            for p, rel, chart in zip(obs.pads, obs.pad_rel, references)}


def read_chart_rgb(obs: Observation) -> dict[str, int] | None:
    """Proposed card: each pad matched to its own printed chart in camera colour."""
    return _nearest_camera_colour(obs, obs.chart_rel)


def read_dye_chart(obs: Observation) -> dict[str, int] | None:
    """Not a card one can print: each pad matched in camera colour to swatches of its own lot's dye at
    every level, under the same light. A bound for references beside the slot: with no metamerism
    and no lot shift left, what it misses is pads between levels, clipping and refused cards."""
    return _nearest_camera_colour(obs, obs.dyed_rel)


def reader_spec(spec: SceneSpec) -> SceneSpec:
    """The scene's strip lot and card as the reader photographs them for the strip-lot calibration:
    its own LEDs and camera, white-balanced to them, below clipping."""
    reader = dataclasses.replace(spec, illuminant=READER_LIGHT, second_illuminant=None, light_mix=(0.0, 0.0, 0.0),
                                 camera=READER_CAMERA, white_balance="illuminant", wb_error=(1.0, 1.0, 1.0))
    return dataclasses.replace(reader, exposure=READER_EXPOSURE_OF_CLIP * white_clip_exposure(reader))


def lot_references(spec: SceneSpec) -> list[np.ndarray] | None:
    """Per pad of the scene, the corrected Lab of each chart level of this strip lot's dyes as the
    reader sees them (the strip-lot calibration's observed colours: the chart plus its per-level
    offsets); None if the reader's own fit refuses the card."""
    obs = observe(reader_spec(spec), printed_chart=True)
    correction = _global(obs)
    if correction is None:
        return None
    return [correction.to_lab(dyed) for dyed in obs.dyed_rel]


def read_lot(obs: Observation) -> dict[str, int] | None:
    """The global fit, each pad matched to its lot's colours measured on the reader (`lot_references`):
    offsets learned under the reader's LEDs and camera, applied under the scene's."""
    correction, references = _global(obs), lot_references(obs.spec)
    if correction is None or references is None:
        return None
    return _nearest(obs.pads, correction.to_lab(obs.pad_rel), references)


@lru_cache(maxsize=None)
def _dye_prior(pad: Pad) -> np.ndarray:
    """Each chart level's smoothest reflectance (levels, wavelengths): the same for every scene."""
    return np.array([_smoothest_reflectance(lab) for lab in pad.level_lab])


def _smoothest_reflectance(lab_d50: np.ndarray) -> np.ndarray:
    """The reflectance with the least curvature (second differences, a little pull to 0.5) whose D50
    colour is `lab_d50`: a prior for a dye of that colour that is not the simulator's own generator."""
    n = len(spectra.WAVELENGTHS)
    d2 = np.diff(np.eye(n), 2, axis=0)
    d50 = (spectra.CMF * spectra.daylight(5003.0)[:, None]).T
    d50 = d50 / d50[1].sum()
    hessian = 2 * (d2.T @ d2 + SPECTRAL_PULL * np.eye(n))
    kkt = np.block([[hessian, d50.T], [d50, np.zeros((3, 3))]])
    rhs = np.concatenate([np.full(n, SPECTRAL_PULL), lab_to_xyz(lab_d50[None])[0]])
    return np.clip(np.linalg.solve(kkt, rhs)[:n], 0.005, 1.0)


def _sensitivities(lin: np.ndarray, patches: np.ndarray, white: np.ndarray) -> np.ndarray:
    """Camera-and-light sensitivities (3, wavelengths) from the patches' linearised white-relative
    colours and spectra: per channel, s . r_patch = colour x s . r_white with s . r_white = 1,
    smoothed by a second-difference penalty."""
    n = len(white)
    d2 = np.diff(np.eye(n), 2, axis=0)
    rows = []
    for c in range(3):
        a = patches - lin[:, c:c + 1] * white[None, :]
        hessian = 2 * (a.T @ a + SPECTRAL_SMOOTHING * np.trace(a.T @ a) / n * d2.T @ d2)
        kkt = np.block([[hessian, white[:, None]], [white[None, :], np.zeros((1, 1))]])
        rows.append(np.linalg.solve(kkt, np.concatenate([np.zeros(n), [1.0]]))[:n])
    return np.array(rows)


def read_spectral(obs: Observation) -> dict[str, int] | None:
    """A spectral prior for dyes: the camera-and-light sensitivities estimated from the card's patch
    spectra (a spectrophotometer measures them), each chart level taken as the smoothest reflectance
    of its colour, its predicted camera colour corrected like the pad's, nearest level in CIEDE2000."""
    correction = _global(obs)
    if correction is None:
        return None
    sensitivities = _sensitivities(correction.linearise(obs.patch_rel),
                                   scene.patch_reflectances(obs.card, obs.spec.ink_model), _background(obs.card))

    def to_lab(linear: np.ndarray) -> np.ndarray:
        return xyz_to_lab(np.clip(TERMS[correction.terms](np.clip(linear, 1e-4, None)) @ correction.matrix, 0, None))

    predicted = [to_lab(_dye_prior(p) @ sensitivities.T) for p in obs.pads]
    return _nearest(obs.pads, to_lab(correction.linearise(obs.pad_rel)), predicted)


# name -> (reader, whether it needs the proposed card's printed chart)
VARIANTS = {
    "global": (read_global, False),
    "local": (read_local, False),
    "residual": (read_residual, False),
    "chart_fit": (read_chart_fit, True),
    "chart_lab": (read_chart_lab, True),
    "chart_rgb": (read_chart_rgb, True),
    "lot": (read_lot, False),
    "dye_chart": (read_dye_chart, True),
    "spectral": (read_spectral, False),
}


def read_as(obs: Observation, variant: str) -> CeilingRead:
    """The observation read by one of `VARIANTS`."""
    reader, needs_chart = VARIANTS[variant]
    if needs_chart and not obs.chart_rel:
        raise ValueError(f"variant {variant!r} reads the proposed card: observe(spec, printed_chart=True)")
    nearest = reader(obs)
    return CeilingRead(nearest is not None, nearest or {}, obs.truth)


def ceiling_read(spec: SceneSpec) -> CeilingRead:
    """Read the scene's pads the way the reader does, from noiseless ideal colours."""
    return read_as(observe(spec), "global")


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
            by["within one"][analyte].append(read.within_one[analyte])
            by["light family"][family].append(exact)
            by["camera"][camera].append(exact)
    everything = [e for v in by["analyte"].values() for e in v]
    print(f"{args.scenes} world scenes of {args.product} (seed {args.seed}): exact {np.mean(everything):.3f}, "
          f"card refused by the colour correction {unreadable}")
    for name, groups in by.items():
        print(f"{name}: {_rates(groups)}")


if __name__ == "__main__":
    main()
