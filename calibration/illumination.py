"""Uneven light across the card: the card's bare white is the same paper everywhere, so its
observed colour maps the illumination (LED falloff, vignetting, a tilted light). A smooth surface
fitted to it per channel divides every other sample, which leaves colours relative to the local
white: exposure, white balance and light falloff cancel before the colour correction."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from calibration import card_art
from calibration.colour import srgb_to_linear
from calibration.errors import CARD_GLARE_MESSAGE, OVEREXPOSED_MESSAGE, ReadError
from calibration.quantiles import median
from calibration.sampling import CLIPPED
from calibration.specs import Card

if TYPE_CHECKING:
    from calibration.camera_calibration import FlatField

GRID_MM = 3.5
CLEARANCE_MM = 1.2
SAMPLE_HALF_MM = 0.8
MIN_UNCLIPPED = 0.5        # fraction of white samples below saturation needed to map the light in a channel
GLARE_LOG = 0.07           # white brighter than the fitted light by more than ~7 %: part of a highlight
HIGHLIGHT_LOG = 0.25       # 30 % above the fitted light in every channel: a shadow bending the fit never lifts it so far
SHADOW_LOG = 0.10          # white darker than the fitted light by more than ~10 %: a shadow or mark
GLARE_RADIUS_MM = 6.0      # a highlight seen on the white this close to a pad is on the pad too
MAX_SHADOW_FRACTION = 0.08
UNEVEN_MESSAGE = ("The light across the card is uneven (a shadow or a mark on the card): close the lid, clean the "
                  "card and read again.")
MAX_GLARE_FRACTION = 0.15  # a highlight is a spot: "glare" over more of the white is the fit taking a shadow for the light
MAX_RMS = 0.05             # rms log-residual of the kept white: the light is not smooth
MIN_KEPT = 0.5
MIN_SCALE, MAX_SCALE = 0.01, 0.025   # robust spread of the white around the surface (log units)


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


def surface_design(points_mm: np.ndarray, card: Card) -> np.ndarray:
    x = points_mm[..., 0] / card.size_mm[0] * 2 - 1
    y = points_mm[..., 1] / card.size_mm[1] * 2 - 1
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y, x ** 3, x * x * y], axis=-1)


@dataclass(frozen=True)
class IlluminationField:
    coefficients: np.ndarray   # (terms, 3) of log linear white
    card: Card
    rms_residual: float
    white_clipped: bool        # a channel saturated on the white: its level is only a lower bound
    glare_points: np.ndarray   # (G, 2) mm: white samples brighter than paper can be, i.e. highlights
    flat_field: FlatField | None = None   # the reader's measured light and lens (camera calibration)
    blown_fraction: float = 0.0   # share of the white saturated in every channel
    lifted_points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))   # (L, 2) mm: white above the light in every channel
    channel_saturated_fraction: float = 0.0   # the largest share of the white saturated in one channel

    def white_at(self, points_mm: np.ndarray) -> np.ndarray:
        white = np.exp(surface_design(points_mm, self.card) @ self.coefficients)
        return white if self.flat_field is None else white * self.flat_field.at(points_mm)

    def relative(self, rgb: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
        """Non-linear camera RGB at card points -> linear RGB relative to the local card white."""
        return srgb_to_linear(rgb) / self.white_at(points_mm)

    def glare_near(self, points_mm: np.ndarray, radius_mm: float = GLARE_RADIUS_MM) -> np.ndarray:
        """True for points with a highlight on the card's white within `radius_mm`."""
        return _near(points_mm, self.glare_points, radius_mm)

    def lifted_near(self, points_mm: np.ndarray, radius_mm: float = GLARE_RADIUS_MM) -> np.ndarray:
        """True for points with white lifted above the light in every channel within `radius_mm`:
        a highlight too faint to blow out the paper, yet enough to wash out the colours under it."""
        return _near(points_mm, self.lifted_points, radius_mm)

    @property
    def mostly_saturated(self) -> bool:
        """One channel saturated over most of the white: colours measured against it are bounds,
        so a card or strip that does not fit is explained by the exposure first."""
        return self.channel_saturated_fraction > 0.5

    @property
    def glare_fraction(self) -> float:
        return len(self.glare_points) / len(white_points(self.card))


def fit_illumination(card: Card, white_rgb: np.ndarray, channel_clipped: np.ndarray,
                     flat_field: FlatField | None = None) -> IlluminationField:
    """Fit log(white) as a cubic-in-x, quadratic-in-y surface per channel, robustly: a plane first,
    then the full surface, each time dropping samples far off it. Each channel is fitted on the
    samples where it is not saturated: a camera whose white balance lifts one channel clips that
    channel on the white while the others still map the light. A channel clipped over most of the
    white borrows the shape of the others (light falls off alike in every channel); its level is
    then only a lower bound, which the colour correction absorbs (a per-channel scale). Paper cannot
    be brighter than the light falling on it, so samples well above the surface in every channel
    (the light's own colour) are highlights, kept as a map; samples well below it are shadows or
    marks, and too many of them raise `calibration_failed`. Where the white is clipped in every
    channel the field is taken as flat. A camera calibration's `flat_field` divides the white first:
    the surface then fits only what remains."""
    points = white_points(card)
    design = surface_design(points, card)
    unclipped = np.asarray(channel_clipped).reshape(len(points), 3) < 0.5
    mapped = unclipped.mean(axis=0) >= MIN_UNCLIPPED
    if not mapped.any():   # the paper saturated in every channel: the pads as bright as it are lost too
        raise ReadError("overexposed", OVEREXPOSED_MESSAGE)
    logs = np.log(np.clip(srgb_to_linear(white_rgb), 1e-4, None))
    if flat_field is not None:
        logs -= np.log(flat_field.at(points))
    keep = unclipped & mapped
    for terms in (3, design.shape[1], design.shape[1]):
        coef = _channel_surfaces(design[:, :terms], logs, keep, unclipped, mapped)
        resid_c = logs - design[:, :terms] @ coef          # a lower bound in a clipped channel
        resid = _mean_where(resid_c, unclipped & mapped)   # NaN where no mapped channel is unclipped
        measured = ~np.isnan(resid)
        # noise-scaled bounds, but capped: a shadow must not widen the band until it fits inside
        fitted = measured & keep.any(axis=1)
        if not fitted.any():      # nothing of the white left to map the light with
            raise ReadError("calibration_failed", UNEVEN_MESSAGE)
        scale = float(np.clip(1.4826 * median(np.abs(resid[fitted])), MIN_SCALE, MAX_SCALE))
        with np.errstate(invalid="ignore"):
            near = (resid < min(3 * scale, GLARE_LOG)) & (resid > -max(4 * scale, SHADOW_LOG))
        keep = unclipped & mapped & near[:, None]
    coefficients = np.zeros((design.shape[1], 3))
    coefficients[:terms] = coef
    # a highlight lifts every channel (it is the light's own colour; a saturated channel is
    # consistent with that), blows out or at least doubles the light somewhere, and has shoulders:
    # white measured above the light in every channel around it. Paper saturated at the bright end
    # of a smooth light has no shoulders: it is exposure, not glare.
    lifted = (resid_c > GLARE_LOG) | ~unclipped
    upward = lifted.all(axis=1) & (resid_c > GLARE_LOG).any(axis=1)
    shoulder = unclipped.all(axis=1) & (resid_c > GLARE_LOG).all(axis=1)
    blown = ~unclipped.all(axis=1) | (resid_c.min(axis=1) > HIGHLIGHT_LOG)
    is_glare = bool(np.any(shoulder) and np.any(upward & blown))
    glare = upward if is_glare else np.zeros_like(upward)
    with np.errstate(invalid="ignore"):
        misfit = (resid < -max(4 * scale, SHADOW_LOG)) | (shoulder & ~glare)
    kept = keep.any(axis=1)
    rms = float(np.sqrt(np.mean(resid[kept] ** 2))) if kept.any() else float("inf")
    if glare.mean() > MAX_GLARE_FRACTION:
        # blown out somewhere: a highlight too large to read around; never blown: a shadow taken for the light
        if np.any(glare & ~unclipped.all(axis=1)):
            raise ReadError("glare", CARD_GLARE_MESSAGE)
        raise ReadError("calibration_failed", UNEVEN_MESSAGE)
    if misfit.mean() > MAX_SHADOW_FRACTION or rms > MAX_RMS or kept.sum() < MIN_KEPT * measured.sum():
        raise ReadError("calibration_failed", UNEVEN_MESSAGE)
    saturated_paper = bool(np.any(~unclipped.all(axis=1) & ~glare))   # clipped where no highlight explains it
    return IlluminationField(coefficients, card, rms, saturated_paper, points[glare], flat_field,
                             float(np.mean(~unclipped.any(axis=1))), points[upward],
                             float((~unclipped).mean(axis=0).max()))


def _channel_surfaces(design: np.ndarray, logs: np.ndarray, keep: np.ndarray, unclipped: np.ndarray,
                      mapped: np.ndarray) -> np.ndarray:
    """Least-squares surface per mapped channel on its kept samples; an unmapped channel takes the
    mean shape of the mapped ones, levelled on its few unclipped samples (or at the clip level)."""
    coef = np.zeros((design.shape[1], 3))
    for c in np.flatnonzero(mapped):
        coef[:, c] = np.linalg.lstsq(design[keep[:, c]], logs[keep[:, c], c], rcond=None)[0]
    shape = coef[:, mapped].mean(axis=1)
    for c in np.flatnonzero(~mapped):
        own = unclipped[:, c]
        level = median(logs[own, c] - design[own] @ shape) if own.any() else \
            np.log(srgb_to_linear(CLIPPED)) - np.max(design @ shape)
        coef[:, c] = shape + level * (np.arange(len(shape)) == 0)
    return coef


def _mean_where(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row means of `values` over the entries `mask` keeps; NaN for a row with none."""
    count = mask.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(mask, values, 0).sum(axis=1) / count, np.nan)


def _near(points_mm: np.ndarray, marks: np.ndarray, radius_mm: float) -> np.ndarray:
    points = np.asarray(points_mm, float).reshape(-1, 2)
    if not len(marks):
        return np.zeros(len(points), bool)
    return (np.linalg.norm(points[:, None, :] - marks[None, :, :], axis=-1) <= radius_mm).any(axis=1)
