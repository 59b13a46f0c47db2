"""One photo in, one `stripread.read/1` result out: the calibrated observation of the strip
(`calibration.observe`) through the pad model (`models`), with its QC figures and provenance.

Failures are `ReadError`s with a code from the schema, returned as `status: error` results;
nothing else is expected to escape (the CLI reports it as `internal`).
"""
from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from calibration.correction import DEFAULT_TERMS
from calibration.digest import sha256
from calibration.errors import ReadError
from calibration.observe import StripObserver
from calibration.specs import Card, Pad, Product
from calibration.in_force import ReaderCalibration
from device.reading.result import PadResult, Reading, refused
from models.derived import ratios
from models.pads import PadModel, PadReading

PAD_GLARE_FLAG = 0.05        # pads with more highlight than this (but readable) are flagged `glare`


@lru_cache(maxsize=1)
def software_version() -> str:
    """The version setup.py builds from the same file: asking importlib.metadata instead scanned the
    installed distributions on every cold start (20-50 ms and 4 MB of a `stripread read` here)."""
    return (Path(__file__).parents[1] / "data" / "version.txt").read_text(encoding="ascii").strip()


@lru_cache(maxsize=1)
def device_id() -> str:
    """Stable id of this reader: configured, else derived from the machine id (never a name)."""
    configured = os.environ.get("STRIPREAD_DEVICE_ID")
    if configured:
        return configured
    try:
        with open("/etc/machine-id", encoding="ascii") as fh:
            seed = fh.read().strip()
    except OSError:
        seed = platform.node()
    return "sr-" + sha256(seed.encode()).hexdigest()[:12]


def _finite_or_none(v):
    """Strict JSON (RFC 8259) has no NaN or Infinity: a figure that could not be computed is null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _pad_result(pad: Pad, reading: PadReading, glare: float, saturated: bool) -> PadResult:
    """The model's reading of one pad with what the observation saw of it (glare, saturation)."""
    if glare > PAD_GLARE_FLAG:
        reading.flags.append("glare")
    if saturated:
        reading.flags.append("saturated")
    _keep_finite(reading)
    return PadResult(pad.analyte, pad.loinc, reading.level, reading.value, pad.unit, reading.confidence,
                     tuple(reading.flags), reading.chart_distance_de00, reading.interval)


def _keep_finite(reading: PadReading) -> None:
    """A pad whose model output is not a number is not read (never printed as NaN): it is flagged
    and its level withheld, like any pad the reader cannot vouch for."""
    numbers = [reading.confidence, reading.value, *(reading.interval or ())]
    if all(v is None or math.isfinite(v) for v in numbers):
        return
    reading.level, reading.value, reading.interval, reading.confidence = None, None, None, 0.0
    reading.flags = [f for f in reading.flags if f not in ("abnormal", "low_confidence")] + ["unreadable"]


@dataclass
class Reader:
    """The read path configured with a card, a product, a pad model and the technicians'
    calibration (camera flat field, strip lot); reusable across photos."""
    card: Card
    product: Product
    model: PadModel
    calibration: ReaderCalibration = field(default_factory=ReaderCalibration)
    correction_terms: str = DEFAULT_TERMS
    report_style: str = "conventional"   # how the device shows values (device.language.units): provenance, never the values

    def __post_init__(self):
        ratios(self.product)              # a derived formula the reader cannot compute: refused now
        self._observer = StripObserver(self.card, self.product, self.correction_terms,
                                       flat_field=self.calibration.flat_field)

    def read(self, data: bytes, captured_at: datetime | None = None) -> dict:
        """The `stripread.read/1` object for one photo; errors become `status: error` results."""
        return self.take(data, captured_at, crops=False)[0].to_dict()

    def take(self, data: bytes, captured_at: datetime | None = None,
             crops: bool = True) -> tuple[Reading, dict[str, bytes]]:
        """The reading and, for a stored record, a PNG thumbnail of each pad (none on refusal)."""
        provenance = self._provenance(data, captured_at)
        try:
            self._check_lot(datetime.fromisoformat(provenance["captured_at"]).date())
            observation = self._observer.observe(data, crops=crops)
            if self.calibration.lot is not None:
                observation = self.calibration.lot.apply(observation)
            readings = self.model.read(observation)
        except ReadError as err:
            return refused(err.code, err.message, err.reason, self.product.id, provenance), {}
        pads = tuple(_pad_result(pad, reading, glare, saturated) for pad, reading, glare, saturated
                     in zip(self.product.pads, readings, observation.pad_glare, observation.pad_saturated))
        qc = {k: _finite_or_none(v) for k, v in observation.qc.items()}
        return Reading("ok", self.product.id, pads, qc, provenance, given_product=self.product), observation.crops

    def _check_lot(self, day) -> None:
        """An expired strip lot is refused before anything is read: its dyes are no longer trusted."""
        expires = self.calibration.lot_expires
        if expires is not None and day > expires:
            raise ReadError("wrong_strip", f"These strips (lot {self.calibration.strip_lot}) expired on "
                                           f"{expires.isoformat()}: test with strips from an unexpired bottle.",
                            reason="lot_expired")

    def _provenance(self, data: bytes, captured_at: datetime | None) -> dict:
        now = datetime.now(timezone.utc)
        return {"software": "stripread", "software_version": software_version(),
                "model": self.model.name, "model_version": self.model.version,
                "product": self.product.id, "card": self.card.id, **self.calibration.provenance(),
                "device_id": device_id(), "report_style": self.report_style,
                "captured_at": (captured_at or now).astimezone(timezone.utc).isoformat(timespec="seconds"),
                "read_at": now.isoformat(timespec="seconds"),
                "image_sha256": sha256(data).hexdigest()}
