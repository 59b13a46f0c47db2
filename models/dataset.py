"""Labelled pad observations to train on: rendered synthetic scenes and a technician's real captures.

Synthetic scenes come from the whole simulated world (`simulator.world`: measured and synthesised
lights, mixtures of two, random and measured cameras, white balance far off or fixed, dyes unlike
the card's inks), so a model learns no one light or camera. Both go through the same observation
path as a reading (`calibration.observe`), so a model learns
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
from functools import lru_cache
from pathlib import Path

import numpy as np

from calibration.errors import ReadError
from calibration.observe import StripObservation, StripObserver
from calibration.specs import Card, Pad, Product, load_card, load_product
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


@dataclass
class SceneRow:
    """One rendered scene as the reader observed it: the observation (None when refused, with the
    refusal's code), its domain (light family, camera label) for leave-one-domain-out validation,
    the pads' true level positions and what ideal physics allows (`simulator.ceiling`)."""
    seed: int
    product: str
    light_family: str
    camera: str
    reflectance: str           # '<dye model>/<ink model>' of the pads and the card's patches
    fault: str | None
    expected_error: str | None
    observation: StripObservation | None
    refusal: str | None
    positions: dict            # analyte -> true level position (None: an off-chart pad)
    ceiling: dict              # analyte -> True when ideal physics reads the exact level
    out_of_gamut: tuple = ()


# the domains a scene belongs to, each value held out in turn to see how a model does on what it
# never saw: light family, camera label, reagent-dye model and card-ink model
DOMAINS = {"light": lambda r: r.light_family, "camera": lambda r: r.camera,
           "dye": lambda r: r.reflectance.split("/")[0], "ink": lambda r: r.reflectance.split("/")[1]}


def true_level(pad: Pad, position: float) -> int:
    """The level a reading is judged against: the chart level nearest the true concentration."""
    return int(np.floor(np.clip(position, 0, len(pad.levels) - 1) + 0.5))


def observe_world_scene(job: tuple) -> SceneRow:
    """Render one seeded scene drawn from the whole simulated world (`simulator.world`) and observe
    it as `stripread read` does. `job`: (product, card, seed, fault, light families, camera labels,
    reflectance models, photo folder or None). With a folder the photo is kept there and reused: re-observing a photo
    costs a tenth of rendering it, so a change to the reader is measured on the same photos."""
    from simulator.ceiling import ceiling
    from simulator.scene import FAULTS, photograph, truth_level
    from simulator.world import domain, random_world_scene, reflectance_label
    product_ref, card_ref, seed, fault, lights, cameras, reflectances, photos = job
    product, card = load_product(product_ref), load_card(card_ref)
    rng = np.random.default_rng(seed)
    spec = random_world_scene(rng, product=product, card=card, lights=lights, cameras=cameras, fault=fault,
                              reflectances=reflectances, resolution=TRAIN_RESOLUTIONS[seed % len(TRAIN_RESOLUTIONS)])
    path = Path(photos) / f"{product.id}-{fault or 'good'}-{seed}.jpg" if photos else None
    if path is not None and path.is_file():
        data = path.read_bytes()
    else:
        data = photograph(spec, rng)[0]
        if path is not None:
            path.write_bytes(data)
    try:
        observation, refusal = _observer(card, product).observe(data), None
    except ReadError as err:
        observation, refusal = None, err.code
    strip = load_product(spec.strip_product) if spec.strip_product else product
    positions = {} if fault == "no_strip" else \
        {p.analyte: None if p.analyte in spec.off_chart else truth_level(spec, p)[0] for p in strip.pads}
    light, camera = domain(spec)
    return SceneRow(seed, product.id, light, camera, reflectance_label(spec), fault, FAULTS.get(fault), observation,
                    refusal, positions, ceiling(spec) if fault is None else {}, tuple(spec.off_chart))


@lru_cache(maxsize=4)
def _observer(card: Card, product: Product) -> StripObserver:
    return StripObserver(card, product)


def synthetic_rows(product_ref: str, card_ref: str, count: int, seed: int, jobs: int = 1,
                   progress: Callable[[int, int], None] | None = None, photos: Path | None = None) -> list[SceneRow]:
    """`count` observed scenes of the product drawn from the whole simulated world (the photos kept
    in and reused from `photos`, if given): `from_rows` makes them a training set, and their domains
    choose the model's margins (`models.train.choose_margins`)."""
    return world_rows(str(product_ref), str(card_ref), training_seeds(seed, count), jobs=jobs, progress=progress,
                      photos=photos)


def from_rows(product: Product, rows: Iterable[SceneRow]) -> TrainingSet:
    """The training set of observed scenes (a refused photo counted, not learned from)."""
    data = TrainingSet(product)
    for row in rows:
        _collect(data, row.observation and (strip_features(row.observation), row.positions))
    return data


def training_seeds(seed: int, count: int) -> list[int]:
    return [seed * 1_000_003 + i for i in range(count)]


def world_rows(product_ref: str, card_ref: str, seeds: Iterable[int], fault: str | None = None,
               lights: tuple | None = None, cameras: tuple | None = None, reflectances: tuple | None = None,
               jobs: int = 1, progress: Callable[[int, int], None] | None = None,
               photos: Path | None = None) -> list[SceneRow]:
    """Observed world scenes for the seeds, rendered in `jobs` processes (photos kept in `photos`)."""
    work = [(product_ref, card_ref, s, fault, lights, cameras, reflectances, photos and str(photos)) for s in seeds]
    rows = []
    with ProcessPoolExecutor(jobs) as pool:
        for done, row in enumerate(pool.map(observe_world_scene, work, chunksize=4), 1):
            rows.append(row)
            if progress:
                progress(done, len(work))
    return rows


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
