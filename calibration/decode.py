"""Photo bytes -> a BGR image, within bounds a hostile or damaged file cannot push.

A photo reaches the reader from its camera, a replay folder or `stripread read FILE`. Before any
decoder runs: a file must be a regular file (a FIFO, a device or a directory is refused at once,
never read or waited on) and at most MAX_FILE_BYTES; the frame size in the JPEG SOF or PNG IHDR
header must be at most MAX_PIXELS, and what the decoder would allocate (its output, and for a
progressive JPEG the coefficients of the whole frame) at most MAX_DECODE_BYTES. So a 300-byte
file claiming 32000 x 32000 pixels is refused, not decoded. JPEGs are decoded by libjpeg-turbo
(`simplejpeg`) in strict mode, which stops at the first sign of damage in the entropy-coded data:
a file cut short and given a new end marker is refused, where a lenient decoder fills the missing
part with grey. Every refusal is `ReadError('image_unreadable')` with a sentence saying why.
The file and header checks need neither numpy nor OpenCV, so `stripread read` refuses a bomb
before it loads them or the pad model.
"""
from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from calibration.errors import ReadError

if TYPE_CHECKING:
    import numpy as np

WORK_LONG_SIDE = 2100            # decode larger JPEGs at 1/2 or 1/4 scale: pads stay >= 14 px wide
MAX_FILE_BYTES = 40 * 2**20      # a 12 Mpx camera JPEG is 2-6 MB, a PNG of it ~25 MB
MAX_PIXELS = 40_000_000          # the reader's largest camera frame is 4056 x 3040 (12.3 Mpx)
MAX_DECODE_BYTES = 72 * 2**20    # decoder memory: a 4056 x 3040 PNG needs 71 MB; keeps `read` < 200 MB
PNG_BYTES_PER_PIXEL = 6          # OpenCV's PNG decoder holds a frame buffer besides its BGR output (measured)
MAX_HEADER_STEPS = 4096          # JPEG markers before the frame header (a camera's JPEG has ~10)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RETAKE = "take the photo again."
_NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISSOCK, "a socket"))


@dataclass(frozen=True)
class Header:
    """What a photo's header claims, read without decoding."""
    kind: str                    # "jpeg" or "png"
    width: int
    height: int
    progressive: bool = False
    sampling: tuple[tuple[int, int], ...] = ()   # JPEG: (h, v) sampling factors of each component

    def decode_scale(self) -> float:
        """1, 1/2 or 1/4: JPEGs are decoded reduced (libjpeg's DCT scaling) when that keeps enough detail."""
        long_side = max(self.width, self.height)
        if self.kind != "jpeg" or long_side < WORK_LONG_SIDE - 100:
            return 1.0
        return 0.25 if long_side >= 2 * WORK_LONG_SIDE else 0.5

    def decode_bytes(self) -> int:
        """Memory the decoder fills: its BGR output (a PNG's twice over), plus for a progressive
        JPEG every component's 16-bit coefficients (it keeps the whole frame until the last scan)."""
        if self.kind == "png":
            return self.width * self.height * PNG_BYTES_PER_PIXEL
        scale = self.decode_scale()
        total = math.ceil(self.width * scale) * math.ceil(self.height * scale) * 3
        if self.progressive:
            h_max = max(h for h, _ in self.sampling)
            v_max = max(v for _, v in self.sampling)
            total += sum(128 * math.ceil(self.width * h / h_max / 8) * math.ceil(self.height * v / v_max / 8)
                         for h, v in self.sampling)
        return total


def _unreadable(message: str) -> ReadError:
    return ReadError("image_unreadable", message)


def read_photo(path: str | os.PathLike) -> tuple[bytes, datetime]:
    """A photo file's bytes and modification time, read within bounds: only a regular file, opened
    without blocking (a FIFO or a device never stalls the reader), at most MAX_FILE_BYTES read."""
    try:
        _check_file(os.stat(path))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with open(fd, "rb") as file:
            info = os.fstat(fd)
            _check_file(info)               # the file opened is still the one checked
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _unreadable(f"The photo could not be opened ({exc.strerror or exc}): {RETAKE}") from None
    if len(data) > MAX_FILE_BYTES:
        raise _too_large_file()
    return data, datetime.fromtimestamp(info.st_mtime, timezone.utc)


def _check_file(info: os.stat_result) -> None:
    for test, kind in _NOT_REGULAR:
        if test(info.st_mode):
            raise _unreadable(f"This is {kind}, not a photo file: give the reader a JPEG or PNG file.")
    if info.st_size > MAX_FILE_BYTES:
        raise _too_large_file()


def _too_large_file() -> ReadError:
    return _unreadable(f"The file is larger than {MAX_FILE_BYTES >> 20} MB, more than any photo the reader "
                       f"takes: it was not read.")


def read_header(data: bytes) -> Header | None:
    """The frame size from a PNG IHDR or a JPEG SOF (baseline, extended, progressive, lossless,
    arithmetic), or None when the bytes are neither."""
    if data[:8] == PNG_SIGNATURE:
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        return Header("png", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    for _ in range(MAX_HEADER_STEPS):
        if i + 4 > len(data) or data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:                    # a fill byte before a marker
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return _frame_header(data, i, progressive=marker in (0xC2, 0xC6, 0xCA, 0xCE))
        if marker == 0xDA:                    # a scan before any frame header
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _frame_header(data: bytes, i: int, progressive: bool) -> Header | None:
    count = data[i + 9] if i + 9 < len(data) else 0
    components = data[i + 10:i + 10 + 3 * count]
    if count == 0 or len(components) < 3 * count:
        return None
    sampling = tuple((c >> 4, c & 15) for c in components[1::3])
    if any(h == 0 or v == 0 for h, v in sampling):
        return None
    return Header("jpeg", int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big"),
                  progressive, sampling)


def check_limits(data: bytes) -> Header:
    """The photo's header, refused when it is not a JPEG or PNG or claims more than the limits."""
    if len(data) > MAX_FILE_BYTES:
        raise _too_large_file()
    header = read_header(data)
    if header is None or header.width == 0 or header.height == 0:
        raise _unreadable(f"The photo could not be read (not a JPEG or PNG photo): {RETAKE}")
    pixels = header.width * header.height
    if pixels > MAX_PIXELS:
        raise _unreadable(f"The photo claims {header.width} x {header.height} pixels ({pixels / 1e6:.0f} Mpx), "
                          f"more than the reader decodes ({MAX_PIXELS / 1e6:.0f} Mpx): it was not read.")
    if header.decode_bytes() > MAX_DECODE_BYTES:
        what = "progressive JPEG" if header.progressive else header.kind.upper()
        raise _unreadable(f"The photo ({header.width} x {header.height} {what}) would need "
                          f"{header.decode_bytes() >> 20} MB to decode, more than the reader allows "
                          f"({MAX_DECODE_BYTES >> 20} MB): it was not read.")
    return header


def decode(data: bytes) -> tuple[np.ndarray, float]:
    """BGR image and the decode scale (1, 1/2, 1/4). The header is checked against the limits
    before any pixel is decoded; a damaged or truncated file is refused, never half-read."""
    header = check_limits(data)
    scale = header.decode_scale()
    image = _decode_jpeg(data, header, scale) if header.kind == "jpeg" else _decode_png(data)
    if image is None or image.ndim != 3:
        raise _unreadable(f"The photo is damaged or incomplete: {RETAKE}")
    return image, scale


def _decode_jpeg(data: bytes, header: Header, scale: float) -> np.ndarray | None:
    """libjpeg-turbo's DCT scaling (as OpenCV's IMREAD_REDUCED_COLOR_2/4, pixel for pixel), strict:
    any warning (data cut short, a marker inside the scan, a corrupt segment) refuses the photo."""
    import simplejpeg
    try:
        return simplejpeg.decode_jpeg(data, "BGR", min_width=math.ceil(header.width * scale),
                                      min_height=math.ceil(header.height * scale), strict=True)
    except ValueError:
        return None


def _decode_png(data: bytes) -> np.ndarray | None:
    """libpng through OpenCV; it checks every chunk's CRC and fails on missing image data. A file
    without its IEND chunk at the end was cut short."""
    import cv2
    import numpy as np
    if b"IEND" not in data[-16:]:
        return None
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return None
