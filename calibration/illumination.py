"""Uneven light across the card: the card's bare white is the same paper everywhere, so its
observed colour maps the illumination (LED falloff, vignetting, a tilted light). A smooth surface
fitted to it per channel divides every other sample, which leaves colours relative to the local
white: exposure, white balance and light falloff cancel before the colour correction."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from calibration import card_art
from calibration.colour import srgb_to_linear
from calibration.errors import ReadError
from calibration.specs import Card

GRID_MM = 3.5
CLEARANCE_MM = 1.2
SAMPLE_HALF_MM = 0.8
MIN_UNCLIPPED = 0.3        # fraction of white samples below saturation needed to map the light
MAX_SHADOW = 0.10          # rms log-residual of the white after the fit: above it, a shadow or smudge


@lru_cache(maxsize=8)
def _white_points(card: Card) -> np.ndarray:
    px_per_mm = 2.0
    mask = card_art.white_mask(card, px_per_mm, CLEARANCE_MM + SAMPLE_HALF_MM)
    xs = np.arange(GRID_MM / 2, card.size_mm[0], GRID_MM)
    ys = np.arange(GRID_MM / 2, card.size_mm[1], GRID_MM)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    rows = np.clip((grid[:, 1] * px_per_mm).astype(int), 0, mask.shape[0] - 1)
    cols = np.clip((grid[:, 0] * px_per_mm).astype(int), 0, mask.shape[1] - 1)
    return grid[mask[rows, cols]]


def white_points(card: Card) -> np.ndarray:
    """Centres (N, 2) mm of the small regions of bare white used as the illumination reference."""
    return _white_points(card)


def _design(points_mm: np.ndarray, card: Card) -> np.ndarray:
    x = points_mm[..., 0] / card.size_mm[0] * 2 - 1
    y = points_mm[..., 1] / card.size_mm[1] * 2 - 1
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y, x ** 3, x * x * y], axis=-1)


@dataclass(frozen=True)
class IlluminationField:
    coefficients: np.ndarray   # (terms, 3) of log linear white
    card: Card
    rms_residual: float
    white_clipped: bool        # the white saturated: the field is flat and its level unknown

    def white_at(self, points_mm: np.ndarray) -> np.ndarray:
        return np.exp(_design(points_mm, self.card) @ self.coefficients)

    def relative(self, rgb: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
        """Non-linear camera RGB at card points -> linear RGB relative to the local card white."""
        return srgb_to_linear(rgb) / self.white_at(points_mm)


def fit_illumination(card: Card, white_rgb: np.ndarray, white_clipped: np.ndarray) -> IlluminationField:
    """Fit log(white) as a cubic-in-x, quadratic-in-y surface per channel, dropping outliers
    (dust, a stray mark) once. Raises `calibration_failed` on a shadow the surface cannot follow.
    Where most of the white is clipped (a camera exposing for the patches) the field is taken as
    flat: the colour correction then finds the white level from the patches alone."""
    points = white_points(card)
    design = _design(points, card)
    unclipped = white_clipped < 0.5
    if unclipped.mean() < MIN_UNCLIPPED:
        return IlluminationField(np.zeros((design.shape[1], 3)), card, 0.0, True)
    logs = np.log(np.clip(srgb_to_linear(white_rgb), 1e-4, None))
    keep = unclipped.copy()
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(design[keep], logs[keep], rcond=None)
        resid = np.abs(logs - design @ coef).max(axis=1)
        scale = max(1.4826 * float(np.median(resid[keep])), 0.01)
        keep = unclipped & (resid < 4 * scale)
    rms = float(np.sqrt(np.mean((logs[keep] - design[keep] @ coef) ** 2)))
    if keep.sum() < 0.8 * unclipped.sum() or rms > MAX_SHADOW:
        raise ReadError("calibration_failed", "The light across the card is uneven (a shadow or a mark on "
                                              "the card): close the lid, clean the card and read again.")
    return IlluminationField(coef, card, rms, not unclipped.all())
