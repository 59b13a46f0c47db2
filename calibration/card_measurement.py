"""A technician's spectrophotometer measurements of a printed reference card, as the card's references.

Ink, paper and printer move every printed patch away from the colour the card file intends, and
the colour correction is only as right as its references: a few dE00 of print error per patch
already pushes the held-out residual towards the reader's refusal limit. Measuring the printed
card and using those values puts the references back on what the camera actually sees.

The measurement file is CSV, as instruments export it: a header `patch,L,a,b`, then one row per
patch id of the card file (any order; a spreadsheet's byte-order mark is fine), CIELAB under D50
with the 2-degree observer. Comment lines starting with `#` may carry `key: value` metadata; those
read are `instrument`, `measured_at` (ISO date or date-time), `illuminant` and `observer` (absent
means D50 and 2; anything else is refused, because the card's references are D50/2-degree)::

    # instrument: X-Rite i1Pro 3
    # measured_at: 2026-11-20
    # illuminant: D50
    # observer: 2
    patch,L,a,b
    P00,95.81,0.42,-2.10
    ...

`import_measurements` checks the file (every patch exactly once, numbers in range, greys grey, no
patch implausibly far from its intended colour, naming rows that look swapped) and, given photos of
that card taken on the reader, that the measured references fit those photos no worse than the
intended ones: a wrong card, file or instrument set-up shows there even when every number looks
plausible. The result is a `stripread.card/1` document the reader loads like any card file.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

from calibration import detect
from calibration.colour import delta_e_2000
from calibration.correction import MAX_RESIDUAL_DE00
from calibration.errors import ReadError, SpecError
from calibration.camera_calibration import FlatField
from calibration.observe import StripObserver, decode
from calibration.specs import Card, card_from_document, load_product

COLUMNS = ("patch", "l", "a", "b")
LAB_RANGES = ((0.0, 100.0), (-128.0, 128.0), (-128.0, 128.0))
ILLUMINANT, OBSERVER = "D50", "2"
MAX_DE00_FROM_NOMINAL = 12.0    # print errors stay well below this; beyond it a row, patch or card is wrong
NEUTRAL_MAX_CHROMA = 6.0        # a grey's C*ab: the tone curves are fitted on the greys as if they had none
MAX_RESIDUAL_WORSENING = 0.5    # dE00, mean over photos: measured references fitting worse than this are wrong
ANOTHER_CARD_FRACTION = 0.5     # this share of patches far from intended: another card, or rows out of order


class MeasurementError(SpecError):
    """A measurement that must not become the card's references; the message says what to fix."""


@dataclass(frozen=True)
class _Measurement:
    lab: np.ndarray              # (patches, 3) in the card file's patch order
    line: dict[str, int]         # patch id -> line of the file, for messages
    metadata: dict[str, str]     # the `# key: value` comments


@dataclass(frozen=True)
class MeasuredCard:
    """The card with measured references: its JSON document (write it, and `--card` reads it) and
    the loaded `Card`."""
    card_json: dict
    card: Card

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.card_json, indent=1) + "\n", encoding="utf-8")
        return path

    def report(self) -> str:
        """A few lines for the technician: what was measured, how far the print is from the
        intended colours, and what the photos said."""
        m = self.card_json["measurement"]
        deviation = m["de00_from_nominal"]
        lines = [f"card {self.card.id}: {m['nominal_card']} as measured"
                 f" ({m['instrument'] or 'instrument not given'}, {m['measured_at'] or 'date not given'},"
                 f" {m['illuminant']}/{m['observer']} degree)",
                 f"print vs intended colours: mean {deviation['mean']:.2f} dE00,"
                 f" max {deviation['max']:.2f} dE00 ({deviation['max_patch']})"]
        if "photo_residual_de00" in m:
            residuals = m["photo_residual_de00"]
            lines.append(f"card residual on {len(residuals['nominal'])} photo(s), intended -> measured "
                         f"references: {_residual_summary(residuals['nominal'])} -> "
                         f"{_residual_summary(residuals['measured'])} dE00")
        else:
            lines.append("no photos given: the measurement was not checked against the camera")
        return "\n".join(lines)


def _residual_summary(residuals: list[float | None]) -> str:
    return " ".join(f">{MAX_RESIDUAL_DE00:g}" if r is None else f"{r:.2f}" for r in residuals)


def _metadata(lines: list[str]) -> dict[str, str]:
    """`# key: value` comment lines as a dict with lower-case keys."""
    pairs = (line.lstrip("#").partition(":") for line in lines)
    return {key.strip().lower(): value.strip() for key, sep, value in pairs if sep}


def _check_conditions(metadata: dict[str, str]) -> list[str]:
    """The instrument's illuminant and observer must be the references' own: CIELAB under another
    illuminant or observer is a different number for the same ink."""
    problems = []
    illuminant = metadata.get("illuminant", ILLUMINANT).replace(" ", "").upper()
    observer = metadata.get("observer", OBSERVER).lower()
    for word in ("°", "degrees", "degree", "deg", " "):
        observer = observer.replace(word, "")
    if illuminant != ILLUMINANT or observer != OBSERVER:
        problems.append(f"measured with illuminant {metadata.get('illuminant', ILLUMINANT)} and observer "
                        f"{metadata.get('observer', OBSERVER)}: the card's references are CIELAB under D50 with "
                        f"the 2-degree observer; export the measurement for D50/2")
    if "measured_at" in metadata:
        try:
            datetime.fromisoformat(metadata["measured_at"])
        except ValueError:
            problems.append(f"measured_at {metadata['measured_at']!r} is not an ISO date (e.g. 2026-11-20)")
    return problems


def _lab_cells(cells: list[str], where: str) -> tuple[tuple[float, float, float] | None, list[str]]:
    """Three CIELAB numbers of a row, or the problems with them."""
    problems = []
    values = []
    for name, cell, (low, high) in zip(("L", "a", "b"), cells, LAB_RANGES):
        try:
            value = float(cell)
        except ValueError:
            problems.append(f"{where}: {name} {cell.strip()!r} is not a number")
            continue
        if not low <= value <= high:   # NaN fails this too
            problems.append(f"{where}: {name} {cell.strip()} is outside {low:g}..{high:g}")
        values.append(value)
    return (tuple(values) if not problems else None), problems


def _parse(card: Card, csv_text: str) -> _Measurement:
    """The file's rows in the card's patch order; every problem found is reported at once, so a
    technician fixes the file in one go."""
    numbered = list(enumerate(csv_text.removeprefix("\ufeff").splitlines(), start=1))   # spreadsheets add a BOM
    metadata = _metadata([text.strip() for _, text in numbered if text.strip().startswith("#")])
    problems = _check_conditions(metadata)
    data_lines = [(n, text) for n, text in numbered if text.strip() and not text.strip().startswith("#")]
    rows = list(zip((n for n, _ in data_lines), csv.reader(text for _, text in data_lines)))
    if not rows or tuple(cell.strip().lower() for cell in rows[0][1]) != COLUMNS:
        raise MeasurementError("the measurement file must start with the header line patch,L,a,b")
    known = {p.id for p in card.patches}
    lab: dict[str, tuple[float, float, float]] = {}
    line: dict[str, int] = {}
    for n, cells in rows[1:]:
        if len(cells) != len(COLUMNS):
            problems.append(f"line {n}: {len(cells)} cells, expected 4 (patch,L,a,b)")
            continue
        patch = cells[0].strip()
        if patch not in known:
            problems.append(f"line {n}: {patch!r} is not a patch of {card.id}")
            continue
        if patch in line:
            problems.append(f"patch {patch} is measured twice (lines {line[patch]} and {n})")
            continue
        line[patch] = n
        values, cell_problems = _lab_cells(cells[1:], f"line {n} ({patch})")
        problems += cell_problems
        if values is not None:
            lab[patch] = values
    missing = [p.id for p in card.patches if p.id not in line]
    if missing:
        problems.append(f"no row for patch(es) {', '.join(missing)}")
    if problems:
        raise MeasurementError("the measurement file cannot be used:\n  - " + "\n  - ".join(problems))
    return _Measurement(np.array([lab[p.id] for p in card.patches]), line, metadata)


def _far_patch_problems(card: Card, measured: _Measurement, de00: np.ndarray) -> list[str]:
    """Patches too far from their intended colour. Most of them far: another card or rows out of
    order, said once. Otherwise, where two rows' values would each fit the other's patch, the rows
    are named as swapped, the usual slip when measuring by hand."""
    far = de00 > MAX_DE00_FROM_NOMINAL
    if far.mean() >= ANOTHER_CARD_FRACTION:
        return [f"{far.sum()} of {len(far)} patches are {de00[far].min():.0f}-{de00[far].max():.0f} dE00 from "
                f"{card.id}'s intended colours: is this the measurement of another card, or are the rows "
                f"out of order?"]
    ids = [p.id for p in card.patches]
    cross = delta_e_2000(measured.lab[:, None, :], card.patch_lab[None, :, :])   # row i vs patch j
    fits_swapped = (cross <= MAX_DE00_FROM_NOMINAL) & (cross.T <= MAX_DE00_FROM_NOMINAL)
    fits_swapped &= far[:, None] & far[None, :] & ~np.eye(len(ids), dtype=bool)
    cost = np.where(fits_swapped, cross + cross.T, np.inf)
    problems, explained = [], np.zeros(len(ids), dtype=bool)
    for i in np.flatnonzero(far)[np.argsort(-de00[far])]:   # the farthest first
        j = int(np.argmin(cost[i]))
        if not explained[i] and np.isfinite(cost[i, j]) and not explained[j]:
            explained[[i, j]] = True
            first, second = sorted((ids[i], ids[j]), key=measured.line.get)
            problems.append(f"rows {first} (line {measured.line[first]}) and {second} (line {measured.line[second]}) "
                            f"look swapped: each row's values match the other patch")
    return problems + [f"{ids[i]} (line {measured.line[ids[i]]}) is {de00[i]:.1f} dE00 from its intended colour"
                       for i in np.flatnonzero(far & ~explained)]


def _tinted_grey_problems(card: Card, measured: _Measurement, de00: np.ndarray) -> list[str]:
    """Grey patches measured with a colour cast (those already too far are reported as such)."""
    chroma = np.hypot(measured.lab[:, 1], measured.lab[:, 2])
    return [f"{p.id} (line {measured.line[p.id]}) is a grey patch but measured with chroma {c:.1f} "
            f"(a {lab[1]:.1f}, b {lab[2]:.1f})"
            for p, c, lab, d in zip(card.patches, chroma, measured.lab, de00)
            if p.role == "neutral" and c > NEUTRAL_MAX_CHROMA and d <= MAX_DE00_FROM_NOMINAL]


def card_residual(card: Card, photo: bytes, flat_field: FlatField | None = None) -> float | None:
    """Held-out residual (mean dE00) of the reader's colour correction fitted with `card`'s
    references on a photo of the card; None above the reader's limit, where every reading would be
    refused. It is the read path's own calibration step (find the card, map the light, sample the
    patches, fit), so a measurement is judged exactly as the reader will use it. Any other problem
    with the photo raises its `ReadError`."""
    image, _ = decode(photo)
    pose = detect.find_card(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), card)
    # the product only places the pads whose glare the calibration step checks for; any will do
    observer = StripObserver(card, load_product(), flat_field=flat_field)
    try:
        return observer.calibrate(image, pose)[1].residual_de00
    except ReadError as err:
        if err.code == "calibration_failed":
            return None
        raise


def _photo_residuals(nominal: Card, measured: Card, photos: Sequence[bytes],
                     flat_field: FlatField | None) -> dict[str, list[float | None]]:
    """Both cards' residuals per photo; refuses references that calibrate the photos worse than the
    intended ones. A residual above the limit counts as the limit: that only ever favours the
    intended references, never a wrong measurement."""
    residuals: dict[str, list[float | None]] = {"nominal": [], "measured": []}
    for number, photo in enumerate(photos, start=1):
        try:
            residuals["nominal"].append(card_residual(nominal, photo, flat_field))
            residuals["measured"].append(card_residual(measured, photo, flat_field))
        except ReadError as err:
            raise MeasurementError(f"photo {number} cannot be used: {err.message}") from None
    failed = [n for n, r in enumerate(residuals["measured"], start=1) if r is None]
    if failed:
        raise MeasurementError(
            f"with the measured values the reader cannot calibrate photo(s) {', '.join(map(str, failed))} "
            f"(residual above {MAX_RESIDUAL_DE00:g} dE00; intended values: "
            f"{_residual_summary([residuals['nominal'][n - 1] for n in failed])}): the measurement does not "
            f"match this card (mis-measured, another card or another file), or retake the photo(s)")
    capped = {k: np.array([MAX_RESIDUAL_DE00 if r is None else r for r in v]) for k, v in residuals.items()}
    worsening = float(np.mean(capped["measured"] - capped["nominal"]))
    if worsening > MAX_RESIDUAL_WORSENING:
        raise MeasurementError(
            f"the measured values fit the photos worse than the card's intended values (card residual "
            f"{capped['nominal'].mean():.2f} -> {capped['measured'].mean():.2f} dE00): the measurement does not "
            f"match this card (mis-measured, another card or another file)")
    return {k: [None if r is None else round(r, 3) for r in v] for k, v in residuals.items()}


def import_measurements(card: Card, csv_text: str, photos: Sequence[bytes] = (),
                        flat_field: FlatField | None = None) -> MeasuredCard:
    """`card` (as the file intends it) with each patch's `lab_d50` replaced by the measurement in
    `csv_text`, after the checks in the module docstring; `photos` of the printed card taken on
    the reader (no strip needed) add the check against the camera, through the reader's camera
    calibration (`flat_field`) when it has one. Raises `MeasurementError`."""
    measured = _parse(card, csv_text)
    de00 = delta_e_2000(measured.lab, card.patch_lab)
    problems = _far_patch_problems(card, measured, de00) + _tinted_grey_problems(card, measured, de00)
    if problems:
        raise MeasurementError(f"the measurement does not fit {card.id}:\n  - " + "\n  - ".join(problems))
    digest = hashlib.sha256(csv_text.encode("utf-8")).hexdigest()
    document = copy.deepcopy(card.source)
    document["id"] = f"{card.id}-m{digest[:8]}"
    for patch, lab in zip(document["patches"], measured.lab):
        patch["lab_d50"] = [round(float(v), 2) for v in lab]
    worst = int(np.argmax(de00))
    document["measurement"] = {
        "nominal_card": card.id,
        "instrument": measured.metadata.get("instrument"),
        "measured_at": measured.metadata.get("measured_at"),
        "illuminant": ILLUMINANT, "observer": OBSERVER,
        "source_sha256": digest,
        "de00_from_nominal": {"mean": round(float(de00.mean()), 2), "max": round(float(de00[worst]), 2),
                              "max_patch": card.patches[worst].id,
                              "patches": {p.id: round(float(d), 2) for p, d in zip(card.patches, de00)}}}
    if photos:
        document["measurement"]["photo_residual_de00"] = _photo_residuals(card, _load(document), photos, flat_field)
    return MeasuredCard(document, _load(document))


def _load(document: dict) -> Card:
    """The card as the reader will load the written file: through JSON and the card file's parser."""
    return card_from_document(json.loads(json.dumps(document)), f"measured card {document['id']}")
