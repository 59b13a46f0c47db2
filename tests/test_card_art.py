import struct
import xml.etree.ElementTree as ET

import cv2
import numpy as np

from calibration import card_art
from calibration.detect import find_card
from device.cli.commands import main


def _png_dpi(png: bytes) -> float:
    i = png.index(b"pHYs")
    ppm_x, ppm_y, unit = struct.unpack(">IIB", png[i + 4:i + 13])
    assert unit == 1 and ppm_x == ppm_y
    return ppm_x * 0.0254


def test_printed_png_is_true_size_at_600_dpi(card):
    png = card_art.render_png(card, 600)
    assert round(_png_dpi(png)) == 600
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[:2] == (round(50 * 600 / 25.4), round(140 * 600 / 25.4))


def test_printed_card_is_found_by_the_reader_at_the_right_place(card):
    """The printed artwork, photographed head-on, gives back the card's own geometry."""
    ppm = 8.0
    rgb = np.round(card_art.palette_srgb(card)[card_art.label_map(card, ppm)] * 255).astype(np.uint8)
    gray = cv2.copyMakeBorder(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 40, 40, 40, 40, cv2.BORDER_CONSTANT, value=90)
    pose = find_card(gray, card)
    assert pose.markers_found == 4
    assert abs(pose.px_per_mm - ppm) < 0.05
    for patch in card.patches:   # every patch centre lands on its own colour
        x, y = pose.to_image(np.array(patch.center_mm))
        expected = np.round(card_art.palette_srgb(card)[card_art.FIRST_PATCH + card.patches.index(patch)] * 255)
        assert np.abs(rgb[int(y) - 40, int(x) - 40] - expected).max() <= 1, patch.id


def test_svg_is_true_size_and_carries_every_patch_and_marker_cell(card):
    root = ET.fromstring(card_art.render_svg(card))
    assert root.get("width") == "140.0mm" and root.get("height") == "50.0mm"
    rects = root.findall("{http://www.w3.org/2000/svg}rect")
    fills = [r.get("fill") for r in rects]
    for patch in card.patches:
        assert f"#{patch.srgb}" in fills
    black_cells = sum(int(card_art.marker_cells(card, m).sum()) for m in card.marker_ids)
    assert fills.count("#000") == black_cells + 2   # plus the two handle-mark ticks


def test_white_mask_keeps_clear_of_print_and_slot(card):
    ppm = 4.0
    labels = card_art.label_map(card, ppm)
    mask = card_art.white_mask(card, ppm, clearance_mm=1.0)
    assert 0.2 < mask.mean() < 0.6
    assert np.all(labels[mask] == card_art.BACKGROUND)
    row = int(card.slot_handle_end_mm[1] * ppm)
    assert not mask[row, int(30 * ppm):int(120 * ppm)].any()


def test_card_print_command_writes_both_files(tmp_path, capsys):
    assert main(["card", "print", "--out", str(tmp_path), "--dpi", "300"]) == 0
    assert (tmp_path / "card-v1.png").stat().st_size > 10_000
    assert (tmp_path / "card-v1.svg").read_text().startswith("<svg")
    assert str(tmp_path / "card-v1.png") in capsys.readouterr().out
