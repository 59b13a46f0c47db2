"""Footprint of the reader on a Raspberry Pi-class device, measured from outside its processes.

Every figure is the kernel's account of a real command, as `/usr/bin/time -v` gives it: peak RSS
is the exiting child's ru_maxrss (GNU time's %M), wall time is from start to exit. Each command is
pinned to one core (taskset). A child's ru_maxrss also counts what it was forked from until its
exec (Python spawns with vfork, sharing the parent's memory): /bin/true spawned from a Python
process that had held 630 MB reports 667 MiB. So the kernel's figure is taken through GNU time, a
1 MB launcher, or, without it, from wait4 in this parent, which imports nothing heavy (~15 MiB).

- Cold read: `stripread read --json PHOTO` (a 2028x1520 JPEG from `stripread simulate`) against a
  fresh process that imports OpenCV and decodes the same file, in --pairs alternated pairs (A B, B A,
  ...) after two warm-up pairs (page cache, compiled modules, the reader's cache folder); medians,
  and the median of the pairs' time ratios. Goal: peak <= 100 MiB, time <= 2x the decode. Once
  with a fresh data folder, once with the results store a service left there (a device's case:
  the technicians' calibration records are looked up); `--model baseline` for comparison.
- Soak: `stripread run --simulate --strips N` with the web interface on (its pages polled every
  second as a phone on the live page would), the sync thread sending every result to a FHIR lab
  on loopback (on the other core) and the simulated camera, for --sessions sessions; VmRSS sampled
  from /proc every 0.5 s and as each session is stored; the peak from the kernel at exit. Once
  with the simulated camera rendering every photo (its spectral renderer is the simulator's cost,
  not the reader's; at this speed its captures arrive after their read window, so few results
  reach the lab), once with the camera handing over a ready JPEG as a real camera does (every
  session read, stored and synced). Goal: peak <= 120 MB and no upward trend: the RSS after each
  session of the second half, fitted by a line, rises less than 2 MiB over it (in the first half
  what grows with the store is still growing: the history page reads the newest 200 results).
- --installed: the installed size of each runtime dependency, here and on a Pi (the aarch64
  wheels deploy/check_aarch64.py pins, downloaded to a temporary folder and measured unpacked).

The run's Python environment: compiled modules are written (PYTHONDONTWRITEBYTECODE dropped,
PYTHONPYCACHEPREFIX in the temporary folder), as pip compiles an installed package's; no lab
configuration but the soak's own. Writes bench/results/footprint.json.

    python bench/footprint.py [--pairs 7] [--sessions 200] [--speed 1000] [--installed] [--no-soak]
"""
from __future__ import annotations

import argparse
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
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
READ_GOAL_MIB, READ_RATIO_GOAL, SERVICE_GOAL_MB, TREND_GOAL_MB = 100.0, 2.0, 120.0, 2.0
GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").is_file() else None
DECODE = "import sys, cv2; cv2.imread(sys.argv[1], cv2.IMREAD_COLOR)"
LAB = ("import sys; from simulator.lab_fhir import FhirPeer; peer = FhirPeer().start(); "
       "print(peer.url, flush=True); sys.stdin.read()")
# `stripread run` whose simulated camera hands over a ready photo instead of rendering one
REPLAYING = """
import sys
from pathlib import Path
from device.cli.commands import main
from simulator import camera
photo = Path(sys.argv[1]).read_bytes()
camera.SimulatedCamera.capture = lambda self: photo
sys.exit(main(sys.argv[2:]))
"""
# the pad model loaded by a process whose cache holds no optimised graph yet (a first start after an
# install or upgrade), optimising in-process or, as the service does, in a short-lived child first
FIRST_LOAD = """
import sys
from calibration.specs import load_product
from models.onnx_model import OnnxPadModel, default_model_path, optimise_apart
product = load_product("generic-10")
if sys.argv[1] == "apart":
    optimise_apart(product.id, default_model_path(product))
model = OnnxPadModel(product)
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmRSS")))
"""
CAMERAS = ("simulated_camera", "camera_handing_over_photos")
WEB_PAGES = ("/", "/api/session", "/api/session/preview.jpg", "/history", "/api/results?limit=20")


class Measured:
    """A command pinned to `core`; its peak RSS is the kernel's when it exits."""

    def __init__(self, cmd: list[str], env: dict, core: int | None, **popen):
        self._report = None
        argv = (["taskset", "-c", str(core)] if core is not None else []) + cmd
        if GNU_TIME:
            fd, self._report = tempfile.mkstemp(suffix=".time")
            os.close(fd)
            argv = [GNU_TIME, "-f", "%M", "-o", self._report, *argv]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(argv, env=env, **popen)

    @property
    def pid(self) -> int:
        """The measured process (GNU time's child: taskset execs the command in place)."""
        if not GNU_TIME:
            return self.proc.pid
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        for _ in range(200):
            found = children.read_text().split() if children.exists() else []
            if found:
                return int(found[0])
            time.sleep(0.005)
        raise RuntimeError("the measured command did not start")

    def wait(self) -> tuple[int, float, float]:
        """(exit code, wall seconds, peak RSS in MiB)."""
        if GNU_TIME:
            code = self.proc.wait()
            wall = time.perf_counter() - self.started
            report = Path(self._report)
            peak_kib = int(report.read_text().split()[-1])
            report.unlink()
        else:   # wait4 of the child itself: its ru_maxrss (this light parent's RSS is far below it)
            _, status, usage = os.wait4(self.proc.pid, 0)
            wall = time.perf_counter() - self.started
            code = self.proc.returncode = os.waitstatus_to_exitcode(status)
            peak_kib = usage.ru_maxrss
        return code, wall, peak_kib / 1024


def run_once(cmd: list[str], env: dict, core: int | None) -> tuple[float, float]:
    """(wall seconds, peak MiB) of one run, which must succeed."""
    measured = Measured(cmd, env, core, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = measured.proc.stderr.read()
    code, wall, peak = measured.wait()
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {code}: {err.decode(errors='replace')[-2000:]}")
    return wall, peak


def cold_read(stripread: Path, photo: Path, env: dict, core: int | None, pairs: int) -> dict:
    """The read against a fresh decode of the same file, alternated in pairs."""
    read = [str(stripread), "read", "--json", str(photo)]
    decode = [sys.executable, "-c", DECODE, str(photo)]
    for cmd in (read, decode, read, decode):
        run_once(cmd, env, core)
    reads, decodes = [], []
    for i in range(pairs):
        for cmd in ((read, decode) if i % 2 == 0 else (decode, read)):
            (reads if cmd is read else decodes).append(run_once(cmd, env, core))
    ratios = [r[0] / d[0] for r, d in zip(reads, decodes)]
    read_s, read_mib = (statistics.median(x) for x in zip(*reads))
    decode_s, decode_mib = (statistics.median(x) for x in zip(*decodes))
    return {"read": {"wall_s": round(read_s, 3), "peak_rss_mib": round(read_mib, 1),
                     "peak_rss_mib_max": round(max(p for _, p in reads), 1)},
            "decode": {"wall_s": round(decode_s, 3), "peak_rss_mib": round(decode_mib, 1)},
            "time_ratio_median_of_pairs": round(statistics.median(ratios), 2),
            "time_ratio_of_medians": round(read_s / decode_s, 2), "pairs": pairs,
            "pass": max(p for _, p in reads) <= READ_GOAL_MIB and statistics.median(ratios) <= READ_RATIO_GOAL}


def baseline_read(stripread: Path, photo: Path, env: dict, core: int | None) -> dict:
    runs = [run_once([str(stripread), "read", "--json", "--model", "baseline", str(photo)], env, core)
            for _ in range(3)]
    return {"wall_s": round(statistics.median(w for w, _ in runs), 3),
            "peak_rss_mib": round(statistics.median(p for _, p in runs), 1)}


def _rss_kib(pid: int) -> tuple[int, int, int] | None:
    """(VmRSS, RssAnon, RssFile) in KiB: what the process holds, and how much of it is its own
    data rather than pages of the libraries it runs (shared, and dropped first under pressure)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            fields = {ln.split(":")[0]: int(ln.split()[1]) for ln in status if ln.startswith(("VmRSS", "Rss"))}
        return fields["VmRSS"], fields["RssAnon"], fields["RssFile"]
    except (OSError, KeyError, ValueError):      # exiting
        return None


def _poll_web(base: list[str], stop: threading.Event, counts: dict) -> None:
    """A phone on the live page: each page once a second; the newest result's page too."""
    while not stop.wait(1.0):
        if not base:
            continue
        latest = counts.get("latest")
        for page in WEB_PAGES + ((f"/results/{latest}",) if latest else ()):
            try:
                with urllib.request.urlopen(base[0] + page.lstrip("/"), timeout=10) as answer:
                    answer.read()
                key = "ok"
            except OSError as exc:     # 404 before the first capture; anything else is counted too
                key = f"http_{exc.code}" if hasattr(exc, "code") else type(exc).__name__
            if stop.is_set():          # the service is being stopped: its answer says nothing
                return
            counts[key] = counts.get(key, 0) + 1


def soak(cmd: list[str], env: dict, core: int | None, sessions: int) -> dict:
    """Runs the service until `sessions` sessions are stored, then SIGTERM; RSS sampled throughout."""
    measured = Measured(cmd, env, core, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pid = measured.pid
    per_session: list[tuple[int, tuple[int, int, int]]] = []     # (session, _rss_kib) as each is stored
    timeline: list[tuple[float, int]] = []
    base: list[str] = []
    web: dict = {}
    log: list[str] = []
    statuses: dict[str, int] = {}
    stop = threading.Event()

    def follow() -> None:
        for line in measured.proc.stderr:
            log.append(line)
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("msg") == "web interface ready":
                base.append(entry["url"])
            elif str(entry.get("msg", "")).startswith("session ") and "record" in entry:
                per_session.append((len(per_session) + 1, _rss_kib(pid) or (0, 0, 0)))
                statuses[entry.get("status")] = statuses.get(entry.get("status"), 0) + 1
                web["latest"] = entry.get("record")
                if len(per_session) == sessions:
                    stop.set()
                    os.kill(pid, signal.SIGTERM)

    follower = threading.Thread(target=follow, daemon=True)
    poller = threading.Thread(target=_poll_web, args=(base, stop, web), daemon=True)
    follower.start()
    poller.start()
    deadline = time.perf_counter() + 60 + 15 * sessions
    while measured.proc.poll() is None:
        rss = _rss_kib(pid)
        if rss:
            timeline.append((round(time.perf_counter() - measured.started, 1), rss[0]))
        if time.perf_counter() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise SystemExit(f"{' '.join(cmd)}: {len(per_session)} of {sessions} sessions in the time allowed")
        time.sleep(0.5)
    stop.set()
    follower.join(10)
    code, wall, peak_mib = measured.wait()
    if code != 0 or len(per_session) < sessions:
        raise SystemExit(f"{' '.join(cmd)} exited {code} after {len(per_session)} sessions:\n{''.join(log[-20:])}")
    warm = max(1, sessions // 10)
    after = [(n, kib[0] / 1024) for n, kib in per_session[warm:]]
    fit = statistics.linear_regression([n for n, _ in after], [mb for _, mb in after])
    rise_mb = fit.slope * (after[-1][0] - after[0][0])
    half = len(after) // 2
    late = statistics.linear_regression([n for n, _ in after[half:]], [mb for _, mb in after[half:]])
    peak_mb = peak_mib * 1.048576
    return {"sessions": sessions, "seconds": round(wall, 1), "peak_rss_mb": round(peak_mb, 1),
            "peak_rss_mib": round(peak_mib, 1), "statuses": statuses,
            "rss_anon_file_mib_after_session": {str(n): [round(k / 1024, 1) for k in kib] for n, kib in per_session
                                                if n in (1, warm, warm + half, sessions) or n % 25 == 0},
            "fitted_rise_mib_after_warm_up": round(rise_mb, 2),
            "fitted_rise_mib_second_half": round(late.slope * (after[-1][0] - after[half][0]), 2),
            "max_rss_mib_first_half_vs_second": [round(max(mb for _, mb in after[:half]), 1),
                                                 round(max(mb for _, mb in after[half:]), 1)],
            "web_requests": {k: v for k, v in web.items() if k != "latest"},
            "timeline_mib": [(t, round(kib / 1024, 1)) for t, kib in timeline[:: max(1, len(timeline) // 60)]],
            "pass": peak_mb <= SERVICE_GOAL_MB and late.slope * (after[-1][0] - after[half][0]) < TREND_GOAL_MB}


def first_model_load(env: dict, core: int | None, tmp: Path, runs: int = 3) -> dict:
    """RSS after loading the pad model with an empty cache, optimised in-process or apart (alternated)."""
    taskset = ["taskset", "-c", str(core)] if core is not None else []
    rss = {"in_process": [], "apart": []}
    for i in range(runs):
        for mode in (("in_process", "apart") if i % 2 == 0 else ("apart", "in_process")):
            cache = tmp / f"first-load-{mode}-{i}"
            out = subprocess.run([*taskset, sys.executable, "-c", FIRST_LOAD, mode], env=dict(env, STRIPREAD_CACHE=str(cache)),
                                 cwd=ROOT, capture_output=True, text=True, check=True)
            rss[mode].append(int(out.stdout.split()[-1]) / 1024)
    return {f"{mode}_rss_mib": round(statistics.median(v), 1) for mode, v in rss.items()}


def outbox(stripread: Path, env: dict) -> str:
    run = subprocess.run([str(stripread), "sync", "--status"], env=env, capture_output=True, text=True)
    return run.stdout.splitlines()[0] if run.stdout else run.stderr.strip()


def service_soaks(stripread: Path, photo: Path, env: dict, cores: list[int], sessions: int, speed: float,
                  tmp: Path, cameras: tuple[str, ...]) -> dict:
    """The soaks, each with a loopback FHIR lab of its own on the other core."""
    report = {}
    replaying = [sys.executable, "-c", REPLAYING, str(photo)]
    for name, program, service_speed in (("simulated_camera", [str(stripread)], speed),
                                         ("camera_handing_over_photos", replaying, min(speed, 200.0))):
        if name not in cameras:
            continue
        data = tmp / f"soak-{name}"
        soak_env = dict(env, STRIPREAD_DATA=str(data))
        lab = subprocess.Popen((["taskset", "-c", str(cores[-1])] if len(cores) > 1 else []) +
                               [sys.executable, "-c", LAB], cwd=ROOT, env=soak_env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
        try:
            config = tmp / f"lab-{name}.toml"
            config.write_text(f'[lab]\npatient_identifier_system = "urn:oid:2.16.840.1.113883.19.5"\n'
                              f'allow_insecure_loopback = true\ndefault_patient = "soak-patient"\n[fhir]\nurl = "{lab.stdout.readline().strip()}"\n')
            cmd = [*program, "run", "--simulate", "--strips", str(sessions + 5), "--speed", f"{service_speed:g}",
                   "--web", "127.0.0.1:0", "--lab-config", str(config)]
            report[name] = {"speed": service_speed, **soak(cmd, soak_env, cores[0], sessions),
                            "lab_outbox": outbox(stripread, soak_env)}
        finally:
            lab.stdin.close()
            lab.wait(10)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7, help="alternated read/decode pairs (median)")
    parser.add_argument("--sessions", type=int, default=200, help="sessions in each soak")
    parser.add_argument("--speed", type=float, default=1000.0, help="the simulated reader's time compression")
    parser.add_argument("--no-soak", action="store_true", help="only the cold reads")
    parser.add_argument("--camera", choices=("both", *CAMERAS), default="both", help="which soaks")
    parser.add_argument("--installed", action="store_true", help="also the installed sizes (downloads the "
                                                                 "aarch64 wheels, ~100 MB)")
    parser.add_argument("--out", default=str(RESULTS / "footprint.json"))
    args = parser.parse_args(argv)
    stripread = Path(sys.executable).with_name("stripread")
    cores = sorted(os.sched_getaffinity(0)) if shutil.which("taskset") else [None]
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.machine())
    report = {"machine": {"cpu": cpu, "cores": os.cpu_count(), "pinned_to_core": cores[0],
                          "python": platform.python_version(), "peak_rss_from": GNU_TIME or "wait4"}}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        env = {k: v for k, v in os.environ.items() if k not in ("STRIPREAD_LAB_CONFIG", "PYTHONDONTWRITEBYTECODE")}
        env.update(STRIPREAD_DATA=str(tmp / "data"), STRIPREAD_CACHE=str(tmp / "cache"), HOME=str(tmp),
                   PYTHONPYCACHEPREFIX=str(tmp / "pycache"), PYTHONUNBUFFERED="1")
        photo = tmp / "strip.jpg"
        subprocess.run([str(stripread), "simulate", "--seed", "7", "--out", str(photo)], env=env, check=True,
                       capture_output=True)
        report["cold_read"] = cold_read(stripread, photo, env, cores[0], args.pairs)
        report["cold_read_model_baseline"] = baseline_read(stripread, photo, env, cores[0])
        report["first_model_load"] = first_model_load(env, cores[0], tmp)
        if not args.no_soak:
            report["service"] = service_soaks(stripread, photo, env, cores, args.sessions, args.speed, tmp,
                                              CAMERAS if args.camera == "both" else (args.camera,))
            with_store = dict(env, STRIPREAD_DATA=str(next(tmp.glob("soak-*"))))
            report["cold_read_with_a_results_store"] = cold_read(stripread, photo, with_store, cores[0], args.pairs)
    if args.installed:   # imported only here: packaging and importlib.metadata would weigh on this parent
        sys.path.insert(0, str(ROOT / "bench"))
        import installed_sizes
        report["installed"] = installed_sizes.measure()
    print(json.dumps(report, indent=1))
    cold = report["cold_read"]
    print(f"\ncold `stripread read --json`: peak {cold['read']['peak_rss_mib']} MiB (max "
          f"{cold['read']['peak_rss_mib_max']}, goal <= {READ_GOAL_MIB:g}), {cold['read']['wall_s']} s = "
          f"{cold['time_ratio_median_of_pairs']}x a fresh decode's {cold['decode']['wall_s']} s "
          f"({cold['decode']['peak_rss_mib']} MiB; goal <= {READ_RATIO_GOAL:g}x): {'pass' if cold['pass'] else 'FAIL'}")
    first = report["first_model_load"]
    print(f"the pad model loaded with an empty cache: {first['in_process_rss_mib']} MiB optimised in-process, "
          f"{first['apart_rss_mib']} MiB optimised by a child first (as `stripread run` does)")
    for name, s in report.get("service", {}).items():
        print(f"`stripread run`, {name.replace('_', ' ')}: peak {s['peak_rss_mb']} MB through {s['sessions']} "
              f"sessions (goal <= {SERVICE_GOAL_MB:g}), RSS fitted rise after the first tenth "
              f"{s['fitted_rise_mib_after_warm_up']} MiB, over the second half {s['fitted_rise_mib_second_half']} "
              f"MiB (goal < {TREND_GOAL_MB:g}): {'pass' if s['pass'] else 'FAIL'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
