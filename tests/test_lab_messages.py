"""What the reader tells the lab: the FHIR transaction and the HL7 ORU^R01 for a stored reading, read
back with the formats' own libraries; and the lab configuration's checks."""
import dataclasses
import json

import pytest
from fhir.resources.R4B.bundle import Bundle
from hl7apy.parser import parse_message

from device.lab.fhir import transaction
from device.lab.hl7 import control_id, oru_message
from device.lab.config import LabConfig, LabConfigError, LabRefusedReader, LabRejected, Hl7Settings, load_config
from device.store.results import ResultStore
from labdata import ANALYTES, fill

CONFIG = LabConfig(fhir=None, hl7=None, patient_system="urn:oid:2.16.840.1.113883.19.5")
LOINC_TO_CODE = {a["loinc"]: a["analyte"] for a in ANALYTES}
HL7 = Hl7Settings("127.0.0.1", 2575, None, receiving_application="LIS", receiving_facility="LAB")


@pytest.fixture
def record(tmp_path):
    with ResultStore(tmp_path / "r.db") as store:
        return fill(store, 1)[0]


def _resources(bundle: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def test_the_fhir_transaction_is_valid_r4_with_one_observation_per_pad(record):
    bundle = transaction(record, CONFIG)
    Bundle.model_validate(bundle)                                    # the library's own validation
    assert bundle["type"] == "transaction"
    report, = _resources(bundle, "DiagnosticReport")
    observations = _resources(bundle, "Observation")
    assert report["code"]["coding"][0] == {"system": "http://loinc.org", "code": "50556-0",
                                           "display": "Urinalysis dipstick panel - Urine by Automated test strip"}
    assert report["subject"]["identifier"] == {"system": CONFIG.patient_system, "value": "P-000123"}
    assert report["effectiveDateTime"].startswith("2026-11-23T09:15:00")
    assert [o["code"]["coding"][0]["code"] for o in observations] == [a["loinc"] for a in ANALYTES]
    full_urls = {e["resource"]["resourceType"]: e["fullUrl"] for e in bundle["entry"]}
    observation_urls = [e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert [r["reference"] for r in report["result"]] == observation_urls
    assert all(o["device"]["reference"] == full_urls["Device"] for o in observations)
    assert all(e["request"]["method"] == "POST" and e["request"]["ifNoneExist"].startswith("identifier=")
               for e in bundle["entry"])


def test_each_kind_of_pad_is_expressed_as_the_lab_expects(record):
    by_code = {LOINC_TO_CODE[o["code"]["coding"][0]["code"]]: o
               for o in _resources(transaction(record, CONFIG), "Observation")}
    glucose, ph, gravity = by_code["GLU"], by_code["PH"], by_code["SG"]
    assert glucose["valueQuantity"] == {"value": 243.0, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                                        "code": "mg/dL"}
    assert ph["valueQuantity"]["code"] == "[pH]" and ph["valueQuantity"]["value"] == 6.52
    assert gravity["valueQuantity"]["value"] == 1.015                 # four significant figures, not 1.02
    assert glucose["interpretation"][0]["coding"][0]["code"] == "A"
    assert ph["interpretation"][0]["coding"][0]["code"] == "N"
    leukocytes, nitrite, bilirubin = by_code["LEU"], by_code["NIT"], by_code["BIL"]
    assert [c["code"] for c in leukocytes["valueCodeableConcept"]["coding"]] == ["small"]   # no exact SNOMED word
    assert nitrite["valueCodeableConcept"]["coding"][0] == {"system": "http://snomed.info/sct", "code": "10828004",
                                                            "display": "Positive"}
    assert bilirubin["valueCodeableConcept"]["coding"][0]["code"] == "260385009"           # negative
    ketone = by_code["KET"]
    assert not any(key.startswith("value") for key in ketone) and ketone["dataAbsentReason"]["coding"][0]["code"] == "error"
    assert "out of gamut" in ketone["dataAbsentReason"]["text"] and "interpretation" not in ketone
    assert "interval 55-81" in leukocytes["note"][0]["text"]
    assert "low confidence" in gravity["note"][0]["text"]


def test_the_device_names_what_produced_the_result(record):
    device, = _resources(transaction(record, CONFIG), "Device")
    versions = {v["type"]["text"]: v["value"] for v in device["version"]}
    assert versions == {"software": "stripread 0.1.0", "pad model": "pads/2+5a78f2d30610",
                        "reference card": "card-v1", "calibration": "factory"}
    assert device["serialNumber"] == "sr-test0001"
    recalibrated = {**record.result, "provenance": {**record.result["provenance"], "calibration_id": "cal-9"}}
    other, = _resources(transaction(dataclasses.replace(record, result=recalibrated), CONFIG), "Device")
    assert other["identifier"][1] != device["identifier"][1]   # a new configuration is a new Device


def test_a_resend_is_the_identical_transaction(record):
    assert json.dumps(transaction(record, CONFIG)) == json.dumps(transaction(record, CONFIG))


def test_without_a_patient_the_result_is_rejected_unless_the_reader_has_one(tmp_path):
    with ResultStore(tmp_path / "r.db") as store:
        anonymous = fill(store, 1, patient=None)[0]
    with pytest.raises(LabRejected, match="no patient identifier"):
        transaction(anonymous, CONFIG)
    with pytest.raises(LabRejected, match="no patient identifier"):
        oru_message(anonymous, HL7, CONFIG)
    home = LabConfig(fhir=None, hl7=None, default_patient="HOME-1")
    assert _resources(transaction(anonymous, home), "DiagnosticReport")[0]["subject"]["identifier"]["value"] == "HOME-1"


def test_the_oru_message_parses_with_every_pad_coded(record):
    text = oru_message(record, HL7, CONFIG)
    message = parse_message(text, find_groups=True)
    assert message.msh.msh_9.to_er7() == "ORU^R01^ORU_R01" and message.msh.msh_12.to_er7() == "2.5.1"
    assert message.msh.msh_10.to_er7() == control_id(record) and message.msh.msh_5.to_er7() == "LIS"
    patient_result = message.oru_r01_patient_result
    assert patient_result.oru_r01_patient.pid.pid_3.to_er7() == "P-000123^^^&2.16.840.1.113883.19.5&ISO^MR"
    order = patient_result.oru_r01_order_observation
    assert order.obr.obr_4.to_er7().startswith("50556-0^")
    obx = {LOINC_TO_CODE[o.obx.obx_3.ce_1.to_er7()]: o.obx for o in order.oru_r01_observation}
    assert order.oru_r01_observation[-1].obx.obx_3.ce_2.to_er7() == "Glucose"      # the product's name
    assert [o.obx.obx_3.ce_1.to_er7() for o in order.oru_r01_observation] == [a["loinc"] for a in ANALYTES]
    assert (obx["GLU"].obx_2.to_er7(), obx["GLU"].obx_5.to_er7(), obx["GLU"].obx_6.to_er7()) == \
        ("NM", "243", "mg/dL^mg/dL^UCUM")
    assert obx["GLU"].obx_8.to_er7() == "A" and obx["PH"].obx_8.to_er7() == "N"
    assert obx["NIT"].obx_2.to_er7() == "CWE" and obx["NIT"].obx_5.to_er7().startswith("10828004^Positive^SCT")
    assert obx["KET"].obx_11.to_er7() == "X" and obx["KET"].obx_5.to_er7() == ""
    assert obx["LEU"].obx_14.to_er7() == "20261123091500+0000"
    assert obx["LEU"].obx_18.to_er7() == "sr-test0001^STRIPREAD"
    assert "pad model pads/2+5a78f2d30610" in obx["LEU"].obx_17.to_er7()
    assert text == oru_message(record, HL7, CONFIG)                  # a resend is the identical message


def test_hl7_delimiters_in_a_patient_id_are_escaped(tmp_path):
    with ResultStore(tmp_path / "r.db") as store:
        record = fill(store, 1, patient="A|B^C&D")[0]
    pid = parse_message(oru_message(record, HL7, CONFIG), find_groups=True).oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_3.cx_1.to_er7() == r"A\F\B\S\C\T\D"
    assert len(pid.pid_3.children) == 3               # still three components: nothing was split


def _config(tmp_path, text: str):
    path = tmp_path / "lab.toml"
    path.write_text(text)
    return load_config(path)


def test_plain_connections_are_refused_except_to_this_machine_when_allowed(tmp_path, lab_ca):
    with pytest.raises(LabConfigError, match="only over TLS"):
        _config(tmp_path, '[fhir]\nurl = "http://lab.example.org/fhir"\n')
    with pytest.raises(LabConfigError, match="only over TLS"):
        _config(tmp_path, '[lab]\nallow_insecure_loopback = true\n[fhir]\nurl = "http://lab.example.org/fhir"\n')
    with pytest.raises(LabConfigError, match="only over TLS"):
        _config(tmp_path, '[hl7]\nhost = "127.0.0.1"\nport = 2575\ntls = false\n')
    loopback = _config(tmp_path, '[lab]\nallow_insecure_loopback = true\n[fhir]\nurl = "http://127.0.0.1:8080/fhir/"\n'
                                 '[hl7]\nhost = "localhost"\nport = 2575\ntls = false\n')
    assert loopback.fhir.tls is None and loopback.fhir.url == "http://127.0.0.1:8080/fhir" and loopback.hl7.tls is None
    lab_ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    secure = _config(tmp_path, '[fhir]\nurl = "https://lab.example.org/fhir"\nca_file = "ca.pem"\n')
    assert secure.fhir.tls.ca_file == tmp_path / "ca.pem"            # relative to the configuration's folder


@pytest.mark.parametrize("text,message", [
    ('[fhir]\nurl = "https://x/fhir"\ntoken = "abc"\n', "unknown key"),
    ('[fihr]\nurl = "https://x/fhir"\n', "unknown table"),
    ('[lab]\ndefault_patient = "P"\n', "at least one of"),
    ('[hl7]\nport = 2575\n', "needs 'host'"),
    ('[fhir]\nurl = "ftp://x/fhir"\n', "must be an https"),
    ('[fhir\n', "not valid TOML"),
])
def test_a_bad_configuration_names_its_mistake(tmp_path, text, message):
    with pytest.raises(LabConfigError, match=message):
        _config(tmp_path, text)


def test_credentials_are_read_from_their_files(tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "password").write_text("pw")
    bearer = _config(tmp_path, '[fhir]\nurl = "https://x/fhir"\ntoken_file = "token"\n')
    assert bearer.fhir.authorization() == "Bearer s3cret"
    basic = _config(tmp_path, '[fhir]\nurl = "https://x/fhir"\nusername = "reader"\npassword_file = "password"\n')
    assert basic.fhir.authorization() == "Basic cmVhZGVyOnB3"        # base64 of reader:pw
    (tmp_path / "gone").write_text("t")
    missing = _config(tmp_path, '[fhir]\nurl = "https://x/fhir"\ntoken_file = "gone"\n')
    (tmp_path / "gone").unlink()                                    # removed after the reader started
    with pytest.raises(LabRefusedReader, match="cannot read the lab credential file"):
        missing.fhir.authorization()


def test_the_shipped_example_configuration_loads(tmp_path, lab_ca):
    from importlib import resources
    lab_ca.cert_pem.write_to_path(str(tmp_path / "lab-ca.pem"))     # the files it names, as installed
    (tmp_path / "fhir-token").write_text("t")
    example = resources.files("device") / "data" / "lab.example.toml"
    config = _config(tmp_path, example.read_text())
    assert config.fhir.url == "https://lab.example.org/fhir" and config.hl7.port == 2575
    assert config.hl7.tls is not None and config.backoff_max_s == 600
