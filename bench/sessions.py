"""How many reading sessions the service loop sustains on the simulated reader, on one core.

Runs `stripread run --simulate` in-process at --speed (default 1000) with the simulated patient
inserting a new strip whenever the reader is idle, for N sessions; reports sessions per minute of
wall time, CPU seconds per session, and how much of that is the simulator rendering photos (work a
real reader's camera does, not its CPU). At this compression every capture after the first falls
outside its read window, so the sessions mostly end `outside_read_window`: this measures the
loop, not accuracy. Figures go to bench/results/sessions.json.

    python bench/sessions.py [--sessions 20] [--speed 1000]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--speed", type=float, default=1000.0)
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import cv2
    cv2.setNumThreads(1)
    from device.runtime.service import ReaderService
    from device.runtime.session import ReadingSession
    from device.runtime.wiring import ReaderSetup
    from device.store.results import ResultStore

    stop = threading.Event()
    rendering = [0.0]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        setup = ReaderSetup(db=Path(tmp) / "r.db", model="onnx", simulate=True, speed=args.speed, seed=1)
        reader, clock = setup.reader(), setup.clock()
        board, _, rig = setup.hardware(stack, reader.product, clock)
        store = stack.enter_context(ResultStore(setup.db))
        capture = rig.camera.capture

        def timed_capture():
            t = time.thread_time()
            photo = capture()
            rendering[0] += time.thread_time() - t
            return photo

        rig.camera.capture = timed_capture
        session = ReadingSession(reader, board, rig.camera, store, clock, stop=stop)
        patient = rig.patient(session, stop, pause_s=1.0, strips=args.sessions)
        service = threading.Thread(target=ReaderService(session).serve, daemon=True)
        cpu0, wall0 = time.process_time(), time.monotonic()
        service.start()
        patient.join()
        while session.stored < args.sessions:
            time.sleep(0.05)
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
        stop.set()
        service.join(timeout=10)
        outcomes = Counter(r.result.get("status") for r in store.history())
    report = {"sessions": args.sessions, "speed": args.speed,
              "sessions_per_minute": round(60 * args.sessions / wall, 1),
              "cpu_s_per_session": round(cpu / args.sessions, 3),
              "cpu_s_per_session_without_rendering": round((cpu - rendering[0]) / args.sessions, 3),
              "statuses": dict(outcomes)}
    print(json.dumps(report, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sessions.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
