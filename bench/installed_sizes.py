"""Installed size of each runtime dependency with what it alone pulls in: in this venv (this
machine's wheels) and on a Pi (the aarch64 wheels deploy/check_aarch64.py pins for Bookworm and
Trixie, downloaded to a temporary folder and measured unpacked); stripread itself, its ONNX models.
Run by `python bench/footprint.py --installed`, or alone:

    python bench/installed_sizes.py
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "deploy"))
import check_aarch64  # noqa: E402

MB = 1024 * 1024


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


def measure() -> dict:
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


if __name__ == "__main__":
    print(json.dumps(measure(), indent=1))
