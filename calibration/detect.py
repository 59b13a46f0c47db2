"""Finding the reference card in a frame: its four ArUco markers give the homography from card
millimetres to image pixels, and their black/white edges tell how sharp the photo is.

Only marker corners and small neighbourhoods are touched; the frame is never warped.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from calibration.errors import ReadError
from calibration.quantiles import median
from calibration.specs import Card

MIN_MARKERS = 3            # three markers (12 corners) still fix a homography well
DETECT_LONG_SIDE = 1100    # markers are looked for on a frame this size, then refined at full size
MAX_REPROJECTION_MM = 0.6  # corners further off than this: card bent or a false marker
MIN_SHARPNESS = 0.8        # 1/mm: edge slope / contrast; below it the blur spreads over > ~0.5 mm
EDGE_HALF_WIDTH_MM = 2.0   # edge profiles span +-2 mm
_EDGE_SAMPLES = 41
BLURRED_MESSAGE = "The photo is blurred: keep the reader still and the card flat, then read again."
OUTLINE_WORK_PX = 480      # the card outline is found on a frame this size (it is large and plain)


@dataclass(frozen=True)
class CardPose:
    homography: np.ndarray     # card mm -> image px
    px_per_mm: float
    markers_found: int
    reprojection_mm: float

    def to_image(self, points_mm: np.ndarray) -> np.ndarray:
        pts = np.asarray(points_mm, dtype=np.float64)
        flat = pts.reshape(-1, 2)
        h = self.homography
        w = flat @ h[2, :2] + h[2, 2]
        xy = (flat @ h[:2, :2].T + h[:2, 2]) / w[:, None]
        return xy.reshape(pts.shape)


@lru_cache(maxsize=4)
def _detector(dictionary_name: str) -> cv2.aruco.ArucoDetector:
    params = cv2.aruco.DetectorParameters()
    # Markers are searched on a frame of ~1100 px, where they are 35-70 px wide: two threshold
    # windows cover them at a third of the default sweep's cost, and contours too small to be a
    # marker are dropped early. Sub-pixel corners make the homography accurate to ~0.05 mm.
    params.adaptiveThreshWinSizeMin = 15
    params.adaptiveThreshWinSizeMax = 45
    params.adaptiveThreshWinSizeStep = 30
    params.minMarkerPerimeterRate = 0.08
    params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
    return cv2.aruco.ArucoDetector(cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, dictionary_name)), params)


def _refine(gray: np.ndarray, corners: np.ndarray, scale: float) -> np.ndarray:
    """Corners found on the scaled frame, refined to sub-pixel on the full one."""
    if scale == 1.0:
        return corners
    # ArUco's corners are pixel-centre based: map centres, not edges, between the two scales
    full = ((corners + 0.5) / scale - 0.5).astype(np.float32).reshape(-1, 1, 2)
    window = max(2, int(round(1.5 / scale)))
    cv2.cornerSubPix(gray, full, (window, window), (-1, -1),
                     (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 20, 0.01))
    return full.reshape(4, 2)


def _marker_corners_mm(card: Card, index: int) -> np.ndarray:
    """Corners in ArUco's order (clockwise from the marker's top-left), printed upright."""
    cx, cy = card.marker_centers_mm[index]
    h = card.marker_size_mm / 2
    return np.array([[cx - h, cy - h], [cx + h, cy - h], [cx + h, cy + h], [cx - h, cy + h]])


def find_card(gray: np.ndarray, card: Card) -> CardPose:
    """Locate the card or raise `card_not_found` (or `blurred` when blur is why it was missed)."""
    scale = min(1.0, DETECT_LONG_SIDE / max(gray.shape))
    small = gray if scale == 1.0 else cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    corners, ids, _ = _detector(card.marker_dictionary).detectMarkers(small)
    found = {} if ids is None else {int(i): _refine(gray, c.reshape(4, 2), scale) for i, c in zip(ids.ravel(), corners)}
    matched = [(k, found[mid]) for k, mid in enumerate(card.marker_ids) if mid in found]
    if len(matched) < MIN_MARKERS:
        outline = outline_sharpness(gray, card)
        if outline is not None and outline < MIN_SHARPNESS:
            raise ReadError("blurred", BLURRED_MESSAGE)
        raise ReadError("card_not_found", "The reference card was not found: place the card flat in the "
                                          "tray with all four corner squares visible, then read again.")
    mm = np.concatenate([_marker_corners_mm(card, k) for k, _ in matched])
    px = np.concatenate([c for _, c in matched]).astype(np.float64)
    homography, _ = cv2.findHomography(mm, px, 0)
    if homography is None:
        raise ReadError("card_not_found", "The reference card could not be located: place it flat in the "
                                          "tray and read again.")
    px_per_mm = _scale_at(homography, np.mean(mm, axis=0))
    pose = CardPose(homography, px_per_mm, len(matched), 0.0)
    err_mm = float(np.mean(np.linalg.norm(pose.to_image(mm) - px, axis=1))) / px_per_mm
    if err_mm > MAX_REPROJECTION_MM:
        raise ReadError("card_not_found", "The reference card looks bent or partly covered: lay it flat and "
                                          "uncovered in the tray, then read again.")
    return CardPose(homography, px_per_mm, len(matched), err_mm)


def _scale_at(homography: np.ndarray, point_mm: np.ndarray) -> float:
    """Geometric-mean pixels per millimetre of the homography around a card point."""
    p = np.array([point_mm, point_mm + [1.0, 0.0], point_mm + [0.0, 1.0]])
    q = cv2.perspectiveTransform(p[None], homography)[0]
    return float(np.sqrt(np.linalg.norm(q[1] - q[0]) * np.linalg.norm(q[2] - q[0])))


def _edge_sharpness(gray: np.ndarray, px: np.ndarray, step_mm: float) -> float:
    """Steepest slope over contrast (1/mm) of intensity profiles across edges. `px` holds (edges,
    lines, samples, 2) pixel positions: for each edge a few parallel lines crossing it, sampled
    `step_mm` apart. A step blurred by a Gaussian of sigma mm gives 1 / (sigma * sqrt(2 pi)),
    whatever the resolution, exposure or print contrast."""
    flat = px.reshape(-1, px.shape[2], 2).astype(np.float32)
    values = cv2.remap(gray, flat[..., 0], flat[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    values = values.reshape(px.shape[:3]).astype(np.float64).mean(axis=1)   # average along each edge
    contrast = np.abs(values[:, -5:].mean(axis=1) - values[:, :5].mean(axis=1))
    slope = np.max(np.abs(np.diff(values, axis=1)), axis=1) / step_mm
    valid = contrast > 20
    return float(median(slope[valid] / contrast[valid])) if np.any(valid) else 0.0


def _edge_lines(midpoints: np.ndarray, normals: np.ndarray, half_length: float, half_width: float,
                samples: int) -> np.ndarray:
    """(edges, 5, samples, 2) points on five lines crossing each edge at right angles."""
    offsets = np.linspace(-half_width, half_width, samples)
    along = np.linspace(-half_length, half_length, 5)
    tangents = np.stack([-normals[:, 1], normals[:, 0]], axis=-1)
    return (midpoints[:, None, None, :] + offsets[None, None, :, None] * normals[:, None, None, :]
            + along[None, :, None, None] * tangents[:, None, None, :])


def marker_sharpness(gray: np.ndarray, card: Card, pose: CardPose) -> float:
    """Edge sharpness (1/mm) across the outer edges of the card's markers."""
    mids, normals = [], []
    for (cx, cy) in card.marker_centers_mm:
        h = card.marker_size_mm / 2
        for nx, ny in ((0, -1), (1, 0), (0, 1), (-1, 0)):
            mids.append((cx + nx * h, cy + ny * h))
            normals.append((nx, ny))
    lines_mm = _edge_lines(np.array(mids, float), np.array(normals, float), card.marker_size_mm / 8,
                           EDGE_HALF_WIDTH_MM, _EDGE_SAMPLES)
    return _edge_sharpness(gray, pose.to_image(lines_mm), 2 * EDGE_HALF_WIDTH_MM / (_EDGE_SAMPLES - 1))


def outline_sharpness(gray: np.ndarray, card: Card) -> float | None:
    """Edge sharpness (1/mm) of the card's outline against the tray, when no marker could be decoded:
    the card is then found as the largest bright shape with its aspect ratio. None without one."""
    scale = OUTLINE_WORK_PX / max(gray.shape)
    small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    _, mask = cv2.threshold(small, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    rect = cv2.minAreaRect(max(contours, key=cv2.contourArea))
    long_side, short_side = max(rect[1]), min(rect[1])
    aspect = card.size_mm[0] / card.size_mm[1]
    if long_side * short_side < 0.03 * small.size or not 0.7 * aspect < long_side / max(short_side, 1) < 1.3 * aspect:
        return None
    px_per_mm = long_side / scale / card.size_mm[0]
    corners = cv2.boxPoints(rect) / scale
    centre = corners.mean(axis=0)
    mids = (corners + np.roll(corners, -1, axis=0)) / 2
    normals = (mids - centre) / np.linalg.norm(mids - centre, axis=1, keepdims=True)
    half = EDGE_HALF_WIDTH_MM * px_per_mm
    lines = _edge_lines(mids, normals, 4 * px_per_mm, half, _EDGE_SAMPLES)
    return _edge_sharpness(gray, lines, 2 * EDGE_HALF_WIDTH_MM / (_EDGE_SAMPLES - 1))
