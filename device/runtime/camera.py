"""Camera back-ends behind one small interface: `start()` (open, let exposure and white balance
settle under the reader's LEDs, then lock them so every capture of a session is taken alike),
`capture()` (JPEG bytes of one still), `stop()`. A camera that stops answering raises `CameraLost`.

- `PiCamera`: the Pi camera module through picamera2, imported only when used (it exists only
  where libcamera does: Raspberry Pi OS's python3-picamera2).
- `OpenCVCamera`: a USB camera through cv2.VideoCapture.
- `ReplayCamera`: a folder of photos, in name order (a recorded session, or test photos).
`open_camera("auto")` picks the Pi camera when picamera2 finds one, else a USB camera. The simulated
reader's camera is a peer outside the device (simulator/camera.py), wired in only with `--simulate`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from calibration.decode import read_photo
from calibration.errors import ReadError

JPEG_QUALITY = 95
STILL_SIZE = (2028, 1520)          # the Pi HQ camera's 2x2-binned full-field mode: fast, low noise
SETTLE_S = 1.0                     # auto exposure / white balance converge within this under the LEDs


class CameraLost(Exception):
    """The camera stopped delivering frames (unplugged, driver error, no more replay photos)."""


class Camera(Protocol):
    name: str

    def start(self, locked: dict | None = None) -> dict:
        """Open and settle; with `locked` (a camera calibration's settings) use exactly those.
        Returns the exposure and white-balance settings in force."""

    def capture(self) -> bytes: ...

    def stop(self) -> None: ...


def _jpeg(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise CameraLost("could not encode the frame")
    return buf.tobytes()


class PiCamera:
    """picamera2: a still configuration, settled with auto exposure and white balance, then locked."""

    name = "picamera2"

    def __init__(self, size: tuple[int, int] = STILL_SIZE):
        from picamera2 import Picamera2   # lazily: only on Raspberry Pi OS
        self._cam = Picamera2()
        self._cam.configure(self._cam.create_still_configuration(main={"size": size, "format": "RGB888"}))

    def start(self, locked: dict | None = None) -> dict:
        self._cam.start()
        if not locked:
            time.sleep(SETTLE_S)
            meta = self._cam.capture_metadata()
            locked = {"ExposureTime": meta["ExposureTime"], "AnalogueGain": meta["AnalogueGain"],
                      "ColourGains": list(meta["ColourGains"])}
        self._cam.set_controls({"AeEnable": False, "AwbEnable": False, **locked})
        time.sleep(0.2)   # the locked controls take effect a couple of frames later
        return dict(locked)

    def capture(self) -> bytes:
        try:
            return _jpeg(self._cam.capture_array("main"))   # RGB888 is stored B, G, R in memory
        except Exception as exc:   # libcamera reports a lost camera through several exception types
            raise CameraLost(f"picamera2: {exc}") from exc

    def stop(self) -> None:
        self._cam.stop()
        self._cam.close()


class OpenCVCamera:
    """A USB (UVC) camera: auto exposure runs while settling, then manual exposure holds its value."""

    name = "opencv"

    def __init__(self, index: int = 0, size: tuple[int, int] = STILL_SIZE):
        self.index, self.size = index, size
        self._cap = None

    def start(self, locked: dict | None = None) -> dict:
        self._cap = cv2.VideoCapture(self.index)
        if not self._cap.isOpened():
            raise CameraLost(f"no camera at index {self.index}")
        self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
        self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        if not locked:
            deadline = time.monotonic() + SETTLE_S
            while time.monotonic() < deadline:
                self._cap.read()
        self._cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, 1)       # V4L2: 1 = manual, keeps the settled exposure
        self._cap.set(cv2.CAP_PROP_AUTO_WB, 0)
        if locked:
            self._cap.set(cv2.CAP_PROP_EXPOSURE, locked["exposure"])
            self._cap.set(cv2.CAP_PROP_WB_TEMPERATURE, locked["wb_temperature"])
        return {"exposure": self._cap.get(cv2.CAP_PROP_EXPOSURE),
                "wb_temperature": self._cap.get(cv2.CAP_PROP_WB_TEMPERATURE)}

    def capture(self) -> bytes:
        for _ in range(2):   # drop a frame buffered before the request
            ok, frame = self._cap.read()
        if not ok:
            raise CameraLost(f"camera {self.index} stopped delivering frames")
        return _jpeg(frame)

    def stop(self) -> None:
        if self._cap is not None:
            self._cap.release()


class ReplayCamera:
    """Photos from a folder, one per capture, in name order."""

    name = "replay"

    def __init__(self, folder: Path | str):
        self._photos = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        self._next = 0

    def start(self, locked: dict | None = None) -> dict:
        if not self._photos:
            raise CameraLost("the replay folder has no photos")
        return {}

    def capture(self) -> bytes:
        if self._next >= len(self._photos):
            raise CameraLost("no more photos to replay")
        self._next += 1
        try:
            return read_photo(self._photos[self._next - 1])[0]
        except ReadError as err:     # a FIFO or a huge file named like a photo: never waited on or read
            raise CameraLost(f"cannot replay {self._photos[self._next - 1].name}: {err.message}") from None

    def stop(self) -> None:
        pass


def open_camera(kind: str = "auto", **options) -> Camera:
    """`auto`: the Pi camera if picamera2 finds one, else the first USB camera."""
    if kind in ("picamera2", "auto"):
        try:
            from picamera2 import Picamera2
            if Picamera2.global_camera_info():
                return PiCamera(**options)
        except ImportError:
            if kind == "picamera2":
                raise CameraLost("picamera2 is not installed (Raspberry Pi OS: apt install python3-picamera2)")
    if kind in ("opencv", "auto"):
        return OpenCVCamera(**options)
    if kind == "replay":
        return ReplayCamera(**options)
    raise ValueError(f"unknown camera {kind!r}")
