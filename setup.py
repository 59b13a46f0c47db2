"""stripread: a quantitative urine test-strip reader for Raspberry Pi-class devices."""
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildWithCatalogues(build_py):
    """Compiles each gettext catalogue (device/locale/*/LC_MESSAGES/stripread.po) to its .mo beside
    it in the build, with Babel (a build requirement in pyproject.toml): the installed reader loads
    the .mo with the standard library's gettext, no compiler at run time."""

    def run(self):
        super().run()
        from babel.messages.mofile import write_mo
        from babel.messages.pofile import read_po
        for po in Path("device/locale").glob("*/LC_MESSAGES/stripread.po"):
            target = Path(self.build_lib) / po.with_suffix(".mo")
            target.parent.mkdir(parents=True, exist_ok=True)
            with po.open("rb") as source, target.open("wb") as out:
                write_mo(out, read_po(source))

TRAIN = ["scikit-learn>=1.3", "skl2onnx>=1.16", "onnx>=1.14"]
# the wide simulator (simulator/world.py): measured CIE illuminants and camera sensitivities;
# scipy's bounded least squares fits the reagent-dye and card-ink spectra
SIM = ["colour-science>=0.4.4", "scipy>=1.10"]

setup(
    name="stripread",
    # one file, read as it is by device.reading.reader.software_version (no metadata scan at start)
    version=(Path(__file__).parent / "device" / "data" / "version.txt").read_text().strip(),
    description="Camera-based quantitative urine test-strip reader (card colour calibration, ONNX pad models)",
    python_requires=">=3.11",     # tomllib; Raspberry Pi OS Bookworm ships 3.11
    packages=find_packages(include=["device", "device.*", "calibration", "models", "firmware_bridge", "simulator"]),
    package_data={
        "calibration": ["data/cards/*.json", "data/products/*.json", "data/controls/*.toml"],
        "models": ["data/*.json", "data/*.onnx"],
        "device": ["data/*.json", "data/*.toml", "data/version.txt", "web/templates/*.html", "web/static/*",
                   "locale/*/LC_MESSAGES/*.po"],
    },
    install_requires=[
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        # JPEG decoding by libjpeg-turbo in strict mode: a file cut short is refused, not filled in grey
        "simplejpeg>=1.7",
        "onnxruntime>=1.16",
        # the reader's microcontroller link (firmware_bridge): the serial port and its CRC (COBS is
        # written out in firmware_bridge/protocol.py: the `cobs` package has no Linux wheels)
        "pyserial>=3.5",
        "crc>=7.0",
        # lab sync: FHIR R4 resources built and validated by their reference models (R4B module),
        # HL7 v2 messages built, validated and parsed by a full 2.5.1 implementation
        "fhir.resources>=8",
        "hl7apy>=1.3.4",
        # QC's Levey-Jennings charts; imported only when drawing
        "matplotlib>=3.7",
        # the local web interface: an ASGI app with its OpenAPI schema, its server, templates, forms
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "jinja2>=3.1",
        "python-multipart>=0.0.9",
        # the web login's throttle: failed attempts counted per account and per address in moving windows
        "limits>=4",
        # the device key (Ed25519) that signs the result store's chain head (device/store/signing.py)
        "cryptography>=41",
        # dates and numbers as each language writes them (CLDR data); messages are compiled .mo files
        # read by the standard library's gettext, Babel compiles them only in a source checkout
        "Babel>=2.12",
    ],
    extras_require={
        # picamera2 needs libcamera: on Raspberry Pi OS install apt's python3-picamera2 instead
        "pi": ["picamera2"],
        # retraining the pad models (stripread train); reading needs only onnxruntime
        "train": TRAIN + SIM,
        "test": ["pytest>=7", "jsonschema>=4.18", "hypothesis>=6", "trustme>=1.1", "httpx>=0.27", "selenium>=4.20",
                 "schemathesis>=4",   # fuzzes the web API from its OpenAPI schema
                 "import-linter>=2.17"]   # the layering contracts in pyproject.toml (tests/test_layering.py)
        + TRAIN + SIM,
    },
    entry_points={"console_scripts": ["stripread = device.cli.commands:main"]},
    cmdclass={"build_py": BuildWithCatalogues},
)
