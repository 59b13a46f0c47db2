"""Camera calibration by a technician: the reader's own light and lens, measured once on the blank
card, so every later photo is corrected for them.

Each photo's white is already fitted with a smooth surface (`illumination`), which follows the
card-wide falloff but not what is narrower than it, such as the bright spots under the reader's
LEDs, nor what lies under the strip, where the card's white cannot be seen. Photos of the blank
card (no strip: the slot's white is visible too) measure that remainder directly: on a 2 mm grid
in card coordinates (the tray holds the card where the camera and LEDs are fixed), each photo's
linear white divided by its own smooth surface, the median over the photos, per channel. The read
path divides every sample by it before its own fit (`FlatField.gain`).

The same photos check that the camera's response is linear enough after sRGB decoding: the
card's neutral patches, relative to the white, against their reference luminance on log axes
(slope 1 for a linear response; the reader's tone curve absorbs moderate departures, but a camera
applying strong local contrast or HDR tone mapping cannot be colour-corrected reliably). And the
exposure / white-balance settings the camera chose under the LEDs are recorded, to be locked by
every later session.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from calibration import card_art, detect, illumination, sampling
from calibration.colour import lab_to_xyz, srgb_to_linear
from calibration.errors import ReadError
from calibration.observe import decode
from calibration.specs import Card

GRID_MM = 2.0
SAMPLE_HALF_MM = 0.6
MIN_PHOTOS = 3
# log-log slope of the neutral patches: 1 +- this, and their rms log deviation from that line. The
# read path's tone curve absorbs an ISP's contrast curve (the simulator's cameras: slope 0.95-1.15,
# deviation <= 0.04); beyond these, local tone mapping is at work and patch colours stop meaning much
MAX_SLOPE_ERROR = 0.3
MAX_NEUTRAL_DEVIATION = 0.06
MAX_PHOTO_SPREAD = 0.03       # rms log disagreement of one photo's map with the median: the card moved or a shadow
SMOOTH_MM = 1.5               # noise smoothing of the measured map; LED spots are ~10 mm wide


class CameraCalibrationError(ValueError):
    """The photos cannot calibrate the camera; the message says what to do."""


@dataclass(frozen=True)
class FlatField:
    """Per-channel gain of the reader's light and lens relative to the card's smooth white, on a
    regular grid in card millimetres (origin at the card's top-left, `GRID_MM` apart)."""
    gain: np.ndarray            # (rows, cols, 3), 1 on average
    step_mm: float = GRID_MM

    def at(self, points_mm: np.ndarray) -> np.ndarray:
        """Bilinear gain (..., 3) at card points (..., 2); the edge values beyond the grid."""
        points = np.asarray(points_mm, np.float32)
        grid = points / np.float32(self.step_mm) - 0.5           # cell centres sit at (i + 0.5) * step
        flat = grid.reshape(-1, 1, 2)
        out = cv2.remap(self.gain.astype(np.float32), flat[..., 0], flat[..., 1], cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
        return out.reshape(points.shape[:-1] + (3,))

    def to_dict(self) -> dict:
        return {"step_mm": self.step_mm, "shape": list(self.gain.shape),
                "gain": np.round(self.gain, 4).ravel().tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> FlatField:
        return cls(np.asarray(data["gain"], np.float32).reshape(data["shape"]), float(data["step_mm"]))


@dataclass(frozen=True)
class CameraCalibration:
    flat_field: FlatField
    response_slope: float              # neutrals, log relative signal vs log luminance: 1 is linear
    response_deviation: float          # rms log deviation of the neutrals from that line
    flat_field_range: tuple[float, float]   # min, max gain: how uneven the reader's light is
    photo_spread: float                # rms log disagreement between the photos
    photos: int
    camera_settings: dict = field(default_factory=dict)   # what the camera locked under the LEDs

    def to_dict(self) -> dict:
        return {"flat_field": self.flat_field.to_dict(), "response_slope": round(self.response_slope, 4),
                "response_deviation": round(self.response_deviation, 4),
                "flat_field_range": [round(v, 4) for v in self.flat_field_range],
                "photo_spread": round(self.photo_spread, 4), "photos": self.photos,
                "camera_settings": self.camera_settings}

    @classmethod
    def from_dict(cls, data: dict) -> CameraCalibration:
        return cls(FlatField.from_dict(data["flat_field"]), data["response_slope"], data["response_deviation"],
                   tuple(data["flat_field_range"]), data["photo_spread"], data["photos"],
                   data.get("camera_settings", {}))

    def summary(self) -> str:
        low, high = self.flat_field_range
        return (f"{self.photos} photos; light across the card {low:.2f}-{high:.2f} of its mean after the smooth "
                f"falloff; response slope {self.response_slope:.3f} (1 = linear), neutral deviation "
                f"{self.response_deviation:.3f}; photos agree to {self.photo_spread:.3f} (log rms)")


def _blank_white_points(card: Card) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """Grid cell centres (N, 2) mm, the grid's shape, and which cells lie on the blank card's bare
    white, the slot included."""
    rows, cols = int(np.ceil(card.size_mm[1] / GRID_MM)), int(np.ceil(card.size_mm[0] / GRID_MM))
    centres = (np.stack(np.meshgrid(np.arange(cols), np.arange(rows)), axis=-1).reshape(-1, 2) + 0.5) * GRID_MM
    px_per_mm = 4.0
    mask = card_art.white_mask(card, px_per_mm, SAMPLE_HALF_MM + 0.4, with_slot=True)
    r = np.clip((centres[:, 1] * px_per_mm).astype(int), 0, mask.shape[0] - 1)
    c = np.clip((centres[:, 0] * px_per_mm).astype(int), 0, mask.shape[1] - 1)
    return centres, (rows, cols), mask[r, c]


def _fill_and_smooth(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Normalised convolution: missing cells (print, markers, patches) take their neighbours' gain,
    growing outward until every cell has one; then a light smoothing of the measurement noise."""
    weight = known.astype(np.float32)
    data = np.where(known[..., None], values, 0).astype(np.float32)
    kernel = (3, 3)
    while not np.all(weight > 0):
        total = cv2.blur(weight, kernel, borderType=cv2.BORDER_REPLICATE)
        spread = cv2.blur(data, kernel, borderType=cv2.BORDER_REPLICATE)
        grow = (weight == 0) & (total > 0)
        data[grow] = spread[grow] / total[grow, None]
        weight = np.where(grow, 1.0, weight).astype(np.float32)
    sigma = SMOOTH_MM / GRID_MM
    return cv2.GaussianBlur(data, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)


def measure(photos: list[bytes], card: Card, camera_settings: dict | None = None) -> CameraCalibration:
    """The calibration from photos of the blank card taken on the reader, or a
    `CameraCalibrationError` naming what is wrong with them."""
    if len(photos) < MIN_PHOTOS:
        raise CameraCalibrationError(f"take at least {MIN_PHOTOS} photos of the blank card (got {len(photos)})")
    centres, shape, on_white = _blank_white_points(card)
    points = centres[on_white]
    neutral = np.array([p.role == "neutral" for p in card.patches])
    neutral_centres = np.array([p.center_mm for p in card.patches])[neutral]
    neutral_y = lab_to_xyz(card.patch_lab[neutral])[:, 1]
    maps, neutral_logs = [], []
    for number, photo in enumerate(photos, start=1):
        try:
            image, _ = decode(photo)
            gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            pose = detect.find_card(gray, card)
        except ReadError as err:
            raise CameraCalibrationError(f"photo {number}: {err.message}") from None
        ppm = pose.px_per_mm
        white = sampling.robust_colours(sampling.sample(image, pose, sampling.square_grid(
            points, SAMPLE_HALF_MM, ppm)))
        if np.mean(white.clipped > 0.5) > 0.05:
            raise CameraCalibrationError(f"photo {number}: the card's white is overexposed; lower the exposure")
        log_white = np.log(np.clip(srgb_to_linear(white.rgb), 1e-4, None))
        smooth = _smooth_surface(card, points, log_white)
        maps.append(log_white - smooth(points))
        patches = sampling.robust_colours(sampling.sample(image, pose, sampling.square_grid(
            neutral_centres, card.patches[0].size_mm * 0.3, ppm)))
        relative = np.log(np.clip(srgb_to_linear(patches.rgb), 1e-4, None)) - smooth(neutral_centres)
        neutral_logs.append(relative.mean(axis=1))
    stack = np.stack(maps)                                   # (photos, N, 3) log gain
    median = np.median(stack, axis=0)
    spread = float(np.sqrt(np.mean((stack - median) ** 2)))
    if spread > MAX_PHOTO_SPREAD:
        raise CameraCalibrationError("the photos disagree: keep the card still in the tray, the lid closed, and no "
                                     f"strip in the slot (log rms {spread:.3f})")
    median -= np.median(median, axis=0)                      # the smooth fit already carries the level
    grid = np.zeros(shape + (3,), np.float32)
    grid.reshape(-1, 3)[on_white] = median
    gain = np.exp(_fill_and_smooth(grid, on_white.reshape(shape)))
    slope, deviation = _response(np.log(neutral_y), np.mean(neutral_logs, axis=0))
    if abs(slope - 1) > MAX_SLOPE_ERROR or deviation > MAX_NEUTRAL_DEVIATION:
        raise CameraCalibrationError(
            f"the camera's response is not linear enough (slope {slope:.2f}, deviation {deviation:.3f}): switch "
            "off HDR / local tone mapping and any contrast or gamma setting of the camera")
    return CameraCalibration(FlatField(gain), slope, deviation, (float(gain.min()), float(gain.max())), spread,
                             len(photos), dict(camera_settings or {}))


def _smooth_surface(card: Card, points: np.ndarray, log_white: np.ndarray):
    """The per-photo surface the read path fits (same terms), least squares on all of the white:
    what it cannot follow is what the flat field must hold."""
    coefficients, *_ = np.linalg.lstsq(illumination.surface_design(points, card), log_white, rcond=None)
    return lambda at: illumination.surface_design(at, card) @ coefficients


def _response(log_luminance: np.ndarray, log_signal: np.ndarray) -> tuple[float, float]:
    """Slope and rms deviation of the straight line through the neutrals' log signal."""
    slope, intercept = np.polyfit(log_luminance, log_signal, 1)
    return float(slope), float(np.sqrt(np.mean((log_signal - (slope * log_luminance + intercept)) ** 2)))
