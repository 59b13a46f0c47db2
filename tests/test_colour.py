import numpy as np
import pytest

from calibration.colour import (delta_e_2000, hex_to_lab_d50, hex_to_srgb, lab_d50_to_srgb, lab_to_xyz,
                                srgb_to_lab_d50, xyz_to_lab)

# Pairs and expected differences from Sharma, Wu & Dalal (2005), the CIEDE2000 reference test data.
SHARMA = [
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, -1.3802, -84.2814), (50.0, 0.0, -82.7485), 1.0),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((50.0, 2.5, 0.0), (50.0, 3.2592, 0.335), 1.0),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((22.7233, 20.0904, -46.694), (23.0331, 14.973, -42.5619), 2.0373),
    ((90.8027, -2.0831, 1.441), (91.1528, -1.6435, 0.0447), 1.4441),
    ((2.0776, 0.0795, -1.135), (0.9033, -0.0636, -0.5514), 0.9082),
]


@pytest.mark.parametrize("lab1,lab2,expected", SHARMA)
def test_ciede2000_matches_reference_pairs(lab1, lab2, expected):
    assert delta_e_2000(np.array(lab1), np.array(lab2)) == pytest.approx(expected, abs=1e-4)
    assert delta_e_2000(np.array(lab2), np.array(lab1)) == pytest.approx(expected, abs=1e-4)


def test_ciede2000_broadcasts_over_leading_axes():
    a = np.array([l1 for l1, _, _ in SHARMA])
    b = np.array([l2 for _, l2, _ in SHARMA])
    assert np.allclose(delta_e_2000(a, b), [e for _, _, e in SHARMA], atol=1e-4)
    assert delta_e_2000(a[:, None, :], b[None, :, :]).shape == (len(a), len(b))


def test_lab_xyz_and_srgb_round_trips():
    rng = np.random.default_rng(0)
    rgb = rng.random((200, 3))
    assert np.allclose(lab_d50_to_srgb(srgb_to_lab_d50(rgb)), rgb, atol=1e-9)
    lab = srgb_to_lab_d50(rgb)
    assert np.allclose(xyz_to_lab(lab_to_xyz(lab)), lab, atol=1e-9)


def test_white_and_black_land_on_the_lab_axis():
    assert np.allclose(hex_to_lab_d50("FFFFFF"), [100, 0, 0], atol=0.01)
    assert np.allclose(hex_to_lab_d50("000000"), [0, 0, 0], atol=1e-9)


def test_card_references_agree_with_their_printed_srgb(card):
    """The card file's CIELAB (D50) references are its sRGB colours adapted to D50 with Bradford."""
    for patch in card.patches:
        assert delta_e_2000(hex_to_lab_d50(patch.srgb), np.array(patch.lab_d50)) < 0.05, patch.id


def test_hex_parsing_rejects_garbage():
    assert np.allclose(hex_to_srgb("#FF8000"), [1.0, 128 / 255, 0.0])
    with pytest.raises(ValueError):
        hex_to_srgb("FFF")
