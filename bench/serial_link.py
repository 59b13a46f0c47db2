"""Round-trip latency and request rate of the reader board link over a pseudo-terminal.

Runs the simulated board (firmware_bridge.simulator) and the real host (firmware_bridge.host) in
one process, times PINGs one by one (median and p99), then counts GET_CLIMATE requests
completed in a fixed time. A pty has no baud-rate limit, so this measures the software stack
(framing, CRC, threads), not a USB link. Figures go to bench/results/serial_link.json.

    python bench/serial_link.py [--pings 2000] [--seconds 3]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from firmware_bridge.host import ReaderBoard
from firmware_bridge.simulator import SimulatedBoard

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)

    with SimulatedBoard() as sim, ReaderBoard(sim.port, heartbeat_interval=3600.0) as board:
        for _ in range(50):  # warm-up
            board.ping()
        rtts = sorted(board.ping() for _ in range(args.pings))
        completed, started = 0, time.perf_counter()
        while time.perf_counter() - started < args.seconds:
            board.climate()
            completed += 1
        elapsed = time.perf_counter() - started
        stats = board.stats

    result = {
        "pings": args.pings,
        "ping_rtt_median_ms": round(statistics.median(rtts) * 1e3, 3),
        "ping_rtt_p99_ms": round(rtts[int(0.99 * (len(rtts) - 1))] * 1e3, 3),
        "ping_rtt_max_ms": round(rtts[-1] * 1e3, 3),
        "requests_per_second": round(completed / elapsed, 1),
        "request": "GET_CLIMATE, stop-and-wait",
        "retries": stats.retries,
        "garbage_frames": stats.garbage_frames,
        "transport": "pty (no baud-rate limit)",
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serial_link.json").write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print("%-22s %s" % (key, value))
    return 0


if __name__ == "__main__":
    sys.exit(main())
