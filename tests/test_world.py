"""The wide simulator: measured lights and cameras, two-light mixtures, presets, dyes unlike inks,
and the physics ceiling."""
from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from calibration.colour import delta_e_2000, hex_to_lab_d50, linear_to_srgb, srgb_to_lab_d50
from calibration.specs import load_card, load_product
from simulator import ceiling, scene, spectra, world
from simulator.scene import SceneSpec, render

pytest.importorskip("colour")
SMALL = (1456, 1088)
CARD = load_card()
PRODUCTS = [load_product("generic-10"), load_product("acr-2")]


def ideal(**fields) -> SceneSpec:
    """A noiseless, evenly lit scene at a small resolution."""
    return SceneSpec(**{"resolution": SMALL, "exposure": 0.7, **fields})


def white_srgb(image: np.ndarray, truth, pts_mm) -> np.ndarray:
    """Median camera RGB (0..255, RGB order) of the card's white just outside its patch rows."""
    pts = scene._project(truth.homography, np.asarray(pts_mm, float))
    out = []
    for x, y in np.round(pts).astype(int):
        out.append(np.median(image[y - 4:y + 5, x - 4:x + 5].reshape(-1, 3), axis=0)[::-1])
    return np.array(out, float)


def blank_card_points() -> np.ndarray:
    """Two points of plain card white near the left and right edges, halfway down."""
    w, h = CARD.size_mm
    labels = scene._label_map(CARD, 4)
    points = []
    for x in (0.06 * w, 0.94 * w):
        ys = [y for y in np.linspace(0.1 * h, 0.9 * h, 41)
              if (labels[int(y * 4) - 8:int(y * 4) + 8, int(x * 4) - 8:int(x * 4) + 8] == 0).all()]
        points.append((x, ys[len(ys) // 2]))
    return np.array(points)


def camera_lab(reflectance: np.ndarray, light: str, camera: str) -> np.ndarray:
    """What a camera white-balanced to the light reports, as CIELAB through its D65 colour matrix."""
    cam, spd = spectra.camera(camera), spectra.illuminant(light)
    balanced = spectra.raw_rgb(reflectance, spd, cam) / spectra.raw_white(spd, cam)
    return srgb_to_lab_d50(linear_to_srgb(np.clip(balanced @ cam.matrix.T, 0, 1)))

# --- names ---------------------------------------------------------------------------------------


def test_every_named_light_and_camera_resolves():
    for name in world.named_lights() + ("sodium", "D:3500", "planck:2600", "LED:3000:450:560:630"):
        spd = spectra.illuminant(name)
        assert spd.shape == spectra.WAVELENGTHS.shape and np.all(spd >= 0) and spd.max() > 0
        assert world.light_family(name) in world.LIGHT_FAMILIES + (world.SODIUM_FAMILY,)
    for name in ("cs:nikon_d5100", "cs:sigma_sdmerrill", "rand:0", "rand:123456") + world.BUILTIN_CAMERAS:
        cam = spectra.camera(name)
        assert cam.sensitivities.shape == (len(spectra.WAVELENGTHS), 3)
        assert np.allclose(cam.matrix.sum(axis=1), 1.0)
        assert world.camera_label(name) in world.CAMERA_LABELS
    with pytest.raises(KeyError):
        spectra.illuminant("cie:FL99")
    with pytest.raises(KeyError):
        spectra.camera("rand:x")


def test_measured_data_are_what_they_claim():
    fl2 = spectra.illuminant("cie:FL2")
    mercury_green = int(np.searchsorted(spectra.WAVELENGTHS, 545.0))
    assert fl2[mercury_green] > 2 * np.median(fl2)  # the 546 nm mercury line stands out
    foveon, bayer = spectra.camera("cs:sigma_sdmerrill"), spectra.camera("cs:nikon_d5100")

    def overlap(sens):
        unit = sens / np.linalg.norm(sens, axis=0)
        return float((unit[:, 0] @ unit[:, 1] + unit[:, 1] @ unit[:, 2]) / 2)
    assert overlap(foveon.sensitivities) > overlap(bayer.sensitivities) + 0.1  # broad, overlapping layers


def test_random_cameras_are_deterministic_and_varied():
    assert spectra.random_camera(5) == spectra.random_camera(5)
    cams = [spectra.random_camera(seed) for seed in range(30)]
    peaks = np.array([c.sensitivities.argmax(axis=0) for c in cams])
    assert all(len(np.unique(peaks[:, c])) > 3 for c in range(3))
    blue_lobes = [c.lobes[0][2][0] for c in cams]
    assert 0 <= min(blue_lobes) and max(blue_lobes) <= 0.15 and max(blue_lobes) > 0.1
    assert all(640 <= c.ir_cut_nm <= 700 for c in cams)

# --- spectra of dyes and inks ---------------------------------------------------------------------


def test_dyes_and_inks_match_their_colours():
    for product in PRODUCTS:
        for pad in product.pads:
            for level in pad.levels:
                dye = spectra.pad_dye_reflectance(pad.analyte, level.srgb)
                assert np.all((dye > 0) & (dye < 1))
                assert delta_e_2000(spectra.lab_under_d65(dye), spectra.srgb_lab_d65(level.srgb)) < 1.0
    d50 = spectra.illuminant("D50")
    for patch in CARD.patches:
        ink = spectra.card_ink_reflectance(tuple(patch.lab_d50))
        assert delta_e_2000(spectra._lab_under(ink, d50), np.array(patch.lab_d50)) < 1.0


def test_a_dye_and_an_ink_that_match_in_daylight_part_under_a_fluorescent_tube():
    colour = "8AB56A"  # a glucose chart level
    dye = spectra.pad_dye_reflectance("GLU", colour)
    ink = spectra.card_ink_reflectance(tuple(hex_to_lab_d50(colour)))
    assert delta_e_2000(spectra.lab_under_d65(dye), spectra.lab_under_d65(ink)) < 1.0
    assert delta_e_2000(camera_lab(dye, "cie:FL2", "cs:nikon_d5100"), camera_lab(ink, "cie:FL2", "cs:nikon_d5100")) > 3.0
    # the smooth model gives both the same spectrum: no metamerism at all
    smooth_pad = spectra.reflectance_from_srgb(colour)
    smooth_patch = spectra.reflectance_from_lab_d50(hex_to_lab_d50(colour))
    assert delta_e_2000(camera_lab(smooth_pad, "cie:FL2", "cs:nikon_d5100"),
                        camera_lab(smooth_patch, "cie:FL2", "cs:nikon_d5100")) < 0.5

# --- rendering -------------------------------------------------------------------------------------


def test_a_two_light_mixture_changes_the_white_across_the_card():
    left_right = blank_card_points()
    base = ideal(illuminant="D65", camera="imx219")
    mixed = dataclasses.replace(base, second_illuminant="A", light_mix=(0.0, 1.0, 0.0))
    image, truth = render(mixed, np.random.default_rng(0))
    left, right = white_srgb(image, truth, left_right)
    assert right[0] / right[2] > 1.3 * left[0] / left[2]   # warm lamp light on the right, daylight on the left
    image, truth = render(base, np.random.default_rng(0))
    left, right = white_srgb(image, truth, left_right)
    assert abs(right[0] / right[2] - left[0] / left[2]) < 0.05


def test_a_mixture_with_no_share_is_the_single_light_photo():
    spec = scene.random_scene(np.random.default_rng(4), resolution=SMALL)
    alone, _ = render(spec, np.random.default_rng(1))
    mixed, _ = render(dataclasses.replace(spec, second_illuminant="cie:FL11", light_mix=(0.0, 0.0, 45.0)),
                      np.random.default_rng(1))
    assert np.array_equal(alone, mixed)


def test_daylight_preset_under_tungsten_stays_warm_and_clips_red():
    point = blank_card_points()[:1]
    auto = ideal(illuminant="A", camera="imx219", exposure=0.95)
    preset = dataclasses.replace(auto, white_balance="preset:daylight")
    image, truth = render(preset, np.random.default_rng(0))
    red, green, blue = white_srgb(image, truth, point)[0]
    assert red >= 254 and blue < red - 40
    image, truth = render(auto, np.random.default_rng(0))
    red, green, blue = white_srgb(image, truth, point)[0]
    assert abs(red - blue) < 8
    # the preset's gains do not depend on the light actually there
    gains = [scene.wb_gains(dataclasses.replace(preset, illuminant=light), scene._Optics(
        dataclasses.replace(preset, illuminant=light))) for light in ("A", "cie:FL2")]
    assert np.allclose(gains[0], gains[1])


def test_world_exposure_reaches_the_white_clipping_point():
    rng = np.random.default_rng(9)
    specs = [world.random_world_scene(rng, product="generic-10") for _ in range(60)]
    ratios = np.array([s.exposure / ceiling.white_clip_exposure(s) for s in specs])
    assert ratios.max() <= world.PAST_CLIP[1] + 1e-9 and ratios.min() >= world.EXPOSURE_OF_CLIP[0] - 1e-9
    assert (ratios > 0.9).any()
    spec = dataclasses.replace(specs[0], exposure=ceiling.white_clip_exposure(specs[0]), noise=False,
                               glare=None, light_gradient=(0.0, 0.0), light_falloff=(0.0, 0.0, 0.0),
                               vignetting=0.0, jpeg_quality=None, resolution=SMALL)
    image, truth = render(spec, np.random.default_rng(0))
    assert white_srgb(image, truth, blank_card_points()).max() >= 245

# --- drawing -------------------------------------------------------------------------------------


def test_same_seed_same_world_scene():
    a = world.random_world_scene(np.random.default_rng(3))
    assert a == world.random_world_scene(np.random.default_rng(3))
    assert a != world.random_world_scene(np.random.default_rng(4))
    assert pickle.loads(pickle.dumps(a)) == a


def test_world_draws_cover_the_families_and_resolve():
    rng = np.random.default_rng(1)
    specs = [world.random_world_scene(rng) for _ in range(300)]
    lights = [s.illuminant for s in specs] + [s.second_illuminant for s in specs if s.second_illuminant]
    assert {world.light_family(name) for name in lights} == set(world.LIGHT_FAMILIES)
    for name in set(lights):
        spectra.illuminant(name)
    assert {world.camera_label(s.camera) for s in specs} == set(world.CAMERA_LABELS)
    assert 0.15 < np.mean([s.second_illuminant is not None for s in specs]) < 0.35
    assert 0.1 < np.mean([s.white_balance.startswith("preset:") for s in specs]) < 0.3
    assert {world.reflectance_label(s) for s in specs} == set(world.REFLECTANCE_LABELS)   # no one dye/ink pair
    held_out = [world.random_world_scene(rng, reflectances=["smooth/cmyk"]) for _ in range(5)]
    assert {world.reflectance_label(s) for s in held_out} == {"smooth/cmyk"}
    assert max(max(s.wb_error) for s in specs) > 1.25 and min(min(s.wb_error) for s in specs) < 0.8


def test_domain_filters_hold_whole_domains_out():
    rng = np.random.default_rng(2)
    specs = [world.random_world_scene(rng, lights=["fluorescent_triband", "daylight"], cameras=["random"])
             for _ in range(60)]
    for s in specs:
        assert world.domain(s)[0] in ("fluorescent_triband", "daylight")
        assert s.second_illuminant is None or world.light_family(s.second_illuminant) in (
            "fluorescent_triband", "daylight")
        assert world.domain(s)[1] == "random"
    with pytest.raises(ValueError):
        world.random_world_scene(rng, lights=["candlelight"])


def test_a_world_scene_renders_with_a_fault():
    spec = world.random_world_scene(np.random.default_rng(5), fault="too_dark", resolution=SMALL)
    image, truth = render(spec, np.random.default_rng(0))
    assert image.shape == (SMALL[1], SMALL[0], 3) and truth.expected_error == "too_dark"

# --- the ceiling -----------------------------------------------------------------------------------


@pytest.mark.parametrize("models", [("smooth", "smooth"), ("bands", "cmyk")])
def test_ceiling_is_exact_on_an_ideal_daylight_scene(models):
    dye, ink = models
    for product in PRODUCTS:
        for pad in product.pads:
            for index in range(len(pad.levels)):
                spec = SceneSpec(product=product, levels={pad.analyte: float(index)}, illuminant="D65",
                                 camera="imx477", dye_model=dye, ink_model=ink, exposure=0.8)
                read = ceiling.ceiling_read(spec)
                assert read.readable and read.truth[pad.analyte] == index
                assert all(read.exact.values()), (pad.analyte, index, read)


def test_ceiling_sees_metamerism_and_clipping():
    rng = np.random.default_rng(6)
    specs = [world.random_world_scene(rng, product="generic-10") for _ in range(80)]
    exact = np.mean([list(ceiling.ceiling(s).values()) for s in specs])
    smooth = np.mean([list(ceiling.ceiling(dataclasses.replace(s, dye_model="smooth", ink_model="smooth")).values())
                      for s in specs])
    assert exact < smooth <= 1.0 and exact > 0.6
    # a photo blown out far past the white loses the pads
    blown = dataclasses.replace(specs[0], exposure=20 * ceiling.white_clip_exposure(specs[0]))
    assert not all(ceiling.ceiling(blown).values())
