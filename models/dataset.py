"""Labelled pad observations to train on: rendered synthetic scenes and a technician's real captures.

Both go through the same observation path as a reading (`calibration.observe`), so a model learns
from exactly the features it will see. A photo the reader refuses (no card, glare, ...) teaches
nothing and is skipped and counted.

Real captures (`stripread train --data DIR`): photos in DIR and a `labels.csv` beside them with a
header `photo,product,<ANALYTE>,...`, one row per photo. Each analyte cell holds a level code of the
product's chart (`neg`, `250`, `1.015`) or, for a solution of known concentration between levels, a
number in the pad's unit (`180`); an empty cell means "not known" and that pad is not used.
"""
from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibration.errors import ReadError
from calibration.observe import StripObserver
from calibration.specs import Card, Product, load_card, load_product
from models.features import strip_features

TRAIN_RESOLUTIONS = ((1456, 1088), (2028, 1520))


@dataclass
class TrainingSet:
    """Per analyte: features (n, d), true level index (n,), true level position (n,)."""
    product: Product
    features: dict = field(default_factory=dict)
    levels: dict = field(default_factory=dict)
    positions: dict = field(default_factory=dict)
    photos: int = 0
    refused: int = 0

    def add(self, analyte: str, features: np.ndarray, position: float) -> None:
        self.features.setdefault(analyte, []).append(features)
        self.positions.setdefault(analyte, []).append(position)
        self.levels.setdefault(analyte, []).append(int(round(position)))

    def arrays(self, analyte: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.array(self.features[analyte], np.float32), np.array(self.levels[analyte]),
                np.array(self.positions[analyte], np.float64))

    def digest(self) -> str:
        """SHA-256 of everything a model is fitted on: the same data gives the same hash."""
        h = hashlib.sha256()
        for analyte in sorted(self.features):
            x, y, t = self.arrays(analyte)
            h.update(analyte.encode())
            h.update(x.tobytes())
            h.update(y.tobytes())
            h.update(t.tobytes())
        return h.hexdigest()


def _observe_synthetic(job: tuple[str, str, int]) -> tuple[list, dict] | None:
    """Render one seeded scene and observe it; None when the reader refuses the photo."""
    from simulator.scene import photograph, random_scene
    product_ref, card_ref, seed = job
    product, card = load_product(product_ref), load_card(card_ref)
    rng = np.random.default_rng(seed)
    spec = random_scene(rng, product=product, card=card,
                        resolution=TRAIN_RESOLUTIONS[seed % len(TRAIN_RESOLUTIONS)])
    data, truth = photograph(spec, rng)
    try:
        observation = StripObserver(card, product).observe(data)
    except ReadError:
        return None
    return strip_features(observation), {a: t.t for a, t in truth.pads.items()}


def synthetic(product_ref: str, card_ref: str, count: int, seed: int, jobs: int = 1,
              progress: Callable[[int, int], None] | None = None) -> TrainingSet:
    """`count` rendered scenes of the product under the simulator's lights and cameras."""
    product = load_product(product_ref)
    data = TrainingSet(product)
    work = [(str(product_ref), str(card_ref), seed * 1_000_003 + i) for i in range(count)]
    with ProcessPoolExecutor(jobs) as pool:
        for done, result in enumerate(pool.map(_observe_synthetic, work, chunksize=8), 1):
            _collect(data, result)
            if progress:
                progress(done, count)
    return data


def _collect(data: TrainingSet, result: tuple[list, dict] | None) -> None:
    data.photos += 1
    if result is None:
        data.refused += 1
        return
    rows, positions = result
    for pad, row in zip(data.product.pads, rows):
        if positions.get(pad.analyte) is not None:
            data.add(pad.analyte, row, positions[pad.analyte])


def real_captures(product: Product, card: Card, directory: Path,
                  progress: Callable[[int, int], None] | None = None) -> TrainingSet:
    """A technician's labelled photos (see the module's docstring for the format)."""
    rows = _label_rows(directory / "labels.csv", product)
    data = TrainingSet(product)
    observer = StripObserver(card, product)
    for done, row in enumerate(rows, 1):
        try:
            observation = observer.observe((directory / row["photo"]).read_bytes())
        except (ReadError, OSError):
            _collect(data, None)
        else:
            positions = {pad.analyte: pad.cell_position(row.get(pad.analyte, "")) for pad in product.pads}
            _collect(data, (strip_features(observation), positions))
        if progress:
            progress(done, len(rows))
    return data


def _label_rows(path: Path, product: Product) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"photo", "product"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        return [row for row in reader if row["product"] == product.id]


def merge(sets: Iterable[TrainingSet]) -> TrainingSet:
    sets = list(sets)
    merged = TrainingSet(sets[0].product)
    for s in sets:
        merged.photos += s.photos
        merged.refused += s.refused
        for analyte in s.features:
            for row, position in zip(s.features[analyte], s.positions[analyte]):
                merged.add(analyte, row, position)
    return merged
