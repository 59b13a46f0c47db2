"""The hostile-input rows of bench/faults.py (issue 18): image bombs and files that are not photos
given to `stripread read FILE --json`, and broken lab configurations given to `stripread sync`.
Each is a real subprocess, measured from outside: its peak RSS by GNU time (`/usr/bin/time -f %M`;
the reader's own ru_maxrss would carry the bench's peak across exec), its wall time from start to
exit, killed with its process group after TIMEOUT_S (a FIFO used to block `read` forever).
`ROWS` is a list of (name, function); each function returns (figure text, passed).

    python bench/faults_input.py      # runs the rows and prints them (bench/faults.py prints the table)
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "device.cli.commands"]
TIME = "/usr/bin/time"
PEAK_MB, WALL_S = 200, 1.0       # issue 18: every bomb refused under 200 MB peak and within 1 s
TIMEOUT_S = 20
PASSWORD = "S3cretPass"
WORK = Path(tempfile.mkdtemp(prefix="faults-input-"))
atexit.register(shutil.rmtree, WORK, ignore_errors=True)


@dataclass
class Run:
    code: int | None             # None: killed after TIMEOUT_S
    out: str
    err: str
    wall_s: float
    peak_mb: float | None


def run(argv: list[str]) -> Run:
    """One command under GNU time in its own process group, killed whole if it outlives TIMEOUT_S."""
    peak_file = WORK / "peak.txt"
    peak_file.unlink(missing_ok=True)
    began = time.monotonic()
    process = subprocess.Popen([TIME, "-f", "%M", "-o", str(peak_file), *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=REPO)
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
        code = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        code = None
    wall = time.monotonic() - began
    lines = peak_file.read_text().split() if peak_file.exists() else []
    peak = int(lines[-1]) / 1024 if lines and lines[-1].isdigit() else None
    return Run(code, out, err, wall, peak)


def _read(path: Path | str, expect: str | None = "image_unreadable") -> tuple[str, bool]:
    """`stripread read PATH --json`: refused (as `expect`, or any code for None), under the peak and
    the wall time."""
    result = run(CLI + ["read", str(path), "--json"])
    if result.code is None:
        return f"still running after {TIMEOUT_S} s (killed)", False
    try:
        answer = json.loads(result.out)
        outcome = answer["error"]["code"] if answer["status"] == "error" else answer["status"]
    except (ValueError, KeyError):
        outcome = f"exit {result.code}, no JSON"
    peak = f"{result.peak_mb:.0f} MB" if result.peak_mb is not None else "unknown (no GNU time)"
    refused = outcome != "ok" and (expect is None or outcome == expect)
    passed = (refused and result.code == 1 and result.wall_s < WALL_S
              and result.peak_mb is not None and result.peak_mb < PEAK_MB)
    return f"{outcome} in {result.wall_s:.2f} s, peak {peak}", passed


def _file(name: str, data: bytes) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


def _bomb(name: str, make, expect: str | None = "image_unreadable") -> tuple[str, bool]:
    path = _file(name, make())
    figure, passed = _read(path, expect)
    return f"{path.stat().st_size / 1024:.1f} kB file: {figure}", passed


def _good_photo() -> bytes:
    """A 2028x1520 photo of a strip on the card, from the simulator."""
    path = WORK / "good.jpg"
    if not path.exists():
        subprocess.run(CLI + ["simulate", "--out", str(path), "--seed", "1"], check=True, capture_output=True,
                       cwd=REPO)
    return path.read_bytes()


def jpeg_bomb():
    from simulator.hostile import jpeg_claiming
    return _bomb("bomb.jpg", lambda: jpeg_claiming(32000, 32000))


def progressive_bomb():
    from simulator.hostile import jpeg_claiming
    return _bomb("progressive.jpg", lambda: jpeg_claiming(32000, 32000, progressive=True))


def progressive_under_pixel_limit():
    from simulator.hostile import jpeg_claiming
    return _bomb("progressive-6000.jpg", lambda: jpeg_claiming(6000, 6000, progressive=True))


def png_bomb():
    from simulator.hostile import png_bomb
    return _bomb("bomb.png", lambda: png_bomb(30000, 30000))


def png_under_pixel_limit():
    from simulator.hostile import png_bomb
    return _bomb("bomb-5000.png", lambda: png_bomb(5000, 5000))


def _largest_accepted(kind: str, progressive: bool = False) -> int:
    """The side of the largest square frame within the decoder's memory limit."""
    from calibration.decode import MAX_DECODE_BYTES, Header
    side = 8000
    while Header(kind, side, side, progressive, ((1, 1),) * 3).decode_bytes() > MAX_DECODE_BYTES:
        side -= 1
    return side


def png_at_the_limit():
    """The worst PNG the decoder accepts: decoded, then refused (too dark), still under the peak."""
    from simulator.hostile import png_bomb
    side = _largest_accepted("png")
    figure, passed = _bomb("limit.png", lambda: png_bomb(side, side), expect=None)
    return f"{side}x{side}, {figure}", passed


def progressive_at_the_limit():
    """The worst progressive JPEG the decoder accepts: a complete black 4:4:4 frame, every scan there."""
    import cv2
    import numpy as np
    side = _largest_accepted("jpeg", progressive=True)
    params = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    black = cv2.imencode(".jpg", np.zeros((side, side, 3), np.uint8), params)[1].tobytes()
    figure, passed = _bomb("limit.jpg", lambda: black, expect=None)
    return f"{side}x{side}, {figure}", passed


def header_only_png():
    from simulator.hostile import png_header_only
    return _bomb("header.png", lambda: png_header_only(60000, 60000))


def truncated_with_end_marker():
    from simulator.hostile import truncated_with_end_marker
    return _bomb("truncated.jpg", lambda: truncated_with_end_marker(_good_photo(), 0.9))


def dev_zero():
    return _read("/dev/zero")


def fifo():
    path = WORK / "pipe.jpg"
    if not path.exists():
        os.mkfifo(path)
    return _read(path)


def good_photo_still_read():
    """The control: a good photo is read, and its decoding costs what OpenCV's alone did."""
    import cv2
    import numpy as np
    from calibration.decode import decode
    data = _good_photo()
    buffer = np.frombuffer(data, np.uint8)
    ours, opencv = [], []
    for _ in range(30):                       # interleaved, so both see the same load on the machine
        began = time.perf_counter()
        decode(data)
        ours.append(time.perf_counter() - began)
        began = time.perf_counter()
        cv2.imdecode(buffer, cv2.IMREAD_REDUCED_COLOR_2)
        opencv.append(time.perf_counter() - began)
    mine, theirs = statistics.median(ours) * 1000, statistics.median(opencv) * 1000
    result = run(CLI + ["read", str(_file("good.jpg", data)), "--json"])
    status = json.loads(result.out)["status"] if result.code is not None else "killed"
    figure = (f"2028x1520 JPEG {status} in {result.wall_s:.2f} s, peak {result.peak_mb:.0f} MB; decode "
              f"{mine:.1f} ms (OpenCV's reduced decode alone {theirs:.1f} ms)")
    return figure, status == "ok" and mine <= 1.2 * theirs


LAB_FAULTS = [                      # (what, configuration, the key the error must name)
    ("password in the URL", f'[fhir]\nurl = "https://reader:{PASSWORD}@lab.example.org/fhir"\n', "[fhir] url"),
    ('ca_file = ""', '[fhir]\nurl = "https://lab.example.org/fhir"\nca_file = ""\n', "[fhir] ca_file"),
    ('ca_file = "/dev/null"', '[fhir]\nurl = "https://lab.example.org/fhir"\nca_file = "/dev/null"\n',
     "[fhir] ca_file"),
    ("ca_file not PEM", '[fhir]\nurl = "https://lab.example.org/fhir"\nca_file = "lab.toml"\n', "[fhir] ca_file"),
    ("ca_file missing", '[hl7]\nhost = "lis"\nport = 2575\nca_file = "nowhere.pem"\n', "[hl7] ca_file"),
    ('port = "abc"', '[hl7]\nhost = "lis"\nport = "abc"\n', "[hl7] port"),
    ("port = 70000", '[hl7]\nhost = "lis"\nport = 70000\n', "[hl7] port"),
    ('timeout_s = "fast"', '[fhir]\nurl = "https://lab.example.org/fhir"\ntimeout_s = "fast"\n', "[fhir] timeout_s"),
    ("timeout_s = nan", '[fhir]\nurl = "https://lab.example.org/fhir"\ntimeout_s = nan\n', "[fhir] timeout_s"),
    ('allow_insecure_loopback = "false"',
     '[lab]\nallow_insecure_loopback = "false"\n[fhir]\nurl = "http://127.0.0.1/"\n', "[lab] allow_insecure_loopback"),
    ("client_key without client_cert", '[fhir]\nurl = "https://lab.example.org/fhir"\nclient_key = "lab.toml"\n',
     "[fhir] client_key"),
    ("token_file missing", '[fhir]\nurl = "https://lab.example.org/fhir"\ntoken_file = "token"\n', "[fhir] token_file"),
]


def lab_config_faults():
    """Each broken configuration: `stripread sync` exits 2 with one line naming the key, never
    an internal error, never the password."""
    folder = WORK / "lab"
    folder.mkdir(exist_ok=True)
    named, leaks, misses = 0, 0, []
    for what, text, key in LAB_FAULTS:
        (folder / "lab.toml").write_text(text)
        result = run(CLI + ["sync", "--lab-config", str(folder / "lab.toml"), "--db", str(folder / "results.db")])
        lines = result.err.strip().splitlines()
        leaks += PASSWORD in result.out + result.err
        if result.code == 2 and len(lines) == 1 and key in lines[0] and "internal" not in lines[0]:
            named += 1
        else:
            misses.append(f"{what}: exit {result.code}, {lines[-1] if lines else 'nothing said'}")
    figure = f"{named} of {len(LAB_FAULTS)} named errors (exit 2, one line); password printed {leaks} times"
    return figure + ("; " + "; ".join(misses) if misses else ""), named == len(LAB_FAULTS) and leaks == 0


ROWS = [
    ("input: JPEG bomb 32000x32000", jpeg_bomb),
    ("input: progressive JPEG bomb 32000x32000", progressive_bomb),
    ("input: progressive JPEG 6000x6000 (under 40 Mpx)", progressive_under_pixel_limit),
    ("input: PNG bomb 30000x30000", png_bomb),
    ("input: PNG bomb 5000x5000 (under 40 Mpx)", png_under_pixel_limit),
    ("input: PNG bomb at the decoder's memory limit", png_at_the_limit),
    ("input: progressive JPEG at the decoder's memory limit", progressive_at_the_limit),
    ("input: header-only PNG 60000x60000", header_only_png),
    ("input: truncated JPEG with an end marker", truncated_with_end_marker),
    ("input: /dev/zero as the photo", dev_zero),
    ("input: a FIFO as the photo", fifo),
    ("input: a good photo (control)", good_photo_still_read),
    ("input: lab configuration faults", lab_config_faults),
]

if __name__ == "__main__":
    from faults import run_rows
    run_rows([("input", name, row) for name, row in ROWS])
