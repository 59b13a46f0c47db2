"""The simulated reader's camera, behind device.runtime.camera's interface (`start`, `capture`,
`stop`): it renders the simulator's scene of the session's strip, with each pad developed as far
as the time since dipping says (see `simulator.development`). A peer of the reader, not part of it:
device/ reaches it only through the `--simulate` wiring (device/runtime/wiring.py)."""
from __future__ import annotations

import dataclasses

import numpy as np

from device.runtime.camera import STILL_SIZE, CameraLost
from simulator.development import level_position
from simulator.scene import photograph, random_scene


class SimulatedCamera:
    """The simulated reader's camera. The reader itself (card pose in the tray, light, camera
    model, the LEDs' bright spots) is drawn once from the seed, as one physical device; each strip
    brings new concentrations, lot and placement. The pads develop from dipping on: `dip(at)` says
    when the strip went in (clock seconds), `remove()` that it came out; `final_levels` are what
    the pads show at their read times."""

    name = "simulated"
    STRIP_FIELDS = ("levels", "lot_absorbance", "strip_shift_mm", "strip_rotation_deg", "mottle", "noise")

    def __init__(self, product, clock, seed: int = 0, resolution: tuple[int, int] = STILL_SIZE,
                 led_hotspots: float = 0.0):
        self.product, self.clock, self.resolution = product, clock, resolution
        self._rng = np.random.default_rng(seed)
        self.device = dataclasses.replace(random_scene(self._rng, product=self.product, resolution=resolution,
                                                       glare=None), led_hotspots=led_hotspots)
        self.dipped_at: float | None = None
        self.lost = False
        self.new_strip()

    def new_strip(self) -> None:
        """A fresh strip (new concentrations, lot, placement) in this reader."""
        strip = random_scene(self._rng, product=self.product, resolution=self.resolution, glare=None)
        self.spec = dataclasses.replace(self.device, **{name: getattr(strip, name) for name in self.STRIP_FIELDS})

    @property
    def final_levels(self) -> dict[str, str]:
        return {p.analyte: p.levels[int(round(self.spec.levels.get(p.analyte, 0.0)))].code for p in self.product.pads}

    def dip(self, at: float) -> None:
        self.dipped_at = at

    def remove(self) -> None:
        self.dipped_at = None

    def start(self, locked: dict | None = None) -> dict:
        """The simulated camera's exposure settles to the reader's light; locked, it stays put."""
        if locked:
            self.spec = dataclasses.replace(self.spec, exposure=locked["exposure"])
        return {"exposure": self.spec.exposure}

    def capture(self) -> bytes:
        if self.lost:
            raise CameraLost("the simulated camera was unplugged")
        if self.dipped_at is None:
            spec = dataclasses.replace(self.spec, fault="no_strip")
        else:
            elapsed = self.clock.now() - self.dipped_at
            spec = dataclasses.replace(self.spec, levels={
                p.analyte: level_position(p, self.spec.levels.get(p.analyte, 0.0), elapsed)
                for p in self.product.pads})
        with self.clock.held():        # rendering is the simulator's work, not the camera's delay
            data, _ = photograph(spec, self._rng)
        return data

    def stop(self) -> None:
        pass
