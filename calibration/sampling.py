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


@dataclass(frozen=True)
class RegionColours:
    rgb: np.ndarray          # (R, 3) robust colour, non-linear camera RGB in 0..1
    specular: np.ndarray     # (R,) fraction of the region's samples rejected as highlights
    clipped: np.ndarray      # (R,) fraction with a saturated channel
    spread: np.ndarray       # (R,) median absolute deviation of the kept samples' luminance


def square_grid(centers_mm: np.ndarray, half_mm: float, px_per_mm: float) -> np.ndarray:
    """(R, K*K, 2) points covering squares of half-side `half_mm`, about one per pixel (capped)."""
    k = int(np.clip(round(2 * half_mm * px_per_mm), 4, MAX_GRID))
    u = np.linspace(-half_mm, half_mm, k)
    offsets = np.stack(np.meshgrid(u, u), axis=-1).reshape(-1, 2)
    return np.asarray(centers_mm, float)[:, None, :] + offsets[None, :, :]


def sample(image_rgb: np.ndarray, pose: CardPose, points_mm: np.ndarray) -> np.ndarray:
    """Bilinear samples (..., 3) in 0..1 at card points (..., 2)."""
    shape = points_mm.shape[:-1]
    px = pose.to_image(points_mm.reshape(-1, 2)).astype(np.float32).reshape(1, -1, 2)
    values = cv2.remap(image_rgb, px[..., 0], px[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return values.reshape(*shape, 3).astype(np.float32) / 255.0


def robust_colours(values: np.ndarray) -> RegionColours:
    """Median colour per region (R, M, 3) of the samples that are neither highlights nor clipped."""
    lum = values.mean(axis=-1)
    clipped = values.max(axis=-1) >= CLIPPED
    floor = np.percentile(lum, 25, axis=1, keepdims=True)
    specular = clipped | (lum > floor * SPECULAR_RATIO + SPECULAR_MARGIN)
    all_gone = specular.all(axis=1)
    specular_kept = specular & ~all_gone[:, None]  # nothing usable: keep all, the caller refuses on `specular`
    kept = np.where(specular_kept[..., None], np.nan, values)
    rgb = np.nanmedian(kept, axis=1)
    kept_lum = np.where(specular_kept, np.nan, lum)
    spread = np.nanmedian(np.abs(kept_lum - np.nanmedian(kept_lum, axis=1, keepdims=True)), axis=1)
    return RegionColours(rgb, specular.mean(axis=1), clipped.mean(axis=1), spread)
