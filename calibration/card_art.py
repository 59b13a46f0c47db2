"""The printed reference card as a label map: which printed element covers each point of the card.

One drawing serves everyone: `stripread card print` colours it with the patches' sRGB, the scene
simulator colours it with spectra, and the reader derives from it where the card is plain white
(its illumination reference). Labels: 0 background, 1 black ink (markers, handle marks, text),
2 + i patch i.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from calibration.cache import cached_array
from calibration.colour import hex_to_srgb
from calibration.specs import Card

BACKGROUND, INK, FIRST_PATCH = 0, 1, 2
_TICK_MM = (0.4, 2.0)  # handle-mark ticks beside the slot: width, length
_TEXT_HEIGHT_MM = 2.2
_CACHED_TEXT_PIXELS = 1_000_000   # the reader's white mask (2 px/mm) is cached; print and simulator sizes are not


def aruco_dictionary(card: Card):
    return cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, card.marker_dictionary))


def marker_cells(card: Card, marker_id: int) -> np.ndarray:
    """The marker's cells (border included) as a boolean 'black' matrix."""
    dictionary = aruco_dictionary(card)
    cells = dictionary.markerSize + 2
    return cv2.aruco.generateImageMarker(dictionary, marker_id, cells) == 0


def _handle_ticks(card: Card) -> list[tuple[np.ndarray, np.ndarray]]:
    """Short ink ticks just outside both long edges of the slot at its handle mark (corner pairs)."""
    w, length = _TICK_MM
    half = card.slot_width_mm / 2 + 0.8
    ticks = []
    for side in (-1, 1):
        a = card.slot_to_card([-w / 2, w / 2], [side * half, side * half])
        b = card.slot_to_card([-w / 2, w / 2], [side * (half + length)] * 2)
        ticks.append((np.minimum(a.min(0), b.min(0)), np.maximum(a.max(0), b.max(0))))
    return ticks


def label_map(card: Card, px_per_mm: float) -> np.ndarray:
    """Rasterise the card at `px_per_mm` (pixel centres at (i + 0.5) / px_per_mm mm)."""
    width, height = (int(round(s * px_per_mm)) for s in card.size_mm)
    labels = np.zeros((height, width), np.uint8)
    xs = (np.arange(width) + 0.5) / px_per_mm
    ys = (np.arange(height) + 0.5) / px_per_mm

    def box(lo, hi):
        cols = np.nonzero((xs >= lo[0]) & (xs < hi[0]))[0]
        rows = np.nonzero((ys >= lo[1]) & (ys < hi[1]))[0]
        return rows, cols

    for i, patch in enumerate(card.patches):
        c, h = np.array(patch.center_mm), patch.size_mm / 2
        rows, cols = box(c - h, c + h)
        labels[np.ix_(rows, cols)] = FIRST_PATCH + i
    for marker_id, center in zip(card.marker_ids, card.marker_centers_mm):
        cells = marker_cells(card, marker_id)
        origin = np.array(center) - card.marker_size_mm / 2
        rows, cols = box(origin, origin + card.marker_size_mm)
        cell_mm = card.marker_size_mm / cells.shape[0]
        ci = np.clip(((ys[rows] - origin[1]) / cell_mm).astype(int), 0, cells.shape[0] - 1)
        cj = np.clip(((xs[cols] - origin[0]) / cell_mm).astype(int), 0, cells.shape[1] - 1)
        labels[np.ix_(rows, cols)] = np.where(cells[np.ix_(ci, cj)], INK, BACKGROUND)
    for lo, hi in _handle_ticks(card):
        labels[np.ix_(*box(lo, hi))] = INK
    _draw_text(labels, card, px_per_mm)
    return labels


def _text_anchor_mm(card: Card) -> tuple[float, float]:
    """Bottom margin, centred: below the lower patch row, between the lower markers."""
    return card.size_mm[0] / 2, card.size_mm[1] - 1.8


def _draw_text(labels: np.ndarray, card: Card, px_per_mm: float) -> None:
    """The card's name in its bottom margin. OpenCV 5 loads its fonts on the first text call: 8 MB
    and 25 ms of every cold `stripread read`, which draws the card only for its white mask. So
    what OpenCV draws at that small scale is kept in the cache, named by everything it depends
    on: this file, OpenCV's version and the call's arguments."""
    if labels.size > _CACHED_TEXT_PIXELS:
        labels[_text_ink(labels.shape, card, px_per_mm)] = INK
        return
    key = repr((cv2.__version__, card.id, labels.shape, px_per_mm, _text_anchor_mm(card))).encode()
    ink = cached_array("card-text", key + Path(__file__).read_bytes(),
                       lambda: _text_ink(labels.shape, card, px_per_mm))
    labels[ink] = INK


def _text_ink(shape: tuple[int, int], card: Card, px_per_mm: float) -> np.ndarray:
    """Where the card's name is inked, at `px_per_mm`."""
    canvas = np.zeros(shape, np.uint8)
    text = f"stripread {card.id}"
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, 2)
    scale = _TEXT_HEIGHT_MM * px_per_mm / th
    thickness = max(1, int(round(scale * 2)))
    (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    x_mm, y_mm = _text_anchor_mm(card)
    origin = (int(round(x_mm * px_per_mm - tw / 2)), int(round(y_mm * px_per_mm)))
    cv2.putText(canvas, text, origin, font, scale, 1, thickness, cv2.LINE_8)
    return canvas.astype(bool)


def palette_srgb(card: Card) -> np.ndarray:
    """sRGB (0..1) for each label, in label order."""
    colours = [hex_to_srgb(card.background_srgb), np.zeros(3)]
    colours += [hex_to_srgb(p.srgb) for p in card.patches]
    return np.array(colours)


def white_mask(card: Card, px_per_mm: float, clearance_mm: float, with_slot: bool = False) -> np.ndarray:
    """True where the card is bare background at least `clearance_mm` from any print, the strip
    slot (unless `with_slot`: a blank card's empty slot is white too) and the card's edge: the
    places whose colour is a known white."""
    labels = label_map(card, px_per_mm)
    keep = (labels == BACKGROUND).astype(np.uint8)
    if not with_slot:
        slot = np.array([card.slot_to_card(s, t) for s in (0.0, card.slot_length_mm)
                         for t in (-card.slot_width_mm / 2, card.slot_width_mm / 2)])
        lo, hi = slot.min(0) * px_per_mm, slot.max(0) * px_per_mm
        keep[int(lo[1]):int(np.ceil(hi[1])), int(lo[0]):int(np.ceil(hi[0]))] = 0
    keep[[0, -1], :] = 0
    keep[:, [0, -1]] = 0
    radius = max(1, int(round(clearance_mm * px_per_mm)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.erode(keep, kernel).astype(bool)


def render_png(card: Card, dpi: int = 600) -> bytes:
    """The printable card as PNG bytes at `dpi`, with the pHYs chunk so it prints at true size."""
    labels = label_map(card, dpi / 25.4)
    rgb = np.round(palette_srgb(card)[labels] * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    png = buf.tobytes()
    ppm = int(round(dpi / 0.0254))
    body = b"pHYs" + struct.pack(">IIB", ppm, ppm, 1)
    chunk = struct.pack(">I", 9) + body + struct.pack(">I", zlib.crc32(body))
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR data, CRC
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def render_svg(card: Card) -> str:
    """The printable card as SVG in millimetres (prints at true size)."""
    w, h = card.size_mm
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}mm" height="{h}mm" '
             f'viewBox="0 0 {w} {h}" shape-rendering="crispEdges">',
             f'<rect width="{w}" height="{h}" fill="#{card.background_srgb}"/>']
    for p in card.patches:
        s = p.size_mm
        parts.append(f'<rect x="{p.center_mm[0] - s / 2:g}" y="{p.center_mm[1] - s / 2:g}" '
                     f'width="{s:g}" height="{s:g}" fill="#{p.srgb}"><title>{p.id}</title></rect>')
    for marker_id, center in zip(card.marker_ids, card.marker_centers_mm):
        cells = marker_cells(card, marker_id)
        cell = card.marker_size_mm / cells.shape[0]
        x0, y0 = (c - card.marker_size_mm / 2 for c in center)
        for r, c in zip(*np.nonzero(cells)):
            parts.append(f'<rect x="{x0 + c * cell:g}" y="{y0 + r * cell:g}" '
                         f'width="{cell:g}" height="{cell:g}" fill="#000"/>')
    for lo, hi in _handle_ticks(card):
        parts.append(f'<rect x="{lo[0]:g}" y="{lo[1]:g}" width="{hi[0] - lo[0]:g}" '
                     f'height="{hi[1] - lo[1]:g}" fill="#000"/>')
    x, y = _text_anchor_mm(card)
    parts.append(f'<text x="{x:g}" y="{y:g}" font-family="sans-serif" font-size="{_TEXT_HEIGHT_MM * 1.4:g}" '
                 f'text-anchor="middle" fill="#000">stripread {card.id}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_card(card: Card, out_dir: Path, dpi: int = 600) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    png, svg = out_dir / f"{card.id}.png", out_dir / f"{card.id}.svg"
    png.write_bytes(render_png(card, dpi))
    svg.write_text(render_svg(card), encoding="utf-8")
    return [png, svg]
