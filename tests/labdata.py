"""A stored reading as the lab-sync tests need it: every kind of pad a lab message must express."""
from device.store.results import ResultStore

PROVENANCE = {"calibration_id": "factory", "captured_at": "2026-11-23T09:15:00+00:00", "card": "card-v1",
              "device_id": "sr-test0001", "image_sha256": "ab" * 32, "model": "onnx",
              "model_version": "pads/2+5a78f2d30610", "product": "generic-10", "read_at": "2026-11-23T09:15:01+00:00",
              "software": "stripread", "software_version": "0.1.0"}
ANALYTES = [
    {"analyte": "LEU", "loinc": "5799-2", "unit": "Leu/uL", "level": "small", "value": 68.2,
     "value_interval": [55.0, 81.0], "confidence": 0.91, "flags": ["abnormal"]},
    {"analyte": "NIT", "loinc": "5802-4", "unit": None, "level": "pos", "value": None, "confidence": 0.97,
     "flags": ["abnormal"]},
    {"analyte": "PH", "loinc": "5803-2", "unit": "[pH]", "level": "6.5", "value": 6.52,
     "value_interval": [6.4, 6.6], "confidence": 0.88, "flags": []},
    {"analyte": "SG", "loinc": "5811-5", "unit": "{SG}", "level": "1.015", "value": 1.0153,
     "value_interval": [1.012, 1.018], "confidence": 0.8, "flags": ["low_confidence"]},
    {"analyte": "KET", "loinc": "5797-6", "unit": "mg/dL", "level": None, "value": None, "confidence": 0.0,
     "flags": ["out_of_gamut"]},
    {"analyte": "BIL", "loinc": "5770-3", "unit": "mg/dL", "level": "neg", "value": 0.02,
     "value_interval": [0.0, 0.1], "confidence": 0.99, "flags": []},
    {"analyte": "GLU", "loinc": "5792-7", "unit": "mg/dL", "level": "250", "value": 243.7,
     "value_interval": [220.0, 266.0], "confidence": 0.93, "flags": ["abnormal"]},
]
RESULT = {"schema": "stripread.read/1", "status": "ok", "product": "generic-10", "analytes": ANALYTES,
          "provenance": PROVENANCE, "qc": {"color_residual_de00": 1.1}}


def fill(store: ResultStore, n: int, patient: str | None = "P-000123") -> list:
    """n readings of one patient (each distinct by its glucose estimate), stored and queued."""
    records = []
    for i in range(n):
        analytes = [dict(a, value=243.0 + i) if a["analyte"] == "GLU" else a for a in ANALYTES]
        records.append(store.add({**RESULT, "analytes": analytes}, patient_id=patient, operator_id="nurse-7"))
    return records
