"""The option groups that several `stripread` commands share (the strip and card, the results
database, the display language, the reader's hardware, the service's), so the core commands
(commands.py) and the technicians' (technician.py) declare them alike. Parsing only: nothing here
is imported by a command's work."""
from __future__ import annotations

import os
from pathlib import Path


def default_db_path() -> Path:
    """The results database: under $STRIPREAD_DATA if set (the service sets /var/lib/stripread),
    else in the user's data folder. Here, not in device.store.results: every command's parser needs it, and
    importing the store (SQLite, the signing key's cryptography) cost a cold `read` 12 MB and 30 ms."""
    folder = os.environ.get("STRIPREAD_DATA") or Path.home() / ".local" / "share" / "stripread"
    return Path(folder) / "results.db"


def spec_options(p, model: bool = False) -> None:
    p.add_argument("--product", default="generic-10", help="product id or product file (default generic-10)")
    p.add_argument("--card", default="card-v1", help="card id or card file (default card-v1)")
    if model:
        p.add_argument("--lot", help="the strip lot (from the bottle): its calibration applies, an expired "
                                     "lot is refused")
        p.add_argument("--model", default="auto", help="auto (the product's shipped trained model, else the "
                                                      "baseline), onnx, baseline (nearest chart colour) "
                                                      "or an .onnx file")


def db_option(p) -> None:
    p.add_argument("--db", default=str(default_db_path()), help="results database (default %(default)s)")


def alert_option(p) -> None:
    p.add_argument("--alert-rules", help="the clinic's alert rules (TOML; default: the shipped "
                                         "device/data/alert-rules.toml)")


def display_options(p) -> None:
    p.add_argument("--lang", help="language of what a person reads: en or zh_CN (default $STRIPREAD_LANG, "
                                  "else en); JSON, logs and lab messages are always language-neutral")
    p.add_argument("--units", help="report style: conventional, si (SI units) or plus (plus grades with SI "
                                   "values) (default $STRIPREAD_REPORT_STYLE, else conventional); results "
                                   "are stored and sent in the product's UCUM units whatever the style")


def hardware_options(p, speed: float = 20.0) -> None:
    p.add_argument("--simulate", action="store_true", help="use the built-in simulated reader")
    p.add_argument("--port", default=os.environ.get("STRIPREAD_PORT", "/dev/ttyACM0"),
                   help="serial port of the reader's board (default $STRIPREAD_PORT or /dev/ttyACM0)")
    p.add_argument("--camera", default="auto", help="auto (Pi camera, else USB), picamera2 or opencv")
    p.add_argument("--speed", type=float, default=speed, help="time compression when simulating")
    p.add_argument("--seed", type=int, default=1, help="which simulated reader (its pose, light and camera)")


def service_options(p, web_default: str) -> None:
    """`run` and `serve`: the reader service, its web interface and its lab."""
    p.add_argument("--operator", help="operator id recorded with every result")
    hardware_options(p)
    p.add_argument("--lab-config", help="lab configuration (default $STRIPREAD_LAB_CONFIG, /etc/stripread/"
                                        "lab.toml, ~/.config/stripread/lab.toml); none: results stay here")
    p.add_argument("--web", default=web_default, help="HOST:PORT of the web interface, or off "
                                                      "(default %(default)s; 0.0.0.0 for phones on the network)")
    p.add_argument("--web-cert", help="TLS certificate for the web interface (needed beyond this machine)")
    alert_option(p)
    p.add_argument("--web-key", help="its private key")
    p.add_argument("--web-login", action="store_true", help="every page needs a staff login (a clinic's "
                                                            "network), not only the technician's")
    p.add_argument("--contact", default=os.environ.get("STRIPREAD_CONTACT"),
                   help="whom patients contact when quality control locks the reader, shown before they "
                        "dip a strip (default $STRIPREAD_CONTACT, else 'the technician who looks after this "
                        "reader')")
    p.add_argument("--min-free-mb", type=float, help="refuse to start a test with less free space in the "
                                                     "data folder (default $STRIPREAD_MIN_FREE_MB or 20)")
    spec_options(p, model=True)
    db_option(p)
    display_options(p)
