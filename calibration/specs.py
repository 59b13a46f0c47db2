"""Loaders for the two interface contracts the reader is driven by: the reference card file
(`stripread.card/1`) and the strip product file (`stripread.product/1`).

The built-in defaults are byte-identical copies of `shared/spec`; a technician's measured card or
another product is loaded from a path. A malformed file raises `SpecError` naming the key, so a bad
file is refused at start rather than misreading strips later.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from calibration.colour import hex_to_lab_d50
from calibration.digest import sha256
from calibration.errors import SpecError

DEFAULT_CARD = "card-v1"
DEFAULT_PRODUCT = "generic-10"
_DIRECTIONS = {"+x": (1.0, 0.0), "-x": (-1.0, 0.0), "+y": (0.0, 1.0), "-y": (0.0, -1.0)}


def _require(obj: dict, key: str, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise SpecError(f"{where}: missing key {key!r}")
    return obj[key]


@dataclass(frozen=True)
class Patch:
    id: str
    center_mm: tuple[float, float]
    size_mm: float
    srgb: str
    lab_d50: tuple[float, float, float]
    role: str


@dataclass(frozen=True, eq=False)   # identity hash: cards key caches
class Card:
    id: str
    size_mm: tuple[float, float]
    background_srgb: str
    marker_dictionary: str
    marker_size_mm: float
    marker_ids: tuple[int, ...]
    marker_centers_mm: tuple[tuple[float, float], ...]
    slot_handle_end_mm: tuple[float, float]
    slot_direction: tuple[float, float]
    slot_width_mm: float
    slot_length_mm: float
    patches: tuple[Patch, ...]
    source: dict

    @cached_property
    def patch_lab(self) -> np.ndarray:
        return np.array([p.lab_d50 for p in self.patches], dtype=float)

    def slot_to_card(self, along_mm, across_mm=0.0) -> np.ndarray:
        """Card millimetres of a point `along_mm` from the slot's handle mark along the slot and
        `across_mm` to the right of its centre line (direction rotated by +90 degrees)."""
        along, across = np.broadcast_arrays(np.asarray(along_mm, float), np.asarray(across_mm, float))
        dx, dy = self.slot_direction
        hx, hy = self.slot_handle_end_mm
        return np.stack([hx + along * dx - across * dy, hy + along * dy + across * dx], axis=-1)


@dataclass(frozen=True)
class Level:
    code: str
    value: float | None
    srgb: str
    plus: str | None = None      # the dry-chemistry report's grade (-, +-, 1+ ... 4+), where the chart gives one


@dataclass(frozen=True, eq=False)
class Pad:
    analyte: str
    name: str
    loinc: str | None
    unit: str | None
    center_mm: float
    size_mm: float
    read_at_s: float
    scale: str
    levels: tuple[Level, ...]

    @cached_property
    def level_lab(self) -> np.ndarray:
        """Chart colours as CIELAB D50, in chart order."""
        return np.array([hex_to_lab_d50(level.srgb) for level in self.levels])

    @property
    def quantitative(self) -> bool:
        return all(level.value is not None for level in self.levels)

    def position(self, level: str, value: float | None = None) -> float:
        """Where a level code, or a value in the pad's unit, sits on the chart in level steps
        (fractional between levels; the value wins when the pad is quantitative and it is given;
        clamped to the chart). A level not on the chart is a `ValueError`."""
        codes = [lv.code for lv in self.levels]
        if level not in codes:
            raise ValueError(f"{self.analyte}: {level!r} is not one of the levels {codes}")
        if value is None or not self.quantitative:
            return float(codes.index(level))
        return self.value_position(value)

    def cell_position(self, cell: str) -> float | None:
        """A level code or a value in the pad's unit, as written in a technician's CSV, as a chart
        position; None for an empty cell; a `ValueError` naming the pad otherwise."""
        cell = cell.strip()
        if not cell:
            return None
        codes = [level.code for level in self.levels]
        if cell in codes or not self.quantitative:
            return self.position(cell)
        try:
            value = float(cell)
        except ValueError:
            raise ValueError(f"{self.analyte}: {cell!r} is neither a level {codes} nor a number") from None
        values = [level.value for level in self.levels]
        if not values[0] <= value <= values[-1]:
            raise ValueError(f"{self.analyte}: {value} is outside the chart ({values[0]}..{values[-1]})")
        return self.value_position(value)

    def value_position(self, value: float) -> float:
        """A value in the pad's unit as a fractional chart position, clamped to the chart."""
        return float(np.interp(value, [lv.value for lv in self.levels], np.arange(len(self.levels))))


@dataclass(frozen=True, eq=False)
class Product:
    id: str
    name: str
    strip_length_mm: float
    strip_width_mm: float
    strip_base_srgb: str
    read_window_s: dict
    pads: tuple[Pad, ...]
    derived: tuple[dict, ...]
    source: dict

    @cached_property
    def chart_digest(self) -> str:
        """Hash of what models and lot calibrations depend on: pads, levels and chart colours."""
        chart = [[p.analyte, [[lv.code, lv.value, lv.srgb] for lv in p.levels]] for p in self.pads]
        return sha256(json.dumps(chart, sort_keys=True).encode()).hexdigest()

    def pad(self, analyte: str) -> Pad:
        for pad in self.pads:
            if pad.analyte == analyte:
                return pad
        raise KeyError(analyte)


def _parse_card(doc: dict, where: str) -> Card:
    if doc.get("schema") != "stripread.card/1":
        raise SpecError(f"{where}: not a stripread.card/1 file (schema={doc.get('schema')!r})")
    markers = _require(doc, "markers", where)
    slot = _require(doc, "strip_slot", where)
    direction = _require(slot, "direction", where + " strip_slot")
    if direction not in _DIRECTIONS:
        raise SpecError(f"{where}: strip_slot.direction must be one of {sorted(_DIRECTIONS)}")
    ids = tuple(int(i) for i in _require(markers, "ids_clockwise_from_top_left", where + " markers"))
    centers = tuple(tuple(map(float, c)) for c in _require(markers, "centers_mm", where + " markers"))
    if len(ids) != 4 or len(centers) != 4:
        raise SpecError(f"{where}: the card needs exactly four markers")
    patches = []
    for i, p in enumerate(_require(doc, "patches", where)):
        w = f"{where} patches[{i}]"
        lab = tuple(map(float, _require(p, "lab_d50", w)))
        if len(lab) != 3:
            raise SpecError(f"{w}: lab_d50 needs three numbers")
        patches.append(Patch(str(_require(p, "id", w)), tuple(map(float, _require(p, "center_mm", w))),
                             float(_require(p, "size_mm", w)), str(_require(p, "srgb", w)), lab,
                             str(p.get("role", "chromatic"))))
    if sum(p.role == "neutral" for p in patches) < 3 or len(patches) < 12:
        raise SpecError(f"{where}: the card needs at least 3 neutral and 12 patches in all")
    return Card(
        id=str(_require(doc, "id", where)),
        size_mm=tuple(map(float, _require(doc, "size_mm", where))),
        background_srgb=str(doc.get("background_srgb", "FFFFFF")),
        marker_dictionary=str(_require(markers, "dictionary", where + " markers")),
        marker_size_mm=float(_require(markers, "size_mm", where + " markers")),
        marker_ids=ids, marker_centers_mm=centers,
        slot_handle_end_mm=tuple(map(float, _require(slot, "handle_end_mm", where + " strip_slot"))),
        slot_direction=_DIRECTIONS[direction],
        slot_width_mm=float(_require(slot, "width_mm", where + " strip_slot")),
        slot_length_mm=float(_require(slot, "length_mm", where + " strip_slot")),
        patches=tuple(patches), source=doc)


def _parse_product(doc: dict, where: str) -> Product:
    if doc.get("schema") != "stripread.product/1":
        raise SpecError(f"{where}: not a stripread.product/1 file (schema={doc.get('schema')!r})")
    strip = _require(doc, "strip", where)
    pads = []
    for i, p in enumerate(_require(doc, "pads", where)):
        w = f"{where} pads[{i}]"
        levels = tuple(Level(str(_require(lv, "code", w)), None if lv.get("value") is None else float(lv["value"]),
                             str(_require(lv, "srgb", w)), None if lv.get("plus") is None else str(lv["plus"]))
                       for lv in _require(p, "levels", w))
        if len(levels) < 2:
            raise SpecError(f"{w}: a pad needs at least two chart levels")
        pads.append(Pad(str(_require(p, "analyte", w)), str(p.get("name", p["analyte"])), p.get("loinc"),
                        p.get("unit"), float(_require(p, "center_mm", w)), float(_require(p, "size_mm", w)),
                        float(_require(p, "read_at_s", w)), str(p.get("scale", "ordinal")), levels))
    if not pads:
        raise SpecError(f"{where}: the product has no pads")
    return Product(
        id=str(_require(doc, "id", where)), name=str(doc.get("name", doc["id"])),
        strip_length_mm=float(_require(strip, "length_mm", where + " strip")),
        strip_width_mm=float(_require(strip, "width_mm", where + " strip")),
        strip_base_srgb=str(_require(strip, "base_srgb", where + " strip")),
        read_window_s=dict(_require(doc, "read_window_s", where)),
        pads=tuple(pads), derived=tuple(doc.get("derived", ())), source=doc)


def _load_json(path: Path | str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpecError(f"{path}: not readable JSON ({exc})") from None


def _builtin(kind: str, name: str) -> Path | None:
    path = resources.files("calibration") / "data" / kind / f"{name}.json"
    return Path(str(path)) if path.is_file() else None


def builtin_products() -> list[str]:
    folder = resources.files("calibration") / "data" / "products"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_card(name_or_path: str | Path = DEFAULT_CARD) -> Card:
    """A built-in card by id (e.g. 'card-v1') or a card file by path."""
    path = _builtin("cards", str(name_or_path)) or Path(name_or_path)
    return _parse_card(_load_json(path), str(path))


@lru_cache(maxsize=16)
def product_of_record(name: str) -> Product:
    """`load_product`, once per id: what trends, alert rules and lab messages use to interpret stored
    readings, many records of few products."""
    return load_product(name)


def card_from_document(doc: dict, where: str) -> Card:
    """A card from its parsed JSON (e.g. a measured card kept in a calibration record)."""
    return _parse_card(doc, where)


def load_product(name_or_path: str | Path = DEFAULT_PRODUCT) -> Product:
    """A built-in product by id (e.g. 'generic-10') or a product file by path."""
    path = _builtin("products", str(name_or_path)) or Path(name_or_path)
    return _parse_product(_load_json(path), str(path))
