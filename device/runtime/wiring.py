"""One place where a reader is put together: its read path (card, product, pad model, the
technicians' calibration in force, the strip lot, the report style), its board and camera (the
reader's own, or with `simulate` the built-in simulated reader's), its clock and its QC gate.
The `stripread` commands, the technicians' commands and the benchmarks all build through here,
from parsed options (`ReaderSetup.from_args`) or keywords; nothing else in device/ reaches the
simulator. Heavy modules are imported inside the methods: a cold `read` loads only what it uses."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

if TYPE_CHECKING:
    from calibration.in_force import QcStatus, ReaderCalibration
    from calibration.specs import Card, Product
    from device.reading.reader import Reader
    from device.runtime.session import Clock


class Hardware(NamedTuple):
    """A reader's peripherals, open until the stack they were entered on closes."""
    board: Any                  # firmware_bridge.host.ReaderBoard
    camera: Any                 # device.runtime.camera.Camera
    rig: Any | None             # simulator.rig.SimulatedRig with `simulate` (its patient, its strips), else None


@dataclass(frozen=True)
class ReaderSetup:
    """What a reader is built from; each field is the `stripread` option of the same name (`db`:
    the results database holding the technicians' records, None for none, the factory state;
    `units`: the report style, None for $STRIPREAD_REPORT_STYLE; `speed`: time compression,
    simulated only)."""
    db: Path | str | None = None
    product: str = "generic-10"
    card: str = "card-v1"
    model: str = "auto"
    lot: str | None = None
    units: str | None = None
    simulate: bool = False
    port: str = "/dev/ttyACM0"
    camera: str = "auto"
    speed: float = 1.0
    seed: int = 1

    @classmethod
    def from_args(cls, args, **overrides) -> ReaderSetup:
        """From a parsed command line: the options this command has, the defaults for the rest."""
        given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**{**given, **overrides})

    def reader(self, long_lived: bool = False) -> Reader:
        """The read path. `model`: auto (the product's shipped trained model, or the baseline for a
        product that has none), onnx, baseline (nearest chart colour) or an .onnx file. A
        `long_lived` reader (the service) has its model's graph optimised by a child process first."""
        from calibration.specs import load_card, load_product
        from device.language.i18n import choose_style
        from device.reading.reader import Reader
        from models.onnx_model import OnnxPadModel, default_model_path, optimise_apart
        product = load_product(self.product)
        choice = self.model
        if choice == "auto":
            choice = "onnx" if default_model_path(product).is_file() else "baseline"
        if choice == "baseline":
            from models.pads import NearestChartColour
            model = NearestChartColour()
        else:
            path = default_model_path(product) if choice == "onnx" else Path(choice)
            if long_lived:
                optimise_apart(self.product, path)
            model = OnnxPadModel(product, path)
        card, calibration = self.calibration(load_card(self.card), product)
        return Reader(card, product, model, calibration, report_style=choose_style(self.units))

    def calibration(self, card: Card, product: Product) -> tuple[Card, ReaderCalibration]:
        """The card to read with and the technicians' records in force for it, the product and the
        lot (the factory state while there is no database yet)."""
        from calibration.in_force import ReaderCalibration, load_calibration
        if self.db is None or not Path(self.db).is_file():
            return card, ReaderCalibration(strip_lot=self.lot)
        from device.store.records import Records
        with Records(self.db, readonly=True) as records:
            return load_calibration(records, card, product.id, self.lot)

    def clock(self) -> Clock:
        """Time compressed by `speed` on the simulated reader only: real strips develop in real time."""
        from device.runtime.session import Clock
        return Clock(self.speed if self.simulate else 1.0)

    def hardware(self, stack: contextlib.ExitStack, product: Product, clock: Clock) -> Hardware:
        """The board and camera, entered on `stack`: the reader's own (`port`, `camera`), or with
        `simulate` the simulated reader's, its firmware on a pseudo-terminal behind a real serial link."""
        from firmware_bridge.host import ReaderBoard
        rig = None
        if self.simulate:
            from simulator.rig import SimulatedRig     # device/'s one way into the simulator (layering contract)
            rig = stack.enter_context(SimulatedRig(product, clock, seed=self.seed))
            port, camera = rig.port, rig.camera
        else:
            from device.runtime.camera import open_camera
            port, camera = self.port, open_camera(self.camera)
        return Hardware(stack.enter_context(ReaderBoard(port)), camera, rig)

    def qc_gate(self, stack: contextlib.ExitStack) -> Callable[[], QcStatus]:
        """A session's `admit`: asks the QC records before every patient test (a technician's
        passing run in another process lifts the lock at once)."""
        from calibration.in_force import qc_status
        from device.store.records import Records
        records = stack.enter_context(Records(self.db))
        return lambda: qc_status(records)


def simulated_photo(product: str, card: str, seed: int, fault: str | None = None):
    """A photo from the spectral simulator (`stripread simulate`, for trying the reader without a
    camera): its JPEG bytes, the scene drawn and the truth the reader should find."""
    import numpy as np
    from calibration.specs import load_card, load_product
    from simulator.scene import photograph, random_scene
    rng = np.random.default_rng(seed)
    spec = random_scene(rng, product=load_product(product), card=load_card(card), fault=fault)
    data, truth = photograph(spec, rng)
    return data, spec, truth
