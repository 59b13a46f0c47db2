"""The synthetic scene generator: spectral colour, rendering, faults and ground truth."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from calibration import card_art
from calibration.colour import delta_e_2000, hex_to_lab_d50, linear_to_srgb, srgb_to_lab_d50, srgb_to_linear
from calibration.specs import load_card, load_product
from simulator import scene, spectra
from simulator.scene import SceneSpec, random_scene, render

SMALL = (1456, 1088)
CARD = load_card()
PRODUCTS = [load_product("generic-10"), load_product("acr-2")]
SRGB_CAMERA = "imx219"  # its tone curve is sRGB, so decoded pixels are directly comparable


def clean(spec: SceneSpec) -> SceneSpec:
    """The same scene without noise, blur, uneven light, textures, glare, JPEG or white-balance error,
    under D65 through an sRGB camera: what is left is geometry and spectral colour."""
    return dataclasses.replace(
        spec, illuminant="D65", camera=SRGB_CAMERA, resolution=SMALL, noise=False, blur_mm=0.0,
        jpeg_quality=None, glare=None, vignetting=0.0, light_gradient=(0.0, 0.0),
        light_falloff=(0.0, 0.0, 0.0), paper_texture=0.0, tray_texture=0.0, mottle=0.0,
        shadow=(0.0, 0.0), wb_error=(1.0, 1.0, 1.0), white_balance="illuminant", exposure=0.9,
        lot_absorbance={})


def sample_srgb(image: np.ndarray, homography: np.ndarray, pts_mm, radius: int = 3) -> np.ndarray:
    """Median sRGB (0..1, RGB order) in a small window around each card point."""
    pts = scene._project(homography, np.asarray(pts_mm, float))
    out = []
    for x, y in np.round(pts).astype(int):
        window = image[y - radius:y + radius + 1, x - radius:x + radius + 1].reshape(-1, 3)
        out.append(np.median(window, axis=0)[::-1] / 255)
    return np.array(out)


def sample_lab(image, homography, pts_mm) -> np.ndarray:
    return srgb_to_lab_d50(sample_srgb(image, homography, pts_mm))


def chart_colours() -> list[str]:
    colours = [p.srgb for p in CARD.patches] + [CARD.background_srgb]
    for product in PRODUCTS:
        colours += [product.strip_base_srgb] + [lv.srgb for pad in product.pads for lv in pad.levels]
    return colours

# --- spectra -------------------------------------------------------------------------------------


def test_reflectance_round_trip_under_d65():
    errors = [delta_e_2000(spectra.srgb_lab_d65(c), spectra.lab_under_d65(spectra.reflectance_from_srgb(c)))
              for c in chart_colours()]
    assert max(errors) < 0.5
    for colour in chart_colours():
        refl = spectra.reflectance_from_srgb(colour)
        assert refl.min() >= 0 and refl.max() <= 1


def test_reflectance_from_card_reference_lab():
    for patch in CARD.patches:
        refl = spectra.reflectance_from_lab_d50(patch.lab_d50)
        xyz_d65 = spectra.lab_under_d65(refl)
        assert delta_e_2000(xyz_d65, spectra.srgb_lab_d65(patch.srgb)) < 1.0  # card file is self-consistent


def test_reflectances_are_smooth_not_rgb_boxes():
    refl = spectra.reflectance_from_srgb("2D6E80")
    assert np.abs(np.diff(refl)).max() < 0.05  # 5 nm steps of a dye-like curve


def test_pad_between_levels_mixes_absorbance():
    chart = np.array([spectra.reflectance_from_srgb(c) for c in ("7FC5C4", "8C6A2E")])
    assert np.allclose(spectra.absorbance_mix(chart, 0.0), chart[0])
    assert np.allclose(spectra.absorbance_mix(chart, 1.0), chart[1])
    half = spectra.absorbance_mix(chart, 0.5)
    assert np.allclose(half, np.sqrt(chart[0] * chart[1]))  # geometric, not arithmetic, mean
    assert np.all(spectra.absorbance_mix(chart, 1.0, absorbance_scale=1.1) <= chart[1])


@pytest.mark.parametrize("name, cct", [("D65", 6504), ("D50", 5003), ("A", 2856), ("F2", 4230), ("F11", 4000),
                                       ("LED_cool", 6500), ("LED_warm", 3000), ("LED_reader", 4000)])
def test_illuminant_colour_temperature(name, cct):
    assert abs(spectra.correlated_colour_temperature(spectra.illuminant(name)) - cct) < 0.03 * cct


def test_daylight_d65_white_point():
    xyz = spectra.spectrum_xyz(spectra.illuminant("D65"))
    assert np.allclose(xyz[:2] / xyz.sum(), (0.3127, 0.3290), atol=0.002)


def test_fluorescent_lamps_have_line_spectra():
    wl = list(spectra.WAVELENGTHS)

    def peak_ratio(spd, nm):
        i = wl.index(nm)
        return spd[i] / max(spd[i - 2], spd[i + 2])
    assert peak_ratio(spectra.illuminant("F2"), 435) > 1.5 and peak_ratio(spectra.illuminant("F2"), 545) > 1.5
    assert peak_ratio(spectra.illuminant("F11"), 610) > 3 and peak_ratio(spectra.illuminant("F11"), 545) > 3
    assert peak_ratio(spectra.illuminant("D65"), 545) < 1.2


def test_cameras_are_distinct_and_red_sees_blue():
    names = spectra.camera_names()
    assert len(names) >= 4
    blue = list(spectra.WAVELENGTHS).index(440)
    sens = {n: spectra.camera(n).sensitivities for n in names}
    for n in names:
        assert 0.01 < sens[n][blue, 0] < 0.3  # red channel's secondary lobe
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(sens[a] - sens[b]).max() > 0.05
    assert len({spectra.camera(n).tone for n in names}) >= 3


def test_camera_matrix_keeps_white_and_fits_d65():
    for name in spectra.camera_names():
        assert np.allclose(spectra.camera(name).matrix.sum(axis=1), 1.0)


def test_registered_light_and_camera_render(monkeypatch):
    monkeypatch.setattr(spectra, "_ILLUMINANTS", dict(spectra._ILLUMINANTS))  # leave other tests' lists alone
    monkeypatch.setattr(spectra, "_CAMERA_BY_NAME", dict(spectra._CAMERA_BY_NAME))
    spectra.register_illuminant("test_sodium", spectra.lines((589.0, 2.0, 1.0), (569.0, 8.0, 0.1))
                                + 0.02 * spectra.band(500.0, 200.0))
    spectra.register_camera(dataclasses.replace(spectra.camera("imx219"), name="test_cam", tone="gamma1.8"))
    assert "test_sodium" in spectra.illuminant_names() and "test_cam" in spectra.camera_names()
    base = clean(SceneSpec())
    daylight, _ = render(base, np.random.default_rng(0))
    sodium, _ = render(dataclasses.replace(base, illuminant="test_sodium"), np.random.default_rng(0))
    both, _ = render(dataclasses.replace(base, illuminant="test_sodium", camera="test_cam"), np.random.default_rng(0))
    assert not np.array_equal(daylight, sodium) and not np.array_equal(sodium, both)


def test_unknown_names_are_refused():
    with pytest.raises(KeyError):
        spectra.illuminant("candle")
    with pytest.raises(KeyError):
        spectra.camera("pinhole")

# --- rendering -----------------------------------------------------------------------------------


def test_same_seed_same_image_bytes():
    spec_a = random_scene(np.random.default_rng(11), resolution=SMALL)
    spec_b = random_scene(np.random.default_rng(11), resolution=SMALL)
    assert spec_a == spec_b
    img_a, _ = render(spec_a, np.random.default_rng(5))
    img_b, _ = render(spec_b, np.random.default_rng(5))
    assert scene.encode(img_a, "png") == scene.encode(img_b, "png")
    img_c, _ = render(spec_a, np.random.default_rng(6))
    assert not np.array_equal(img_a, img_c)  # noise comes from the render rng


@pytest.mark.parametrize("resolution", [(1456, 1088), (2028, 1520), (4056, 3040)])
def test_resolutions(resolution):
    image, truth = render(random_scene(np.random.default_rng(3), resolution=resolution), np.random.default_rng(0))
    assert image.shape == (resolution[1], resolution[0], 3) and image.dtype == np.uint8
    corners = scene._project(truth.homography, np.array([[0, 0], [140, 50]]))
    assert np.all((corners >= 0) & (corners < resolution))


def test_resolution_outside_supported_range_is_refused():
    with pytest.raises(ValueError):
        render(SceneSpec(resolution=(640, 480)), np.random.default_rng(0))


def test_d65_render_reproduces_card_lab():
    spec = SceneSpec(camera=SRGB_CAMERA, resolution=SMALL, rotation_deg=5, tilt_deg=(6, -4), exposure=1.0)
    image, truth = render(spec, np.random.default_rng(0))
    de = delta_e_2000(sample_lab(image, truth.homography, [p.center_mm for p in CARD.patches]), CARD.patch_lab)
    assert de.mean() < 2.0 and de.max() < 4.0


def test_d65_render_reproduces_pad_chart_colours():
    product = PRODUCTS[0]
    levels = {pad.analyte: float(len(pad.levels) - 1) for pad in product.pads}
    image, truth = render(SceneSpec(camera=SRGB_CAMERA, resolution=SMALL, levels=levels), np.random.default_rng(0))
    for pad in product.pads:
        lab = sample_lab(image, truth.homography, [truth.pads[pad.analyte].center_mm])[0]
        assert delta_e_2000(lab, hex_to_lab_d50(pad.levels[-1].srgb)) < 4.0


def _patch_linear(spec: SceneSpec) -> np.ndarray:
    image, truth = render(spec, np.random.default_rng(0))
    return srgb_to_linear(sample_srgb(image, truth.homography, [p.center_mm for p in CARD.patches]))


def _residual_after_channel_gains(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean dE00 left after the best per-channel gain maps `other` onto `reference`."""
    gains = (reference * other).sum(0) / (other * other).sum(0)
    return float(delta_e_2000(srgb_to_lab_d50(linear_to_srgb(other * gains)),
                              srgb_to_lab_d50(linear_to_srgb(reference))).mean())


def test_illuminants_change_colours_beyond_white_balance():
    base = clean(SceneSpec())
    reference = _patch_linear(base)
    # a pure exposure or white-balance change is undone by channel gains ...
    assert _residual_after_channel_gains(reference, _patch_linear(dataclasses.replace(base, exposure=0.6))) < 0.7
    assert _residual_after_channel_gains(reference, _patch_linear(
        dataclasses.replace(base, wb_error=(1.06, 1.0, 0.94)))) < 0.7
    # ... another light is not (metamerism, and a colour matrix tuned under D65)
    for light in ("F11", "A", "LED_warm"):
        lit = _patch_linear(dataclasses.replace(base, illuminant=light))
        assert _residual_after_channel_gains(reference, lit) > 1.5


def test_uneven_light_and_vignetting_darken_where_they_should():
    base = clean(SceneSpec())
    image, truth = render(dataclasses.replace(base, light_gradient=(0.2, 0.0)), np.random.default_rng(0))
    left, right = sample_srgb(image, truth.homography, [[3, 25], [137, 25]]).mean(1)
    assert right > left + 0.05
    image, truth = render(dataclasses.replace(base, vignetting=0.4, card_fill=0.5), np.random.default_rng(0))
    centre = image[500:588, 680:776].mean()
    corner = image[:60, :60].mean()
    flat, _ = render(dataclasses.replace(base, card_fill=0.5), np.random.default_rng(0))
    assert corner < 0.85 * flat[:60, :60].mean() and abs(centre - flat[500:588, 680:776].mean()) < 3


def test_markers_are_detectable_where_truth_says():
    detector = cv2.aruco.ArucoDetector(card_art.aruco_dictionary(CARD), cv2.aruco.DetectorParameters())
    for seed in range(3):
        image, truth = render(random_scene(np.random.default_rng(seed), resolution=SMALL, glare=None),
                              np.random.default_rng(seed))
        corners, ids, _ = detector.detectMarkers(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        assert ids is not None and sorted(ids.ravel()) == list(CARD.marker_ids)
        for quad, marker_id in zip(corners, ids.ravel()):
            expected = scene._project(truth.homography,
                                      np.array([CARD.marker_centers_mm[CARD.marker_ids.index(marker_id)]]))[0]
            assert np.linalg.norm(quad.reshape(4, 2).mean(0) - expected) < 1.5


def test_encode_and_write_scene(tmp_path):
    spec = random_scene(np.random.default_rng(4), resolution=SMALL)
    truth = scene.write_scene(tmp_path / "scene.jpg", spec, np.random.default_rng(0))
    data = (tmp_path / "scene.jpg").read_bytes()
    assert data[:2] == b"\xff\xd8"
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    image, _ = render(spec, np.random.default_rng(0))
    assert np.array_equal(decoded, image) and truth.spec == spec
    scene.write_scene(tmp_path / "scene.png", spec, np.random.default_rng(0))
    assert np.array_equal(cv2.imread(str(tmp_path / "scene.png")), image)

# --- random scenes and truth ---------------------------------------------------------------------


def test_random_scene_draws_realistic_ranges():
    specs = [random_scene(np.random.default_rng(seed), illuminants=["F2", "A"], cameras=["webcam"])
             for seed in range(200)]
    near, ordinal = 0, 0
    for spec in specs:
        assert spec.illuminant in ("F2", "A") and spec.camera == "webcam"
        assert 0.5 <= spec.card_fill <= 0.9 and abs(spec.strip_rotation_deg) <= 1.0
        assert abs(spec.strip_shift_mm[0]) <= 0.7 and abs(spec.strip_shift_mm[1]) <= 0.4
        assert np.hypot(*spec.tilt_deg) <= 12.0
        for pad in load_product(spec.product).pads:
            t = spec.levels[pad.analyte]
            assert 0 <= t <= len(pad.levels) - 1
            if pad.scale == "nominal":
                assert t == int(t)
            else:
                ordinal += 1
                near += abs(t - round(t)) <= 0.25
    assert 0.8 < near / ordinal < 0.97  # 80 % near a level, plus the uniform draws that land near one
    assert {s.product for s in specs} == {"generic-10", "acr-2"}
    assert len({s.illuminant for s in specs}) == 2


def test_random_scene_overrides_and_unknown_fault():
    spec = random_scene(np.random.default_rng(0), product="acr-2", exposure=0.42, card_fill=0.7)
    assert spec.exposure == 0.42 and spec.card_fill == 0.7 and spec.product == "acr-2"
    with pytest.raises(ValueError):
        random_scene(np.random.default_rng(0), fault="on_fire")
    with pytest.raises(TypeError):
        random_scene(np.random.default_rng(0), not_a_field=1)


def test_random_scene_takes_loaded_card_and_product():
    spec = random_scene(np.random.default_rng(2), product=PRODUCTS[1], card=CARD, fault="wrong_strip",
                        resolution=SMALL)
    image, truth = render(spec, np.random.default_rng(0))
    assert truth.strip_product == "generic-10" and truth.expected_error == "wrong_strip"
    by_id, _ = render(dataclasses.replace(spec, product="acr-2", card="card-v1"), np.random.default_rng(0))
    assert np.array_equal(image, by_id)


def test_truth_levels_and_values():
    levels = {"GLU": 2.5, "NIT": 1.0, "PH": 0.2, "LEU": 3.6}
    _, truth = render(SceneSpec(resolution=SMALL, levels=levels), np.random.default_rng(0))
    assert truth.pads["GLU"].level == "500" and truth.pads["GLU"].value == pytest.approx(375.0)
    assert truth.pads["NIT"].level == "pos" and truth.pads["NIT"].value is None
    assert truth.pads["PH"].level == "5.0" and truth.pads["PH"].value == pytest.approx(5.2)
    assert truth.pads["LEU"].level == "large" and truth.pads["LEU"].value == pytest.approx(125 + 0.6 * 375)
    assert truth.pads["URO"].t == 0.0 and truth.expected_error is None and truth.strip_product == "generic-10"


def test_lot_variation_is_small_but_real():
    base = dataclasses.replace(clean(SceneSpec()), levels={"GLU": 3.0})
    lot = dataclasses.replace(base, lot_absorbance={"GLU": 1.06})
    labs = []
    for spec in (base, lot):
        image, truth = render(spec, np.random.default_rng(0))
        labs.append(sample_lab(image, truth.homography, [truth.pads["GLU"].center_mm])[0])
    assert 0.5 < delta_e_2000(*labs) < 3.0

# --- faults --------------------------------------------------------------------------------------


def _pair(fault: str, seed: int = 21, product: str = "generic-10", make_clean: bool = False):
    """The same random scene without and with `fault`, rendered with the same noise."""
    specs = [random_scene(np.random.default_rng(seed), product=product, fault=f, resolution=SMALL)
             for f in (None, fault)]
    if make_clean:
        specs = [clean(s) for s in specs]
    return [render(s, np.random.default_rng(seed)) for s in specs]


def _pad_centres(truth) -> list:
    return [p.center_mm for p in truth.pads.values()]


def _card_box(truth):
    """Frame pixel box around the card: (lo, hi) corners."""
    corners = scene._project(truth.homography, np.array([[0, 0], [140, 0], [140, 50], [0, 50]]))
    return corners.min(0).astype(int), corners.max(0).astype(int)


def test_fault_codes():
    for fault, code in scene.FAULTS.items():
        spec = random_scene(np.random.default_rng(1), fault=fault, resolution=SMALL)
        assert spec.fault == fault
        _, truth = render(spec, np.random.default_rng(0))
        assert truth.expected_error == code


def test_fault_no_card_hides_the_markers():
    detector = cv2.aruco.ArucoDetector(card_art.aruco_dictionary(CARD), cv2.aruco.DetectorParameters())
    (normal, _), (faulty, truth) = _pair("no_card")
    assert detector.detectMarkers(cv2.cvtColor(normal, cv2.COLOR_BGR2GRAY))[1] is not None
    assert detector.detectMarkers(cv2.cvtColor(faulty, cv2.COLOR_BGR2GRAY))[1] is None
    assert truth.pads  # the strip is still there, lying on the tray


def test_fault_no_strip_leaves_the_slot_white():
    (normal, truth), (faulty, fault_truth) = _pair("no_strip", make_clean=True)
    paper = sample_lab(faulty, truth.homography, [[8, 25]])[0]
    assert fault_truth.pads == {} and fault_truth.strip_product is None
    assert np.all(delta_e_2000(sample_lab(faulty, truth.homography, _pad_centres(truth)), paper) < 3)
    assert np.any(delta_e_2000(sample_lab(normal, truth.homography, _pad_centres(truth)), paper) > 10)


def test_fault_reversed_puts_pads_from_the_far_end():
    (normal, truth), (faulty, fault_truth) = _pair("reversed", make_clean=True)
    product = load_product("generic-10")
    for pad in product.pads:
        moved = np.subtract(fault_truth.pads[pad.analyte].center_mm, truth.pads[pad.analyte].center_mm)
        assert moved[0] == pytest.approx(product.strip_length_mm - 2 * pad.center_mm, abs=0.2)
        here = sample_lab(faulty, truth.homography, [fault_truth.pads[pad.analyte].center_mm])
        there = sample_lab(normal, truth.homography, [truth.pads[pad.analyte].center_mm])
        assert delta_e_2000(here, there)[0] < 2.5


def test_fault_pads_down_shows_only_the_plain_back():
    (normal, truth), (faulty, fault_truth) = _pair("pads_down", make_clean=True)
    base = hex_to_lab_d50(load_product("generic-10").strip_base_srgb)
    assert fault_truth.pads == {}
    assert np.all(delta_e_2000(sample_lab(faulty, truth.homography, _pad_centres(truth)), base) < 4)
    assert np.any(delta_e_2000(sample_lab(normal, truth.homography, _pad_centres(truth)), base) > 10)


def test_fault_wrong_strip_is_a_normal_photo_of_the_other_strip():
    spec = random_scene(np.random.default_rng(5), product="generic-10", fault="wrong_strip", resolution=SMALL)
    assert spec.strip_product == "acr-2"
    image, truth = render(spec, np.random.default_rng(0))
    assert set(truth.pads) == {"ALB", "CRE"} and truth.strip_product == "acr-2"
    honest = dataclasses.replace(spec, product="acr-2", strip_product=None, fault=None)
    honest_image, honest_truth = render(honest, np.random.default_rng(0))
    assert np.array_equal(image, honest_image) and honest_truth.expected_error is None


def test_fault_glare_blows_out_pads():
    (normal, truth), (faulty, _) = _pair("glare")

    def blown(img):
        values = [sample_srgb(img, truth.homography, [c], radius=2)[0].min() for c in _pad_centres(truth)]
        return sum(v > 0.97 for v in values)
    assert blown(normal) == 0 and blown(faulty) >= 2


def test_fault_exposure():
    (normal, truth), (dark, _) = _pair("too_dark")
    paper = [[8, 25], [70, 3], [130, 25]]
    dark_level, normal_level = (sample_srgb(img, truth.homography, paper).mean() for img in (dark, normal))
    assert dark_level < 0.35 * normal_level
    (normal, truth), (bright, _) = _pair("overexposed")
    light = paper + [p.center_mm for p in CARD.patches if p.role == "neutral" and p.lab_d50[0] > 85]
    assert np.all(sample_srgb(bright, truth.homography, light).min(1) > 0.97)
    assert not np.any(sample_srgb(normal, truth.homography, light).min(1) > 0.97)
    lo, hi = _card_box(truth)
    assert (bright[lo[1]:hi[1], lo[0]:hi[0]].min(2) >= 250).mean() > 0.5


def test_fault_blurred_loses_detail():
    (normal, truth), (faulty, _) = _pair("blurred")
    lo, hi = _card_box(truth)

    def sharpness(img):
        grey = cv2.cvtColor(img[lo[1]:hi[1], lo[0]:hi[0]], cv2.COLOR_BGR2GRAY)
        return cv2.Laplacian(grey, cv2.CV_64F).var()
    assert sharpness(faulty) < 0.2 * sharpness(normal)


def test_fault_out_of_gamut_pad_is_far_from_its_chart():
    (_, truth), (faulty, fault_truth) = _pair("out_of_gamut", make_clean=True)
    assert fault_truth.expected_error is None and len(fault_truth.out_of_gamut_pads) == 1
    analyte = fault_truth.out_of_gamut_pads[0]
    assert fault_truth.pads[analyte].t is None
    lab = sample_lab(faulty, truth.homography, [fault_truth.pads[analyte].center_mm])[0]
    chart = load_product("generic-10").pad(analyte).level_lab
    assert delta_e_2000(lab[None], chart).min() > 12
