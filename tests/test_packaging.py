"""The Raspberry Pi deployment (deploy/): the aarch64 wheel check of every runtime dependency, the
systemd unit, journald limits, udev rule and install script, and the commands that must start
without the heavy libraries."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
VENV = "/opt/stripread/venv"


def test_aarch64_check_every_runtime_dependency_installs_from_wheels_on_bookworm_and_trixie():
    """deploy/check_aarch64.py: pip resolves the runtime requirements for linux aarch64 at cp311 and
    cp313, wheels only, with the pinned constraints; it needs the index (PyPI) and takes ~10 s."""
    run = subprocess.run([sys.executable, str(DEPLOY / "check_aarch64.py")], capture_output=True, text=True,
                         timeout=900)
    if run.returncode == 2:
        pytest.skip(f"the aarch64 check could not run: {run.stderr.strip()}")
    assert run.returncode == 0, run.stdout + run.stderr
    for release in ("bookworm: Python 3.11", "trixie: Python 3.13"):
        assert release in run.stdout
    assert re.search(r"^  onnxruntime +\S+ +manylinux_2_\d+_aarch64", run.stdout, re.M)


def _unit(path: Path) -> dict[str, list[str]]:
    """`Section.Key` -> its values, in order (systemd allows a key more than once)."""
    entries: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            entries.setdefault(f"{section}.{key}", []).append(value)
    return entries


def test_the_unit_runs_the_service_as_its_own_user_restarted_on_failure_and_confined():
    unit = _unit(DEPLOY / "stripread.service")
    assert unit["Service.ExecStart"] == [f"{VENV}/bin/stripread run $STRIPREAD_ARGS"]
    expected = {"Type": "simple", "Restart": "on-failure", "User": "stripread", "StateDirectory": "stripread",
                "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                "ReadWritePaths": "/var/lib/stripread"}
    assert {key: unit[f"Service.{key}"][-1] for key in expected} == expected
    assert set(unit["Service.SupplementaryGroups"][-1].split()) == {"dialout", "video"}
    assert {"STRIPREAD_DATA=/var/lib/stripread", "STRIPREAD_PORT=/dev/stripread-board"} <= set(
        unit["Service.Environment"])
    assert "Service.StandardError" not in unit           # stderr (the JSON log lines) goes to the journal
    assert "Service.PrivateDevices" not in unit and "Service.ProtectClock" not in unit   # camera, serial port
    assert unit["Install.WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed (Debian: systemd)")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    """Verified in a scratch root holding the system's units and the venv's entry point, so a
    missing /opt/stripread on this machine is not what it reports."""
    system_units = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
                        None)
    if system_units is None:
        pytest.skip("no systemd units on this machine to verify against")
    shutil.copytree(system_units, tmp_path / "usr/lib/systemd/system", symlinks=True)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(DEPLOY / "stripread.service", tmp_path / "etc/systemd/system")
    entry_point = tmp_path / VENV.lstrip("/") / "bin/stripread"
    entry_point.parent.mkdir(parents=True)
    entry_point.write_text("#!/bin/sh\n")
    entry_point.chmod(0o755)
    run = subprocess.run(["systemd-analyze", "verify", f"--root={tmp_path}", "stripread.service"],
                         capture_output=True, text=True, timeout=60)
    complaints = [ln for ln in (run.stdout + run.stderr).splitlines() if "stripread" in ln]
    assert run.returncode == 0 and not complaints, run.stdout + run.stderr


def test_journald_keeps_and_bounds_the_logs():
    """No log files, so no logrotate: journald rotates, within these limits."""
    conf = _unit(DEPLOY / "journald-stripread.conf")
    assert conf["Journal.Storage"] == ["persistent"]
    assert re.fullmatch(r"\d+[MG]", conf["Journal.SystemMaxUse"][0])
    assert re.fullmatch(r"\d+[MG]", conf["Journal.SystemKeepFree"][0])


def test_the_udev_rule_names_the_board_for_the_service_and_parses():
    lines = [ln for ln in (DEPLOY / "60-stripread-board.rules").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assignment = r'[A-Z_]+(\{[^}]+\})?\s*(==|!=|\+=|-=|:=|=)\s*"[^"]*"'
    assert lines and all(re.fullmatch(rf"{assignment}(\s*,\s*{assignment})*", ln) for ln in lines), lines
    (rule,) = lines
    for token in ('SUBSYSTEM=="tty"', 'ATTRS{idVendor}==', 'ATTRS{idProduct}==', 'SYMLINK+="stripread-board"',
                  'GROUP="dialout"', 'ENV{ID_MM_DEVICE_IGNORE}="1"'):
        assert token in rule


def test_the_install_script_installs_what_the_unit_runs_and_is_clean_shell():
    script = (DEPLOY / "install-pi.sh").read_text()
    for needed in ("python3-picamera2", "--system-site-packages", "-c \"$here/constraints-aarch64.txt\"",
                   "--only-binary=:all:", "dialout,video", "venv=" + VENV, "stripread.service",
                   "60-stripread-board.rules", "journald-stripread.conf", "/var/lib/stripread"):
        assert needed in script, needed
    for script_path in (DEPLOY / "install-pi.sh", DEPLOY / "stripread-cli.sh"):
        assert os.access(script_path, os.X_OK)
        checker = ["shellcheck"] if shutil.which("shellcheck") else ["bash", "-n"]   # Debian: shellcheck
        run = subprocess.run(checker + [str(script_path)], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr


HEAVY = ("cv2", "onnxruntime", "matplotlib", "fhir.resources", "hl7apy")


@pytest.mark.parametrize("command", [["--help"], ["history"], ["export"], ["verify"], ["sync", "--status"]],
                         ids=" ".join)
def test_commands_that_only_read_the_store_do_not_import_heavy_libraries(command, tmp_path):
    """On a Pi, importing OpenCV, onnxruntime or matplotlib costs seconds and tens of MB."""
    env = dict(os.environ, STRIPREAD_DATA=str(tmp_path))
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "device.cli.commands", *command], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    imported = {ln.rpartition("|")[2].strip() for ln in run.stderr.splitlines() if ln.startswith("import time:")}
    assert {"argparse", "device.cli.technician"} <= imported     # the import lines were read (the parser's)
    assert sorted(m for m in imported if m in HEAVY or m.startswith(tuple(h + "." for h in HEAVY))) == []
