"""Scenes drawn from the whole world, not from the reader's own conditions.

`scene.random_scene` draws the lights, cameras and ISP the reader was designed around. Photos from
outside it come under measured CIE lamps (fluorescent tubes with mercury lines, high-pressure
discharge, RGB and violet-pumped LEDs), through sensors with other spectral sensitivities (a
Foveon-like one among them), with white balance that is off by tens of percent or fixed to a
preset for another light, and exposed to the edge of clipping. Here every light has a family and
every camera a label, so a benchmark can hold whole domains out (`lights`, `cameras`, `domain`).
Measured data come from colour-science (the `train`/`test` extras).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from calibration.specs import Card, Product
from simulator import ceiling, scene, spectra
from simulator.scene import SceneSpec

LIGHT_FAMILIES = ("daylight", "incandescent", "fluorescent_halophosphate", "fluorescent_broadband",
                  "fluorescent_triband", "high_pressure", "led_phosphor", "led_rgb_violet")
# the measured lamps of each family (CIE 15:2004: FL3.1-3 standard halophosphate, FL3.4-6 deluxe
# broadband, FL3.7-11 three-band, FL3.12-14 multi-band, FL3.15 a D65 simulator)
_NAMED_LIGHTS = {
    "daylight": ("D65", "D50"),
    "incandescent": ("cie:A", "A"),
    "fluorescent_halophosphate": tuple(f"cie:FL{i}" for i in range(1, 7))
    + tuple(f"cie:FL3.{i}" for i in range(1, 4)) + ("F2",),
    "fluorescent_broadband": tuple(f"cie:FL{i}" for i in range(7, 10))
    + tuple(f"cie:FL3.{i}" for i in (4, 5, 6, 15)),
    "fluorescent_triband": tuple(f"cie:FL{i}" for i in range(10, 13))
    + tuple(f"cie:FL3.{i}" for i in range(7, 15)) + ("F11",),
    "high_pressure": tuple(f"cie:HP{i}" for i in range(1, 6)),
    "led_phosphor": tuple(f"cie:LED-B{i}" for i in range(1, 6)) + ("cie:LED-BH1", "LED_cool", "LED_warm",
                                                                    "LED_reader"),
    "led_rgb_violet": ("cie:LED-RGB1", "cie:LED-V1", "cie:LED-V2"),
}
_FAMILY_BY_NAME = {name: family for family, names in _NAMED_LIGHTS.items() for name in names}
_FAMILY_BY_KIND = {"D": "daylight", "planck": "incandescent", "LED": "led_phosphor"}
SODIUM_FAMILY = "low_pressure_sodium"  # resolvable, never drawn: a test of refusal, not of reading

DAYLIGHT_CCT = (3500.0, 12000.0)
PLANCK_CCT = (2400.0, 3400.0)
LED_CCT = (2700.0, 6500.0)
LED_PUMP_NM = (440.0, 460.0)
LED_PHOSPHOR_NM = (535.0, 575.0)
LED_RED_NM = (600.0, 650.0)
SYNTHETIC_SHARE = 0.5          # of incandescent and phosphor-LED draws: parametric, not a named lamp
MIXTURE_PROBABILITY = 0.25
MIX_NEAR = (0.0, 0.4)          # second light's share at one card edge
MIX_FAR = (0.6, 1.0)           # and at the other

# reagent dyes: the chemistry's absorption bands, or smooth spectra; card patches: CMYK inks, or smooth
DYE_MODELS, INK_MODELS = ("bands", "smooth"), ("cmyk", "smooth")
REFLECTANCE_LABELS = tuple(f"{dye}/{ink}" for dye in DYE_MODELS for ink in INK_MODELS)

BUILTIN_CAMERAS = ("imx219", "imx477", "ov5647", "webcam", "phone")
CAMERA_LABELS = BUILTIN_CAMERAS + ("nikon_d5100", "sigma_sdmerrill", "random")
_CAMERA_WEIGHTS = {**{c: 0.04 for c in BUILTIN_CAMERAS}, "nikon_d5100": 0.1, "sigma_sdmerrill": 0.1,
                   "random": 0.6}
_MEASURED_LABELS = {"nikon_d5100": "cs:nikon_d5100", "sigma_sdmerrill": "cs:sigma_sdmerrill"}

PRESET_PROBABILITY = 0.2
EXPOSURE_OF_CLIP = (0.45, 1.0)    # exposure as a fraction of where the card's white first clips
PAST_CLIP_PROBABILITY = 0.1
PAST_CLIP = (1.0, 1.15)
WORLD_RANGES = scene.Ranges(exposure=(1.0, 1.0),  # replaced by `_settle`, relative to clipping
                            light_gradient_max=0.35, vignetting=(0.05, 0.45),
                            wb_error_sd=0.2, wb_error_max=math.log(1.4), jpeg_quality=(70, 96))


def light_family(name: str) -> str:
    """The family of a light name (for leave-one-domain-out validation)."""
    if name in _FAMILY_BY_NAME:
        return _FAMILY_BY_NAME[name]
    if name == "sodium":
        return SODIUM_FAMILY
    kind = name.partition(":")[0]
    if kind in _FAMILY_BY_KIND:
        return _FAMILY_BY_KIND[kind]
    raise KeyError(f"no family for light {name!r}")


def named_lights() -> tuple[str, ...]:
    """Every fixed light name the world draws from (besides the parametric D, planck and LED ones)."""
    return tuple(_FAMILY_BY_NAME)


def camera_label(name: str) -> str:
    """A camera name's domain: a built-in model, one of the measured cameras, or "random"."""
    if name in BUILTIN_CAMERAS:
        return name
    for label, measured in _MEASURED_LABELS.items():
        if name == measured:
            return label
    if name.startswith("rand:"):
        return "random"
    raise KeyError(f"no label for camera {name!r}")


def domain(spec: SceneSpec) -> tuple[str, str]:
    """(light family of the main light, camera label) of a scene."""
    return light_family(spec.illuminant), camera_label(spec.camera)


def _checked(values, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    chosen = tuple(known if values is None else values)
    unknown = set(chosen) - set(known)
    if unknown or not chosen:
        raise ValueError(f"unknown or no {what}: {sorted(unknown)}; known: {known}")
    return chosen


def _draw_light_name(rng, families: tuple[str, ...]) -> str:
    family = str(rng.choice(families))
    synthetic = rng.random() < SYNTHETIC_SHARE
    if family == "daylight":  # uniform in mired, as daylight's CCT is perceived
        mired = rng.uniform(1e6 / DAYLIGHT_CCT[1], 1e6 / DAYLIGHT_CCT[0])
        return f"D:{1e6 / mired:.0f}"
    if family == "incandescent" and synthetic:
        return f"planck:{rng.uniform(*PLANCK_CCT):.0f}"
    if family == "led_phosphor" and synthetic:
        while True:  # not every pump/phosphor/red set can be blended to every CCT
            name = "LED:" + ":".join(f"{rng.uniform(*r):.0f}" for r in
                                     (LED_CCT, LED_PUMP_NM, LED_PHOSPHOR_NM, LED_RED_NM))
            try:
                spectra.illuminant(name)
                return name
            except KeyError:
                continue
    return str(rng.choice(_NAMED_LIGHTS[family]))


def _draw_camera_name(rng, labels: tuple[str, ...]) -> str:
    weights = np.array([_CAMERA_WEIGHTS[label] for label in labels])
    label = str(rng.choice(labels, p=weights / weights.sum()))
    if label == "random":
        return f"rand:{int(rng.integers(2 ** 31))}"
    return _MEASURED_LABELS.get(label, label)


def _optics_drawer(families: tuple[str, ...], labels: tuple[str, ...]):
    def draw(rng) -> dict:
        fields = {"illuminant": _draw_light_name(rng, families)}
        if rng.random() < MIXTURE_PROBABILITY:
            near, far = rng.uniform(*MIX_NEAR), rng.uniform(*MIX_FAR)
            fields["second_illuminant"] = _draw_light_name(rng, families)
            fields["light_mix"] = (float(near), float(far), float(rng.uniform(0, 360)))
        fields["camera"] = _draw_camera_name(rng, labels)
        return fields
    return draw


def reflectance_label(spec: SceneSpec) -> str:
    """'<dye model>/<ink model>' of a scene: the reflectance models of its pads and card patches."""
    return f"{spec.dye_model}/{spec.ink_model}"


def _settler(reflectances: tuple[str, ...]):
    def settle(rng, spec: SceneSpec) -> dict:
        dye, ink = str(rng.choice(list(reflectances))).split("/")
        return _settle(rng, spec, {"dye_model": dye, "ink_model": ink})
    return settle


def _settle(rng, spec: SceneSpec, fields: dict) -> dict:
    """White balance (sometimes a fixed preset for another light) and an exposure relative to where
    the card's white first clips, which depends on the light, camera and white balance drawn."""
    if rng.random() < PRESET_PROBABILITY:
        fields.update(white_balance=str(rng.choice(list(scene.WB_PRESETS))), wb_error=(1.0, 1.0, 1.0))
    clip = ceiling.white_clip_exposure(dataclasses.replace(spec, **fields))
    past = rng.random() < PAST_CLIP_PROBABILITY
    fields["exposure"] = clip * float(rng.uniform(*(PAST_CLIP if past else EXPOSURE_OF_CLIP)))
    return fields


def random_world_scene(rng: np.random.Generator, product: str | Product | None = None,
                       card: str | Card | None = None, lights=None, cameras=None, fault: str | None = None,
                       reflectances=None, **overrides) -> SceneSpec:
    """A scene from the whole world: a measured CIE lamp, daylight at 3500-12000 K or a synthesised
    LED (a quarter of scenes mixed with a second light across the card); a random, measured or
    built-in camera; auto white balance off by up to 40 % per channel or a fixed preset; exposure
    up to clipping on the white; pads dyed by their chemistry's absorption bands or with smooth
    spectra, card patches printed in CMYK inks or with smooth spectra (each half the scenes, so a
    model cannot learn one dye's metamerism against one ink set). `lights` (LIGHT_FAMILIES),
    `cameras` (CAMERA_LABELS) and `reflectances` (REFLECTANCE_LABELS) restrict the draw so whole
    domains can be held out; `fault` and `overrides` as in scene.random_scene."""
    families = _checked(lights, LIGHT_FAMILIES, "light families")
    labels = _checked(cameras, CAMERA_LABELS, "camera labels")
    surfaces = _checked(reflectances, REFLECTANCE_LABELS, "reflectance models")
    return scene.compose_scene(rng, product, card, fault, overrides, _optics_drawer(families, labels),
                               WORLD_RANGES, _settler(surfaces))
