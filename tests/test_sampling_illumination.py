import numpy as np
import pytest

from calibration import illumination, sampling
from calibration.colour import linear_to_srgb
from calibration.detect import CardPose
from calibration.errors import ReadError


def test_square_grid_covers_the_region_about_one_point_per_pixel():
    grid = sampling.square_grid(np.array([[10.0, 20.0]]), 1.5, px_per_mm=4.0)
    assert grid.shape == (1, 144, 2)
    assert np.allclose(grid[0].min(0), [8.5, 18.5]) and np.allclose(grid[0].max(0), [11.5, 21.5])


def test_sample_reads_through_the_homography_and_returns_rgb():
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:60, 100:140] = (10, 20, 200)                     # BGR: red
    pose = CardPose(np.array([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 1]]), 10.0, 4, 0.0)  # 10 px per mm
    values = sampling.sample(image, pose, sampling.square_grid(np.array([[12.0, 5.0]]), 0.5, 10.0))
    assert np.allclose(values[0], np.array([200, 20, 10]) / 255, atol=1e-6)


def test_highlights_and_clipped_pixels_do_not_move_the_median():
    rng = np.random.default_rng(0)
    pad = np.array([0.55, 0.40, 0.30]) + rng.normal(0, 0.01, (1, 400, 3))
    with_glare = pad.copy()
    with_glare[0, :120] = 1.0                                  # 30 % blown out
    with_glare[0, 120:160] = pad[0, 120:160] + 0.3             # a bright sheen, not clipped
    clean = sampling.robust_colours(pad.astype(np.float32))
    glared = sampling.robust_colours(with_glare.astype(np.float32))
    assert np.abs(glared.rgb - clean.rgb).max() < 0.01
    assert glared.specular[0] == pytest.approx(0.4, abs=0.02)
    assert glared.clipped[0] == pytest.approx(0.3, abs=0.01)
    assert clean.specular[0] < 0.02


def _white(card, gain, *, glare_at=None, shadow_x=None, glare_peak=2.0, glare_mm=5.0):
    points = illumination.white_points(card)
    x, y = points[:, 0] / card.size_mm[0], points[:, 1] / card.size_mm[1]
    colour = np.array([1.0, 0.9, 0.7])
    light = gain * (1.0 - 0.25 * x + 0.1 * y * y)[:, None] * colour
    if glare_at is not None:      # the light's own colour, added
        d = np.linalg.norm(points - glare_at, axis=1)
        light = light + glare_peak * gain * np.exp(-0.5 * (d / glare_mm) ** 2)[:, None] * colour
    if shadow_x is not None:
        light = np.where((points[:, 0] > shadow_x)[:, None], light * 0.6, light)
    encoded = linear_to_srgb(np.clip(light, 0, 1))
    return encoded, (encoded >= sampling.CLIPPED).astype(float)   # per channel


def test_illumination_field_follows_a_smooth_gradient(card):
    rgb, clipped = _white(card, 0.7)
    field = illumination.fit_illumination(card, rgb, clipped)
    assert field.rms_residual < 0.01 and not field.white_clipped and field.glare_fraction == 0
    at = np.array([[20.0, 25.0], [120.0, 25.0]])
    expected = 0.7 * (1.0 - 0.25 * at[:, :1] / 140 + 0.1 * 0.25) * np.array([1.0, 0.9, 0.7])
    assert np.allclose(field.white_at(at), expected, rtol=0.02)
    # a patch of 50 % grey seen there comes out at 0.5 relative to the local white
    assert np.allclose(field.relative(linear_to_srgb(0.5 * expected), at), 0.5, rtol=0.02)


def test_a_highlight_is_mapped_as_glare_not_fitted_as_light(card):
    rgb, clipped = _white(card, 0.7, glare_at=np.array([60.0, 20.0]))
    field = illumination.fit_illumination(card, rgb, clipped)
    assert field.glare_near(np.array([[60.0, 25.0]]))[0]
    assert not field.glare_near(np.array([[125.0, 25.0]]))[0]
    assert not field.white_clipped          # clipping inside a highlight is not saturated paper
    assert np.allclose(field.white_at(np.array([[60.0, 25.0]])), 0.7 * np.array([1.0, 0.9, 0.7]) *
                       (1.0 - 0.25 * 60 / 140 + 0.1 * 0.25), rtol=0.03)


def test_a_faint_highlight_is_mapped_as_lifted_white_not_as_glare(card):
    """White raised by a fifth in every channel around one spot: too faint to call glare on its
    own, but kept as a map, so a colour correction that fails under it can say why."""
    rgb, clipped = _white(card, 0.5, glare_at=np.array([60.0, 20.0]), glare_peak=0.2, glare_mm=4.0)
    field = illumination.fit_illumination(card, rgb, clipped)
    assert field.glare_fraction == 0
    assert field.lifted_near(np.array([[60.0, 22.0]]))[0]
    assert not field.lifted_near(np.array([[125.0, 25.0]]))[0]


def test_a_shadow_across_the_card_fails_calibration(card):
    rgb, clipped = _white(card, 0.7, shadow_x=90.0)
    with pytest.raises(ReadError) as err:
        illumination.fit_illumination(card, rgb, clipped)
    assert err.value.code == "calibration_failed"


def test_white_saturated_in_every_channel_is_overexposed(card):
    rgb, clipped = _white(card, 1.6)
    with pytest.raises(ReadError) as err:
        illumination.fit_illumination(card, rgb, clipped)
    assert err.value.code == "overexposed"


def test_one_channel_clipped_on_the_white_still_maps_the_light(card):
    """A fixed daylight white balance under a warm lamp lifts red until it clips on the card's
    white: green and blue still map the light, red borrows their shape, and nothing is glare."""
    points = illumination.white_points(card)
    x = points[:, 0] / card.size_mm[0]
    light = (0.8 * (1.0 - 0.3 * x))[:, None] * np.array([1.6, 0.9, 0.6])
    encoded = linear_to_srgb(np.clip(light, 0, 1))
    field = illumination.fit_illumination(card, encoded, (encoded >= sampling.CLIPPED).astype(float))
    assert field.white_clipped and field.glare_fraction == 0
    at = np.array([[20.0, 25.0], [120.0, 25.0]])
    truth = (0.8 * (1.0 - 0.3 * at[:, :1] / 140)) * np.array([1.6, 0.9, 0.6])
    white = field.white_at(at)
    assert np.allclose(white[:, 1:], truth[:, 1:], rtol=0.02)
    # red's level is unknown (only a lower bound), but its fall-off across the card is the light's
    assert white[0, 0] / white[1, 0] == pytest.approx(truth[0, 0] / truth[1, 0], rel=0.02)


def test_white_tinted_by_a_second_light_is_not_glare(card):
    """Window light warming one end of the card: a colour change, not a highlight."""
    points = illumination.white_points(card)
    w = (points[:, 0] / card.size_mm[0])[:, None]
    light = 0.6 * ((1 - w) * np.array([1.0, 0.95, 0.9]) + w * np.array([1.25, 0.95, 0.65]))
    encoded = linear_to_srgb(light)
    field = illumination.fit_illumination(card, encoded, np.zeros_like(encoded))
    assert field.glare_fraction == 0 and not field.white_clipped
    assert np.allclose(field.white_at(points), light, rtol=0.02)


def test_a_white_clipped_by_the_isp_below_255_is_recognised_as_saturated():
    """After white balance and the colour matrix an ISP may clip highlights to a flat grey (here 220
    of 255): no value reaches the clip level, but saturated paper has lost its noise and its light
    fall-off; real paper at the same level keeps both."""
    from calibration.observe import _saturated_plateau
    n = 200
    flat = sampling.RegionColours(np.full((n, 3), 220 / 255), np.zeros(n), np.zeros(n), np.zeros(n), np.zeros((n, 3)))
    assert _saturated_plateau(flat)
    rng = np.random.default_rng(0)
    falloff = np.linspace(0.75, 0.86, n)[:, None] * np.ones(3)
    lit = sampling.RegionColours(falloff, np.zeros(n), np.zeros(n), rng.uniform(1, 3, n) / 255, np.zeros((n, 3)))
    assert not _saturated_plateau(lit)


def test_evenly_lit_paper_whose_noise_jpeg_smoothed_away_is_not_called_saturated():
    """Paper under perfectly even light (a diffuser, lens shading corrected) at 0.6 of clipping,
    JPEG having smoothed its noise: nearly as flat and quiet as a clipped white, but tinted by the
    light where an ISP clips to a grey, or with a trace of noise where white balance was exact."""
    from calibration.observe import _saturated_plateau
    n = 200
    tinted = sampling.RegionColours(np.tile(np.array([202, 195, 187]) / 255, (n, 1)), np.zeros(n), np.zeros(n),
                                    np.zeros(n), np.zeros((n, 3)))
    assert not _saturated_plateau(tinted)
    # white-balanced to a grey, but clipped pixels are identical and paper keeps a trace of noise
    neutral = sampling.RegionColours(np.tile(np.array([203, 202, 201]) / 255, (n, 1)), np.zeros(n), np.zeros(n),
                                     np.full(n, 0.67 / 255), np.zeros((n, 3)))
    assert not _saturated_plateau(neutral)


def test_an_evenly_lit_world_photo_well_below_clipping_is_read(card):
    import dataclasses
    from calibration.observe import StripObserver
    from calibration.specs import load_product
    from simulator import scene
    from simulator.ceiling import white_clip_exposure
    from simulator.world import random_world_scene
    rng = np.random.default_rng(8011)    # one of the seeds that was refused "overexposed"
    spec = random_world_scene(rng, product="generic-10", resolution=(1456, 1088))
    even = dataclasses.replace(spec, light_gradient=(0.0, 0.0), light_falloff=(0.0, 70.0, 25.0), vignetting=0.0,
                               second_illuminant=None)
    even = dataclasses.replace(even, exposure=0.6 * white_clip_exposure(even))
    observation = StripObserver(card, load_product("generic-10")).observe(scene.photograph(even, rng)[0])
    assert observation.qc["white_saturated"] is False


def test_a_channel_clipped_over_most_of_the_white_borrows_the_others_shape(card):
    """A daylight preset under a warm lamp lifts red until it clips over 60 % of the card's white
    (the bright end of a gradient): fitted on its own remaining 40 %, red's surface would be
    extrapolated over the rest of the card; the light falls off alike in every channel, so red
    takes the others' shape, levelled on its unclipped samples."""
    points = illumination.white_points(card)
    x, y = points[:, 0] / card.size_mm[0], points[:, 1] / card.size_mm[1]
    shape = np.exp(0.5 * (x - 0.5) + 0.15 * np.sin(3 * y))    # a smooth light outside the surface's terms
    light = shape[:, None] * np.array([1.0, 0.55, 0.45])
    light *= 1.0 / np.quantile(light[:, 0], 0.4)               # red reaches the clip level over 60 %
    noise = np.random.default_rng(3).normal(0.0, 0.004, light.shape)
    encoded = linear_to_srgb(np.clip(light * (1 + noise), 0, 1))
    clipped = (encoded >= sampling.CLIPPED).astype(float)
    assert 0.5 < clipped[:, 0].mean() < 0.7 and not clipped[:, 1:].any()
    field = illumination.fit_illumination(card, encoded, clipped)
    ratio = field.white_at(points)[:, 0] / light[:, 0]
    assert ratio.max() / ratio.min() < 1.06        # red's light follows the card's, at one level
