"""Latency of one read on one core, in a warm process.

Renders scenes of three frame sizes to JPEG, then, pinned to one CPU with OpenCV single-threaded,
times `cv2.imdecode` of the file and a full read with the shipped ONNX models (decode included) of
the same bytes, and reports the ratio. Figures go to bench/results/latency.json.

What a fresh `stripread read` process costs (peak RSS, wall time against a fresh decode) is
bench/footprint.py's, measured from outside. This script used to read VmHWM inside such a process
at the end of `main(["read", ...])`: a figure that agrees with the kernel's (within 0.1 MB when
checked against /usr/bin/time) but leaves out what happens after it and before the interpreter
starts, and that is easy to quote after the code moved on. The 77.5 MB it reported was true of
the read path of 23 November (nearest-colour baseline: no onnxruntime, no store or cryptography
import in the CLI, no metadata scan): that tree still measures 79 MiB here. The same read today
(the ONNX model, 2028x1520) measured 122 MiB on this machine, 141 on the issue's.

    python bench/latency.py [--repeats 40]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import median_seconds  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


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
    from device.reading.reader import Reader
    from models.onnx_model import OnnxPadModel
    from simulator import scene

    report = {}
    product = load_product()
    reader = Reader(load_card(), product, OnnxPadModel(product))
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
    for k, v in report.items():
        print(f"{k:12} {v}")
    print(f"\nread / decode at 2028x1520 on one core: {report['2028x1520']['ratio']:.2f}x (target <= 3); a fresh "
          "process's peak RSS and time: python bench/footprint.py")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
