"""Where a benchmark's figures go: bench/results/<name>.json, with its arguments and run time."""
from __future__ import annotations

import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, args, start: float, report: dict) -> Path:
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"args": vars(args), "seconds": round(time.time() - start, 1), **report}, indent=1))
    print(f"written {out} in {time.time() - start:.0f} s")
    return out
