"""Colour maths the read path needs: sRGB <-> CIE XYZ <-> CIELAB (D50) and CIEDE2000.

The card's references are CIELAB under D50 (the print industry's white) while the strip chart is
given as sRGB (D65), so chart colours are brought to D50 with the Bradford transform. Every
function is vectorised over leading axes: pass (..., 3) arrays.
"""
from __future__ import annotations

import numpy as np

# IEC 61966-2-1 linear sRGB -> XYZ (D65).
SRGB_TO_XYZ_D65 = np.array([[0.4124564, 0.3575761, 0.1804375],
                            [0.2126729, 0.7151522, 0.0721750],
                            [0.0193339, 0.1191920, 0.9503041]])
XYZ_D65_TO_SRGB = np.linalg.inv(SRGB_TO_XYZ_D65)
WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
WHITE_D50 = np.array([0.96422, 1.0, 0.82521])

_BRADFORD = np.array([[0.8951, 0.2664, -0.1614],
                      [-0.7502, 1.7135, 0.0367],
                      [0.0389, -0.0685, 1.0296]])


def chromatic_adaptation(src_white: np.ndarray, dst_white: np.ndarray) -> np.ndarray:
    """Bradford von-Kries matrix taking XYZ seen under `src_white` to `dst_white`."""
    cone_src = _BRADFORD @ src_white
    cone_dst = _BRADFORD @ dst_white
    return np.linalg.inv(_BRADFORD) @ np.diag(cone_dst / cone_src) @ _BRADFORD


D65_TO_D50 = chromatic_adaptation(WHITE_D65, WHITE_D50)
D50_TO_D65 = np.linalg.inv(D65_TO_D50)


def hex_to_srgb(hex_code: str) -> np.ndarray:
    """'F7F7F2' -> array([0.969, 0.969, 0.949]) (non-linear sRGB in 0..1)."""
    code = hex_code.lstrip("#")
    if len(code) != 6:
        raise ValueError(f"not an sRGB hex colour: {hex_code!r}")
    return np.array([int(code[i:i + 2], 16) for i in (0, 2, 4)], dtype=float) / 255.0


def srgb_to_linear(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return np.where(v <= 0.04045, v / 12.92, ((np.clip(v, 0.04045, None) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(v: np.ndarray) -> np.ndarray:
    v = np.clip(np.asarray(v, dtype=float), 0.0, None)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)


def xyz_to_lab(xyz: np.ndarray, white: np.ndarray = WHITE_D50) -> np.ndarray:
    t = np.asarray(xyz, dtype=float) / white
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(t > eps, np.cbrt(np.maximum(t, eps)), (kappa * t + 16) / 116)
    return np.stack([116 * f[..., 1] - 16,
                     500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_xyz(lab: np.ndarray, white: np.ndarray = WHITE_D50) -> np.ndarray:
    lab = np.asarray(lab, dtype=float)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    eps, kappa = 216 / 24389, 24389 / 27
    t = np.where(f ** 3 > eps, f ** 3, (116 * f - 16) / kappa)
    t[..., 1] = np.where(lab[..., 0] > kappa * eps, fy ** 3, lab[..., 0] / kappa)
    return t * white


def srgb_to_xyz_d50(srgb: np.ndarray) -> np.ndarray:
    return srgb_to_linear(srgb) @ SRGB_TO_XYZ_D65.T @ D65_TO_D50.T


def srgb_to_lab_d50(srgb: np.ndarray) -> np.ndarray:
    """Non-linear sRGB (0..1) -> CIELAB relative to D50, via Bradford adaptation."""
    return xyz_to_lab(srgb_to_xyz_d50(srgb))


def lab_d50_to_srgb(lab: np.ndarray) -> np.ndarray:
    return linear_to_srgb(lab_to_xyz(lab) @ D50_TO_D65.T @ XYZ_D65_TO_SRGB.T)


def hex_to_lab_d50(hex_code: str) -> np.ndarray:
    return srgb_to_lab_d50(hex_to_srgb(hex_code))


def delta_e_2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (Sharma, Wu & Dalal 2005), broadcasting over leading axes."""
    lab1, lab2 = np.broadcast_arrays(np.asarray(lab1, float), np.asarray(lab2, float))
    L1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    L2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    c_bar7 = ((np.hypot(a1, b1) + np.hypot(a2, b2)) / 2) ** 7
    g = 0.5 * (1 - np.sqrt(c_bar7 / (c_bar7 + 25.0 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    dLp, dCp = L2 - L1, c2p - c1p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(c1p * c2p == 0, 0.0, dh)
    dHp = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    Lbp, Cbp = (L1 + L2) / 2, (c1p + c2p) / 2
    hsum = h1p + h2p
    hbp = np.where(np.abs(h1p - h2p) > 180,
                   np.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2), hsum / 2)
    hbp = np.where(c1p * c2p == 0, hsum, hbp)
    t = (1 - 0.17 * np.cos(np.radians(hbp - 30)) + 0.24 * np.cos(np.radians(2 * hbp))
         + 0.32 * np.cos(np.radians(3 * hbp + 6)) - 0.20 * np.cos(np.radians(4 * hbp - 63)))
    d_theta = 30 * np.exp(-(((hbp - 275) / 25) ** 2))
    cbp7 = Cbp ** 7
    rc = 2 * np.sqrt(cbp7 / (cbp7 + 25.0 ** 7))
    sl = 1 + 0.015 * (Lbp - 50) ** 2 / np.sqrt(20 + (Lbp - 50) ** 2)
    sc = 1 + 0.045 * Cbp
    sh = 1 + 0.015 * Cbp * t
    rt = -np.sin(np.radians(2 * d_theta)) * rc
    return np.sqrt((dLp / sl) ** 2 + (dCp / sc) ** 2 + (dHp / sh) ** 2
                   + rt * (dCp / sc) * (dHp / sh))
