"""Spectral colour for the scene simulator: observer, lights, cameras and reflectances.

A reader that is only ever shown RGB arithmetic learns RGB arithmetic. Real failures come from
spectra: a fluorescent tube's mercury lines or a camera's red channel seeing blue make two colours
that match under daylight differ under another light (metamerism). So everything the simulator
draws is a reflectance spectrum, lit by a light's spectrum and seen through a camera's spectral
sensitivities. All spectra are sampled on `WAVELENGTHS` (380-730 nm, 5 nm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from calibration.colour import (D50_TO_D65, SRGB_TO_XYZ_D65, WHITE_D50, WHITE_D65, hex_to_srgb,
                                lab_to_xyz, linear_to_srgb, srgb_to_linear, xyz_to_lab)

WAVELENGTHS = np.arange(380.0, 731.0, 5.0)
STEP_NM = 5.0

# CIE 1931 2-degree observer, multi-lobe piecewise-Gaussian fit of Wyman, Sloan & Shirley (2013):
# per lobe (weight, mean nm, sigma below the mean, sigma above it).
_CMF_LOBES = (
    ((1.056, 599.8, 37.9, 31.0), (0.362, 442.0, 16.0, 26.7), (-0.065, 501.1, 20.4, 26.2)),
    ((0.821, 568.8, 46.9, 40.5), (0.286, 530.9, 16.3, 31.1)),
    ((1.217, 437.0, 11.8, 36.0), (0.681, 459.0, 26.0, 13.8)),
)


def _lobe(mean: float, sigma_lo: float, sigma_hi: float) -> np.ndarray:
    sigma = np.where(WAVELENGTHS < mean, sigma_lo, sigma_hi)
    return np.exp(-0.5 * ((WAVELENGTHS - mean) / sigma) ** 2)


CMF = np.stack([sum(w * _lobe(m, lo, hi) for w, m, lo, hi in lobes) for lobes in _CMF_LOBES], axis=1)

# --- lights ------------------------------------------------------------------------------------

# CIE daylight basis S0, S1, S2 (CIE 15), 380-730 nm at 10 nm.
_DAYLIGHT_BASIS_10NM = np.array([
    (63.4, 38.5, 3.0), (65.8, 35.0, 1.2), (94.8, 43.4, -1.1), (104.8, 46.3, -0.5),
    (105.9, 43.9, -0.7), (96.8, 37.1, -1.2), (113.9, 36.7, -2.6), (125.6, 35.9, -2.9),
    (125.5, 32.6, -2.8), (121.3, 27.9, -2.6), (121.3, 24.3, -2.6), (113.5, 20.1, -1.8),
    (113.1, 16.2, -1.5), (110.8, 13.2, -1.3), (106.5, 8.6, -1.2), (108.8, 6.1, -1.0),
    (105.3, 4.2, -0.5), (104.4, 1.9, -0.3), (100.0, 0.0, 0.0), (96.0, -1.6, 0.2),
    (95.1, -3.5, 0.5), (89.1, -3.5, 2.1), (90.5, -5.8, 3.2), (90.3, -7.2, 4.1),
    (88.4, -8.6, 4.7), (84.0, -9.5, 5.1), (85.1, -10.9, 6.7), (81.9, -10.7, 7.3),
    (82.6, -12.0, 8.6), (84.9, -14.0, 9.8), (81.3, -13.6, 10.2), (71.9, -12.0, 8.3),
    (74.3, -13.3, 9.6), (76.4, -12.9, 8.5), (63.3, -10.6, 7.0), (71.7, -11.6, 7.6),
])
_PLANCK_C2 = 1.4388e-2        # second radiation constant, m K (the value CIE A and D are built on)
_C2_REVISION = 1.4388 / 1.4380  # D65 and D50 are nominally 6500 K and 5000 K on the old c2


def daylight(cct: float) -> np.ndarray:
    """CIE daylight D at correlated colour temperature `cct` (4000-25000 K) from its S0/S1/S2 basis."""
    t = float(cct)
    if t <= 7000:
        x = -4.6070e9 / t ** 3 + 2.9678e6 / t ** 2 + 0.09911e3 / t + 0.244063
    else:
        x = -2.0064e9 / t ** 3 + 1.9018e6 / t ** 2 + 0.24748e3 / t + 0.237040
    y = -3.000 * x ** 2 + 2.870 * x - 0.275
    denom = 0.0241 + 0.2562 * x - 0.7341 * y
    m1 = (-1.3515 - 1.7703 * x + 5.9114 * y) / denom
    m2 = (0.0300 - 31.4424 * x + 30.0717 * y) / denom
    basis = np.stack([np.interp(WAVELENGTHS, np.arange(380.0, 731.0, 10.0), col)
                      for col in _DAYLIGHT_BASIS_10NM.T], axis=1)
    return basis @ np.array([1.0, m1, m2])


def planck(cct: float) -> np.ndarray:
    """Black-body radiator (relative), e.g. CIE A = planck(2856)."""
    wl_m = WAVELENGTHS * 1e-9
    return 1.0 / (wl_m ** 5 * np.expm1(_PLANCK_C2 / (wl_m * cct)))


_erf = np.vectorize(math.erf)


def band(centre_nm: float, fwhm_nm: float) -> np.ndarray:
    """Unit-power Gaussian emission band, integrated over each 5 nm bin so narrow lines keep their
    energy however they fall between samples."""
    sigma = fwhm_nm / (2 * math.sqrt(2 * math.log(2)))
    edges = np.append(WAVELENGTHS - STEP_NM / 2, WAVELENGTHS[-1] + STEP_NM / 2)
    cdf = 0.5 * (1 + _erf((edges - centre_nm) / (sigma * math.sqrt(2))))
    return np.diff(cdf)


def lines(*peaks: tuple[float, float, float]) -> np.ndarray:
    """Sum of bands given as (centre nm, fwhm nm, power)."""
    return sum(power * band(c, w) for c, w, power in peaks)


def spectrum_xyz(spd: np.ndarray) -> np.ndarray:
    return spd @ CMF * STEP_NM


def _xy(xyz: np.ndarray) -> np.ndarray:
    return xyz[:2] / xyz.sum()


def mix_to_cct(components: list[np.ndarray], cct: float) -> np.ndarray:
    """Weights three emission components so the mixture sits on the Planckian locus at `cct`, as
    lamp makers blend phosphors to hit a nominal white; raises if no positive blend exists."""
    x, y = _xy(spectrum_xyz(planck(cct)))
    xyz = np.array([spectrum_xyz(c / c.sum()) for c in components])  # (3 components, XYZ)
    # chromaticity (x, y) <=> X - x S = 0 and Y - y S = 0, linear in the weights
    rows = np.stack([xyz[:, 0] - x * xyz.sum(1), xyz[:, 1] - y * xyz.sum(1)])
    weights = np.linalg.svd(rows)[2][-1]
    weights = weights / weights.sum()
    if np.any(weights <= 0):
        raise ValueError(f"components cannot reach {cct} K")
    return sum(w * c / c.sum() for w, c in zip(weights, components))


_MERCURY_LINES = lines((404.7, 2.0, 0.5), (435.8, 2.0, 1.0), (546.1, 2.0, 1.2), (578.0, 3.0, 0.35))
_MERCURY_SHARE = 0.08  # of a halophosphate tube's visible power


def _cool_white_fluorescent() -> np.ndarray:
    """F2-like: broad halophosphate emission (Sb3+ blue, Mn2+ orange, a red tail) plus the mercury
    discharge's own lines."""
    def with_mercury(emission: np.ndarray) -> np.ndarray:
        return ((1 - _MERCURY_SHARE) * emission / emission.sum()
                + _MERCURY_SHARE * _MERCURY_LINES / _MERCURY_LINES.sum())
    return mix_to_cct([with_mercury(band(470.0, 100.0)), with_mercury(band(575.0, 70.0)),
                       with_mercury(band(620.0, 60.0))], 4230.0)


def _triband_fluorescent() -> np.ndarray:
    """F11-like tri-phosphor: narrow Tb3+ green (545) and Eu3+ red (611) lines, blue near 435-450."""
    blue = band(450.0, 45.0) + lines((404.7, 2.0, 0.15), (435.8, 2.0, 0.6))
    green = lines((487.0, 8.0, 0.2), (543.5, 9.0, 1.0), (585.0, 10.0, 0.12), (620.0, 8.0, 0.06))
    red = lines((593.0, 5.0, 0.15), (611.0, 4.0, 1.0), (627.0, 6.0, 0.2), (650.0, 6.0, 0.05),
                (707.0, 6.0, 0.08))
    return mix_to_cct([blue, green, red], 4000.0)


def phosphor_led(cct: float, pump_nm: float = 450.0, phosphor_nm: float = 555.0,
                 red_nm: float = 630.0) -> np.ndarray:
    """White LED: blue InGaN pump, broad YAG:Ce phosphor, nitride red phosphor, blended to `cct`."""
    return mix_to_cct([band(pump_nm, 20.0), band(phosphor_nm, 115.0), band(red_nm, 90.0)], cct)


_ILLUMINANTS = {
    "D65": lambda: daylight(6500 * _C2_REVISION),
    "D50": lambda: daylight(5000 * _C2_REVISION),
    "A": lambda: planck(2856.0),
    "F2": _cool_white_fluorescent,
    "F11": _triband_fluorescent,
    "LED_cool": lambda: phosphor_led(6500.0, pump_nm=452.0, phosphor_nm=550.0, red_nm=620.0),
    "LED_warm": lambda: phosphor_led(3000.0, pump_nm=447.0, phosphor_nm=560.0, red_nm=635.0),
    "LED_reader": lambda: phosphor_led(4000.0, pump_nm=450.0, phosphor_nm=555.0, red_nm=630.0),
}


def illuminant_names() -> list[str]:
    return list(_ILLUMINANTS)


def register_illuminant(name: str, spd) -> None:
    """Add a light: its power sampled on WAVELENGTHS (e.g. a measured lamp), or a function making it."""
    _ILLUMINANTS[name] = spd if callable(spd) else (lambda: np.array(spd, float))
    illuminant.cache_clear()


# Measured CIE illuminants that are real lamps (colour-science's SDS_ILLUMINANTS), addressed "cie:<key>".
CIE_LIGHTS = (("A",) + tuple(f"FL{i}" for i in range(1, 13)) + tuple(f"FL3.{i}" for i in range(1, 16))
              + tuple(f"HP{i}" for i in range(1, 6)) + tuple(f"LED-B{i}" for i in range(1, 6))
              + ("LED-BH1", "LED-RGB1", "LED-V1", "LED-V2"))
# low-pressure sodium: the 589.0/589.6 nm doublet and a faint continuum
_SODIUM = lines((589.0, 1.0, 1.0), (589.6, 1.0, 0.5), (568.8, 2.0, 0.01), (498.3, 2.0, 0.004))


def _resampled(wavelengths, values) -> np.ndarray:
    """Measured data (any sampling) on WAVELENGTHS, by linear interpolation, zero outside its range."""
    return np.interp(WAVELENGTHS, np.asarray(wavelengths, float), np.asarray(values, float), left=0.0, right=0.0)


def _cie_light(key: str) -> np.ndarray:
    if key not in CIE_LIGHTS:
        raise KeyError(f"unknown CIE light {key!r}; known: {CIE_LIGHTS}")
    import colour  # measured data: only the wide (training) simulator needs colour-science
    sd = colour.SDS_ILLUMINANTS[key]
    return _resampled(sd.wavelengths, sd.values)


def _parametric_light(name: str) -> np.ndarray:
    """Lights named by their parameters, so scenes stay small, picklable and reproducible:
    "cie:FL2", "D:<cct>", "planck:<cct>", "LED:<cct>:<pump nm>:<phosphor nm>:<red nm>", "sodium"."""
    kind, _, rest = name.partition(":")
    try:
        if kind == "cie" and rest:
            return _cie_light(rest)
        if kind == "D" and rest:
            return daylight(float(rest))
        if kind == "planck" and rest:
            return planck(float(rest))
        if kind == "LED" and rest:
            cct, pump, phosphor, red = (float(v) for v in rest.split(":"))
            return phosphor_led(cct, pump, phosphor, red)
        if name == "sodium":
            return _SODIUM
    except ValueError as exc:
        raise KeyError(f"illuminant {name!r}: {exc}") from exc
    raise KeyError(f"unknown illuminant {name!r}; known: {illuminant_names()} or cie:<CIE light>, D:<cct>, "
                   f"planck:<cct>, LED:<cct>:<pump>:<phosphor>:<red>, sodium")


@lru_cache(maxsize=None)
def illuminant(name: str) -> np.ndarray:
    """Relative spectral power of a named light (luminance 1: only its spectral shape matters)."""
    spd = _ILLUMINANTS[name]() if name in _ILLUMINANTS else _parametric_light(name)
    spd = spd / spectrum_xyz(spd)[1]
    spd.setflags(write=False)
    return spd


def correlated_colour_temperature(spd: np.ndarray) -> float:
    """McCamy's (1992) cubic approximation, adequate for 2000-12500 K."""
    x, y = _xy(spectrum_xyz(spd))
    n = (x - 0.3320) / (0.1858 - y)
    return float(449 * n ** 3 + 3525 * n ** 2 + 6823.3 * n + 5520.33)

# --- reflectances --------------------------------------------------------------------------------

_U = (WAVELENGTHS - WAVELENGTHS[0]) / (WAVELENGTHS[-1] - WAVELENGTHS[0])  # for conditioning
_FIT_TOLERANCE_LAB = 1e-4
_FIT_MAX_ITER = 300


def sigmoid_quadratic(coeffs: np.ndarray) -> np.ndarray:
    """Jakob & Hanika (2019) reflectance: a sigmoid of a quadratic in wavelength. Smooth, bounded
    in (0, 1) and able to reach any sRGB colour: the kind of spectrum dyes and inks produce."""
    x = coeffs[0] * _U ** 2 + coeffs[1] * _U + coeffs[2]
    return 0.5 + x / (2 * np.sqrt(1 + x * x))


def lab_under_d65(reflectance: np.ndarray) -> np.ndarray:
    """CIELAB of a reflectance seen under D65 by the CIE observer, relative to D65 white."""
    spd = illuminant("D65")
    xyz = (reflectance * spd) @ CMF / (spd @ CMF)
    return xyz_to_lab(xyz * WHITE_D65, WHITE_D65)


def _fit_sigmoid_quadratic(target_lab: np.ndarray) -> np.ndarray:
    """Levenberg-Marquardt (damped Gauss-Newton) on the three coefficients, residual in CIELAB."""
    coeffs, damping, step = np.zeros(3), 1e-3, 1e-6
    residual = lab_under_d65(sigmoid_quadratic(coeffs)) - target_lab
    for _ in range(_FIT_MAX_ITER):
        if np.abs(residual).max() < _FIT_TOLERANCE_LAB:
            break
        jac = np.stack([(lab_under_d65(sigmoid_quadratic(coeffs + step * e)) - target_lab - residual)
                        / step for e in np.eye(3)], axis=1)
        normal = jac.T @ jac
        delta = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-9), -jac.T @ residual)
        trial = lab_under_d65(sigmoid_quadratic(coeffs + delta)) - target_lab
        if trial @ trial < residual @ residual:
            coeffs, residual, damping = coeffs + delta, trial, damping / 3
        else:
            damping *= 4
    return coeffs


@lru_cache(maxsize=4096)
def _reflectance_for_lab(lab_key: tuple[float, float, float]) -> np.ndarray:
    reflectance = sigmoid_quadratic(_fit_sigmoid_quadratic(np.array(lab_key)))
    reflectance.setflags(write=False)
    return reflectance


def _as_srgb(colour) -> np.ndarray:
    return hex_to_srgb(colour) if isinstance(colour, str) else np.asarray(colour, float)


def srgb_lab_d65(colour) -> np.ndarray:
    """CIELAB (D65 white) of an sRGB colour given as hex or 0..1 triple."""
    return xyz_to_lab(srgb_to_linear(_as_srgb(colour)) @ SRGB_TO_XYZ_D65.T, WHITE_D65)


def reflectance_from_lab_d65(lab) -> np.ndarray:
    """Smooth reflectance whose colour under D65 is `lab` (cached per colour)."""
    return _reflectance_for_lab(tuple(np.round(np.asarray(lab, float), 6)))


def reflectance_from_srgb(colour) -> np.ndarray:
    """Smooth reflectance in (0, 1) whose colour under D65 and the CIE observer is the sRGB colour
    (hex string or 0..1 triple)."""
    if isinstance(colour, str):
        return _reflectance_for_hex(colour.lstrip("#").upper())
    return reflectance_from_lab_d65(srgb_lab_d65(colour))


@lru_cache(maxsize=4096)
def _reflectance_for_hex(hex_code: str) -> np.ndarray:
    return reflectance_from_lab_d65(srgb_lab_d65(hex_code))


def reflectance_from_lab_d50(lab_d50) -> np.ndarray:
    """Reflectance for a CIELAB (D50) reference, as a card measured by a technician is given."""
    xyz_d65 = lab_to_xyz(np.asarray(lab_d50, float), WHITE_D50) @ D50_TO_D65.T
    return reflectance_from_lab_d65(xyz_to_lab(xyz_d65, WHITE_D65))


# --- dyes and inks unlike each other ---------------------------------------------------------
# The smooth reflectances above give a card patch and a reagent pad of the same colour the same
# spectrum, which hides metamerism. These give each its own physics: a reagent pad is paper dyed by
# the absorption bands of its chemistry; a card patch is printed process inks on paper.

# (centre nm, sigma nm) absorption bands of each pad's reagent chemistry
DYE_BANDS = {
    "PRO": ((600.0, 35.0), (430.0, 30.0)),                 # tetrabromophenol blue, base and acid forms
    "ALB": ((600.0, 35.0), (430.0, 30.0)),                 # sulfonephthalein protein-error dye
    "BLD": ((652.0, 35.0), (450.0, 30.0)),                 # oxidised TMB (blue), yellow indicator base
    "CRE": ((652.0, 35.0), (450.0, 30.0)),                 # peroxidase-like TMB oxidation
    "KET": ((550.0, 30.0), (455.0, 30.0)),                 # nitroprusside purple on a buff pad
    "NIT": ((540.0, 25.0), (455.0, 30.0)),                 # azo dye (Griess), pink
    "LEU": ((570.0, 32.0), (455.0, 30.0)),                 # diazonium coupling, purple
    "BIL": ((530.0, 30.0), (500.0, 25.0), (450.0, 30.0)),  # diazotised dichloroaniline azo, tan to pink
    "URO": ((520.0, 28.0), (495.0, 25.0), (450.0, 30.0)),  # Ehrlich-type azo, peach to red
    "GLU": ((470.0, 30.0), (505.0, 30.0), (635.0, 40.0)),  # GOx/peroxidase chromogen: teal to brown
    "PH": ((430.0, 30.0), (520.0, 30.0), (617.0, 35.0)),   # methyl red + bromothymol blue
    "SG": ((430.0, 30.0), (617.0, 35.0)),                  # bromothymol blue, acid and base forms
}
_GENERIC_DYE_BANDS = ((430.0, 30.0), (500.0, 30.0), (560.0, 30.0), (620.0, 35.0))
_PAD_PAPER = 0.92 * (1 - 0.06 / (1 + np.exp((WAVELENGTHS - 445.0) / 14.0)))  # slightly yellowish
_CARD_PAPER_SRGB = "FFFFFF"  # optical-brightener-free paper; its shape from the smooth model
# process ink absorbances (relative), shaped after offset CMYK: cyan absorbs red with a little blue,
# magenta green with a blue shoulder, yellow blue with a steep edge; black flat
_INK_ABSORBANCE = np.stack([
    np.exp(-0.5 * ((WAVELENGTHS - 625.0) / 55.0) ** 2) + 0.12 * np.exp(-0.5 * ((WAVELENGTHS - 420.0) / 40.0) ** 2),
    np.exp(-0.5 * ((WAVELENGTHS - 540.0) / 38.0) ** 2) + 0.18 * np.exp(-0.5 * ((WAVELENGTHS - 420.0) / 30.0) ** 2),
    1 / (1 + np.exp((WAVELENGTHS - 495.0) / 12.0)) * (0.9 + 0.1 * (WAVELENGTHS < 420)),
    np.full_like(WAVELENGTHS, 0.9),
])
# weak broad absorbers every pad may use a little of (the pad's own tint; the last is neutral)
_DYE_SUPPORTS = np.stack([1 / (1 + np.exp((WAVELENGTHS - 485.0) / 12.0)),
                          1 / (1 + np.exp(-(WAVELENGTHS - 610.0) / 15.0)), np.ones_like(WAVELENGTHS)])
_BAND_SHIFT_NM = 15.0
_BAND_WIDEN = (0.7, 1.6)
_DYE_FIT_LAB = 0.3
_SUPPORT_PENALTY = 0.3   # keeps a dye's colour in its chemistry's bands, not the neutral term
_INK_PENALTY = 0.05
_MAX_BRIGHTEN = 0.08     # the dye fit's neutral term may lighten the paper by this much absorbance


def _gaussians(bands) -> np.ndarray:
    """Unit-peak absorption bands, one row per (centre nm, sigma nm)."""
    return np.stack([np.exp(-0.5 * ((WAVELENGTHS - c) / s) ** 2) for c, s in bands])


def _lab_under(reflectance: np.ndarray, spd: np.ndarray) -> np.ndarray:
    """CIELAB of a reflectance under `spd` relative to that light's own white (the CIE observer)."""
    xyz = (reflectance * spd) @ CMF
    white = spd @ CMF
    return xyz_to_lab(xyz / white[1], white / white[1])


def _fit_absorbers(base: np.ndarray, absorbers: np.ndarray, target_lab: np.ndarray, spd: np.ndarray,
                   lower: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """Reflectance base x exp(-c @ absorbers) matching `target_lab` under `spd`: bounded least squares
    in CIELAB, with a small penalty on the amounts so redundant absorbers stay unused."""
    from scipy.optimize import least_squares  # fitting only: the wide simulator's dependency

    def residual(c):
        return np.concatenate([_lab_under(base * np.exp(-c @ absorbers), spd) - target_lab, penalty * c])
    x0 = np.clip(np.full(len(absorbers), 0.1), lower, None)
    fit = least_squares(residual, x0, bounds=(lower, np.inf), x_scale=0.3)
    reflectance = base * np.exp(-fit.x @ absorbers)
    reflectance.setflags(write=False)
    return reflectance


def _dye_reflectance(x: np.ndarray, bands, supports: np.ndarray) -> np.ndarray:
    """x = amounts of the n bands, amounts of the supports, n band shifts (nm), n width factors."""
    n = len(bands)
    shaped = _gaussians([(c + shift, s * scale) for (c, s), shift, scale in zip(bands, x[-2 * n:-n], x[-n:])])
    return _PAD_PAPER * np.exp(-x[:n] @ shaped - x[n:-2 * n] @ supports)


@lru_cache(maxsize=4096)
def pad_dye_reflectance(analyte: str, colour: str) -> np.ndarray:
    """A reagent pad at a chart colour (sRGB hex) as the dyes of its chemistry make it: yellowish
    pad paper x exp(-sum c_k A_k) over the analyte's absorption bands (each free to shift +-15 nm and
    widen, as a dye's band does in the pad's matrix) plus weak, penalised support absorbers, fitted so
    the colour under D65 matches (cached per colour)."""
    from scipy.optimize import least_squares  # fitting only: the wide simulator's dependency
    bands = DYE_BANDS.get(analyte.upper(), _GENERIC_DYE_BANDS)
    n, k = len(bands), len(_DYE_SUPPORTS)
    target, spd = srgb_lab_d65(colour), illuminant("D65")

    def residual(x):
        lab = _lab_under(_dye_reflectance(x, bands, _DYE_SUPPORTS), spd)
        return np.concatenate([lab - target, _SUPPORT_PENALTY * x[n:n + k]])
    lower = np.r_[np.zeros(n + k - 1), -_MAX_BRIGHTEN, np.full(n, -_BAND_SHIFT_NM), np.full(n, _BAND_WIDEN[0])]
    upper = np.r_[np.full(n + k, np.inf), np.full(n, _BAND_SHIFT_NM), np.full(n, _BAND_WIDEN[1])]
    scale = np.r_[np.full(n + k, 0.3), np.full(n, 5.0), np.full(n, 0.2)]
    best = None
    for amount in (0.3, 1.0, 0.1):  # a few starts: the band shapes make the fit non-convex
        x0 = np.r_[np.full(n, amount), np.full(k - 1, 0.1), 0.0, np.zeros(n), np.ones(n)]
        fit = least_squares(residual, x0, bounds=(lower, upper), x_scale=scale)
        best = fit if best is None or fit.cost < best.cost else best
        if np.abs(best.fun[:3]).max() < _DYE_FIT_LAB:
            break
    reflectance = _dye_reflectance(best.x, bands, _DYE_SUPPORTS)
    reflectance.setflags(write=False)
    return reflectance


@lru_cache(maxsize=4096)
def card_ink_reflectance(lab_d50: tuple[float, float, float]) -> np.ndarray:
    """A printed card patch: C, M, Y, K process inks on paper (absorbances add, Beer-Lambert, as in a
    fine halftone's Yule-Nielsen limit), amounts fitted to the patch's CIELAB under D50."""
    paper = reflectance_from_srgb(_CARD_PAPER_SRGB)
    lower, penalty = np.zeros(4), np.full(4, _INK_PENALTY)
    return _fit_absorbers(paper, _INK_ABSORBANCE, np.asarray(lab_d50, float), illuminant("D50"), lower, penalty)


def absorbance_mix(reflectances: np.ndarray, t: float, absorbance_scale: float = 1.0) -> np.ndarray:
    """Reflectance of a pad at fractional level position `t` along chart `reflectances` (levels x
    wavelengths): absorbance (-ln R) is interpolated between the neighbouring levels, as Beer-Lambert
    says for a dye whose amount grows, and scaled by `absorbance_scale` (a strip lot's dye load)."""
    last = len(reflectances) - 1
    t = float(np.clip(t, 0, last))
    lo = min(int(np.floor(t)), last - 1)
    frac = t - lo
    absorbance = -np.log(np.clip(reflectances[lo:lo + 2], 1e-6, 1.0))
    mixed = (1 - frac) * absorbance[0] + frac * absorbance[1]
    return np.exp(-absorbance_scale * mixed)

# --- cameras -------------------------------------------------------------------------------------

_FILMIC_CONTRAST = 0.3


def _filmic(linear: np.ndarray) -> np.ndarray:
    """A mild S-curve as phone and webcam ISPs apply: sRGB encoding blended with a smoothstep, so
    mid-tones gain contrast and the ends roll off."""
    s = np.clip(linear_to_srgb(linear), 0, 1)
    return (1 - _FILMIC_CONTRAST) * s + _FILMIC_CONTRAST * s * s * (3 - 2 * s)


_TONE_CURVES = {
    "srgb": linear_to_srgb,
    "gamma2.2": lambda v: np.clip(v, 0, None) ** (1 / 2.2),
    "gamma1.8": lambda v: np.clip(v, 0, None) ** (1 / 1.8),
    "filmic": _filmic,
}


def tone_curve(name: str, linear: np.ndarray) -> np.ndarray:
    """Encode linear light (0..1) with a camera's tone curve ("srgb", "gamma2.2", "gamma1.8", "filmic")."""
    return _TONE_CURVES[name](linear)


@dataclass(frozen=True)
class CameraModel:
    """A sensor's spectral sensitivities (R, G, B columns), its ISP tone curve and noise figures."""
    name: str
    lobes: tuple  # per channel: ((amplitude, centre nm, sigma nm), ...)
    ir_cut_nm: float
    tone: str
    full_well_e: float
    read_noise_e: float
    adc_bits: int

    @cached_property
    def sensitivities(self) -> np.ndarray:
        ir_cut = 1 / (1 + np.exp((WAVELENGTHS - self.ir_cut_nm) / 6.0))
        uv_cut = 1 / (1 + np.exp(-(WAVELENGTHS - 395.0) / 6.0))
        channels = [sum(a * np.exp(-0.5 * ((WAVELENGTHS - c) / s) ** 2) for a, c, s in lobes)
                    for lobes in self.lobes]
        sens = np.stack(channels, axis=1) * (ir_cut * uv_cut)[:, None]
        return sens / sens.max()

    @cached_property
    def matrix(self) -> np.ndarray:
        """Camera RGB (white-balanced) -> linear sRGB, tuned under D65 as a manufacturer would."""
        return _fit_colour_matrix(self)


# Sums of Gaussians shaped after published quantum-efficiency curves of such sensors, including the
# red channel's secondary lobe in the blue that makes blues and purples hard.
_CAMERAS = (
    CameraModel("imx219", (((1.0, 603, 24), (0.55, 640, 18), (0.07, 445, 22)),
                           ((1.0, 535, 34), (0.12, 470, 18)),
                           ((1.0, 458, 24), (0.15, 515, 25))), 655.0, "srgb", 4500.0, 3.0, 10),
    CameraModel("imx477", (((1.0, 598, 22), (0.5, 628, 22), (0.05, 452, 20)),
                           ((1.0, 528, 30), (0.22, 572, 22)),
                           ((1.0, 455, 22), (0.08, 500, 20))), 650.0, "gamma2.2", 8000.0, 2.5, 12),
    CameraModel("ov5647", (((1.0, 612, 30), (0.10, 432, 30)),
                           ((1.0, 545, 38),),
                           ((1.0, 466, 28), (0.2, 512, 24))), 670.0, "gamma1.8", 5000.0, 4.0, 10),
    CameraModel("webcam", (((1.0, 594, 35), (0.12, 455, 30)),
                           ((1.0, 524, 40), (0.3, 582, 28)),
                           ((1.0, 450, 30),)), 690.0, "filmic", 6000.0, 6.0, 10),
    CameraModel("phone", (((1.0, 600, 20), (0.35, 625, 15), (0.04, 440, 15)),
                          ((1.0, 540, 28), (0.1, 505, 15)),
                          ((1.0, 462, 20), (0.1, 420, 15))), 645.0, "filmic", 7000.0, 2.0, 12),
)
_CAMERA_BY_NAME = {c.name: c for c in _CAMERAS}


def camera_names() -> list[str]:
    return list(_CAMERA_BY_NAME)


def register_camera(model: CameraModel) -> None:
    """Add a camera (its colour matrix is tuned under D65 on first use, like the built-in ones)."""
    _CAMERA_BY_NAME[model.name] = model


def camera(name: str) -> CameraModel:
    """A built-in or registered camera, a measured one ("cs:nikon_d5100", "cs:sigma_sdmerrill") or
    one drawn from a seed ("rand:<seed>")."""
    if name in _CAMERA_BY_NAME:
        return _CAMERA_BY_NAME[name]
    return _named_camera(name)


@dataclass(frozen=True)
class MeasuredCamera(CameraModel):
    """A camera whose spectral sensitivities were measured (colour-science's MSDS_CAMERA_SENSITIVITIES)."""
    dataset: str = ""

    @cached_property
    def sensitivities(self) -> np.ndarray:
        import colour  # measured data: only the wide (training) simulator needs colour-science
        msds = colour.MSDS_CAMERA_SENSITIVITIES[self.dataset]
        sens = np.stack([_resampled(msds.wavelengths, msds.values[:, c]) for c in range(3)], axis=1)
        return np.clip(sens, 0, None) / sens.max()


# name -> (colour-science dataset, tone curve, full well e-, read noise e-, ADC bits)
MEASURED_CAMERAS = {
    "cs:nikon_d5100": ("Nikon 5100 (NPL)", "srgb", 30000.0, 3.0, 12),
    "cs:sigma_sdmerrill": ("Sigma SDMerill (NPL)", "gamma2.2", 20000.0, 4.0, 12),
}
# a drawn camera: per channel the main peak's range (nm) and its sigma range (nm)
_RAND_PEAKS = ((585.0, 620.0), (515.0, 555.0), (440.0, 475.0))
_RAND_SIGMA = (16.0, 40.0)
_RAND_IR_CUT = (640.0, 700.0)


def random_camera(seed: int) -> CameraModel:
    """A plausible colour sensor drawn from `seed`: per channel a main lobe (peak, width) and a
    cross-talk shoulder, the red channel's secondary lobe in the blue (0-0.15), an IR cut filter
    at 640-700 nm, one of the tone curves and noise figures of small to large sensors."""
    rng = np.random.default_rng([seed, 0x5E75])
    lobes = []
    for c, (lo, hi) in enumerate(_RAND_PEAKS):
        peak = rng.uniform(lo, hi)
        channel = [(1.0, peak, rng.uniform(*_RAND_SIGMA))]
        side = 1 if c == 0 else (-1 if c == 2 else rng.choice([-1, 1]))  # shoulders towards the neighbour
        channel.append((rng.uniform(0.0, 0.5), peak + side * rng.uniform(20, 45), rng.uniform(12, 30)))
        if c == 0:
            channel.append((rng.uniform(0.0, 0.15), rng.uniform(420, 470), rng.uniform(12, 30)))
        lobes.append(tuple(tuple(float(v) for v in lobe) for lobe in channel))
    return CameraModel(f"rand:{seed}", tuple(lobes), float(rng.uniform(*_RAND_IR_CUT)),
                       str(rng.choice(list(_TONE_CURVES))), float(rng.uniform(3000, 12000)),
                       float(rng.uniform(1.5, 6.0)), int(rng.choice([10, 12])))


@lru_cache(maxsize=4096)
def _named_camera(name: str) -> CameraModel:
    if name in MEASURED_CAMERAS:
        dataset, tone, full_well, read_noise, bits = MEASURED_CAMERAS[name]
        return MeasuredCamera(name, (), 0.0, tone, full_well, read_noise, bits, dataset=dataset)
    kind, _, seed = name.partition(":")
    if kind == "rand" and seed.isdigit():
        return random_camera(int(seed))
    raise KeyError(f"unknown camera {name!r}; known: {camera_names()}, {sorted(MEASURED_CAMERAS)} or rand:<seed>")


def raw_white(spd: np.ndarray, cam: CameraModel) -> np.ndarray:
    """Camera response to a perfect white under `spd`, scaled so its largest channel is 1."""
    white = spd @ cam.sensitivities
    return white / white.max()


def raw_rgb(reflectance: np.ndarray, spd: np.ndarray, cam: CameraModel) -> np.ndarray:
    """Camera raw RGB of reflectance(s) (..., wavelengths) under `spd`, perfect white's max = 1."""
    return (reflectance * spd) @ cam.sensitivities / (spd @ cam.sensitivities).max()


# The tuning target: an sRGB grid, including saturated corners, as smooth reflectances.
_TUNING_LEVELS = (0.1, 0.35, 0.6, 0.85)


def _fit_colour_matrix(cam: CameraModel) -> np.ndarray:
    """White-preserving 3x3 least squares from white-balanced raw to linear sRGB under D65."""
    grid = np.array(np.meshgrid(*[_TUNING_LEVELS] * 3, indexing="ij")).reshape(3, -1).T
    refl = np.array([reflectance_from_srgb(c) for c in grid])
    spd = illuminant("D65")
    raw = raw_rgb(refl, spd, cam) / raw_white(spd, cam)
    target = srgb_to_linear(grid)
    # minimise |raw m - b|^2 for each output row subject to sum(m) = 1 (white maps to white)
    kkt = np.block([[2 * raw.T @ raw, np.ones((3, 1))], [np.ones((1, 3)), np.zeros((1, 1))]])
    rhs = np.vstack([2 * raw.T @ target, np.ones((1, 3))])
    return np.linalg.solve(kkt, rhs)[:3].T
