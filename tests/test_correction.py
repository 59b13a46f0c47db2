import numpy as np
import pytest

from calibration.colour import delta_e_2000, lab_to_xyz
from calibration.correction import fit_correction
from calibration.errors import ReadError


def _camera(card, gamma=(1 / 2.2, 1 / 2.0, 1 / 2.4), crosstalk=0.12, exposure=0.8):
    """A made-up camera: channel crosstalk, per-channel gamma, an exposure; output relative to
    what it gives for the card's white."""
    xyz = lab_to_xyz(card.patch_lab)
    m = np.array([[3.1, -1.5, -0.5], [-0.95, 1.9, 0.04], [0.06, -0.2, 1.05]])
    m = (1 - crosstalk) * m + crosstalk * m.mean(axis=0)
    white = np.clip(np.array([0.9642, 1.0, 0.8252]) @ m.T, 1e-3, None)
    lin = np.clip(xyz @ m.T, 1e-4, None) / white
    return (exposure * lin) ** np.array(gamma) / exposure ** np.array(gamma)


def test_correction_recovers_card_colours_with_a_small_held_out_residual(card):
    neutral = np.array([p.role == "neutral" for p in card.patches])
    rel = _camera(card)
    correction = fit_correction(rel, card.patch_lab, neutral)
    fitted = delta_e_2000(correction.to_lab(rel), card.patch_lab)
    assert fitted.mean() < 1.5
    # the held-out figure is honest: never better than the fit on its own training patches
    assert correction.residual_de00 >= fitted.mean() - 1e-9
    assert correction.residual_de00 < 3.0


def test_correction_does_not_depend_on_the_white_level(card):
    """Colours relative to a paper that is 60 % as bright (dim paper, or a saturated white taken
    as 1) are corrected as well: the fit never assumes the paper's absolute colour."""
    neutral = np.array([p.role == "neutral" for p in card.patches])
    rel = _camera(card)
    a = fit_correction(rel, card.patch_lab, neutral)
    b = fit_correction(rel * 0.6 ** -(1 / 2.2), card.patch_lab, neutral)
    assert abs(a.residual_de00 - b.residual_de00) < 0.3
    assert np.allclose(a.to_lab(rel[:5]), b.to_lab(rel[:5] * 0.6 ** -(1 / 2.2)), atol=1.0)


def test_scrambled_references_fail_calibration(card):
    """A card whose patches do not match their references (wrong card file, faded print) is refused."""
    neutral = np.array([p.role == "neutral" for p in card.patches])
    rel = _camera(card)
    order = np.random.default_rng(3).permutation(len(rel))
    with pytest.raises(ReadError) as err:
        fit_correction(rel[order], card.patch_lab, neutral[order])
    assert err.value.code == "calibration_failed"
