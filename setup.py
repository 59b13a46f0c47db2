"""stripread: a quantitative urine test-strip reader for Raspberry Pi-class devices."""
from setuptools import setup

TRAIN = ["scikit-learn>=1.3", "skl2onnx>=1.16", "onnx>=1.14"]

setup(
    name="stripread",
    version="0.1.0",
    description="Camera-based quantitative urine test-strip reader (card colour calibration, ONNX pad models)",
    python_requires=">=3.11",     # tomllib; Raspberry Pi OS Bookworm ships 3.11
    packages=["device", "device.web", "calibration", "models", "firmware_bridge", "simulator"],
    package_data={
        "calibration": ["data/cards/*.json", "data/products/*.json", "data/controls/*.toml"],
        "models": ["data/*.json", "data/*.onnx"],
        "device": ["data/*.json", "data/*.toml", "web/templates/*.html", "web/static/*"],
    },
    install_requires=[
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
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
    ],
    extras_require={
        # picamera2 needs libcamera: on Raspberry Pi OS install apt's python3-picamera2 instead
        "pi": ["picamera2"],
        # retraining the pad models (stripread train); reading needs only onnxruntime
        "train": TRAIN,
        "test": ["pytest>=7", "jsonschema>=4.18", "hypothesis>=6", "trustme>=1.1", "httpx>=0.27", "selenium>=4.20"]
        + TRAIN,
    },
    entry_points={"console_scripts": ["stripread = device.cli:main"]},
)
