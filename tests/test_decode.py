"""Bounded photo decoding (calibration.decode): what is not a regular file, too large a file, a
header claiming too many pixels or too much decoder memory, and damage inside the compressed data
are all refused as `image_unreadable` before or instead of decoding; good photos decode exactly as
before (OpenCV's reduced-size JPEG decoding, pixel for pixel)."""
from __future__ import annotations

import json
import os
import socket
import struct
import threading
from datetime import timedelta

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calibration.decode import MAX_FILE_BYTES, check_limits, decode, read_header, read_photo
from calibration.errors import ReadError
from device.runtime.camera import CameraLost, ReplayCamera
from device.cli.commands import main
from simulator import hostile

FUZZ = settings(max_examples=150, deadline=timedelta(seconds=5),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _noise_jpeg(width: int, height: int, progressive: bool = False) -> bytes:
    image = np.random.default_rng(width).integers(0, 256, (height, width, 3), np.uint8)
    image = cv2.GaussianBlur(image, (0, 0), 2)
    flags = [cv2.IMWRITE_JPEG_QUALITY, 92, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    return cv2.imencode(".jpg", image, flags)[1].tobytes()


def _refused(data: bytes, *words: str) -> str:
    with pytest.raises(ReadError) as caught:
        decode(data)
    assert caught.value.code == "image_unreadable"
    for word in words:
        assert word in caught.value.message
    return caught.value.message


@pytest.mark.parametrize("size,flag,scale", [((1000, 750), cv2.IMREAD_COLOR, 1.0),
                                             ((2028, 1520), cv2.IMREAD_REDUCED_COLOR_2, 0.5),
                                             ((4056, 3040), cv2.IMREAD_REDUCED_COLOR_2, 0.5),
                                             ((4608, 3456), cv2.IMREAD_REDUCED_COLOR_4, 0.25)])
def test_good_jpegs_decode_as_opencvs_reduced_decoding_did(size, flag, scale):
    data = _noise_jpeg(*size)
    image, got_scale = decode(data)
    assert got_scale == scale
    assert np.array_equal(image, cv2.imdecode(np.frombuffer(data, np.uint8), flag))


def test_good_progressive_jpeg_and_png_decode():
    data = _noise_jpeg(1200, 900, progressive=True)
    assert read_header(data).progressive
    image, _ = decode(data)
    assert np.array_equal(image, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    png = cv2.imencode(".png", image)[1].tobytes()
    assert np.array_equal(decode(png)[0], image)


@pytest.mark.parametrize("make", [lambda: hostile.jpeg_claiming(32000, 32000),
                                  lambda: hostile.jpeg_claiming(32000, 32000, progressive=True),
                                  lambda: hostile.png_header_only(60000, 60000),
                                  lambda: hostile.png_bomb(7000, 7000)])
def test_a_header_claiming_too_many_pixels_is_refused_before_decoding(make):
    message = _refused(make(), "pixels", "more than the reader decodes")
    assert "Mpx" in message


def test_the_cameras_full_frames_are_within_the_limits():
    """A bomb limit must not refuse the reader's own photos: the HQ camera's 4056 x 3040 frame as a
    JPEG (baseline or progressive 4:2:0) or a PNG."""
    assert check_limits(hostile.jpeg_claiming(4056, 3040)).decode_scale() == 0.5
    progressive = bytearray(_noise_jpeg(64, 48, progressive=True))
    at = hostile.jpeg_frame_offset(progressive)
    progressive[at + 5:at + 9] = struct.pack(">HH", 3040, 4056)
    assert check_limits(bytes(progressive)).progressive
    assert check_limits(hostile.png_ihdr(4056, 3040)).kind == "png"


@pytest.mark.parametrize("make,what", [(lambda: hostile.jpeg_claiming(6000, 6000, progressive=True),
                                        "progressive JPEG"),
                                       (lambda: hostile.png_bomb(5000, 5000), "PNG")])
def test_a_frame_needing_too_much_decoder_memory_is_refused(make, what):
    _refused(make(), what, "MB to decode")


def test_data_cut_short_is_refused_even_with_an_end_marker():
    jpeg = _noise_jpeg(2028, 1520)
    for keep in (0.3, 0.9, 0.99):
        _refused(hostile.truncated_with_end_marker(jpeg, keep), "damaged or incomplete")
    png = cv2.imencode(".png", decode(jpeg)[0])[1].tobytes()
    _refused(hostile.png_truncated_with_end(png, 0.9), "damaged or incomplete")
    _refused(png[:-12], "damaged or incomplete")                       # no IEND at all


@pytest.mark.parametrize("data", [b"", b"not a photo", bytes(range(256)) * 40, b"\xff\xd8\xff\xda\x00\x02",
                                  hostile.png_ihdr(0, 10)])
def test_what_is_not_a_photo_is_refused(data):
    _refused(data, "not a JPEG or PNG")


def _refused_file(path, *words: str) -> None:
    """read_photo must answer at once; a thread guards the test against a read that blocks."""
    outcome = []

    def attempt():
        try:
            read_photo(path)
            outcome.append(None)
        except ReadError as err:
            outcome.append(err)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(30)
    assert outcome and outcome[0] is not None, "read_photo blocked or accepted the file"
    assert outcome[0].code == "image_unreadable"
    for word in words:
        assert word in outcome[0].message


def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    _refused_file(fifo, "FIFO")
    _refused_file("/dev/zero", "character device")
    _refused_file(tmp_path, "folder")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s.jpg"))
    try:
        _refused_file(tmp_path / "s.jpg", "socket")
    finally:
        sock.close()
    _refused_file(tmp_path / "missing.jpg", "could not be opened")


def test_a_file_over_the_byte_limit_is_not_read(tmp_path):
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.write(hostile.small_jpeg())
        f.truncate(MAX_FILE_BYTES + 1)                                  # sparse: nothing to read anyway
    _refused_file(big, "larger than")
    small = tmp_path / "small.jpg"
    small.write_bytes(hostile.small_jpeg())
    data, captured = read_photo(small)
    assert data == hostile.small_jpeg() and captured.tzinfo is not None


def test_cli_refuses_a_fifo_with_a_specific_message(tmp_path, capsys):
    fifo = tmp_path / "p.jpg"
    os.mkfifo(fifo)
    assert main(["read", str(fifo), "--json"]) == 1
    captured = capsys.readouterr()
    error = json.loads(captured.out)["error"]
    assert error["code"] == "image_unreadable" and "FIFO" in error["message"]
    assert "FIFO" in captured.err


def test_cli_refuses_a_bomb_file(tmp_path, capsys):
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(hostile.jpeg_claiming(32000, 32000, progressive=True))
    assert main(["read", str(bomb), "--json"]) == 1
    assert "32000 x 32000" in json.loads(capsys.readouterr().out)["error"]["message"]


def test_replay_camera_never_waits_on_a_fifo(tmp_path):
    (tmp_path / "a.jpg").write_bytes(hostile.small_jpeg())
    os.mkfifo(tmp_path / "b.jpg")
    camera = ReplayCamera(tmp_path)
    camera.start()
    assert camera.capture() == hostile.small_jpeg()
    with pytest.raises(CameraLost, match="b.jpg.*FIFO"):
        camera.capture()


def _outcome(data: bytes) -> None:
    """The decoder's whole contract on any input: an image, or `image_unreadable`."""
    try:
        image, scale = decode(data)
    except ReadError as err:
        assert err.code == "image_unreadable" and err.message
        return
    assert image.ndim == 3 and image.shape[2] == 3 and scale in (1.0, 0.5, 0.25)


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data):
    _outcome(data)


SEEDS = {"jpeg": hostile.small_jpeg(size=24), "progressive": hostile.small_jpeg(progressive=True, size=24),
         "jpeg420": hostile.small_jpeg(size=24, subsampling_444=False),
         "png": cv2.imencode(".png", np.full((24, 24, 3), 90, np.uint8))[1].tobytes()}


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.data())
def test_fuzz_mutated_photos(kind, draw):
    data = bytearray(SEEDS[kind])
    for _ in range(draw.draw(st.integers(1, 8))):
        at = draw.draw(st.integers(0, len(data) - 1))
        data[at] = draw.draw(st.integers(0, 255))
    cut = draw.draw(st.integers(0, len(data)))
    _outcome(bytes(data[:cut]) + draw.draw(st.sampled_from([b"", b"\xff\xd9", hostile.png_ihdr(1, 1)[-12:]])))


@FUZZ
@given(st.sampled_from(["jpeg", "progressive", "png"]), st.integers(0, 65535), st.integers(0, 65535))
def test_fuzz_claimed_frame_sizes(kind, width, height):
    """Any frame size in a real file's header, as a bomb would set it."""
    if kind == "png":
        data = hostile.png_ihdr(width, height) + SEEDS["png"][33:]
    else:
        data = bytearray(SEEDS[kind])
        at = hostile.jpeg_frame_offset(data)
        data[at + 5:at + 9] = struct.pack(">HH", height, width)
        data = bytes(data)
    _outcome(data)
