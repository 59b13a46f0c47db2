"""Finding the reference card in a frame: its four ArUco markers give the homography from card
millimetres to image pixels, and their black/white edges tell how sharp the photo is.

Only marker corners and small neighbourhoods are touched; the frame is never warped.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from calibration.card_art import aruco_dictionary
from calibration.errors import ReadError
from calibration.specs import Card

MIN_MARKERS = 3            # three markers (12 corners) still fix a homography well
MAX_REPROJECTION_MM = 0.6  # corners further off than this: card bent or a false marker
MIN_SHARPNESS = 0.8        # 1/mm: edge slope / contrast; below it the blur spreads over > ~0.5 mm
_EDGE_SAMPLES = 41         # samples across each marker edge, spanning +-2 mm


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
    # One coarse and one fine threshold window cover markers of 30-150 px at a third of the cost
    # of the default sweep; sub-pixel corners make the homography accurate to ~0.1 mm.
    params.adaptiveThreshWinSizeMin = 15
    params.adaptiveThreshWinSizeMax = 45
    params.adaptiveThreshWinSizeStep = 30
    params.minMarkerPerimeterRate = 0.04
    params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
    return cv2.aruco.ArucoDetector(cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, dictionary_name)), params)


def _marker_corners_mm(card: Card, index: int) -> np.ndarray:
    """Corners in ArUco's order (clockwise from the marker's top-left), printed upright."""
    cx, cy = card.marker_centers_mm[index]
    h = card.marker_size_mm / 2
    return np.array([[cx - h, cy - h], [cx + h, cy - h], [cx + h, cy + h], [cx - h, cy + h]])


def find_card(gray: np.ndarray, card: Card) -> CardPose:
    """Locate the card or raise `card_not_found` (or `blurred` when blur is why it was missed)."""
    corners, ids, _ = _detector(card.marker_dictionary).detectMarkers(gray)
    found = {} if ids is None else {int(i): c.reshape(4, 2) for i, c in zip(ids.ravel(), corners)}
    matched = [(k, found[mid]) for k, mid in enumerate(card.marker_ids) if mid in found]
    if len(matched) < MIN_MARKERS:
        if frame_blur_suspected(gray):
            raise ReadError("blurred", "The photo is blurred: keep the reader still and make sure the "
                                       "card lies flat in the tray, then read again.")
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


def marker_sharpness(gray: np.ndarray, card: Card, pose: CardPose) -> float:
    """Steepest edge slope divided by edge contrast (1/mm), measured across the outer edges of the
    markers. A step blurred by a Gaussian of sigma mm gives 1 / (sigma * sqrt(2 pi)), so the figure
    is independent of resolution, exposure and print contrast."""
    offsets = np.linspace(-2.0, 2.0, _EDGE_SAMPLES)
    profiles = []
    for k in range(len(card.marker_ids)):
        (cx, cy), h = card.marker_centers_mm[k], card.marker_size_mm / 2
        # midpoints of the four outer edges, each with its outward normal
        for (ex, ey), (nx, ny) in (((cx, cy - h), (0, -1)), ((cx + h, cy), (1, 0)),
                                   ((cx, cy + h), (0, 1)), ((cx - h, cy), (-1, 0))):
            along = np.linspace(-0.25 * h, 0.25 * h, 5)
            tx, ty = -ny, nx
            pts = np.stack([ex + offsets[None, :] * nx + along[:, None] * tx,
                            ey + offsets[None, :] * ny + along[:, None] * ty], axis=-1)
            profiles.append(pts)
    px = pose.to_image(np.array(profiles)).astype(np.float32)   # (edges, 5, samples, 2)
    flat = px.reshape(-1, _EDGE_SAMPLES, 2)
    values = cv2.remap(gray, flat[..., 0], flat[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    values = values.reshape(px.shape[:3]).astype(np.float64).mean(axis=1)  # average along each edge
    contrast = values[:, -5:].mean(axis=1) - values[:, :5].mean(axis=1)   # white outside, black inside
    slope = np.max(np.diff(values, axis=1), axis=1) / (offsets[1] - offsets[0])
    valid = contrast > 20
    if not np.any(valid):
        return 0.0
    return float(np.median(slope[valid] / contrast[valid]))


def frame_blur_suspected(gray: np.ndarray) -> bool:
    """Without a card to measure, judge blur from the whole frame: a sharp photo of a printed card
    has strong fine-scale edges; a defocused one has almost none at any place."""
    small = cv2.resize(gray, (gray.shape[1] // 2, gray.shape[0] // 2), interpolation=cv2.INTER_AREA)
    lap = np.abs(cv2.Laplacian(small, cv2.CV_16S, ksize=3))
    grad = np.abs(cv2.Sobel(small, cv2.CV_16S, 1, 0)) + np.abs(cv2.Sobel(small, cv2.CV_16S, 0, 1))
    strong_lap = float(np.percentile(lap, 99.9))
    strong_grad = float(np.percentile(grad, 99.9))
    # edges are present (gradient) but none is crisp (laplacian small relative to gradient)
    return strong_grad > 40 and strong_lap < 0.12 * strong_grad
