"""The built-in simulated reader: the simulated board (firmware on a pseudo-terminal, reached over
a real serial link), the simulated camera, and a patient who dips and inserts strips. Used by
`stripread demo`, `stripread run --simulate` (through device/runtime/wiring.py) and the session
benchmark."""
from __future__ import annotations

import contextlib
import dataclasses
import threading

from device.runtime.session import Clock, State
from firmware_bridge.simulator import SimulatedBoard
from simulator.camera import SimulatedCamera


# the simulated reader's LEDs light the card unevenly, as a ring of LEDs does: a camera
# calibration (`stripread calibrate camera --simulate`) measures and removes it
LED_HOTSPOTS = 0.08


class SimulatedRig(contextlib.AbstractContextManager):
    """The simulated reader's board and camera on one seed (one physical device), and the hands that
    dip strips and put them in its tray; a context manager that closes the board's pseudo-terminal."""

    def __init__(self, product, clock: Clock, seed: int = 0, led_hotspots: float = LED_HOTSPOTS):
        self.clock = clock
        self.board_sim = SimulatedBoard(seed=seed)
        self.camera = SimulatedCamera(product, clock, seed=seed, led_hotspots=led_hotspots)

    @property
    def port(self) -> str:
        return self.board_sim.port

    def insert_strip(self) -> None:
        """A freshly dipped strip goes into the tray."""
        self.camera.dip(self.clock.now())
        self.board_sim.insert_strip()

    def remove_strip(self) -> None:
        self.camera.remove()
        self.board_sim.remove_strip()

    def hand_in_new_strip(self, levels: dict[str, float] | None = None, after_s: float = 2.0) -> None:
        """Someone started a test at the screen: the last strip out, a fresh one dipped (in a control
        solution: `levels`, chart positions) and put in the tray `after_s` seconds later (clock time)."""
        self.remove_strip()                # the board reports only a change: harmless when the tray is empty
        self.camera.new_strip()
        if levels:
            self.camera.spec = dataclasses.replace(self.camera.spec, levels=levels)
        threading.Timer(after_s / self.clock.speed, self.insert_strip).start()

    def patient(self, session, stop: threading.Event, pause_s: float = 5.0, strips: int | None = None) -> threading.Thread:
        """A thread that keeps testing: a new strip whenever the reader is idle, taken out once its
        result is stored, then a pause; `strips` of them, or until `stop`."""
        def loop():
            done = 0
            while not stop.is_set() and (strips is None or done < strips):
                self.clock.sleep(pause_s)
                self.camera.new_strip()
                target = session.stored + 1
                self.insert_strip()
                while not stop.is_set() and (session.stored < target or session.state is not State.IDLE):
                    self.clock.sleep(1.0)
                self.remove_strip()
                done += 1
        thread = threading.Thread(target=loop, name="simulated-patient", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.board_sim.close()

    def __exit__(self, *exc) -> None:
        self.close()
