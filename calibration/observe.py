"""A photo of a strip on the reference card -> a colour-calibrated observation of its pads.

Everything before the pad model: decode -> find the card -> check the image -> flatten the light ->
correct colour -> find the strip -> pad colours in CIELAB. The read path (`device.reading.reader`) and model
training (`models.train`) both start from here. Failures are `ReadError`s with a schema code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from calibration import detect, illumination, sampling
from calibration.correction import DEFAULT_TERMS, fit_correction
from calibration.decode import decode
from calibration.errors import CARD_GLARE_MESSAGE, OVEREXPOSED_MESSAGE, ReadError
from calibration.quantiles import median, percentile
from calibration.specs import Card, Product
from calibration.strip import match_strip, profile_points

if TYPE_CHECKING:
    from calibration.camera_calibration import FlatField

PATCH_INNER = 0.6            # fraction of a patch or pad side that is sampled (edges bleed)
TOO_DARK = 80 / 255          # card white darker than this: too few grey levels left to tell pads apart
DARK_FRAME = 45 / 255        # a whole frame this dark hides the card too: said before looking for it
PLATEAU_SPREAD, PLATEAU_SHARE = 1.5 / 255, 0.85   # white this close to its top level over this share...
PLATEAU_NOISE = 0.5 / 255    # ...with no more noise than this (JPEG leaves an evenly lit paper 0.7)...
PLATEAU_GREY = 8 / 255       # ...and grey (paper keeps the light's tint): saturated, clipped by the ISP
SATURATED_MAX_RESIDUAL_DE00 = 5.0   # the colour correction's limit when the card's white is mostly saturated
MIN_PATCHES, MIN_NEUTRALS = 16, 3   # unclipped, glare-free card patches the colour correction needs
PAD_GLARE_REFUSE = 0.4       # a pad with more highlight than this cannot be read
PATCH_GLARE_DROP = 0.3
CROP_PX, CROP_MARGIN_MM = 40, 1.0   # pad thumbnails stored with each result
PATCH_GLARE_RADIUS_MM = 9.0  # a highlight on the white this close to a patch's centre reaches into it
PAD_GLARE_MESSAGE = ("Light is reflecting off the strip's pads: close the lid and keep the strip flat, "
                     "then read again within its read time.")
TOO_DARK_MESSAGE = "The photo is too dark: close the lid so the reader's light is on the strip, then read again."



@dataclass(frozen=True)
class StripObservation:
    product: Product
    pad_lab: np.ndarray          # (pads, 3) CIELAB D50 after colour correction
    base_lab: np.ndarray         # (3,) the strip's bare base as seen in this photo
    residual_de00: float         # held-out residual of the card's colour correction
    pad_glare: np.ndarray = field(default_factory=lambda: np.zeros(0))   # (pads,) highlight fraction
    pad_saturated: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))   # (pads,) a channel clipped
    qc: dict = field(default_factory=dict)                               # image and calibration figures
    crops: dict = field(default_factory=dict)     # analyte -> PNG of the pad and its surroundings


def _enough_patches(usable: np.ndarray, neutral: np.ndarray) -> bool:
    return usable.sum() >= MIN_PATCHES and (usable & neutral).sum() >= MIN_NEUTRALS


def _saturated_plateau(white: sampling.RegionColours) -> bool:
    """Most of the card's white at one flat top level, grey, without any noise: the camera saturated
    and its ISP clipped the highlights to a grey below 255 (after white balance and its colour
    matrix), so the values alone do not say "clipped". Paper under even light (a diffuser, lens
    shading corrected), its noise smoothed by JPEG, is nearly as flat: it keeps a trace of noise
    (clipped pixels are identical) and, unless white balance happened to be exact, the light's tint.
    Without those two tests 12 of 30 such photos at 0.6 of clipping were refused
    (`bench/conditions.py`)."""
    lum = white.rgb.mean(axis=1)
    grey = np.ptp(white.rgb, axis=1) < PLATEAU_GREY
    flat = (white.spread < PLATEAU_NOISE) & (lum > lum.max() - PLATEAU_SPREAD) & grey
    return float(flat.mean()) > PLATEAU_SHARE


def _check_exposure(gray: np.ndarray) -> None:
    """Whole-frame checks that come first, because a black or white frame also hides the card."""
    small = gray[::8, ::8]
    if percentile(small, 99) < 255 * DARK_FRAME:
        raise ReadError("too_dark", TOO_DARK_MESSAGE)
    if np.mean(small >= 250) > 0.5:
        raise ReadError("overexposed", OVEREXPOSED_MESSAGE)


@dataclass
class StripObserver:
    """The observation steps configured with a card and a product; reusable across photos."""
    card: Card
    product: Product
    correction_terms: str = DEFAULT_TERMS
    flat_field: FlatField | None = None     # the technician's camera calibration, if any

    def __post_init__(self):
        self._neutral = np.array([p.role == "neutral" for p in self.card.patches])
        self._patch_centers = np.array([p.center_mm for p in self.card.patches])
        self._patch_half = PATCH_INNER * min(p.size_mm for p in self.card.patches) / 2
        self._white_points = illumination.white_points(self.card)
        along, self._profile_points = profile_points(self.card)
        self._profile_xy = self.card.slot_to_card(along)
        self._pad_offsets = np.array([p.center_mm for p in self.product.pads])
        self._pad_half = PATCH_INNER * min(p.size_mm for p in self.product.pads) / 2
        self._nominal_pad_xy = self.card.slot_to_card(self._pad_offsets)

    def observe(self, data: bytes, crops: bool = False) -> StripObservation:
        """Pad colours of the strip in the photo, or a `ReadError` saying what is wrong with it;
        with `crops`, a small picture of each pad as the camera saw it, for the record."""
        image, scale = decode(data)
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        _check_exposure(gray)
        pose = detect.find_card(gray, self.card)
        sharpness = detect.marker_sharpness(gray, self.card, pose)
        if sharpness < detect.MIN_SHARPNESS:
            raise ReadError("blurred", detect.BLURRED_MESSAGE)
        light, correction = self.calibrate(image, pose)
        match = self._locate_strip(image, pose, light, correction)
        pad_xy = self.card.slot_to_card(self._pad_offsets + match.shift_mm)
        pad_lab, pad_glare, pad_saturated = self._pad_colours(image, pose, light, correction, pad_xy)
        qc = {"card_id": self.card.id,
              "color_residual_de00": round(correction.residual_de00, 3),
              "color_residual_max_de00": round(correction.worst_de00, 3),
              "glare_fraction": round(max(light.glare_fraction, float(pad_glare.mean())), 4),
              "sharpness": round(sharpness, 3),
              "illumination_rms": round(light.rms_residual, 4),
              "white_saturated": light.white_clipped,
              "markers_found": pose.markers_found,
              "reprojection_mm": round(pose.reprojection_mm, 3),
              "px_per_mm": round(pose.px_per_mm / scale, 2),
              "strip_shift_mm": match.shift_mm,
              "strip_match_de00": round(match.cost, 2),
              "strip_reversed_margin": round(match.reversed_margin, 1)}
        pictures = self._pad_crops(image, pose, pad_xy) if crops else {}
        return StripObservation(self.product, pad_lab, match.base_lab, correction.residual_de00, pad_glare,
                                pad_saturated, qc, pictures)

    def _pad_crops(self, image, pose, pad_xy: np.ndarray) -> dict[str, bytes]:
        """Each pad with a millimetre of strip around it, resampled to a small square PNG."""
        half = max(p.size_mm for p in self.product.pads) / 2 + CROP_MARGIN_MM
        grid = sampling.square_grid(pad_xy, half, pose.px_per_mm, k=CROP_PX)
        # the slot runs along card x, so grid rows (card y) are the strip's width: transpose for the
        # strip's reading direction to run down the picture, as the pads lie on the bottle's chart
        pixels = np.round(sampling.sample(image, pose, grid) * 255).astype(np.uint8)
        crops = {}
        for pad, tile in zip(self.product.pads, pixels):
            tile = tile.reshape(CROP_PX, CROP_PX, 3)[..., ::-1].transpose(1, 0, 2)
            crops[pad.analyte] = cv2.imencode(".png", np.ascontiguousarray(tile))[1].tobytes()
        return crops

    def calibrate(self, image: np.ndarray, pose: detect.CardPose):
        """The light across the card from its white, then the colour correction from its patches
        (public: a technician's card measurement is judged by exactly this step)."""
        ppm = pose.px_per_mm
        white = sampling.robust_colours(sampling.sample(
            image, pose, sampling.square_grid(self._white_points, illumination.SAMPLE_HALF_MM, ppm)))
        if median(white.rgb.mean(axis=1)) < TOO_DARK:
            raise ReadError("too_dark", TOO_DARK_MESSAGE)
        if _saturated_plateau(white):
            raise ReadError("overexposed", OVEREXPOSED_MESSAGE)
        light = illumination.fit_illumination(self.card, white.rgb, white.channel_clipped, self.flat_field)
        if np.any(light.glare_near(self._nominal_pad_xy)):
            raise ReadError("glare", PAD_GLARE_MESSAGE)
        patches = sampling.robust_colours(sampling.sample(
            image, pose, sampling.square_grid(self._patch_centers, self._patch_half, ppm)))
        # a patch saturated in a channel says nothing of its colour there: the correction is fitted
        # on the others, as long as enough of the card's gamut and grey scale remains
        unclipped = patches.clipped <= 0.5
        if not _enough_patches(unclipped, self._neutral):
            raise ReadError("overexposed", OVEREXPOSED_MESSAGE)
        usable = unclipped & (patches.specular <= PATCH_GLARE_DROP) & \
            ~light.glare_near(self._patch_centers, PATCH_GLARE_RADIUS_MM)
        if not _enough_patches(usable, self._neutral):
            raise ReadError("glare", CARD_GLARE_MESSAGE)
        patch_rel = light.relative(patches.rgb, self._patch_centers)
        try:
            correction = fit_correction(patch_rel[usable], self.card.patch_lab[usable], self._neutral[usable],
                                        terms=self.correction_terms)
        except ReadError:
            # the card's colours do not fit while most of its white is saturated: that is the cause
            if light.mostly_saturated:
                raise ReadError("overexposed", OVEREXPOSED_MESSAGE) from None
            # or a highlight too faint to blow out the paper lies over the patches it could not match
            if np.any(light.lifted_near(self._patch_centers[usable], PATCH_GLARE_RADIUS_MM)):
                raise ReadError("glare", CARD_GLARE_MESSAGE) from None
            raise
        # against a white saturated in a channel every colour is a bound: such a fit is trusted only as
        # far as a tighter limit (looser fits there went on to strips "not found" or "unlike the
        # product"), and a highlight over the patches explains it before the exposure does
        if light.mostly_saturated and correction.residual_de00 > SATURATED_MAX_RESIDUAL_DE00:
            if np.any(light.lifted_near(self._patch_centers[usable], PATCH_GLARE_RADIUS_MM)):
                raise ReadError("glare", CARD_GLARE_MESSAGE)
            raise ReadError("overexposed", OVEREXPOSED_MESSAGE)
        return light, correction

    def _locate_strip(self, image, pose, light, correction):
        """The strip's profile along the slot, matched against the product and every alternative."""
        profile = sampling.robust_colours(sampling.sample(image, pose, self._profile_points))
        profile_lab = correction.to_lab(light.relative(profile.rgb, self._profile_xy))
        # a bin saturated in a channel shows no colour there: left out like one under a highlight
        seen = ~light.glare_near(self._profile_xy) & (profile.specular < PAD_GLARE_REFUSE) & (profile.clipped <= 0.5)
        white_lab = correction.to_lab(np.ones((1, 3)))[0]   # the card's paper, as this photo shows it
        return match_strip(self.card, self.product, profile_lab, seen, white_lab, correction.residual_de00)

    def _pad_colours(self, image, pose, light, correction, pad_xy: np.ndarray) -> tuple[np.ndarray, ...]:
        """Each pad's corrected colour (CIELAB D50) at `pad_xy` (card mm), the fraction of it under a
        highlight, and whether the camera saturated on it (its colour is then a bound, flagged on
        that pad alone)."""
        pads = sampling.robust_colours(sampling.sample(
            image, pose, sampling.square_grid(pad_xy, self._pad_half, pose.px_per_mm)))
        if np.any(pads.specular > PAD_GLARE_REFUSE) or np.any(light.glare_near(pad_xy)):
            raise ReadError("glare", PAD_GLARE_MESSAGE)
        if np.any((pads.channel_clipped > 0.5).all(axis=1)):
            # a pad blown out in every channel has no colour left: where little of the card's white is
            # blown too, a highlight lies on the strip; where much of it is, the photo is overexposed
            if light.blown_fraction < illumination.MAX_GLARE_FRACTION:
                raise ReadError("glare", PAD_GLARE_MESSAGE)
            raise ReadError("overexposed", OVEREXPOSED_MESSAGE)
        return correction.to_lab(light.relative(pads.rgb, pad_xy)), pads.specular, pads.clipped > 0.5
