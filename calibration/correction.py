"""Colour correction from the card's patches to CIELAB (D50).

Input colours are already relative to the local card white (see `illumination`). Two steps:
a per-channel tone curve fitted on the neutral patches (cameras apply S-curves and gammas that are
not sRGB), then by default a second-order root-polynomial matrix (Finlayson et al. 2015) to XYZ
D50, which stays exposure-invariant while bending where a 3x3 cannot. Its quality is judged on patches held
out of the fit (k-fold cross-validation: every patch is predicted once by a fit that never saw it),
because a fit always looks good on its own training patches.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibration.colour import delta_e_2000, lab_to_xyz, xyz_to_lab
from calibration.errors import ReadError

MAX_RESIDUAL_DE00 = 7.0    # held-out mean CIEDE2000 above which no pad reading is trusted: pads read exact
                           # 0.95 below 1, 0.81 at 4-5 and still about 0.8 at 5-7 on `bench/generalization.py`
                           # photos (refusing those was wrong more often than reading them); beyond 7 (a
                           # Foveon-like sensor under a line-spectrum lamp) reads fall to 0.1-0.7
FOLDS = 6
_RIDGE = 1e-3
_FLOOR = 1e-3


def _tone_design(rel: np.ndarray) -> np.ndarray:
    u = np.log(np.clip(rel, _FLOOR, None))
    return np.stack([u, u * u], axis=-1)


def _linear(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb, 0, None)


def _root_poly2(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (np.clip(rgb[..., i], 0, None) for i in range(3))
    return np.stack([r, g, b, np.sqrt(r * g), np.sqrt(g * b), np.sqrt(r * b)], axis=-1)


def _root_poly3(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (np.clip(rgb[..., i], 0, None) for i in range(3))
    cubic = [np.cbrt(x * y * y) for x, y in ((r, g), (g, b), (r, b), (g, r), (b, g), (b, r))]
    return np.concatenate([_root_poly2(rgb), np.stack(cubic + [np.cbrt(r * g * b)], axis=-1)], axis=-1)


# Colour-correction models: every term scales with exposure, so each stays exposure-invariant.
# `bench/ccm.py` compares them; root-polynomial degree 2 measured best on held-out patches.
TERMS = {"linear": _linear, "root_poly2": _root_poly2, "root_poly3": _root_poly3}
DEFAULT_TERMS = "root_poly2"


@dataclass(frozen=True)
class ColourCorrection:
    tone: np.ndarray        # (3, 2): log Y = a u + b u^2 per channel, u = log(relative value)
    matrix: np.ndarray      # (terms, 3): model terms of linear RGB -> XYZ D50
    residual_de00: float    # mean CIEDE2000 of held-out predictions of the card patches
    worst_de00: float
    terms: str = DEFAULT_TERMS

    def linearise(self, rel: np.ndarray) -> np.ndarray:
        return np.exp(np.einsum("...ck,ck->...c", _tone_design(rel), self.tone))

    def to_xyz(self, rel: np.ndarray) -> np.ndarray:
        return TERMS[self.terms](self.linearise(rel)) @ self.matrix

    def to_lab(self, rel: np.ndarray) -> np.ndarray:
        return xyz_to_lab(np.clip(self.to_xyz(rel), 0, None))


def _fit(rel: np.ndarray, xyz: np.ndarray, neutral: np.ndarray, terms_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Tone curves from the neutrals (log Y = a u + b u^2 + c per channel; the offset c, an
    exposure, is left to the matrix), then the matrix, weighted so each patch counts by its relative
    (not absolute) error, as the eye does. The card's white is not a target: paper is rarely the
    ideal white the card file names, and a fit anchored to it measured worse (see README)."""
    tone = np.empty((3, 2))
    y = np.log(np.clip(xyz[neutral, 1], _FLOOR, None))
    for c in range(3):
        u = _tone_design(rel[neutral, c])
        ones = np.ones((len(u), 1))
        a, b, _ = np.linalg.lstsq(np.hstack([u, ones]), y, rcond=None)[0]
        # keep the curve monotone over the usable range u in [-5, 0]: slope a + 2 b u > 0
        if a + 2 * b * -5.0 <= 0.2 or a <= 0.2:
            a, b = float(np.linalg.lstsq(np.hstack([u[:, :1], ones]), y, rcond=None)[0][0]), 0.0
        tone[c] = a, b
    lin = np.exp(np.einsum("nck,ck->nc", _tone_design(rel), tone))
    terms = TERMS[terms_name](lin)
    weight = 1.0 / np.sqrt(np.clip(xyz[:, 1], 0.02, None))
    a = terms * weight[:, None]
    matrix = np.linalg.solve(a.T @ a + _RIDGE * np.eye(terms.shape[1]), a.T @ (xyz * weight[:, None]))
    return tone, matrix


def fit_correction(rel: np.ndarray, reference_lab: np.ndarray, neutral: np.ndarray,
                   terms: str = DEFAULT_TERMS) -> ColourCorrection:
    """Fit on all patches; report the cross-validated residual; raise `calibration_failed` if it is
    too high for pad colours to be trusted. Folds interleave the card order, so each fold holds out
    at most one or two neutrals and patches from both rows."""
    xyz = lab_to_xyz(reference_lab)
    held_out = np.empty_like(reference_lab)
    fold = np.arange(len(rel)) % FOLDS
    for k in range(FOLDS):
        out = fold == k
        tone, matrix = _fit(rel[~out], xyz[~out], neutral[~out], terms)
        held_out[out] = ColourCorrection(tone, matrix, 0.0, 0.0, terms).to_lab(rel[out])
    errors = delta_e_2000(held_out, reference_lab)
    tone, matrix = _fit(rel, xyz, neutral, terms)
    correction = ColourCorrection(tone, matrix, float(errors.mean()), float(errors.max()), terms)
    if not np.isfinite(correction.residual_de00) or correction.residual_de00 > MAX_RESIDUAL_DE00:
        raise ReadError("calibration_failed", "The card's colours could not be matched (the card may be "
                                              "faded, dirty or lit unevenly): check the card and read again.")
    return correction
