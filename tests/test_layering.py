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


MAX_FUNCTION_LINES = 60     # issue #17: a function in device/ fits on a screen


def _long_functions(folder: Path) -> list[str]:
    """`path:line name (n lines)` of every function under `folder` longer than MAX_FUNCTION_LINES."""
    import ast
    found = []
    for source in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{source.relative_to(folder).as_posix()}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_in_device_is_longer_than_a_screen(tmp_path):
    assert _long_functions(ROOT / "device") == []
    long = tmp_path / "device" / "long.py"       # and the check sees one that is
    long.parent.mkdir()
    long.write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    assert _long_functions(long.parent) == [f"long.py:1 f ({MAX_FUNCTION_LINES + 1} lines)"]
