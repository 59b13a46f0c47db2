"""The ceiling's ways of reading a noiseless observation (`simulator.ceiling.VARIANTS`) and the
proposed card with the product's chart printed beside the slot (issue #16)."""
from __future__ import annotations

import dataclasses
from functools import cached_property

import numpy as np
import pytest

from calibration.specs import load_card, load_product
from simulator import ceiling, spectra
from simulator.scene import SceneSpec

CARD = load_card()
PRODUCTS = [load_product("generic-10"), load_product("acr-2")]


@dataclasses.dataclass(frozen=True)
class ObserverCamera(spectra.CameraModel):
    """A camera that sees as the CIE 1931 observer: no metamerism of its own against the chart."""

    @cached_property
    def sensitivities(self) -> np.ndarray:
        return np.clip(spectra.CMF, 0, None) / spectra.CMF.max()


spectra.register_camera(ObserverCamera("test-cie1931", (), 0.0, "srgb", 10000.0, 1.0, 12))


def every_level(product, **fields) -> list[SceneSpec]:
    """Scenes putting every pad on each of its chart levels in turn (the last level where it has fewer)."""
    depth = max(len(p.levels) for p in product.pads)
    return [SceneSpec(product=product, levels={p.analyte: float(min(k, len(p.levels) - 1)) for p in product.pads},
                      **fields) for k in range(depth)]


@pytest.mark.parametrize("product", PRODUCTS, ids=lambda p: p.id)
def test_every_variant_reads_exact_under_daylight_with_the_observer_and_identical_spectra(product):
    for spec in every_level(product, illuminant="D65", camera="test-cie1931", exposure=0.8,
                            dye_model="smooth", ink_model="smooth"):
        obs = ceiling.observe(spec, printed_chart=True)
        for variant in ceiling.VARIANTS:
            read = ceiling.read_as(obs, variant)
            assert read.readable and all(read.exact.values()), (variant, read)


def test_the_printed_chart_is_the_pad_when_inks_and_dyes_share_spectra():
    """Under a triband tube, a foreign camera and a preset white balance, a swatch printed with the
    pad's own spectrum reads the same camera colour as the pad on that level, so matching in camera
    colour is exact whatever the light does."""
    product = PRODUCTS[0]
    for spec in every_level(product, illuminant="F11", camera="webcam", white_balance="preset:daylight",
                            exposure=0.6, dye_model="smooth", ink_model="smooth"):
        obs = ceiling.observe(spec, printed_chart=True)
        for pad, rel, chart in zip(obs.pads, obs.pad_rel, obs.chart_rel):
            assert np.allclose(rel, chart[obs.truth[pad.analyte]], atol=1e-9)
        assert all(ceiling.read_as(obs, "chart_rgb").exact.values())


def test_a_printed_chart_in_other_inks_is_not_the_dye():
    """With CMYK inks and banded dyes the printed swatch matches its pad under daylight (both made to
    the chart colour for the CIE observer) but not under a triband tube, even seen by the observer
    itself: metamerism the card change cannot remove."""
    product = PRODUCTS[0]

    def gap(light: str) -> float:
        """Mean over pads of the largest camera-channel ratio (log) between pad and its level's swatch."""
        spec = every_level(product, illuminant=light, camera="test-cie1931", exposure=0.6, dye_model="bands",
                           ink_model="cmyk")[2]
        obs = ceiling.observe(spec, printed_chart=True)
        return float(np.mean([np.abs(np.log(rel / chart[obs.truth[p.analyte]])).max()
                              for p, rel, chart in zip(obs.pads, obs.pad_rel, obs.chart_rel)]))
    assert gap("D65") < 0.05 < 0.15 < gap("F11")


def test_swatches_of_the_lots_own_dye_read_every_level_whatever_the_light_and_inks():
    """The bound: banded dyes at a strong lot load, CMYK card, a halophosphate tube and a foreign
    camera; pads on a level match their own dye's swatch, where today's reading of the chart need not."""
    product = PRODUCTS[0]
    lot = {p.analyte: 1.2 for p in product.pads}
    missed_by_the_chart = 0
    for spec in every_level(product, illuminant="F2", camera="ov5647", exposure=0.6, dye_model="bands",
                            ink_model="cmyk", lot_absorbance=lot):
        obs = ceiling.observe(spec, printed_chart=True)
        read = ceiling.read_as(obs, "dye_chart")
        assert read.readable and all(read.exact.values()), read
        missed_by_the_chart += sum(not e for e in ceiling.read_as(obs, "global").exact.values())
    assert missed_by_the_chart > 0


def test_a_local_fit_follows_a_misprinted_patch_the_global_fit_averages_out():
    """One patch near SG's chart printed 30 % off in red and blue: the global fit still reads SG at
    level 5, the fit weighted toward SG's chart follows the bad patch to a neighbouring level."""
    product = PRODUCTS[0]
    sg = product.pad("SG")
    spec = SceneSpec(product=product, levels={"SG": 5.0}, illuminant="D65", camera="imx477", exposure=0.8)
    obs = ceiling.observe(spec)
    near = int(np.argmin(ceiling.chart_distance(CARD, sg)))
    patch_rel = obs.patch_rel.copy()
    patch_rel[near] *= np.array([0.7, 1.0, 1 / 0.7])
    misprinted = dataclasses.replace(obs, patch_rel=patch_rel)
    assert ceiling.read_as(misprinted, "global").exact["SG"]
    assert ceiling.read_as(obs, "local").exact["SG"]
    assert not ceiling.read_as(misprinted, "local").exact["SG"]


def test_ceiling_read_is_the_global_variant():
    spec = every_level(PRODUCTS[1], illuminant="cie:FL3.9", camera="cs:sigma_sdmerrill", exposure=0.7,
                       dye_model="bands", ink_model="cmyk")[1]
    read = ceiling.ceiling_read(spec)
    assert read == ceiling.read_as(ceiling.observe(spec), "global")
    assert read.within_one == {a: abs(read.nearest[a] - t) <= 1 for a, t in read.truth.items()}


def test_chart_variants_need_the_printed_chart():
    obs = ceiling.observe(SceneSpec(product=PRODUCTS[1]))
    with pytest.raises(ValueError, match="printed_chart=True"):
        ceiling.read_as(obs, "chart_lab")


@pytest.mark.parametrize("product", PRODUCTS, ids=lambda p: p.id)
def test_chart_swatches_fit_between_the_slot_and_the_patch_rows(product):
    half = ceiling.CHART_SWATCH_MM / 2
    points = np.vstack([ceiling.chart_points(CARD, p) for p in product.pads])
    slot_y = CARD.slot_handle_end_mm[1]
    assert np.all(np.abs(points[:, 1] - slot_y) - half >= CARD.slot_width_mm / 2)
    patches = np.array([p.center_mm for p in CARD.patches])
    patch_half = max(p.size_mm for p in CARD.patches) / 2
    apart = np.abs(points[:, None, :] - patches[None, :, :]).max(axis=2)   # Chebyshev: squares overlap below
    assert apart.min() >= half + patch_half
    between = np.abs(points[:, None, :] - points[None, :, :]).max(axis=2) + np.eye(len(points)) * 1e9
    assert between.min() >= ceiling.CHART_SWATCH_MM
    assert np.all((points - half >= 0) & (points + half <= np.asarray(CARD.size_mm)))


def test_the_spectral_prior_gives_each_chart_colour_a_smooth_spectrum_of_that_colour():
    from calibration.colour import xyz_to_lab
    d50 = (spectra.CMF * spectra.daylight(5003.0)[:, None]).T
    for pad in PRODUCTS[0].pads:
        for lab in pad.level_lab:
            r = ceiling._smoothest_reflectance(lab)
            assert np.all((r >= 0.005) & (r <= 1.0))
            seen = xyz_to_lab((d50 @ r / d50[1].sum())[None])[0]
            assert np.abs(seen - lab).max() < 1.0, (pad.analyte, lab, seen)


def test_the_spectral_prior_recovers_smooth_sensitivities_from_the_patches():
    """Patches seen through smooth channels: the estimate predicts the card's white-relative colours
    of the patches and of spectra it did not see (smooth dyes) to a few per cent."""
    w = spectra.WAVELENGTHS
    true = np.stack([np.exp(-0.5 * ((w - m) / s) ** 2) for m, s in ((600, 40), (540, 40), (450, 30))])
    patches = np.array([spectra.reflectance_from_lab_d50(p.lab_d50) for p in CARD.patches])
    white = ceiling._background(CARD)
    relative = lambda r: (r @ true.T) / (white @ true.T)   # noqa: E731
    estimate = ceiling._sensitivities(relative(patches), patches, white)
    unseen = np.array([ceiling._smoothest_reflectance(lab) for pad in PRODUCTS[0].pads for lab in pad.level_lab])
    assert np.allclose(estimate @ white, 1.0)
    assert np.abs(unseen @ estimate.T - relative(unseen)).max() < 0.05
