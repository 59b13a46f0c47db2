"""Files made to hurt a reader: image bombs (a small file claiming a huge frame), damaged photos.

Used by the decoder's tests and fuzzing (tests/test_decode.py) and by the fault table
(bench/faults_input.py), so both try the same files. Each bomb is a well-formed file a lenient
decoder would start on: a real JPEG or PNG whose frame header is rewritten, or a PNG whose
compressed rows really do inflate to the size it claims.
"""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def small_jpeg(progressive: bool = False, size: int = 16, subsampling_444: bool = True) -> bytes:
    """A real, complete JPEG of a noisy square (4:4:4 gives a progressive decoder the most to keep)."""
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), np.uint8)
    params = [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    if subsampling_444:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    return cv2.imencode(".jpg", image, params)[1].tobytes()


def jpeg_frame_offset(data: bytes) -> int:
    """Where the SOF segment of a well-formed JPEG starts (its 0xFF)."""
    i = 2
    while not (0xC0 <= data[i + 1] <= 0xCF and data[i + 1] not in (0xC4, 0xC8, 0xCC)):
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return i


def jpeg_claiming(width: int, height: int, progressive: bool = False) -> bytes:
    """A small real JPEG whose frame header claims width x height pixels."""
    data = bytearray(small_jpeg(progressive))
    i = jpeg_frame_offset(data)
    data[i + 5:i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_ihdr(width: int, height: int, colour_type: int = 2) -> bytes:
    """The PNG signature and an 8-bit IHDR chunk (colour type 2: RGB, 0: grey)."""
    return PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that is only its header: no image data, no end."""
    return png_ihdr(width, height)


def png_bomb(width: int, height: int) -> bytes:
    """A complete, valid grey PNG of width x height black pixels: ~1000:1 compressed."""
    compressor, row = zlib.compressobj(9), bytes(width + 1)        # filter byte 0, then the pixels
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return png_ihdr(width, height, colour_type=0) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def truncated_with_end_marker(jpeg: bytes, keep: float = 0.5) -> bytes:
    """A JPEG cut short inside its scan and given an end marker, so it ends like a complete one."""
    return jpeg[:int(len(jpeg) * keep)] + b"\xff\xd9"


def png_truncated_with_end(png: bytes, keep: float = 0.5) -> bytes:
    """A PNG cut short inside its image data and given an IEND chunk, so it ends like a complete one."""
    return png[:int(len(png) * keep)] + _chunk(b"IEND", b"")
