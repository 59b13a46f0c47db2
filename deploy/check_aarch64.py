#!/usr/bin/env python3
"""Can every runtime dependency be installed on a Raspberry Pi without compiling anything?

For each 64-bit Raspberry Pi OS release (Bookworm: Python 3.11, glibc 2.36; Trixie: Python 3.13,
glibc 2.41) pip resolves the runtime requirements of the installed stripread (its package metadata,
so a dependency added to setup.py is covered once the package is reinstalled, as CI does) for
manylinux aarch64, wheels only, with deploy/constraints-aarch64.txt applied. Every package must be
a pure-Python or aarch64 wheel and be pinned there, since install-pi.sh installs with that file.

    python deploy/check_aarch64.py          # exit 0 ok; 1 an offender, named; 2 the index unreachable
    python deploy/check_aarch64.py --pin    # resolve afresh and rewrite the constraints file
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SOURCE = Path(__file__).resolve().parent.parent
CONSTRAINTS = SOURCE / "deploy" / "constraints-aarch64.txt"
INDEX = "https://pypi.org/simple"
UNREACHABLE = re.compile(r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|"
                         r"Network is unreachable|ConnectTimeout|ProxyError")
HEADER = """\
# Versions that install from wheels alone on 64-bit Raspberry Pi OS (Bookworm: Python 3.11,
# Trixie: Python 3.13). Written by `python deploy/check_aarch64.py --pin`, checked by
# tests/test_packaging.py, used by deploy/install-pi.sh.
# numpy stays below 2 on Bookworm: apt's python3-simplejpeg, which picamera2 imports, is built
# against Bookworm's numpy 1.24 and does not load with numpy 2 (raspberrypi/picamera2#1088).
"""


@dataclass(frozen=True)
class Release:
    name: str
    python: str
    python_full: str
    glibc_minor: int                  # the newest manylinux_2_N tag a wheel may carry here
    bounds: tuple[str, ...] = ()      # what apt's own compiled modules need of the venv's packages

    @property
    def environment(self) -> dict[str, str]:
        """The Pi's marker environment: pip evaluates markers for the interpreter running it instead."""
        return {"python_version": self.python, "python_full_version": self.python_full,
                "platform_machine": "aarch64", "sys_platform": "linux", "platform_system": "Linux",
                "os_name": "posix", "implementation_name": "cpython",
                "platform_python_implementation": "CPython", "extra": ""}

    def applies(self, req: Requirement, extras=("",)) -> bool:
        """Whether the requirement holds on the Pi, for a package installed with these extras."""
        return req.marker is None or any(req.marker.evaluate({**self.environment, "extra": e}) for e in extras)


# Bookworm's numpy bound: apt's python3-simplejpeg, imported by picamera2, is built against numpy 1.24
RELEASES = (Release("bookworm", "3.11", "3.11.2", 36, ("numpy<2",)),
            Release("trixie", "3.13", "3.13.5", 41))


class Offender(Exception):
    """pip found no wheel (or no consistent set of wheels) for the Pi."""


class Unreachable(Exception):
    """The index could not be reached: nothing was checked."""


def runtime_requirements(release: Release) -> list[str]:
    """The installed stripread's requirements on this release, extras left out (picamera2 is apt's),
    and the release's bounds. Metadata older than setup.py would silently check an old list: refused."""
    try:
        dist = metadata.distribution("stripread")
    except metadata.PackageNotFoundError:
        sys.exit("stripread is not installed in this Python: pip install -e . first")
    installed = next((Path(dist.locate_file(f)) for f in dist.files or () if f.name in ("METADATA", "PKG-INFO")),
                     None)
    if installed is None or (SOURCE / "setup.py").stat().st_mtime > installed.stat().st_mtime:
        sys.exit(f"stripread's installed metadata ({installed}) is older than setup.py: pip install -e . again")
    reqs = [f"{r.name}{r.specifier}" for r in map(Requirement, dist.requires or ()) if release.applies(r)]
    return reqs + list(release.bounds)


def pins(release: Release) -> dict[str, Requirement]:
    """The constraints file's pins that apply on this release, by canonical name."""
    found = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and release.applies(req := Requirement(line)):
            found[canonicalize_name(req.name)] = req
    return found


def pinned(release: Release) -> list[str]:
    """The pins as constraints for pip, their markers decided for the Pi."""
    return [f"{req.name}{req.specifier}" for req in pins(release).values()]


def pip_options(release: Release, index: str) -> list[str]:
    """pip options that make it choose as on the Pi: its Python, aarch64 manylinux wheels only, the index."""
    platforms = [f"--platform=manylinux_2_{minor}_aarch64" for minor in range(release.glibc_minor, 16, -1)]
    return ["--only-binary=:all:", *platforms, "--platform=manylinux2014_aarch64", "--implementation=cp",
            f"--python-version={release.python}", f"--abi=cp{release.python.replace('.', '')}",
            f"--index-url={index}", "--retries=2", "--timeout=30"]


def pip_environment() -> dict[str, str]:
    """A Pi sees only the index: this machine's pip configuration (wheel folders, extra indexes) must not count."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX")}
    return {**env, "PIP_CONFIG_FILE": os.devnull}


def pip_report(release: Release, requirements: list[str], constraints: list[str], index: str) -> dict:
    """pip's JSON report of what it would install on the Pi (nothing is downloaded into the tree)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "constraints.txt").write_text("".join(c + "\n" for c in constraints), encoding="utf-8")
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--target", str(tmp / "target"), "--report", str(tmp / "report.json"), *pip_options(release, index),
               "-c", str(tmp / "constraints.txt"), *requirements]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=pip_environment())
        if proc.returncode:
            if UNREACHABLE.search(proc.stderr):
                raise Unreachable(f"{release.name}: {index} unreachable")
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR") or "conflict" in ln]
            raise Offender(f"{release.name}: " + "\n  ".join(errors or proc.stderr.splitlines()[-5:]))
        return json.loads((tmp / "report.json").read_text(encoding="utf-8"))


def resolve(release: Release, requirements: list[str], constraints: list[str], index: str) -> dict:
    """pip decides dependencies' markers for the Python running it, not for --python-version: a
    dependency only the Pi's Python needs is added explicitly and the resolution repeated."""
    while True:
        report = pip_report(release, requirements, constraints, index)
        names = {canonicalize_name(item["metadata"]["name"]) for item in report["install"]}
        missed = sorted({f"{req.name}{req.specifier}" for item in report["install"]
                         for req in map(Requirement, item["metadata"].get("requires_dist") or [])
                         if release.applies(req, ("", *item.get("requested_extras", [])))
                         and canonicalize_name(req.name) not in names})
        if not missed:
            return report
        requirements = requirements + missed


def wheels(report: dict) -> list[tuple[str, str, str]]:
    """(name, version, platform tag) of each wheel pip would install ("any": pure Python)."""
    rows = [(item["metadata"]["name"], item["metadata"]["version"],
             item["download_info"]["url"].rsplit("/", 1)[-1].removesuffix(".whl").split("-")[-1])
            for item in report["install"]]
    return sorted(rows, key=lambda row: canonicalize_name(row[0]))


def check(release: Release, index: str) -> tuple[list[str], list[str]]:
    """Resolve with the pins: the lines to print (every package and its wheel) and the problems."""
    requirements = runtime_requirements(release)
    try:
        report = resolve(release, requirements, pinned(release), index)
    except Offender as exc:
        try:        # without the pins: is it them, or is there no wheel at all?
            resolve(release, requirements, [], index)
        except Offender as no_wheel:
            return [f"{release.name}: no wheels"], [f"{no_wheel}\n  (no pure-Python or aarch64 wheel: a Pi "
                                                    "would have to compile it)"]
        return [f"{release.name}: pins conflict"], [f"{exc}\n  (the pins in {CONSTRAINTS.name} no longer fit "
                                                     "the requirements: python deploy/check_aarch64.py --pin)"]
    rows = wheels(report)
    binary = sum(tag != "any" for _, _, tag in rows)
    lines = [f"{release.name}: Python {release.python}, glibc 2.{release.glibc_minor}, linux aarch64: "
             f"{len(rows)} packages, {binary} aarch64 wheels, {len(rows) - binary} pure-Python wheels"]
    lines += [f"  {name:28} {version:14} {'pure Python' if tag == 'any' else tag}" for name, version, tag in rows]
    exact = {name for name, req in pins(release).items() if any(s.operator == "==" for s in req.specifier)}
    unpinned = [name for name, _, _ in rows if canonicalize_name(name) not in exact]
    if unpinned:
        return lines, [f"{release.name}: not pinned in {CONSTRAINTS.name}: {', '.join(unpinned)} "
                       "(python deploy/check_aarch64.py --pin)"]
    return lines, []


def write_pins(index: str) -> None:
    """Resolve every release afresh (newest wheels within the bounds) and write the constraints file:
    one pin where the releases agree, one per release's Python where they differ."""
    with ThreadPoolExecutor(len(RELEASES)) as pool:
        reports = pool.map(lambda r: resolve(r, runtime_requirements(r), [], index), RELEASES)
        versions = {r: {canonicalize_name(n): v for n, v, _ in wheels(rep)} for r, rep in zip(RELEASES, reports)}
    lines = []
    for name in sorted(set().union(*versions.values())):
        found = {r: versions[r].get(name) for r in RELEASES}
        if len(set(found.values())) == 1:
            lines.append(f"{name}=={found[RELEASES[0]]}")
        else:
            lines += [f'{name}=={v} ; python_version == "{r.python}"' for r, v in found.items() if v]
    CONSTRAINTS.write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    print(f"written {CONSTRAINTS} ({len(lines)} pins)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pin", action="store_true", help="resolve afresh and rewrite the constraints file")
    parser.add_argument("--index-url", default=INDEX, help="the index a Pi installs from (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.pin:
            write_pins(args.index_url)
            return 0
        with ThreadPoolExecutor(len(RELEASES)) as pool:     # two pip processes: about half the time
            outcomes = list(pool.map(lambda r: check(r, args.index_url), RELEASES))
    except Offender as exc:
        print(f"OFFENDER {exc}", file=sys.stderr)
        return 1
    except Unreachable as exc:
        print(f"NOT CHECKED: {exc}", file=sys.stderr)
        return 2
    for lines, _ in outcomes:
        print("\n".join(lines))
    problems = [problem for _, found in outcomes for problem in found]
    for problem in problems:
        print(f"OFFENDER {problem}", file=sys.stderr)
    if not problems:
        print("every runtime dependency installs from a wheel on Bookworm and Trixie (aarch64)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
