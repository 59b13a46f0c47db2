"""Where `stripread run`'s memory goes: by mapping and by imported package, reproducibly (issue #20).

The service runs as bench/footprint.py's "camera handing over photos" soak runs it (its FHIR lab on
loopback on the other core, its replaying camera, its web polling, the service on one core by
taskset, its peak from the kernel at exit), reusing footprint.py's set-up with this module's soak in
place of its own, for --sessions sessions, after a 2-session warm-up soak (so the modules are compiled
and the ORT cache exists, as on a device after its first start), then once more with `--web off`
(what the web costs the running process: its imports and its run-time objects). Nothing is hooked
into the product: the child Python this script writes is footprint.py's replaying program with a
SIGUSR1 handler put in front. When the N-th session is stored, this script reads /proc/PID/smaps
and status from outside, then sends SIGUSR1; the handler writes the names in sys.modules
(first-import order) and stops the service as SIGTERM does (the product's handler ends its loop).

Then, in fresh processes on the same core, from those names (less the few no import reaches):
- all of them imported into a bare interpreter: the RSS above the bare one;
- for each group (a package family, or a scenario: what a change would take out of the process):
  marginal = the RSS of importing the group last, after everything else, with the group and every
  module that cannot load without it held back (a blocking finder): what leaving it out would save
  at least; +only = the same with what only the group imports held back too (found along the import
  edges of a traced import of every module, plus the project's own import statements; the project's
  modules count as needed, so a project module only the web uses at run time stays: the real
  service with `--web off` loads fewer); alone = the group imported into a bare interpreter: what
  it costs a process of its own. Import order moves these by up to ~1 MiB.
RSS is VmRSS (RssAnon + RssFile) from /proc/self/status. The smaps groups are each mapped file with
1 MiB or more resident, the brk heap, and anonymous mappings (Python's arenas, numpy/OpenCV/ORT
buffers, glibc's second arena, thread stacks); "referenced" is what was touched after session N/3
(clear_refs, then smaps' Referenced): the steady-state working set (for the libraries' pages it varies
by several MiB between runs on a shared machine).

    python bench/service_memory.py [--sessions 30] [--repeat 1] [--out bench/results/service_memory.json]
"""
from __future__ import annotations

import argparse
import ast
import collections
import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
import footprint  # noqa: E402  (its soak set-up, measured child, web polling)

ROOT, RESULTS = footprint.ROOT, footprint.RESULTS
CAMERA = "camera_handing_over_photos"
MODULES_ENV = "SERVICE_MEMORY_MODULES"
CHILD = f"""
import os, signal, sys
def _modules_then_stop(*_):
    with open(os.environ[{MODULES_ENV!r}], "w") as out:
        out.write("\\n".join(list(sys.modules)))
    os.kill(os.getpid(), signal.SIGTERM)
signal.signal(signal.SIGUSR1, _modules_then_stop)
""" + footprint.REPLAYING
SKIP = ("__main__", "__mp_main__", "__editable__")
PROJECT = ["device", "calibration", "models", "firmware_bridge", "simulator"]
PYDANTIC = ["pydantic", "pydantic_core", "annotated_types", "typing_inspection"]
WEB = ["fastapi", "starlette", "opentelemetry", "uvicorn", "h11", "wsproto", "click", "python_multipart", "anyio",
       "sniffio", "jinja2", "markupsafe", "limits", "deprecated", "wrapt", "annotated_doc", "device.web"]
LAB = ["fhir", "fhir_core", "hl7apy", "device.lab.fhir", "device.lab.hl7", "device.lab.sync"]
GROUPS = {   # name: module prefixes (a module is in the group if it is one of them or under one)
    "numpy": ["numpy"],
    "cv2": ["cv2"],
    "onnxruntime (import only)": ["onnxruntime"],
    "pydantic (+core, annotated_types, typing_inspection)": PYDANTIC,
    "fastapi + starlette (+opentelemetry)": ["fastapi", "starlette", "opentelemetry"],
    "anyio + sniffio": ["anyio", "sniffio"],
    "asyncio": ["asyncio", "_asyncio"],
    "uvicorn + h11 + wsproto + click": ["uvicorn", "h11", "wsproto", "click"],
    "jinja2 + markupsafe": ["jinja2", "markupsafe"],
    "limits + deprecated + wrapt": ["limits", "deprecated", "wrapt"],
    "fhir.resources + fhir_core": ["fhir", "fhir_core"],
    "cryptography": ["cryptography", "_cffi_backend"],
    "ssl": ["ssl", "_ssl"],
    "sqlite3": ["sqlite3", "_sqlite3"],
    "serial + crc": ["serial", "crc"],
    "babel": ["babel"],
    "simplejpeg": ["simplejpeg"],
    "project (device, calibration, models, firmware_bridge, simulator)": PROJECT,
    "simulator (not on a device)": ["simulator"],
    "scenario: web stack + device.web out": WEB,
    "scenario: FHIR/HL7 + device.lab sending out": LAB,
    "scenario: both (pydantic goes too)": WEB + LAB + PYDANTIC,
    "scenario: fastapi + pydantic + fhir out (web on Starlette, FHIR as dicts)":
        ["fastapi", "opentelemetry", "device.web", "fhir", "fhir_core", "device.lab.fhir", *PYDANTIC],
    # its `alone` is the least a web process of its own would import (no project code, so no numpy);
    # its marginal takes FHIR too (fhir.resources needs pydantic)
    "scenario: a web process's own imports (web stack + pydantic, no project code)": WEB[:-1] + PYDANTIC,
}
# a fresh process: RSS bare, after `first` (with `blocked` refused), after `last` and what `first` deferred;
# with `trace` (not measured: it costs memory), the import edges instead: (importer, module imported)
PROBE = r"""
import importlib, importlib.util, json, sys
def rss():
    f = {l.split(':')[0]: int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(('VmRSS', 'Rss'))}
    return [f['VmRSS'] / 1024, f['RssAnon'] / 1024, f['RssFile'] / 1024]
spec = json.load(sys.stdin)
class Block:
    def find_spec(self, name, path=None, target=None):
        if any(name == p or name.startswith(p + '.') for p in spec['blocked']):
            raise ImportError(f'held back: {name}')
def load(names):
    failed = []
    for name in names:
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except Exception:
                failed.append(name)
    return failed
edges, startup = set(), list(sys.modules)
# the probe's own imports, and a C extension's as it loads (its frame is importlib's): no importer known
unknown = (None, '__main__', 'importlib._bootstrap', 'importlib._bootstrap_external')
untraced = []
def traced(real, importer_of, named):
    def wrapper(*args, **kwargs):
        module = real(*args, **kwargs)
        try:
            importer = importer_of(*args, **kwargs)
            edges.update((importer, name) for name in named(module, *args, **kwargs) if name in sys.modules)
        except Exception:      # the import itself stands; only its edge is not known
            untraced.append(str(args[:1]))
        return module
    return wrapper
def imported(module, name, globals=None, locals=None, fromlist=(), level=0):
    package = (globals or {}).get('__package__') or getattr((globals or {}).get('__spec__'), 'parent', None)
    base = importlib.util.resolve_name('.' * level + name, package) if level else name
    return [base] + [f'{base}.{item}' for item in fromlist or ()]
if spec.get('trace'):
    import builtins
    builtins.__import__ = traced(builtins.__import__,
                                 lambda name, globals=None, *_, **__: (globals or {}).get('__name__'), imported)
    importlib.import_module = traced(importlib.import_module,
                                     lambda *_, **__: sys._getframe(2).f_globals.get('__name__'),
                                     lambda module, *_, **__: [module.__name__])
bare = rss()
sys.meta_path.insert(0, Block())
deferred = load(spec['first'])
before = rss()
sys.meta_path.pop(0)
failed = load(spec['last'] + deferred)
print(json.dumps({'bare': bare, 'before': before, 'after': rss(), 'deferred': deferred, 'failed': failed,
                  'edges': sorted(e for e in edges if e[0] != e[1] and e[0] not in unknown),
                  'startup': startup, 'untraced': untraced}))
"""


def _smaps(pid: int) -> dict[str, collections.Counter]:
    """/proc/PID/smaps summed by what each mapping is (KiB): a library by name, the brk heap, anonymous."""
    groups: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    current = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = re.match(r"^[0-9a-f]+-[0-9a-f]+ \S{4} \S+ \S+ \S+\s*(.*)$", line)
        if head:
            path = head[1].strip()
            if path.startswith("/"):
                name = Path(path).name
                current = re.sub(r"[-.]cpython.*|\.so.*", "", name) + (".so" if ".so" in name else "")
            else:
                current = {"[heap]": "heap (brk)", "": "anonymous"}.get(path, path)
        elif current and line.endswith(" kB"):
            key, value = line.split(":")
            groups[current][key] = groups[current][key] + int(value.split()[0])
    return groups


def _status(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile (MiB) and Threads of a running process."""
    fields = {ln.split(":")[0]: ln.split()[1] for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
              if ln.startswith(("Vm", "Rss", "Threads"))}
    return {k: round(int(v) / 1024, 1) if k != "Threads" else int(v) for k, v in fields.items()
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads")}


def _soak(cmd: list[str], env: dict, core: int | None, sessions: int, web_on: bool = True) -> dict:
    """footprint.soak's place in footprint.service_soaks: at the last session, smaps and status from
    outside, then SIGUSR1 (the child writes its sys.modules and stops as SIGTERM does)."""
    if not web_on:
        cmd = [*cmd[:cmd.index("--web") + 1], "off", *cmd[cmd.index("--web") + 2:]]
    measured = footprint.Measured(cmd, env, core, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pid = measured.pid
    watchdog = threading.Timer(60 + 15 * sessions, os.kill, (pid, signal.SIGKILL))
    watchdog.start()
    base, polled, stop, tail = [], {}, threading.Event(), collections.deque(maxlen=20)
    threading.Thread(target=footprint._poll_web, args=(base, stop, polled), daemon=True).start()
    stored, statuses, end = 0, collections.Counter(), {}
    for line in measured.proc.stderr:
        tail.append(line)
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("msg") == "web interface ready":
            base.append(entry["url"])
        if not (str(entry.get("msg", "")).startswith("session ") and "record" in entry) or stored == sessions:
            continue
        stored += 1
        statuses[entry.get("status")] += 1
        polled["latest"] = entry.get("record")
        if stored == max(1, sessions // 3):
            Path(f"/proc/{pid}/clear_refs").write_text("1")   # from here on, smaps' Referenced: the working set
        if stored == sessions:
            end = {"status": _status(pid), "smaps": _smaps(pid)}
            stop.set()
            os.kill(pid, signal.SIGUSR1)
    stop.set()
    watchdog.cancel()
    code, wall, peak = measured.wait()
    if code != 0 or stored < sessions:
        raise SystemExit(f"the service exited {code} after {stored} of {sessions} sessions:\n{''.join(tail)}")
    return {"sessions": sessions, "seconds": round(wall, 1), "statuses": dict(statuses),
            "peak_rss_mib_at_exit": round(peak, 1), "web_requests": {k: v for k, v in polled.items() if k != "latest"},
            **end}


def run_service(env: dict, tmp: Path, cores: list, sessions: int) -> tuple[dict, list[str], dict]:
    """A warm-up soak of 2 sessions, then the measured one, then the same with the web off: (the
    measured one's figures, the modules it had loaded, the figures without the web)."""
    stripread = Path(sys.executable).with_name("stripread")
    photo = tmp / "strip.jpg"
    subprocess.run([str(stripread), "simulate", "--seed", "7", "--out", str(photo)], env=env, check=True,
                   capture_output=True)
    env = dict(env, **{MODULES_ENV: str(tmp / "modules.txt")})
    runs = []
    with mock.patch.object(footprint, "REPLAYING", CHILD):
        for count, folder, web_on in ((2, "warm-up", True), (sessions, "measured", True), (sessions, "web-off", False)):
            (tmp / folder).mkdir()
            with mock.patch.object(footprint, "soak", functools.partial(_soak, web_on=web_on)):
                runs.append(footprint.service_soaks(stripread, photo, env, cores, count, 200.0, tmp / folder,
                                                    (CAMERA,))[CAMERA])
            if folder == "measured":
                names = (tmp / "modules.txt").read_text().split("\n")
    return runs[1], [m for m in names if not m.startswith(SKIP)], runs[2]


def _probe(env: dict, core, first=(), last=(), blocked=(), trace=False) -> dict:
    spec = json.dumps({"first": list(first), "last": list(last), "blocked": list(blocked), "trace": trace})
    run = subprocess.run((["taskset", "-c", str(core)] if core is not None else []) + [sys.executable, "-c", PROBE],
                         input=spec, env=env, cwd=ROOT, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"import probe failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout.splitlines()[-1])


def _project_imports(modules: list[str]) -> set[tuple[str, str]]:
    """(module, name) for every import statement in the project's modules, those in functions too:
    the service runs them, an import-time trace sees only the module-level ones."""
    edges = set()
    for name in (m for m in modules if m.split(".")[0] in PROJECT):
        path = next((p for p in (ROOT.joinpath(*name.split(".")).with_suffix(".py"),
                                 ROOT.joinpath(*name.split("."), "__init__.py")) if p.is_file()), None)
        package = name if path and path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_bytes())) if path else ():
            if isinstance(node, ast.Import):
                edges.update((name, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                edges.update([(name, base)] + [(name, f"{base}.{alias.name}") for alias in node.names])
    return edges


def _kept_without(modules: list[str], trace: dict, excluded) -> list[str]:
    """The modules still loaded when those `excluded` are out: reachable from the roots (what the
    interpreter loads at start, the project's modules, and what no module imports when it is
    imported: a lazy import in a function) along import edges (`trace`'s, with the project's import
    statements) and from a module to its package, never through an excluded one."""
    graph = collections.defaultdict(set)
    for importer, name in trace["edges"]:
        graph[importer].add(name)
    for name in modules:
        graph[name].add(name.rpartition(".")[0])
    imported = {name for names in graph.values() for name in names}

    def reach(roots: set[str], out) -> set[str]:
        seen, todo = set(), [m for m in roots if not out(m)]
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(n for n in graph[name] if n not in seen and not out(n))
        return seen

    roots = set(trace["startup"]) | {m for m in modules if m not in imported or m.split(".")[0] in PROJECT}
    roots |= set(modules) - reach(roots, lambda m: False)        # only imported by each other, in a cycle
    kept = reach(roots, excluded)
    return [m for m in modules if m in kept]


def _packages(names: set[str]) -> list[str]:
    """Module names shortened to their packages (the project's to two levels), for the table."""
    return sorted({".".join(m.split(".")[:2]) if m.startswith(("device.", "calibration.", "models."))
                   else m.split(".")[0] for m in names})


def _mib(after: list[float], before: list[float]) -> dict[str, float]:
    return dict(zip(("rss", "anon", "file"), (round(a - b, 1) for a, b in zip(after, before))))


def imports(modules: list[str], env: dict, core, repeat: int) -> dict:
    """RSS of the service's modules in fresh processes: all of them, then each group's marginal and alone."""
    def least(runs: list[dict[str, float]]) -> dict[str, float]:    # the quietest of `repeat` runs
        return min(runs, key=lambda r: r["rss"])

    everything = [_probe(env, core, first=modules) for _ in range(repeat)]
    unimportable = set(everything[0]["deferred"])     # names in sys.modules that no import statement reaches
    modules = [m for m in modules if m not in unimportable]
    trace = _probe(env, core, first=modules, trace=True)
    if trace["deferred"] or trace["untraced"]:
        raise SystemExit(f"tracing changed what imports: {trace['deferred'][:5]} {trace['untraced'][:5]}")
    trace["edges"] += _project_imports(modules)
    report = {"bare_interpreter": least([_mib(r["bare"], [0, 0, 0]) for r in everything]),
              "all_modules": least([_mib(r["before"], r["bare"]) for r in everything]),
              "modules": len(modules), "groups": {}}
    for name, prefixes in GROUPS.items():
        inside = [m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)]
        if not inside:
            continue
        rest = [m for m in modules if m not in inside]
        marginal = [_probe(env, core, first=rest, last=inside, blocked=prefixes) for _ in range(repeat)]
        needing = set(marginal[0]["deferred"])
        # what only the group imports goes with it; its dependents' other imports stay (they would be
        # rewritten to do without the group, not dropped)
        kept = [m for m in _kept_without(modules, trace, set(inside).__contains__) if m not in needing]
        only = [m for m in modules if m not in kept]
        with_only = [_probe(env, core, first=kept, last=only, blocked=prefixes) for _ in range(repeat)]
        alone = [_probe(env, core, last=inside) for _ in range(repeat)]
        report["groups"][name] = {
            "marginal": least([_mib(r["after"], r["before"]) for r in marginal]),
            "with_what_only_it_needs": least([_mib(r["after"], r["before"]) for r in with_only]),
            "alone": least([_mib(r["after"], r["bare"]) for r in alone]), "modules": len(inside),
            "also_held_back": _packages(needing), "only_it_needs": _packages(set(only) - needing - set(inside))}
        row = report["groups"][name]
        print(f"  {name[:56]:56} marginal {row['marginal']['rss']:5.1f} {row['with_what_only_it_needs']['rss']:5.1f}"
              f"  alone {row['alone']['rss']:5.1f}", flush=True)
    return report


def smaps_table(smaps: dict[str, collections.Counter], least_mib: float = 1.0) -> dict[str, dict[str, float]]:
    """The service's mappings at the last session (MiB), the small ones summed."""
    rows: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, c in smaps.items():
        small = c["Rss"] < least_mib * 1024 and name not in ("anonymous", "heap (brk)")
        rows[("other anonymous" if name.startswith("[") else "other files") if small else name].update(c)
    rows["total"] = sum(rows.values(), collections.Counter())
    return {name: {"rss": round(c["Rss"] / 1024, 1), "anonymous": round(c["Anonymous"] / 1024, 1),
                   "referenced": round(c["Referenced"] / 1024, 1)}
            for name, c in sorted(rows.items(), key=lambda kv: (kv[0] == "total", -kv[1]["Rss"]))}


def tables(report: dict) -> str:
    """The smaps groups and the import groups, as printed."""
    imported, on, off = report["imports_mib"], report["service"]["status"], report["service_web_off"]["status"]
    lines = [f"\nafter {report['service']['sessions']} sessions: VmRSS {on['VmRSS']} MiB, peak {on['VmHWM']}; "
             f"with --web off {off['VmRSS']}, peak {off['VmHWM']}",
             f"\n{'mapping at the last session (MiB)':44} {'rss':>6} {'anon':>6} {'referenced':>10}"]
    lines += [f"{name[:44]:44} {row['rss']:6.1f} {row['anonymous']:6.1f} {row['referenced']:10.1f}"
              for name, row in report["smaps_mib"].items()]
    bare, every = imported["bare_interpreter"], imported["all_modules"]
    lines += [f"\nimports: bare interpreter {bare['rss']} MiB (anon {bare['anon']}); the service's "
              f"{imported['modules']} modules add {every['rss']} (anon {every['anon']}, file {every['file']})",
              f"{'group (MiB)':64} {'marginal':>8} {'+only':>6} {'alone':>6}  also held back"]
    lines += [f"{name[:64]:64} {row['marginal']['rss']:8.1f} {row['with_what_only_it_needs']['rss']:6.1f} "
              f"{row['alone']['rss']:6.1f}  {', '.join(row['also_held_back'])[:50]}"
              for name, row in imported["groups"].items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=30, help="sessions before the service is looked at")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each import probe (the least RSS is kept)")
    parser.add_argument("--out", default=str(RESULTS / "service_memory.json"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cores = sorted(os.sched_getaffinity(0)) if shutil.which("taskset") else [None]
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        env = {k: v for k, v in os.environ.items() if k not in ("STRIPREAD_LAB_CONFIG", "PYTHONDONTWRITEBYTECODE")}
        env.update(STRIPREAD_DATA=str(tmp / "data"), STRIPREAD_CACHE=str(tmp / "cache"), HOME=str(tmp),
                   PYTHONPYCACHEPREFIX=str(tmp / "pycache"), PYTHONUNBUFFERED="1")
        service, modules, web_off = run_service(env, tmp, cores, args.sessions)
        print(f"service after {args.sessions} sessions: {service['status']}; {len(modules)} modules; imports:",
              flush=True)
        report = {"command": "python bench/service_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "pinned_to_core": cores[0], "service": {k: v for k, v in service.items() if k != "smaps"},
                  "service_web_off": {k: v for k, v in web_off.items() if k != "smaps"},
                  "smaps_mib": smaps_table(service["smaps"]),
                  "imports_mib": imports(modules, env, cores[0], args.repeat), "service_modules": modules}
    report["seconds"] = round(time.perf_counter() - started)
    print(tables(report))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"{report['seconds']} s; written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
