"""Synthetic photographs of a dipped strip lying in the reference card's slot.

A scene is drawn once as a `SceneSpec` (every random choice explicit, so a failing case can be
replayed and varied one field at a time) and rendered physically: each surface is a reflectance
spectrum, lit by a light's spectrum and integrated through a camera's spectral sensitivities into
raw sensor RGB; geometry, light fall-off, lens and sensor are applied in that raw space; only then
does a modelled camera ISP white-balance, colour-correct (with a matrix tuned under D65, so it is
wrong under other lights), tone-map and JPEG-compress. Ground truth comes back as a `Truth`.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from calibration import card_art
from calibration.colour import delta_e_2000, hex_to_lab_d50
from calibration.specs import (DEFAULT_CARD, DEFAULT_PRODUCT, Card, Product, builtin_products, load_card,
                              load_product)
from simulator import spectra

MIN_RESOLUTION = (1456, 1088)
MAX_RESOLUTION = (4056, 3040)
OVERSAMPLE = 1.5            # card drawn at this multiple of its px/mm in the frame, then resampled
INK_REFLECTANCE = 0.035     # carbon-black print: a few percent, spectrally flat
STRIP_SHADOW_BLUR_MM = 0.25
MOTTLE_GRAIN_MM = 0.4       # size of the blotches in a reagent pad's dye density
PAPER_GRAIN_MM = 0.15       # paper fibre scale
TRAY_BLOTCH_PX = 48         # low-frequency unevenness of the tray surface, frame pixels
# where a reader's four LEDs put their brightest light (frame fractions x, y, spread): narrower than
# the card-wide light field, so a per-photo smooth fit to the card's white cannot follow them
LED_HOTSPOTS = ((0.32, 0.42, 0.06), (0.68, 0.42, 0.06), (0.40, 0.60, 0.05), (0.60, 0.60, 0.05))
FIELD_DOWNSCALE = 8         # smooth fields (light, vignetting) are computed coarse and upsampled
TONE_LUT_LEVELS = 2 ** 16  # linear 0..1 as uint16 indexes the tone curve
WRITE_JPEG_QUALITY = 95     # for saving a scene rendered without the camera's own JPEG
FRAME_MARGIN = 0.02         # random poses keep the card this fraction of the width inside the frame

# fault -> the error code the reader must give (None: read, but flag the pad)
FAULTS = {
    "no_card": "card_not_found",
    "no_strip": "strip_not_found",
    "reversed": "strip_reversed",
    "pads_down": "strip_reversed",
    "wrong_strip": "wrong_strip",
    "glare": "glare",
    "too_dark": "too_dark",
    "overexposed": "overexposed",
    "blurred": "blurred",
    "out_of_gamut": None,
}

# Colours no reagent chart contains; an out-of-gamut pad gets one of those far from its own chart.
_OFF_CHART_COLOURS = ("1F2A8C", "2B50C8", "8A1F9A", "C81E1E", "101010", "16A8E0", "E0E0FF")
_OFF_CHART_MIN_DE = 20.0


@dataclass(frozen=True)
class Glare:
    """A specular highlight: an elliptical Gaussian of the light's own colour on the card plane."""
    center_mm: tuple[float, float]
    sigma_mm: tuple[float, float]
    angle_deg: float
    peak: float  # relative to the signal of a perfect white


@dataclass(frozen=True)
class SceneSpec:
    """Everything that varies between photographs. The defaults are an ideal, noiseless scene;
    `random_scene` draws realistic values."""
    product: str | Product = DEFAULT_PRODUCT  # the product the reader is told to expect (id, path or itself)
    card: str | Card = DEFAULT_CARD  # id, path or itself
    levels: dict[str, float] = field(default_factory=dict)  # analyte -> level position t (missing: 0)
    illuminant: str = "D65"  # a spectra.illuminant name
    camera: str = "imx477"  # a spectra.camera name
    # a second light (window + lamp): its share of the light at one card edge, at the opposite
    # edge, and the direction (deg) from the first edge to the second
    second_illuminant: str | None = None
    light_mix: tuple[float, float, float] = (0.0, 0.0, 0.0)
    resolution: tuple[int, int] = (2028, 1520)
    # pose of the card in front of a pinhole camera
    card_fill: float = 0.8  # card width / frame width
    rotation_deg: float = 0.0  # in the card's plane
    tilt_deg: tuple[float, float] = (0.0, 0.0)  # about the card's x and y axes
    fov_deg: float = 62.0  # horizontal field of view
    offset: tuple[float, float] = (0.0, 0.0)  # card shift, as a fraction of the room to the frame edge
    # the strip
    strip_product: str | Product | None = None  # product of the strip actually in the slot, if not `product`
    strip_shift_mm: tuple[float, float] = (0.0, 0.0)  # along, across the slot
    strip_rotation_deg: float = 0.0
    lot_absorbance: dict[str, float] = field(default_factory=dict)  # analyte -> dye-load scale of the lot
    off_chart: dict[str, str] = field(default_factory=dict)  # analyte -> sRGB hex of an impossible pad colour
    shadow: tuple[float, float] = (0.0, 0.0)  # offset mm (sign picks the edge), strength
    mottle: float = 0.0  # relative spread of pad dye density
    # light
    exposure: float = 1.0  # linear output of a perfect white under unit light
    light_gradient: tuple[float, float] = (0.0, 0.0)  # amplitude at the card's edge, direction deg
    light_falloff: tuple[float, float, float] = (0.0, 70.0, 25.0)  # loss at 100 mm, centre x, y mm
    vignetting: float = 0.0  # loss at the frame's corners
    led_hotspots: float = 0.0  # extra light where the reader's LEDs point (fixed in the frame): peak gain - 1
    glare: Glare | None = None
    # camera
    # "illuminant" (light estimate), "grey_world", or a fixed preset whatever the light:
    # "preset:daylight" (D65), "preset:tungsten" (A), "preset:fluorescent" (F2)
    white_balance: str = "illuminant"
    wb_error: tuple[float, float, float] = (1.0, 1.0, 1.0)  # multiplies the ideal gains
    analog_gain: float = 1.0
    noise: bool = False
    blur_mm: float = 0.0  # optical blur sigma, on the card
    jpeg_quality: int | None = None
    # surfaces
    paper_texture: float = 0.0
    tray_srgb: str = "505050"
    tray_texture: float = 0.0
    fault: str | None = None
    # spectra: "smooth" (one smooth reflectance model for all) or "bands" (pads dyed by their
    # chemistry's absorption bands) and "cmyk" (card patches printed in process inks)
    dye_model: str = "smooth"
    ink_model: str = "smooth"


@dataclass(frozen=True)
class PadTruth:
    t: float | None  # level position; None for an out-of-gamut pad
    level: str | None  # code of the nearest chart level
    value: float | None  # levels' values interpolated at t; None for nominal pads
    center_mm: tuple[float, float]  # where the pad lies on the card


@dataclass(frozen=True)
class Truth:
    spec: SceneSpec
    pads: dict[str, PadTruth]  # the pads visible on the strip in the slot
    expected_error: str | None
    homography: np.ndarray  # card millimetres -> frame pixels (pixel centres at integers)
    strip_product: str | None  # the strip physically present
    out_of_gamut_pads: tuple[str, ...] = ()

# --- geometry ------------------------------------------------------------------------------------


def _card(card: str | Card) -> Card:
    """A card given as itself, or by built-in id or path."""
    return card if isinstance(card, Card) else _load_card(card)


def _product(product: str | Product) -> Product:
    """A product given as itself, or by built-in id or path."""
    return product if isinstance(product, Product) else _load_product(product)


@lru_cache(maxsize=None)
def _load_card(name: str) -> Card:
    return load_card(name)


@lru_cache(maxsize=None)
def _load_product(name: str) -> Product:
    return load_product(name)


def _rotation(tilt_x_deg: float, tilt_y_deg: float, roll_deg: float) -> np.ndarray:
    ax, ay, az = np.radians([tilt_x_deg, tilt_y_deg, roll_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _project(h: np.ndarray, pts_mm: np.ndarray) -> np.ndarray:
    return cv2.perspectiveTransform(np.asarray(pts_mm, np.float64).reshape(-1, 1, 2), h).reshape(-1, 2)


def _corners(card: Card) -> np.ndarray:
    w, h = card.size_mm
    return np.array([[0, 0], [w, 0], [w, h], [0, h]], float)


def _centred_homography(spec: SceneSpec, card: Card) -> np.ndarray:
    """Pinhole camera looking at the card plane; the card's centre on the optical axis, its
    projected width `card_fill` of the frame."""
    width_px, height_px = spec.resolution
    focal = width_px / 2 / math.tan(math.radians(spec.fov_deg) / 2)
    k = np.array([[focal, 0, width_px / 2 - 0.5], [0, focal, height_px / 2 - 0.5], [0, 0, 1]])
    centre = np.array([[1, 0, -card.size_mm[0] / 2], [0, 1, -card.size_mm[1] / 2], [0, 0, 1]])
    rot = _rotation(*spec.tilt_deg, spec.rotation_deg)
    mid = np.array([[0, card.size_mm[1] / 2], [card.size_mm[0], card.size_mm[1] / 2]])
    distance = focal * card.size_mm[0] / (spec.card_fill * width_px)
    for _ in range(4):  # perspective makes projected width depend on distance non-linearly
        h = k @ np.column_stack([rot[:, 0], rot[:, 1], [0, 0, distance]]) @ centre
        seen = np.linalg.norm(np.diff(_project(h, mid), axis=0))
        distance *= seen / (spec.card_fill * width_px)
    return h / h[2, 2]


def card_homography(spec: SceneSpec) -> np.ndarray:
    """Card millimetres -> frame pixels for the pose in `spec`."""
    card = _card(spec.card)
    h = _centred_homography(spec, card)
    lo, hi = (f(_project(h, _corners(card)), axis=0) for f in (np.min, np.max))
    room = np.maximum(0.0, (np.array(spec.resolution) - (hi - lo)) / 2)
    shift = np.asarray(spec.offset) * room
    return np.array([[1, 0, shift[0]], [0, 1, shift[1]], [0, 0, 1]]) @ h


def _strip_placement(spec: SceneSpec, card: Card, length_mm: float):
    """Function mapping strip coordinates (along from its handle end, across) to card mm, with the
    strip's jitter in the slot (rotation about its middle, then shift)."""
    theta = math.radians(spec.strip_rotation_deg)
    cos, sin = math.cos(theta), math.sin(theta)
    shift_along, shift_across = spec.strip_shift_mm

    def to_card(along, across):
        along, across = np.asarray(along, float) - length_mm / 2, np.asarray(across, float)
        a = cos * along - sin * across + length_mm / 2 + shift_along
        c = sin * along + cos * across + shift_across
        return card.slot_to_card(a, c)
    return to_card


def _rect(to_card, along: tuple[float, float], across: tuple[float, float]) -> np.ndarray:
    (a0, a1), (c0, c1) = along, across
    return to_card([a0, a1, a1, a0], [c0, c0, c1, c1])

# --- materials -----------------------------------------------------------------------------------


class _Optics:
    """Light and camera of one scene: turns reflectances into raw sensor RGB.

    Each light is scaled so a perfect white's largest raw channel is 1; a mixture with the second
    light's `share` is the sum of both so scaled, so raw colours of a mixture blend linearly."""

    def __init__(self, spec: SceneSpec, share: float = 0.0):
        self.camera = spectra.camera(spec.camera)
        self.spd = self._scaled(spec.illuminant)
        if share:
            self.spd = (1 - share) * self.spd + share * self._scaled(spec.second_illuminant)
        self.white = self.spd @ self.camera.sensitivities

    def _scaled(self, name: str) -> np.ndarray:
        spd = spectra.illuminant(name)
        return spd / (spd @ self.camera.sensitivities).max()

    def raw(self, reflectance: np.ndarray) -> np.ndarray:
        return ((reflectance * self.spd) @ self.camera.sensitivities).astype(np.float32)


def patch_reflectances(card: Card, ink_model: str = "smooth") -> np.ndarray:
    """Reflectance of each card patch: the smooth model, or process inks on paper ("cmyk")."""
    if ink_model == "smooth":
        return np.array([spectra.reflectance_from_lab_d50(p.lab_d50) for p in card.patches])
    if ink_model == "cmyk":
        return np.array([spectra.card_ink_reflectance(tuple(p.lab_d50)) for p in card.patches])
    raise ValueError(f"unknown ink model {ink_model!r}; known: smooth, cmyk")


def _card_palette(card: Card, optics: _Optics, ink_model: str) -> np.ndarray:
    """Raw RGB per card_art label, as a 256-entry lookup table."""
    refl = np.vstack([spectra.reflectance_from_srgb(card.background_srgb),
                      np.full_like(spectra.WAVELENGTHS, INK_REFLECTANCE), patch_reflectances(card, ink_model)])
    lut = np.zeros((256, 3), np.float32)
    lut[:len(refl)] = optics.raw(refl)
    return lut


def _level_position(spec: SceneSpec, analyte: str) -> float:
    return float(spec.levels.get(analyte, 0.0))


def _chart_reflectance(analyte: str, colour: str, dye_model: str) -> np.ndarray:
    if dye_model == "smooth":
        return spectra.reflectance_from_srgb(colour)
    if dye_model == "bands":
        return spectra.pad_dye_reflectance(analyte, colour)
    raise ValueError(f"unknown dye model {dye_model!r}; known: smooth, bands")


def pad_reflectance(spec: SceneSpec, pad) -> np.ndarray:
    """The pad's reflectance at its level position, with the strip lot's dye load."""
    if pad.analyte in spec.off_chart:
        return spectra.reflectance_from_srgb(spec.off_chart[pad.analyte])
    chart = np.array([_chart_reflectance(pad.analyte, level.srgb, spec.dye_model) for level in pad.levels])
    return spectra.absorbance_mix(chart, _level_position(spec, pad.analyte),
                                  spec.lot_absorbance.get(pad.analyte, 1.0))

# --- textures ------------------------------------------------------------------------------------


def _coarse_noise(rng: np.random.Generator, shape: tuple[int, int], grain_px: float, channels: int = 1):
    """Unit normal noise on a grid `grain_px` apart covering `shape`."""
    step = max(grain_px, 1.0)
    coarse_shape = (max(2, int(shape[0] / step) + 2), max(2, int(shape[1] / step) + 2), channels)
    return rng.standard_normal(coarse_shape, dtype=np.float32).squeeze(-1 if channels == 1 else ())


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], grain_px: float,
                  interpolation: int = cv2.INTER_CUBIC) -> np.ndarray:
    """Zero-mean noise with features about `grain_px` across (spread a little under 1): white noise
    on a coarse grid, upsampled, so it costs little at any size."""
    coarse = _coarse_noise(rng, shape, grain_px)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=interpolation)

# --- the card layer (card millimetres, oversampled) ---------------------------------------------


_LABEL_MAPS: dict = {}
_LABEL_MAPS_KEPT = 8


def _geometry_key(card: Card) -> tuple:
    """Everything card_art's drawing depends on (not the patch colours)."""
    return (card.id, card.size_mm, card.marker_dictionary, card.marker_size_mm, card.marker_ids,
            card.marker_centers_mm, card.slot_handle_end_mm, card.slot_direction, card.slot_width_mm,
            tuple((p.center_mm, p.size_mm) for p in card.patches))


def _label_map(card: Card, px_per_mm: int) -> np.ndarray:
    """card_art's label map, cached: drawing it costs as much as the rest of the card."""
    key = (_geometry_key(card), px_per_mm)
    if key not in _LABEL_MAPS:
        if len(_LABEL_MAPS) >= _LABEL_MAPS_KEPT:
            del _LABEL_MAPS[next(iter(_LABEL_MAPS))]
        labels = card_art.label_map(card, px_per_mm)
        labels.setflags(write=False)
        _LABEL_MAPS[key] = labels
    return _LABEL_MAPS[key]


def _planes(image: np.ndarray, roi: tuple[slice, slice]) -> np.ndarray:
    """A box of a planar (channel, row, col) image, as a view."""
    return image[(slice(None),) + roi]


class _Layer:
    """The card plane at `ppm` px/mm: premultiplied raw RGB and its coverage (alpha).

    Images are planar (channel, row, col) up to the sensor: OpenCV warps a single-channel plane at
    the same speed at any rotation, an interleaved 3-channel image up to four times slower."""

    def __init__(self, card: Card, ppm: float, opaque: bool):
        """An opaque layer (the card) covers everything; otherwise only what is painted on it."""
        self.ppm = ppm
        self.shape = (int(round(card.size_mm[1] * ppm)), int(round(card.size_mm[0] * ppm)))
        self.opaque = opaque
        self.rgb = (np.empty if opaque else np.zeros)((3,) + self.shape, np.float32)
        self.alpha = None if opaque else np.zeros(self.shape, np.float32)

    def to_px(self, pts_mm: np.ndarray) -> np.ndarray:
        return np.asarray(pts_mm) * self.ppm - 0.5

    def mm_to_layer(self) -> np.ndarray:
        return np.array([[self.ppm, 0, -0.5], [0, self.ppm, -0.5], [0, 0, 1]])

    def box(self, pts_mm: np.ndarray, pad_px: int = 2):
        """Pixel box (rows, cols slices) covering points given in mm, clipped to the layer."""
        pts = self.to_px(pts_mm)
        lo = np.maximum(np.floor(pts.min(0)).astype(int) - pad_px, 0)
        hi = np.minimum(np.ceil(pts.max(0)).astype(int) + pad_px + 1, [self.shape[1], self.shape[0]])
        return slice(lo[1], max(lo[1], hi[1])), slice(lo[0], max(lo[0], hi[0]))

    def coverage(self, polygon_mm: np.ndarray, pad_px: int = 2):
        """Anti-aliased coverage of a polygon, cropped to its bounding box: (alpha, (rows, cols))."""
        roi = self.box(polygon_mm, pad_px)
        lo = np.array([roi[1].start, roi[0].start])
        mask = np.zeros((roi[0].stop - roi[0].start, roi[1].stop - roi[1].start), np.uint8)
        pts = self.to_px(polygon_mm)
        fixed = np.round((pts - lo) * 16).astype(np.int32)  # 4 fractional bits
        cv2.fillPoly(mask, [fixed], 255, cv2.LINE_AA, shift=4)
        return mask.astype(np.float32) / 255, roi

    def paint(self, polygon_mm: np.ndarray, colour) -> np.ndarray:
        """Lay an opaque surface (raw RGB, or a planar image the size of the polygon's box) over the layer."""
        alpha, roi = self.coverage(polygon_mm)
        colour = colour(alpha.shape) if callable(colour) else np.asarray(colour, np.float32)[:, None, None]
        region = _planes(self.rgb, roi)
        region *= 1 - alpha
        region += colour * alpha
        if self.alpha is not None:
            self.alpha[roi] = self.alpha[roi] * (1 - alpha) + alpha
        return alpha


def _draw_card(layer: _Layer, spec: SceneSpec, card: Card, optics: _Optics, rng) -> None:
    """The printed card (card_art's drawing, each label its own spectrum) on grainy paper."""
    labels = _label_map(card, layer.ppm)
    palette = _card_palette(card, optics, spec.ink_model)
    for c in range(3):
        cv2.LUT(labels, np.ascontiguousarray(palette[:, c]), dst=layer.rgb[c])
    if spec.paper_texture > 0:
        # fibres span a few layer pixels: linear upsampling is indistinguishable there, and cheaper
        grain = _smooth_noise(rng, layer.shape, PAPER_GRAIN_MM * layer.ppm, cv2.INTER_LINEAR)
        grain *= spec.paper_texture
        grain += 1
        layer.rgb *= grain


def _draw_shadow(layer: _Layer, to_card, length: float, width: float, spec: SceneSpec) -> None:
    """The strip stands a fraction of a millimetre proud of the card; light from one side leaves a
    soft dark band along the opposite long edge."""
    offset, strength = spec.shadow
    if strength <= 0 or offset == 0:
        return
    band = _rect(to_card, (0, length), (-width / 2 + offset, width / 2 + offset))
    alpha, roi = layer.coverage(band, pad_px=int(4 * STRIP_SHADOW_BLUR_MM * layer.ppm) + 2)
    alpha = cv2.GaussianBlur(alpha, (0, 0), STRIP_SHADOW_BLUR_MM * layer.ppm)
    region = _planes(layer.rgb, roi)
    region *= 1 - strength * alpha


def _mottled(raw: np.ndarray, white: np.ndarray, amount: float, rng, ppm: float):
    """Pad colour with uneven dye density: each channel's absorbance scaled by 1 + amount * noise."""
    def draw(shape):
        density = amount * _smooth_noise(rng, shape, MOTTLE_GRAIN_MM * ppm)
        log_ratio = np.log(np.clip(raw / white, 1e-4, None)).astype(np.float32)[:, None, None]
        return raw[:, None, None] * np.exp(density * log_ratio)
    return draw if amount > 0 else raw


def _pad_along(product: Product, pad, reversed_strip: bool) -> float:
    return product.strip_length_mm - pad.center_mm if reversed_strip else pad.center_mm


def _draw_strip(layer: _Layer, spec: SceneSpec, card: Card, optics: _Optics, rng) -> dict:
    """Draw the strip in the slot; returns analyte -> pad centre (card mm) for the visible pads."""
    product = _product(spec.strip_product or spec.product)
    length, width = product.strip_length_mm, product.strip_width_mm
    to_card = _strip_placement(spec, card, length)
    _draw_shadow(layer, to_card, length, width, spec)
    base = optics.raw(spectra.reflectance_from_srgb(product.strip_base_srgb))
    layer.paint(_rect(to_card, (0, length), (-width / 2, width / 2)), base)
    if spec.fault == "pads_down":
        return {}
    centres = {}
    for pad in product.pads:
        along, half = _pad_along(product, pad, spec.fault == "reversed"), pad.size_mm / 2
        raw = optics.raw(pad_reflectance(spec, pad))
        layer.paint(_rect(to_card, (along - half, along + half), (-half, half)),
                    _mottled(raw, optics.white, spec.mottle, rng, layer.ppm))
        centres[pad.analyte] = tuple(float(v) for v in to_card(along, 0.0))
    return centres


def _draw_glare(layer: _Layer, glare: Glare, optics: _Optics) -> None:
    """Specular reflection: added light of the illuminant's colour, not a change of surface."""
    c = np.asarray(glare.center_mm)
    roi = layer.box(np.array([c - 3 * max(glare.sigma_mm), c + 3 * max(glare.sigma_mm)]))
    size = (roi[1].stop - roi[1].start, roi[0].stop - roi[0].start)
    if min(size) <= 0:
        return
    # smooth, so evaluated on a 1 mm grid and upsampled by the integer ppm; resize puts grid
    # point k at layer pixel k * ppm + (ppm - 1) / 2, i.e. half a millimetre in from the box edge
    ys = np.arange(roi[0].start / layer.ppm + 0.5, roi[0].stop / layer.ppm + 1) - c[1]
    xs = np.arange(roi[1].start / layer.ppm + 0.5, roi[1].stop / layer.ppm + 1) - c[0]
    theta = math.radians(glare.angle_deg)
    u = xs[None, :] * math.cos(theta) + ys[:, None] * math.sin(theta)
    v = -xs[None, :] * math.sin(theta) + ys[:, None] * math.cos(theta)
    spot = glare.peak * np.exp(-0.5 * ((u / glare.sigma_mm[0]) ** 2 + (v / glare.sigma_mm[1]) ** 2))
    full = np.ceil(np.array(spot.shape[::-1]) * layer.ppm).astype(int)
    spot = cv2.resize(spot.astype(np.float32), tuple(full), interpolation=cv2.INTER_LINEAR)[:size[1], :size[0]]
    region = _planes(layer.rgb, roi)
    region += spot * optics.white.astype(np.float32)[:, None, None]


def _card_layer(spec: SceneSpec, card: Card, optics: _Optics, ppm: float, rng):
    """Everything lying on the card plane, in card millimetres; plus the visible pads' centres."""
    layer = _Layer(card, ppm, opaque=spec.fault != "no_card")
    if layer.opaque:
        _draw_card(layer, spec, card, optics, rng)
    centres = {} if spec.fault == "no_strip" else _draw_strip(layer, spec, card, optics, rng)
    if spec.glare is not None:
        _draw_glare(layer, spec.glare, optics)
    return layer, centres

# --- the frame (camera pixels, raw RGB) ---------------------------------------------------------


def _tray(spec: SceneSpec, optics: _Optics, rng) -> np.ndarray:
    """The frame filled with the tray: a grey surface with soft blotches, planar raw RGB."""
    width, height = spec.resolution
    raw = optics.raw(spectra.reflectance_from_srgb(spec.tray_srgb))
    blotch = 1 + spec.tray_texture * _coarse_noise(rng, (height, width), TRAY_BLOTCH_PX)
    frame = np.empty((3, height, width), np.float32)
    for c in range(3):
        cv2.resize(raw[c] * blotch, (width, height), dst=frame[c], interpolation=cv2.INTER_CUBIC)
    return frame


def _composite(frame: np.ndarray, layer: _Layer, layer_to_frame: np.ndarray) -> None:
    """Warp the premultiplied layer into the frame over what is there (only within its bounding box)."""
    height, width = frame.shape[1:]
    corners = np.array([[0, 0], [layer.shape[1], 0], [layer.shape[1], layer.shape[0]], [0, layer.shape[0]]])
    pts = _project(layer_to_frame, corners - 0.5)
    lo = np.clip(np.floor(pts.min(0)).astype(int) - 1, 0, [width, height])
    hi = np.clip(np.ceil(pts.max(0)).astype(int) + 2, 0, [width, height])
    size = (int(hi[0] - lo[0]), int(hi[1] - lo[1]))
    if size[0] <= 0 or size[1] <= 0:
        return
    to_roi = np.array([[1, 0, -lo[0]], [0, 1, -lo[1]], [0, 0, 1]]) @ layer_to_frame
    roi = _planes(frame, (slice(lo[1], hi[1]), slice(lo[0], hi[0])))
    alpha = None if layer.opaque else cv2.warpPerspective(layer.alpha, to_roi, size, flags=cv2.INTER_LINEAR)
    for c in range(3):
        if alpha is None:  # the card: simply replaces the tray where it lies
            cv2.warpPerspective(layer.rgb[c], to_roi, size, dst=roi[c], flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_TRANSPARENT)
        else:
            roi[c] *= 1 - alpha
            roi[c] += cv2.warpPerspective(layer.rgb[c], to_roi, size, flags=cv2.INTER_LINEAR)


def _light_field(spec: SceneSpec, card: Card, h: np.ndarray) -> np.ndarray:
    """Exposure x uneven illumination of the card plane x lens vignetting, per frame pixel."""
    width, height = spec.resolution
    gw, gh = width // FIELD_DOWNSCALE + 1, height // FIELD_DOWNSCALE + 1
    gx, gy = np.meshgrid(np.linspace(0, width - 1, gw), np.linspace(0, height - 1, gh))
    mm = _project(np.linalg.inv(h), np.column_stack([gx.ravel(), gy.ravel()])).reshape(gh, gw, 2)
    centre = np.asarray(card.size_mm) / 2
    amplitude, angle = spec.light_gradient
    direction = np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))])
    light = 1 + amplitude * ((mm - centre) @ direction) / (card.size_mm[0] / 2)
    loss, fx, fy = spec.light_falloff
    light *= np.clip(1 - loss * (np.linalg.norm(mm - [fx, fy], axis=-1) / 100.0) ** 2, 0.2, None)
    r = np.hypot(gx - width / 2, gy - height / 2) / math.hypot(width / 2, height / 2)
    hotspots = 1 + spec.led_hotspots * sum(np.exp(-((gx / width - x) ** 2 + (gy / height - y) ** 2) / (2 * s ** 2))
                                           for x, y, s in LED_HOTSPOTS)
    coarse = (spec.exposure * np.clip(light, 0, None) * (1 - spec.vignetting * r ** 2) * hotspots).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)


def _frame_px_per_mm(spec: SceneSpec, h: np.ndarray) -> float:
    """Scale of the card in the frame near its centre (mean of both axes)."""
    card = _card(spec.card)
    c = np.asarray(card.size_mm) / 2
    p = _project(h, np.array([c, c + [1, 0], c + [0, 1]]))
    return float((np.linalg.norm(p[1] - p[0]) + np.linalg.norm(p[2] - p[0])) / 2)


def light_share(spec: SceneSpec, card: Card, points_mm: np.ndarray) -> np.ndarray:
    """The second light's share at card points: linear from `light_mix[0]` at the card's edge
    facing away from the direction to `light_mix[1]` at the edge it points to."""
    first, last, angle = spec.light_mix
    if spec.second_illuminant is None:
        return np.zeros(np.shape(points_mm)[:-1])
    direction = np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))])
    centre = np.asarray(card.size_mm) / 2
    reach = np.abs((_corners(card) - centre) @ direction).max()
    u = 0.5 + ((np.asarray(points_mm, float) - centre) @ direction) / (2 * reach)
    return np.clip(first + (last - first) * u, 0.0, 1.0)


def _mean_share(spec: SceneSpec) -> float:
    """The second light's share at the card's centre: what the camera's white balance sees."""
    return float(light_share(spec, _card(spec.card), np.asarray(_card(spec.card).size_mm) / 2))


def _mixed_card_layer(spec: SceneSpec, card: Card, ppm: float, rng):
    """The card layer under a mixture of two lights whose proportion changes across the card: drawn
    under each light with the same textures, then blended pixel by pixel by the local share."""
    second_rng = copy.deepcopy(rng)  # the second drawing repeats the first's grain and mottle
    layer, centres = _card_layer(spec, card, _Optics(spec), ppm, rng)
    other, _ = _card_layer(spec, card, _Optics(spec, share=1.0), ppm, second_rng)
    rows, cols = np.mgrid[0:layer.shape[0], 0:layer.shape[1]].astype(np.float32)
    share = light_share(spec, card, (np.stack([cols, rows], axis=-1) + 0.5) / ppm).astype(np.float32)
    other.rgb -= layer.rgb
    other.rgb *= share
    layer.rgb += other.rgb
    return layer, centres


def _scene_radiance(spec: SceneSpec, optics: _Optics, h: np.ndarray, rng):
    """Raw RGB image of the scene through the lens under unit light, and the pad centres on the card."""
    card = _card(spec.card)
    ppm = math.ceil(OVERSAMPLE * _frame_px_per_mm(spec, h))  # integer steps keep the label cache warm
    if spec.second_illuminant is None:
        layer, centres = _card_layer(spec, card, optics, ppm, rng)
    else:
        layer, centres = _mixed_card_layer(spec, card, ppm, rng)
    frame = _tray(spec, optics, rng)
    _composite(frame, layer, h @ np.linalg.inv(layer.mm_to_layer()))
    if spec.blur_mm > 0:
        sigma = spec.blur_mm * _frame_px_per_mm(spec, h)
        for plane in frame:
            cv2.GaussianBlur(plane, (0, 0), sigma, dst=plane)
    return frame, centres

# --- sensor and ISP ------------------------------------------------------------------------------


def _mosaic(frame: np.ndarray) -> np.ndarray:
    """RGGB Bayer sampling: each photosite keeps one channel."""
    bayer = np.empty(frame.shape[1:], np.float32)
    bayer[0::2, 0::2] = frame[0, 0::2, 0::2]
    bayer[0::2, 1::2] = frame[1, 0::2, 1::2]
    bayer[1::2, 0::2] = frame[1, 1::2, 0::2]
    bayer[1::2, 1::2] = frame[2, 1::2, 1::2]
    return bayer


def _sensor(bayer: np.ndarray, spec: SceneSpec, cam: spectra.CameraModel, rng) -> np.ndarray:
    """Photon shot noise and read noise on the mosaic, saturation, ADC, bilinear demosaic."""
    if spec.noise:
        bayer += _sensor_noise(bayer, spec, cam, rng)
    full_scale = 2 ** cam.adc_bits - 1
    bayer *= full_scale
    bayer += 0.5
    np.clip(bayer, 0, full_scale, out=bayer)
    return cv2.cvtColor(bayer.astype(np.uint16), cv2.COLOR_BayerRGGB2RGB)


def _sensor_noise(bayer: np.ndarray, spec: SceneSpec, cam: spectra.CameraModel, rng) -> np.ndarray:
    """Gaussian approximation of photon shot noise (variance = electrons) plus read noise, in
    full-scale units; the analog gain shrinks the electrons a full-scale signal takes."""
    electrons_full_scale = cam.full_well_e / spec.analog_gain
    sigma = np.maximum(bayer, 0)
    sigma *= electrons_full_scale
    sigma += cam.read_noise_e ** 2
    cv2.sqrt(sigma, dst=sigma)
    sigma *= 1 / electrons_full_scale
    noise = np.empty_like(bayer)
    cv2.setRNGSeed(int(rng.integers(2 ** 31)))  # OpenCV's generator is fast; seeded from the scene's
    cv2.randn(noise, 0.0, 1.0)
    noise *= sigma
    return noise


def _bayer_means(bayer: np.ndarray) -> np.ndarray:
    green = (bayer[0::2, 1::2].mean() + bayer[1::2, 0::2].mean()) / 2
    return np.array([bayer[0::2, 0::2].mean(), green, bayer[1::2, 1::2].mean()])


WB_PRESETS = {"preset:daylight": "D65", "preset:tungsten": "A", "preset:fluorescent": "F2"}


def wb_gains(spec: SceneSpec, optics: _Optics, grey_world: np.ndarray | None = None) -> np.ndarray:
    """White-balance gains: from an estimate of the light's colour, from the grey-world average
    (`grey_world`, raw means), or a fixed preset's light whatever the actual one; times the spec's
    error; normalised so a neutral's brightest channel keeps its level."""
    if spec.white_balance == "grey_world":
        estimate = grey_world
    elif spec.white_balance == "illuminant":
        estimate = optics.white
    elif spec.white_balance in WB_PRESETS:
        estimate = spectra.raw_white(spectra.illuminant(WB_PRESETS[spec.white_balance]), optics.camera)
    else:
        raise ValueError(f"unknown white balance {spec.white_balance!r}; known: illuminant, grey_world, "
                         f"{', '.join(WB_PRESETS)}")
    gains = estimate.max() / np.clip(estimate, 1e-6, None)
    return gains * np.asarray(spec.wb_error)


@lru_cache(maxsize=None)
def _tone_lut(tone: str) -> np.ndarray:
    levels = np.linspace(0.0, 1.0, TONE_LUT_LEVELS)
    return np.round(np.clip(spectra.tone_curve(tone, levels), 0, 1) * 255).astype(np.uint8)


def _isp(rgb16: np.ndarray, gains: np.ndarray, cam: spectra.CameraModel) -> np.ndarray:
    """White balance, then colour matrix (to BGR), then the tone curve as a lookup, 8 bit.

    After white balance every channel is clipped at the level where the least-amplified channel
    saturates, as camera ISPs do, so blown highlights come out white rather than magenta."""
    full_scale = 2 ** cam.adc_bits - 1
    ceiling = gains.min()
    top = TONE_LUT_LEVELS - 1
    balanced = cv2.transform(rgb16, np.diag(gains / ceiling) * top / full_scale)  # uint16 saturates
    return _tone_lut(cam.tone)[cv2.transform(balanced, (cam.matrix * ceiling)[::-1])]


def isp_noiseless(raw: np.ndarray, gains: np.ndarray, cam: spectra.CameraModel) -> np.ndarray:
    """What `_isp` makes of raw RGB values (..., 3; 1 = full scale) without a sensor: the same
    saturation of the sensor, of the balanced channels and of the matrix output, the tone curve and
    8-bit output; camera RGB in 0..1 (RGB order)."""
    ceiling = gains.min()
    balanced = np.clip(np.clip(raw, 0, 1) * (gains / ceiling), 0, 1)
    linear = np.clip(balanced @ (cam.matrix * ceiling).T, 0, 1)
    return np.round(np.clip(spectra.tone_curve(cam.tone, linear), 0, 1) * 255) / 255


def encode(image: np.ndarray, fmt: str = "jpg", quality: int = 90) -> bytes:
    """Image file bytes (fmt "jpg" or "png")."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt in ("jpg", "jpeg") else []
    ok, buf = cv2.imencode("." + fmt, image, params)
    if not ok:
        raise ValueError(f"cannot encode as {fmt!r}")
    return buf.tobytes()

# --- truth ---------------------------------------------------------------------------------------


def truth_level(spec: SceneSpec, pad) -> tuple[float, int]:
    """The pad's level position (clipped to its chart) and the index of the nearest chart level."""
    t = float(np.clip(_level_position(spec, pad.analyte), 0, len(pad.levels) - 1))
    return t, int(math.floor(t + 0.5))


def _pad_truth(spec: SceneSpec, pad, centre: tuple[float, float]) -> PadTruth:
    if pad.analyte in spec.off_chart:
        return PadTruth(None, None, None, centre)
    last = len(pad.levels) - 1
    t, index = truth_level(spec, pad)
    code = pad.levels[index].code
    value = None
    if pad.quantitative:
        value = float(np.interp(t, np.arange(last + 1), [lv.value for lv in pad.levels]))
    return PadTruth(t, code, value, centre)


def _truth(spec: SceneSpec, h: np.ndarray, centres: dict) -> Truth:
    product = _product(spec.strip_product or spec.product)
    pads = {p.analyte: _pad_truth(spec, p, centres[p.analyte]) for p in product.pads if p.analyte in centres}
    present = None if spec.fault == "no_strip" else product.id
    return Truth(spec=spec, pads=pads, expected_error=FAULTS.get(spec.fault), homography=h,
                 strip_product=present, out_of_gamut_pads=tuple(a for a in spec.off_chart if a in pads))

# --- rendering -----------------------------------------------------------------------------------


def _check(spec: SceneSpec) -> None:
    width, height = spec.resolution
    if not (MIN_RESOLUTION[0] <= width <= MAX_RESOLUTION[0] and MIN_RESOLUTION[1] <= height <= MAX_RESOLUTION[1]):
        raise ValueError(f"resolution {spec.resolution} outside {MIN_RESOLUTION}..{MAX_RESOLUTION}")
    if width % 2 or height % 2:
        raise ValueError("resolution must be even (Bayer mosaic)")
    if spec.fault is not None and spec.fault not in FAULTS:
        raise ValueError(f"unknown fault {spec.fault!r}; known: {sorted(FAULTS)}")


def _render(spec: SceneSpec, rng: np.random.Generator):
    _check(spec)
    optics = _Optics(spec, _mean_share(spec))
    h = card_homography(spec)
    frame, centres = _scene_radiance(spec, optics, h, rng)
    bayer = _mosaic(frame)
    # the light field is smooth, so applying it after the optical blur and on the mosaic is exact
    # enough and three times cheaper than on the RGB frame
    bayer *= _light_field(spec, _card(spec.card), h)
    gains = wb_gains(spec, optics, _bayer_means(bayer) if spec.white_balance == "grey_world" else None)
    image = _isp(_sensor(bayer, spec, optics.camera, rng), gains, optics.camera)
    data = None
    if spec.jpeg_quality is not None:
        data = encode(image, "jpg", spec.jpeg_quality)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return image, _truth(spec, h, centres), data


def render(spec: SceneSpec, rng: np.random.Generator) -> tuple[np.ndarray, Truth]:
    """Render a scene: (BGR uint8 image as the camera delivers it, after any JPEG, and its truth)."""
    image, truth, _ = _render(spec, rng)
    return image, truth


def photograph(spec: SceneSpec, rng: np.random.Generator, fmt: str = "jpg") -> tuple[bytes, Truth]:
    """The photo file the camera would write: its own JPEG bytes (or lossless PNG), and the truth."""
    image, truth, data = _render(spec, rng)
    if fmt == "png":
        data = encode(image, "png")
    elif data is None:
        data = encode(image, "jpg", WRITE_JPEG_QUALITY)
    return data, truth


def write_scene(path, spec: SceneSpec, rng: np.random.Generator) -> Truth:
    """Render and save; a .jpg gets the camera's own JPEG bytes, anything else is lossless PNG."""
    path = Path(path)
    data, truth = photograph(spec, rng, "jpg" if path.suffix.lower() in (".jpg", ".jpeg") else "png")
    path.write_bytes(data)
    return truth

# --- random scenes -------------------------------------------------------------------------------

CARD_FILL_RANGE = (0.65, 0.90)
ROTATION_DEG = 10.0
CARD_TURNED_PROBABILITY = 0.1  # card put in the tray the other way round (markers still say so)
MAX_TILT_DEG = 12.0
FOV_RANGE_DEG = (50.0, 75.0)
OFFSET_RANGE = 0.8
STRIP_JITTER_MM = (0.7, 0.4)  # along, across the slot
STRIP_JITTER_DEG = 1.0
NEAR_LEVEL_PROBABILITY = 0.8
NEAR_LEVEL_SPREAD = 0.25
LOT_ABSORBANCE_SD = 0.06  # strip-to-strip dye load: one SD moves a pad about 1-2 dE00
MOTTLE_RANGE = (0.02, 0.06)
SHADOW_OFFSET_MM = (0.2, 0.6)
SHADOW_STRENGTH = (0.05, 0.25)
EXPOSURE_RANGE = (0.5, 0.8)
LIGHT_GRADIENT_MAX = 0.12
LIGHT_FALLOFF_MAX = 0.10
VIGNETTING_RANGE = (0.05, 0.30)
MILD_GLARE_PROBABILITY = 0.3  # a faint sheen the reader must tolerate
MILD_GLARE_PEAK = (0.01, 0.06)
MILD_GLARE_SIGMA_MM = (4.0, 15.0)
WB_ERROR_SD = 0.025
WB_ERROR_MAX = 0.06
ANALOG_GAIN_RANGE = (1.0, 4.0)
BLUR_MM_RANGE = (0.02, 0.09)
JPEG_QUALITY_RANGE = (75, 96)
PAPER_TEXTURE_RANGE = (0.004, 0.015)
TRAY_GREY_RANGE = (0.18, 0.45)  # sRGB, mid to dark grey
TRAY_TINT = 0.02
TRAY_TEXTURE_RANGE = (0.02, 0.08)
# faults
DARK_EXPOSURE_FACTOR = (0.04, 0.08)
BRIGHT_EXPOSURE_FACTOR = (3.0, 5.0)
DEFOCUS_MM = (1.0, 1.5)
GLARE_PEAK = (3.0, 6.0)  # times a white: blows out the pads it covers
GLARE_SIGMA_ALONG_MM = (8.0, 14.0)
GLARE_SIGMA_ACROSS_MM = (3.0, 6.0)
GLARE_ANGLE_JITTER_DEG = 20.0  # from the strip's axis


def _draw_pad_states(rng, product: Product) -> dict:
    """Level positions (80 % near a chart level, 20 % anywhere; nominal pads exactly on a level)
    and the strip lot's per-pad dye load."""
    levels = {}
    for pad in product.pads:
        last = len(pad.levels) - 1
        if pad.scale == "nominal":
            t = float(rng.integers(0, last + 1))
        elif rng.random() < NEAR_LEVEL_PROBABILITY:
            jitter = rng.uniform(-NEAR_LEVEL_SPREAD, NEAR_LEVEL_SPREAD)
            t = float(np.clip(rng.integers(0, last + 1) + jitter, 0, last))
        else:
            t = float(rng.uniform(0, last))
        levels[pad.analyte] = t
    lot = {pad.analyte: float(1 + LOT_ABSORBANCE_SD * rng.standard_normal()) for pad in product.pads}
    return {"levels": levels, "lot_absorbance": lot}


def _draw_pose(rng) -> dict:
    turned = 180.0 if rng.random() < CARD_TURNED_PROBABILITY else 0.0
    tilt, azimuth = rng.uniform(0, MAX_TILT_DEG), rng.uniform(0, 2 * math.pi)
    return {"card_fill": float(rng.uniform(*CARD_FILL_RANGE)),
            "rotation_deg": float(rng.uniform(-ROTATION_DEG, ROTATION_DEG) + turned),
            "tilt_deg": (float(tilt * math.cos(azimuth)), float(tilt * math.sin(azimuth))),
            "fov_deg": float(rng.uniform(*FOV_RANGE_DEG)),
            "offset": tuple(float(v) for v in rng.uniform(-OFFSET_RANGE, OFFSET_RANGE, 2))}


def _draw_strip_placement(rng) -> dict:
    side = 1.0 if rng.random() < 0.5 else -1.0
    return {"strip_shift_mm": (float(rng.uniform(-STRIP_JITTER_MM[0], STRIP_JITTER_MM[0])),
                               float(rng.uniform(-STRIP_JITTER_MM[1], STRIP_JITTER_MM[1]))),
            "strip_rotation_deg": float(rng.uniform(-STRIP_JITTER_DEG, STRIP_JITTER_DEG)),
            "shadow": (side * float(rng.uniform(*SHADOW_OFFSET_MM)), float(rng.uniform(*SHADOW_STRENGTH))),
            "mottle": float(rng.uniform(*MOTTLE_RANGE))}


@dataclass(frozen=True)
class Ranges:
    """How wide the light and the camera's ISP are drawn: today's reader conditions by default,
    the whole world in simulator.world."""
    exposure: tuple[float, float] = EXPOSURE_RANGE
    light_gradient_max: float = LIGHT_GRADIENT_MAX
    vignetting: tuple[float, float] = VIGNETTING_RANGE
    wb_error_sd: float = WB_ERROR_SD
    wb_error_max: float = WB_ERROR_MAX
    jpeg_quality: tuple[int, int] = JPEG_QUALITY_RANGE


READER_RANGES = Ranges()


def _draw_light(rng, card: Card, ranges: Ranges = READER_RANGES) -> dict:
    w, h = card.size_mm
    mild = rng.random() < MILD_GLARE_PROBABILITY
    glare = Glare(center_mm=(float(rng.uniform(0, w)), float(rng.uniform(0, h))),
                  sigma_mm=tuple(float(v) for v in rng.uniform(*MILD_GLARE_SIGMA_MM, 2)),
                  angle_deg=float(rng.uniform(0, 180)), peak=float(rng.uniform(*MILD_GLARE_PEAK)))
    return {"exposure": float(rng.uniform(*ranges.exposure)),
            "light_gradient": (float(rng.uniform(0, ranges.light_gradient_max)), float(rng.uniform(0, 360))),
            "light_falloff": (float(rng.uniform(0, LIGHT_FALLOFF_MAX)), float(rng.uniform(0, w)),
                              float(rng.uniform(0, h))),
            "vignetting": float(rng.uniform(*ranges.vignetting)),
            "glare": glare if mild else None}


def _draw_camera_settings(rng, ranges: Ranges = READER_RANGES) -> dict:
    error = np.exp(np.clip(ranges.wb_error_sd * rng.standard_normal(2), -ranges.wb_error_max, ranges.wb_error_max))
    return {"white_balance": "grey_world" if rng.random() < 0.5 else "illuminant",
            "wb_error": (float(error[0]), 1.0, float(error[1])),
            "analog_gain": float(np.exp(rng.uniform(*np.log(ANALOG_GAIN_RANGE)))),
            "noise": True,
            "blur_mm": float(rng.uniform(*BLUR_MM_RANGE)),
            "jpeg_quality": int(rng.integers(ranges.jpeg_quality[0], ranges.jpeg_quality[1] + 1))}


def _draw_surfaces(rng) -> dict:
    grey = rng.uniform(*TRAY_GREY_RANGE) + rng.uniform(-TRAY_TINT, TRAY_TINT, 3)
    return {"paper_texture": float(rng.uniform(*PAPER_TEXTURE_RANGE)),
            "tray_srgb": "".join(f"{int(round(v * 255)):02X}" for v in np.clip(grey, 0, 1)),
            "tray_texture": float(rng.uniform(*TRAY_TEXTURE_RANGE))}


def _strong_glare(rng, spec: SceneSpec) -> Glare:
    """A highlight lying along the strip over several pads (a glossy wet strip under a lamp)."""
    card, product = _card(spec.card), _product(spec.strip_product or spec.product)
    pad = product.pads[int(rng.integers(len(product.pads)))]
    centre = card.slot_to_card(pad.center_mm + rng.uniform(-3, 3), rng.uniform(-1, 1))
    along_deg = math.degrees(math.atan2(card.slot_direction[1], card.slot_direction[0]))
    return Glare(center_mm=tuple(float(v) for v in centre),
                 sigma_mm=(float(rng.uniform(*GLARE_SIGMA_ALONG_MM)), float(rng.uniform(*GLARE_SIGMA_ACROSS_MM))),
                 angle_deg=float(along_deg + rng.uniform(-GLARE_ANGLE_JITTER_DEG, GLARE_ANGLE_JITTER_DEG)),
                 peak=float(rng.uniform(*GLARE_PEAK)))


def _off_chart_colour(rng, spec: SceneSpec) -> dict:
    """One pad in a colour at least _OFF_CHART_MIN_DE from every chart colour of that pad."""
    product = _product(spec.product)
    pad = product.pads[int(rng.integers(len(product.pads)))]
    labs = np.array([hex_to_lab_d50(c) for c in _OFF_CHART_COLOURS])
    distance = delta_e_2000(labs[:, None, :], pad.level_lab[None, :, :]).min(axis=1)
    far = [c for c, d in zip(_OFF_CHART_COLOURS, distance) if d >= _OFF_CHART_MIN_DE]
    return {pad.analyte: str(rng.choice(far))}


def _other_product(rng, expected: str | Product) -> str:
    others = [p for p in builtin_products() if p != _product(expected).id]
    if not others:
        raise ValueError("wrong_strip needs a second built-in product")
    return str(rng.choice(others))


def _fault_changes(rng, spec: SceneSpec) -> dict:
    if spec.fault == "too_dark":
        return {"exposure": spec.exposure * float(rng.uniform(*DARK_EXPOSURE_FACTOR))}
    if spec.fault == "overexposed":
        return {"exposure": spec.exposure * float(rng.uniform(*BRIGHT_EXPOSURE_FACTOR))}
    if spec.fault == "blurred":
        return {"blur_mm": float(rng.uniform(*DEFOCUS_MM))}
    if spec.fault == "glare":
        return {"glare": _strong_glare(rng, spec)}
    if spec.fault == "out_of_gamut":
        return {"off_chart": _off_chart_colour(rng, spec)}
    if spec.fault == "wrong_strip":
        other = _other_product(rng, spec.product)
        return {"strip_product": other, **_draw_pad_states(rng, _product(other))}
    return {}


def _fits_frame(spec: SceneSpec) -> bool:
    pts = _project(_centred_homography(spec, _card(spec.card)), _corners(_card(spec.card)))
    return bool(np.all(pts.max(0) - pts.min(0) <= np.array(spec.resolution) * (1 - 2 * FRAME_MARGIN)))


def _shrink_to_fit(spec: SceneSpec) -> SceneSpec:
    """Tilt and rotation can push a large card past the frame edge; zoom out until it fits."""
    while not _fits_frame(spec) and spec.card_fill > 0.3:
        spec = dataclasses.replace(spec, card_fill=spec.card_fill * 0.97)
    return spec


def compose_scene(rng: np.random.Generator, product: str | Product | None, card: str | Card | None,
                  fault: str | None, overrides: dict, draw_optics, ranges: Ranges = READER_RANGES,
                  adjust=None) -> SceneSpec:
    """Draw a scene in a fixed order: product, `draw_optics(rng)` (light and camera fields), pads,
    pose, strip, light field and ISP within `ranges`, surfaces; then `adjust(rng, spec)` (fields that
    depend on the rest), the fault, the overrides. The base scene is drawn before the fault, so a
    seed gives the same scene with and without a fault."""
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; known: {sorted(FAULTS)}")
    product = product if product is not None else str(rng.choice(builtin_products()))
    card = card if card is not None else DEFAULT_CARD
    spec = SceneSpec(product=product, card=card, **draw_optics(rng),
                     **_draw_pad_states(rng, _product(product)), **_draw_pose(rng),
                     **_draw_strip_placement(rng), **_draw_light(rng, _card(card), ranges),
                     **_draw_camera_settings(rng, ranges), **_draw_surfaces(rng), fault=fault)
    if adjust is not None:
        spec = dataclasses.replace(spec, **adjust(rng, spec))
    spec = dataclasses.replace(spec, **_fault_changes(rng, spec))
    spec = dataclasses.replace(spec, **overrides)
    return spec if "card_fill" in overrides else _shrink_to_fit(spec)


def random_scene(rng: np.random.Generator, product: str | Product | None = None, card: str | Card | None = None,
                 illuminants=None, cameras=None, fault: str | None = None, **overrides) -> SceneSpec:
    """A realistic random scene. `illuminants`/`cameras` restrict the choice (e.g. to hold some out);
    `fault` makes one of FAULTS; `overrides` set any SceneSpec field after drawing."""
    def optics(rng):
        return {"illuminant": str(rng.choice(list(illuminants or spectra.illuminant_names()))),
                "camera": str(rng.choice(list(cameras or spectra.camera_names())))}
    return compose_scene(rng, product, card, fault, overrides, optics)
