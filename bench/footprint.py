"""Footprint of the reader on a Raspberry Pi-class device: start-up time, memory, disk.

- Cold start: wall time of a fresh `stripread read PHOTO` process (a 2028x1520 photo from
  `stripread simulate`) to its printed result and to its exit, on one core (taskset), median of
  --runs. The page cache is warm: a first start after boot from an SD card reads more from disk.
- Peak RSS of `stripread run --simulate --strips 1` through one whole session, stopped with SIGTERM
  once the session is stored: the process's VmHWM polled from /proc (not ru_maxrss, which Linux
  carries across exec, so a child reports its parent's peak when that is higher). Once as it is,
  then with the simulated camera handing over a ready JPEG, as a real camera does (rendering the
  simulated photos is the simulator's cost, not the reader's), with and without the web interface.
- Installed size of each runtime dependency with what it alone pulls in: in this venv (this
  machine's wheels) and on a Pi (the aarch64 wheels deploy/check_aarch64.py pins for Bookworm and
  Trixie, downloaded to a temporary folder and measured unpacked); stripread itself, its ONNX models.
- Read time against frame size: bench/latency.py's measurement, run from here.

Targets: cold start <= 1.5 s, peak RSS <= 150 MB. Writes bench/results/footprint.json.

    python bench/footprint.py [--runs 7]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "deploy"))
import check_aarch64  # noqa: E402
import latency  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COLD_START_TARGET_S, RSS_TARGET_MB = 1.5, 150.0
MB = 1024 * 1024

# `stripread run` whose simulated camera returns a ready photo instead of rendering one
_REPLAYING = """
import sys
from pathlib import Path
from device import camera
from device.cli import main
photo = Path(sys.argv[1]).read_bytes()
camera.SimulatedCamera.capture = lambda self: photo
sys.exit(main(sys.argv[2:]))
"""


def cold_start(stripread: Path, photo: Path, runs: int, env: dict) -> dict:
    one_core = ["taskset", "-c", str(min(os.sched_getaffinity(0)))] if shutil.which("taskset") else []
    cmd = one_core + [str(stripread), "read", str(photo)]
    subprocess.run(cmd, env=env, capture_output=True, check=True)       # the files into the page cache
    to_result, to_exit = [], []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        proc.stdout.readline()                 # the result table's first line (PYTHONUNBUFFERED)
        to_result.append(time.perf_counter() - start)
        proc.communicate()
        to_exit.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"stripread read {photo} exited {proc.returncode}")
    median = statistics.median(to_result)
    return {"to_result_s": round(median, 3), "to_exit_s": round(statistics.median(to_exit), 3),
            "runs": runs, "one_core": bool(one_core), "target_s": COLD_START_TARGET_S,
            "pass": median <= COLD_START_TARGET_S}


def session_peak_rss(cmd: list[str], env: dict) -> dict:
    """Runs the service until its first session is stored, then SIGTERM; VmHWM polled every 10 ms
    (the high-water mark only grows, so the last reading before exit is the peak)."""
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
    peak_kb, stored_at, start = 0, None, time.monotonic()
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status", encoding="ascii") as status:
                peak_kb = max(peak_kb, next(int(ln.split()[1]) for ln in status if ln.startswith("VmHWM:")))
        except (OSError, StopIteration):          # exiting: its memory is already gone
            pass
        if stored_at is None and any('"msg": "session ' in line and '"record"' in line for line in log):
            stored_at = time.monotonic() - start
            proc.send_signal(signal.SIGTERM)
        if time.monotonic() - start > 300:
            proc.kill()
            raise SystemExit(f"{' '.join(cmd)} stored no session within 300 s")
        time.sleep(0.01)
    if proc.returncode != 0 or stored_at is None:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{''.join(log[-20:])}")
    return {"peak_rss_mb": round(peak_kb / 1024, 1), "session_stored_after_s": round(stored_at, 2),
            "target_mb": RSS_TARGET_MB, "pass": peak_kb / 1024 <= RSS_TARGET_MB}


def _files_mb(paths) -> float:
    return sum(p.stat().st_size for p in paths if p.is_file()) / MB


def _requires(name: str) -> list[str]:
    """What the installed distribution needs on this machine, extras left out."""
    reqs = map(Requirement, metadata.requires(name) or ())
    return [r.name for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def _closure(name: str, found: set[str]) -> set[str]:
    """The distribution and everything it requires here, by canonical name."""
    if canonicalize_name(name) not in found:
        found.add(canonicalize_name(name))
        for dependency in _requires(name):
            _closure(dependency, found)
    return found


def sizes_by_dependency(mb: dict[str, float]) -> dict:
    """Each runtime requirement's own MB and with the dependencies no other one needs (what dropping
    it would save), and the total; `mb` holds every distribution's MB by canonical name."""
    closures = {name: _closure(name, set()) for name in _requires("stripread")}
    by_dependency = {}
    for name, closure in closures.items():
        others = set().union(*(c for n, c in closures.items() if n != name))
        by_dependency[name] = {"own": round(mb[canonicalize_name(name)], 1),
                               "with_exclusive_deps": round(sum(mb[k] for k in closure - others), 1)}
    everything = set().union(*closures.values())
    return {"total_mb": round(sum(mb[k] for k in everything), 1), "distributions": len(everything),
            "by_dependency_mb": dict(sorted(by_dependency.items(), key=lambda kv: -kv[1]["own"]))}


def venv_mb() -> dict[str, float]:
    """MB of every installed distribution in this venv."""
    def dist_mb(dist) -> float:
        return _files_mb(Path(dist.locate_file(f)) for f in dist.files or ())
    return {canonicalize_name(d.metadata["Name"]): dist_mb(d) for d in metadata.distributions()}


def aarch64_mb(release: check_aarch64.Release) -> tuple[dict[str, float], float]:
    """MB of every pinned distribution installed on the Pi (its aarch64 wheel unpacked, before pip
    compiles .pyc files), and the MB downloaded."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pins.txt").write_text("\n".join(check_aarch64.pinned(release)) + "\n")
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", tmp,
                        *check_aarch64.pip_options(release, check_aarch64.INDEX), "-c", str(Path(tmp) / "pins.txt"),
                        *check_aarch64.runtime_requirements(release)], env=check_aarch64.pip_environment(), check=True)
        mb, downloaded = {}, 0.0
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                mb[canonicalize_name(wheel.name.split("-")[0])] = sum(i.file_size for i in archive.infolist()) / MB
            downloaded += wheel.stat().st_size / MB
    return mb, downloaded


def installed_sizes() -> dict:
    """MB on disk of the dependencies here and on a Pi, of stripread's own packages and its models."""
    sizes = {"this_venv": sizes_by_dependency(venv_mb())}
    for release in check_aarch64.RELEASES:
        mb, downloaded = aarch64_mb(release)
        sizes[f"aarch64_{release.name}"] = {**sizes_by_dependency(mb), "download_mb": round(downloaded, 1)}
    packages = [Path(importlib.util.find_spec(pkg).submodule_search_locations[0])
                for pkg in metadata.distribution("stripread").read_text("top_level.txt").split()]
    own = [f for pkg in packages for f in pkg.rglob("*") if "__pycache__" not in f.parts]
    models = sorted(Path(importlib.util.find_spec("models").submodule_search_locations[0]).glob("data/*.onnx"))
    return {**sizes, "stripread_mb": round(_files_mb(own), 2),
            "onnx_models_kb": {m.name: round(m.stat().st_size / 1024, 1) for m in models}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="cold starts to take the median of")
    parser.add_argument("--repeats", type=int, default=20, help="reads per frame size (bench/latency.py)")
    parser.add_argument("--out", default=str(RESULTS / "footprint.json"))
    args = parser.parse_args(argv)
    stripread = Path(sys.executable).with_name("stripread")
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.machine())
    report = {"machine": {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}}
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "STRIPREAD_LAB_CONFIG"}   # no lab: no sync
        env.update(STRIPREAD_DATA=tmp, HOME=tmp, PYTHONUNBUFFERED="1")
        photo = Path(tmp) / "strip.jpg"
        subprocess.run([str(stripread), "simulate", "--seed", "7", "--out", str(photo)], env=env, check=True,
                       capture_output=True)
        report["cold_start_read"] = cold_start(stripread, photo, args.runs, env)
        run = ["run", "--simulate", "--strips", "1"]
        web = ["--web", "127.0.0.1:0"]                        # on, as by default, on any free port
        replaying = [sys.executable, "-c", _REPLAYING, str(photo)]
        report["peak_rss_run"] = {
            "simulated_camera": session_peak_rss([str(stripread), *run, *web], env),
            "camera_handing_over_photos": session_peak_rss([*replaying, *run, *web], env),
            "camera_handing_over_photos_web_off": session_peak_rss([*replaying, *run, "--web", "off"], env)}
    report["installed"] = installed_sizes()
    with tempfile.NamedTemporaryFile(suffix=".json") as out:    # last: it pins this process to one core
        latency.main(["--repeats", str(args.repeats), "--out", out.name])
        frames = json.loads(Path(out.name).read_text())
    report["read_vs_resolution_ms"] = {size: {"decode": f["decode_ms"], "read": f["read_ms"]}
                                       for size, f in frames.items() if "x" in size}

    print(json.dumps(report, indent=1))
    cold, rss = report["cold_start_read"], report["peak_rss_run"]
    print(f"\ncold start of `stripread read` to its result: {cold['to_result_s']} s (target <= "
          f"{COLD_START_TARGET_S}: {'pass' if cold['pass'] else 'FAIL'}); peak RSS of `stripread run`: "
          + ", ".join(f"{r['peak_rss_mb']} MB {name.replace('_', ' ')} ({'pass' if r['pass'] else 'FAIL'})"
                      for name, r in rss.items()) + f" (target <= {RSS_TARGET_MB:g})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
