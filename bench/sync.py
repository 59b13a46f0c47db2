"""Results per second synced to the lab, for each transport, over TLS to loopback peers.

Real readings (simulated photos read by the ONNX path) are stored N times each and drained by
`device.lab.sync.Syncer` to the FHIR server and the MLLP listener of `simulator/`, which run in a
process of their own on the other core, so the figure is the reader's side on one core: building
and validating the messages (fhir.resources, hl7apy), TLS, waiting for the acknowledgement, and
the store's fsync'd bookkeeping (and the reader's own CPU time per result, without the lab's). Also the time to build one message of each kind, and a resend
pass (everything already at the lab, recognised as duplicates). Figures go to bench/results/sync.json.

    python bench/sync.py [--results 300]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import ssl
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _serve_peers(folder: str, ready, done) -> None:
    """The lab, in its own process on the second core."""
    if hasattr(os, "sched_setaffinity") and os.cpu_count() > 1:
        os.sched_setaffinity(0, {1})
    from simulator.lab_fhir import FhirPeer
    from simulator.lab_mllp import MllpPeer
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(Path(folder) / "lab.pem")
    with FhirPeer(tls=context) as fhir, MllpPeer(tls=context) as mllp:
        ready.send((fhir.url, mllp.port))
        done.recv()
        ready.send({"fhir_reports": len(fhir.resources("DiagnosticReport")), "hl7_messages": len(mllp.messages),
                    "fhir_matched": fhir.stats["matched"], "hl7_duplicates": mllp.stats["duplicates"]})


def _readings(n: int) -> list[dict]:
    """n real results: photos of random strips read by the shipped ONNX model."""
    import numpy as np
    from calibration.specs import load_card, load_product
    from device.reading.reader import Reader
    from models.onnx_model import OnnxPadModel
    from simulator import photograph, random_scene
    product = load_product()
    reader, rng, found = Reader(load_card(), product, OnnxPadModel(product)), np.random.default_rng(7), []
    while len(found) < n:
        result = reader.read(photograph(random_scene(rng, product=product.id), rng)[0])
        if result["status"] == "ok":
            found.append(result)
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=300)
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    import trustme
    from device.lab.fhir import transaction
    from device.lab.hl7 import oru_message
    from device.lab.config import load_config
    from device.store.results import ResultStore
    from device.lab.sync import Syncer, destinations

    folder = Path(tempfile.mkdtemp(prefix="stripread-bench-sync-"))
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "lab-ca.pem"))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(folder / "lab.pem"))
    ready, ready_child = multiprocessing.Pipe()
    done, done_child = multiprocessing.Pipe()
    peers = multiprocessing.get_context("spawn").Process(target=_serve_peers, args=(str(folder), ready_child,
                                                                                    done_child))
    peers.start()
    fhir_url, mllp_port = ready.recv()
    readings = _readings(10)
    figures: dict = {"results_per_transport": args.results, "tls": "TLS 1.3, loopback, peer on the other core"}
    for transport in ("fhir", "hl7"):
        table = (f'[fhir]\nurl = "{fhir_url}"\n' if transport == "fhir" else
                 f'[hl7]\nhost = "127.0.0.1"\nport = {mllp_port}\n') + 'ca_file = "lab-ca.pem"\n'
        (folder / f"{transport}.toml").write_text(table)
        config = load_config(folder / f"{transport}.toml")
        with ResultStore(folder / f"{transport}.db") as store:
            for i in range(args.results):
                store.add(readings[i % len(readings)], patient_id=f"P-{i:05d}")
            record = store.pending(0, 1)[0]
            build = (lambda: transaction(record, config)) if transport == "fhir" else \
                (lambda: oru_message(record, config.hl7, config))
            build_ms = statistics.median(_timed(build) for _ in range(30)) * 1e3
            syncer = Syncer(store, destinations(config), config)
            started, cpu = time.perf_counter(), time.process_time()
            summary = syncer.sync_once()
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            store._db.execute("UPDATE outbox SET state = 'pending'")     # the lab has them all: resend
            store._db.execute("DELETE FROM deliveries")
            started = time.perf_counter()
            syncer.sync_once()
            resend = time.perf_counter() - started
            syncer.close()
        figures[transport] = {"sent": summary.sent, "results_per_second": round(summary.sent / elapsed, 1),
                              "ms_per_result": round(elapsed / summary.sent * 1e3, 1),
                              "reader_cpu_ms_per_result": round(cpu / summary.sent * 1e3, 1),
                              "build_message_ms": round(build_ms, 1),
                              "resend_results_per_second": round(args.results / resend, 1)}
    done.send("report")
    figures["lab"] = ready.recv()
    peers.join(10)
    figures.update(python=platform.python_version(), machine=platform.machine(), reader_cpu="one core")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sync.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


if __name__ == "__main__":
    raise SystemExit(main())
