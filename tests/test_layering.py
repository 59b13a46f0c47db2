"""The import layering of issue #17, as import-linter contracts in pyproject.toml: the reader's
libraries below device/, device/'s sub-packages in layers without cycles, the simulator reached
only through the `--simulate` wiring. Run here, so `.ci/run` (pytest) enforces them."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("device", "models", "calibration", "firmware_bridge", "simulator")
LINT = Path(sys.executable).with_name("lint-imports")     # import-linter's command, in the test extra


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    """import-linter with this project's contracts over the packages found from `cwd`."""
    return subprocess.run([str(LINT), str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo"], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_the_layering_contracts_hold():
    run = _lint(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr


def test_an_upward_import_breaks_the_contracts_naming_it(tmp_path):
    """The contracts bite: a copy of the packages with the store importing the command line fails,
    naming that import (and only the copy is read: it is first on the path)."""
    for package in PACKAGES:
        for source in (ROOT / package).rglob("*.py"):
            target = tmp_path / source.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    (tmp_path / "device" / "store" / "upward.py").write_text("from device.cli import commands\n")
    run = _lint(tmp_path)
    assert run.returncode != 0
    assert "device.store.upward -> device.cli.commands" in run.stdout, run.stdout
