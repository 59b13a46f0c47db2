"""A simulated reader board: `Firmware` behind a pseudo-terminal, with switchable faults.

The host opens `SimulatedBoard.port` (a symlink in a temp dir) with pyserial exactly as it would
open /dev/ttyACM0; `unplug()`/`replug()` make the port vanish and come back under the same path,
the way a USB CDC device does. Faults follow the spirit of OctoPrint's virtual printer: each one
is an attribute of `SimulatedBoard.faults` that tests and demos flip while the link runs.
"""
from __future__ import annotations

import logging
import os
import random
import select
import tempfile
import threading
import time
import tty

from firmware_bridge.firmware import Firmware

log = logging.getLogger(__name__)


class Faults:
    """Run-time switchable faults; byte faults apply in both directions."""

    def __init__(self) -> None:
        self.drop_byte_probability = 0.0
        self.corrupt_byte_probability = 0.0
        self.reply_delay_s = 0.0
        self.replies_to_drop = 0  # the next N replies are never sent
        self.strip_sensor_stuck = False  # the strip sensor keeps its last reading


class SimulatedBoard:
    """Runs one `Firmware` on a pty in a background thread; use as a context manager."""

    def __init__(self, firmware: Firmware | None = None, seed: int = 0) -> None:
        self.firmware = firmware or Firmware()
        self.faults = Faults()
        self._random = random.Random(seed)
        self._dir = tempfile.mkdtemp(prefix="stripread-board-")
        self.port = os.path.join(self._dir, "ttyREADER")
        self._lock = threading.RLock()  # firmware state and the pty fds
        self._master: int | None = None
        self._slave: int | None = None
        self._stop = threading.Event()
        self._plug_in()
        self._thread = threading.Thread(target=self._run, name="simulated-board", daemon=True)
        self._thread.start()

    # ---- test and demo hooks -------------------------------------------------------------

    def insert_strip(self) -> None:
        self._sense(lambda: self._strip_moved(True))

    def remove_strip(self) -> None:
        self._sense(lambda: self._strip_moved(False))

    def press(self, button: int) -> None:
        self._sense(lambda: self.firmware.button_pressed(button))

    def open_lid(self) -> None:
        self._sense(lambda: self.firmware.lid_sensor(True))

    def close_lid(self) -> None:
        self._sense(lambda: self.firmware.lid_sensor(False))

    def set_climate(self, humidity: float, temperature: float) -> None:
        self._sense(lambda: self.firmware.climate_sensor(humidity, temperature))

    def reset(self) -> None:
        """Spontaneous reset: state cleared, counters at zero, a fresh BOOT event sent."""
        log.info("simulated board resets")
        self._sense(self.firmware.boot)

    def unplug(self) -> None:
        """Close the pty and remove the port path, as a pulled USB cable does."""
        log.info("simulated board unplugged")
        with self._lock:
            self._close_pty()

    def replug(self) -> None:
        """A new pty under the same port path; the board powers up again (fresh BOOT)."""
        log.info("simulated board replugged")
        with self._lock:
            self._close_pty()
            self.firmware.boot()
            self._plug_in()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            self._close_pty()
        os.rmdir(self._dir)

    def __enter__(self) -> "SimulatedBoard":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- internals -------------------------------------------------------------------------

    def _sense(self, change) -> None:
        with self._lock:
            change()
            self._write(self.firmware.take_events())

    def _strip_moved(self, present: bool) -> None:
        if not self.faults.strip_sensor_stuck:
            self.firmware.strip_sensor(present)

    def _plug_in(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line discipline: a byte pipe like a USB CDC port
        staging = self.port + ".new"
        os.symlink(os.ttyname(self._slave), staging)
        os.replace(staging, self.port)  # atomic re-point: the host never sees a half-made path
        self._write(self.firmware.take_events())

    def _close_pty(self) -> None:
        if self._master is None:
            return
        if os.path.lexists(self.port):
            os.unlink(self.port)
        os.close(self._master)
        os.close(self._slave)
        self._master = self._slave = None

    def _mangle(self, data: bytes) -> bytes:
        drop, corrupt = self.faults.drop_byte_probability, self.faults.corrupt_byte_probability
        if not drop and not corrupt:
            return data
        out = bytearray()
        for byte in data:
            if self._random.random() < drop:
                continue
            if self._random.random() < corrupt:
                byte ^= self._random.randint(1, 255)
            out.append(byte)
        return bytes(out)

    def _write(self, data: bytes) -> None:
        data = self._mangle(data)
        if data and self._master is not None:
            try:
                os.write(self._master, data)
            except OSError as error:
                log.debug("simulated board write failed: %s", error)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                master = self._master
            if master is None:
                self._stop.wait(0.02)
                continue
            try:
                readable, _, _ = select.select([master], [], [], 0.02)
                with self._lock:
                    if not readable or master != self._master:
                        continue
                    data = os.read(master, 4096)
                    replies = self.firmware.receive(self._mangle(data))
            except (OSError, ValueError):
                continue  # the pty was closed under us by unplug(); the next pass sees it
            self._send_replies(replies)

    def _send_replies(self, replies: bytes) -> None:
        if not replies:
            return
        if self.faults.replies_to_drop > 0:
            self.faults.replies_to_drop -= 1
            return
        if self.faults.reply_delay_s:
            time.sleep(self.faults.reply_delay_s)
        with self._lock:
            self._write(replies)
