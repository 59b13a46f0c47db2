"""Reading colours of card regions straight from the frame: a grid of points per region in card
millimetres, mapped through the homography and fetched with one `cv2.remap` call, so the cost grows
with the number of samples, never with the frame size. Each region's colour is a median after
dropping specular pixels (glare) and clipped ones."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from calibration.detect import CardPose

CLIPPED = 250 / 255         # at or above: the sensor (or JPEG) saturated
SPECULAR_RATIO = 1.30       # brighter than this x the region's darker quartile: a highlight
SPECULAR_MARGIN = 0.04
MAX_GRID = 24               # samples per side; ~1 px apart on a 1456 px frame
REMAP_WIDTH = 1024


@dataclass(frozen=True)
class RegionColours:
    rgb: np.ndarray          # (R, 3) robust colour, non-linear camera RGB in 0..1
    specular: np.ndarray     # (R,) fraction of the region's samples that are highlights
    clipped: np.ndarray      # (R,) fraction with a saturated channel
    spread: np.ndarray       # (R,) median absolute deviation of the kept samples' luminance
    channel_clipped: np.ndarray   # (R, 3) fraction of samples saturated, per channel


def square_grid(centers_mm: np.ndarray, half_mm: float, px_per_mm: float, k: int | None = None) -> np.ndarray:
    """(R, K*K, 2) points covering squares of half-side `half_mm`, row by row: about one per pixel
    (capped), or `k` per side."""
    k = k or int(np.clip(round(2 * half_mm * px_per_mm), 4, MAX_GRID))
    u = np.linspace(-half_mm, half_mm, k)
    offsets = np.stack(np.meshgrid(u, u), axis=-1).reshape(-1, 2)
    return np.asarray(centers_mm, float)[:, None, :] + offsets[None, :, :]


def sample(image_bgr: np.ndarray, pose: CardPose, points_mm: np.ndarray) -> np.ndarray:
    """Bilinear RGB samples (..., 3) in 0..1 at card points (..., 2)."""
    shape = points_mm.shape[:-1]
    px = pose.to_image(points_mm.reshape(-1, 2)).astype(np.float32)
    count = len(px)
    px = np.pad(px, ((0, -count % REMAP_WIDTH), (0, 0))).reshape(-1, REMAP_WIDTH, 2)  # remap maps < 32767 wide
    values = cv2.remap(image_bgr, px[..., 0], px[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return values.reshape(-1, 3)[:count].reshape(*shape, 3)[..., ::-1].astype(np.float32) / 255.0


def robust_colours(values: np.ndarray) -> RegionColours:
    """Median colour per region (R, M, 3) of the samples that are neither highlights nor clipped.

    A highlight is a sample much brighter than the region's darker quartile; a clipped sample is
    not a highlight by itself: a camera whose white balance lifts one channel saturates that channel
    evenly over a bright region. Where every sample is clipped the median is taken over all of them
    (a lower bound in the clipped channel), and `channel_clipped` says which channel it was."""
    r, g, b = values[..., 0], values[..., 1], values[..., 2]   # slices: numpy reduces a length-3 axis slowly
    lum = (r + g + b) / 3
    saturated = values >= CLIPPED
    clipped = saturated.any(axis=-1)
    floor = np.partition(lum, lum.shape[1] // 4, axis=1)[:, lum.shape[1] // 4, None]  # darker quartile
    specular = lum > floor * SPECULAR_RATIO + SPECULAR_MARGIN
    drop = specular | clipped
    drop = np.where(drop.all(axis=1)[:, None], specular, drop)   # all clipped: keep the clipped samples
    drop &= ~drop.all(axis=1)[:, None]     # nothing usable: keep all, the caller refuses on `specular`
    rgb = _masked_median(values, drop)
    kept_lum = lum[..., None]
    centre = _masked_median(kept_lum, drop)
    spread = _masked_median(np.abs(kept_lum - centre[:, None, :]), drop)[:, 0]
    return RegionColours(rgb, specular.mean(axis=1), clipped.mean(axis=1), spread, saturated.mean(axis=1))


def _masked_median(values: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """Median over axis 1 of (R, M, C) ignoring dropped samples; sorting NaNs last is far faster
    than numpy's nanmedian on many small groups."""
    ordered = np.sort(np.where(drop[..., None], np.nan, values), axis=1)
    n = (~drop).sum(axis=1)[:, None, None]
    lo = np.take_along_axis(ordered, (n - 1) // 2, axis=1)
    hi = np.take_along_axis(ordered, n // 2, axis=1)
    return ((lo + hi) / 2)[:, 0, :]
