"""Latency and memory of one read on one core.

Renders a 2028x1520 scene to JPEG, then, pinned to one CPU with OpenCV single-threaded, times
`cv2.imdecode` of the file and a full read with the shipped ONNX models (decode included) of the
same bytes, and reports the ratio; then measures the peak RSS and wall time of a fresh `stripread read` process (cold start).
Figures go to bench/results/latency.json.

    python bench/latency.py [--repeats 40]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import median_seconds  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report its parent's peak
_CHILD = """
import sys, time
t0 = time.perf_counter()
from device.cli import main
code = main(["read", sys.argv[1], "--json"])
elapsed = time.perf_counter() - t0
hwm = next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print("CHILD", elapsed, hwm, code, file=sys.stderr)
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", default=str(RESULTS / "latency.json"))
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import cv2
    import numpy as np
    cv2.setNumThreads(1)
    from calibration.specs import load_card, load_product
    from device.read import Reader
    from models.onnx_model import OnnxPadModel
    from simulator import scene

    report = {}
    product = load_product()
    reader = Reader(load_card(), product, OnnxPadModel(product))
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in ((1456, 1088), (2028, 1520), (4056, 3040)):
            rng = np.random.default_rng(args.seed)
            spec = scene.random_scene(rng, product="generic-10", resolution=(width, height))
            data, _ = scene.photograph(spec, rng)
            buf = np.frombuffer(data, np.uint8)
            assert reader.read(data)["status"] == "ok", "the benchmark scene must be readable"
            decode_ms = 1000 * median_seconds(lambda: cv2.imdecode(buf, cv2.IMREAD_COLOR), args.repeats)
            read_ms = 1000 * median_seconds(lambda: reader.read(data), args.repeats)
            report[f"{width}x{height}"] = {"jpeg_bytes": len(data), "decode_ms": round(decode_ms, 2),
                                           "read_ms": round(read_ms, 2), "ratio": round(read_ms / decode_ms, 2)}
            if width == 2028:
                photo = Path(tmp) / "scene.jpg"
                photo.write_bytes(data)
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENCV_FOR_THREADS_NUM="1")
        cold = []
        for _ in range(3):
            t = time.perf_counter()
            proc = subprocess.run(["taskset", "-c", str(min(os.sched_getaffinity(0))), sys.executable, "-c", _CHILD,
                                   str(photo)], capture_output=True, text=True, env=env)
            wall = time.perf_counter() - t
            line = [ln for ln in proc.stderr.splitlines() if ln.startswith("CHILD")][-1].split()
            cold.append({"wall_s": wall, "in_process_s": float(line[1]), "peak_rss_mb": int(line[2]) / 1024,
                         "exit": int(line[3])})
    report["cold_start"] = {"wall_s": round(min(c["wall_s"] for c in cold), 3),
                            "peak_rss_mb": round(max(c["peak_rss_mb"] for c in cold), 1),
                            "exit": cold[0]["exit"]}
    for k, v in report.items():
        print(f"{k:12} {v}")
    main_ratio = report["2028x1520"]["ratio"]
    print(f"\nread / decode at 2028x1520 on one core: {main_ratio:.2f}x (target <= 3); "
          f"peak RSS of a cold `stripread read`: {report['cold_start']['peak_rss_mb']} MB (target <= 150)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
