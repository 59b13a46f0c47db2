"""A stored reading as a FHIR R4 transaction, and the HTTPS client that posts it.

One DiagnosticReport (the strip panel, LOINC 50556-0) with one Observation per pad, and a Device
for the reader in the configuration that produced the reading (software, pad model, card,
calibration). Every entry is a conditional create on a stable identifier derived from the stored
record, so a resend after a crash or a lost answer never duplicates anything at the lab.

The resources are built and validated with `fhir.resources` (its R4B models: the package no longer
carries plain R4, and these four resources are unchanged between R4 and R4B).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import re
import ssl
import uuid
from urllib.parse import urlsplit


from fhir.resources.R4B.annotation import Annotation
from fhir.resources.R4B.bundle import Bundle, BundleEntry, BundleEntryRequest
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.communication import Communication, CommunicationPayload
from fhir.resources.R4B.device import Device, DeviceDeviceName, DeviceVersion
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.extension import Extension
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference
from pydantic import ValidationError

from device.lab.config import (FhirSettings, LabConfig, LabRefusedReader, LabRejected, LabUnavailable, patient_of,
                               tls_failure)
from device.lab.messages import LEVEL_SYSTEM, PANEL_LOINC, PadMessage, conclusion, pad_messages
from device.store.results import StoredResult

LOINC, UCUM, SNOMED_SYSTEM = "http://loinc.org", "http://unitsofmeasure.org", "http://snomed.info/sct"
URI = "urn:ietf:rfc:3986"
DEVICE_SYSTEM, CONFIGURATION_SYSTEM = "urn:stripread:device", "urn:stripread:device-configuration"
RECORD_HASH_SYSTEM = "urn:stripread:record-sha256"
SEAL_EXTENSION = "urn:stripread:chain-seal"     # the device-signed chain head at this record (device.store.signing)
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
SERVICE_SECTION = "http://terminology.hl7.org/CodeSystem/v2-0074"
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


def transaction(record: StoredResult, config: LabConfig) -> dict:
    """The transaction Bundle for one stored reading, as JSON ready to post."""
    reading = record.reading
    provenance = reading.provenance
    patient = Reference(identifier=Identifier(system=config.patient_system,
                                              value=patient_of(record.patient_id, config)))
    device, device_query = _device(provenance)
    device_ref = _urn("device", record.result_id)
    entries = [_entry(device_ref, device, device_query)]
    observation_refs = []
    for pad in pad_messages(reading):
        ref = _urn(pad.analyte, record.result_id)
        observation = _observation(pad, ref, patient, Reference(reference=device_ref), provenance, record)
        entries.append(_entry(ref, observation, f"identifier={URI}|{ref}"))
        observation_refs.append(Reference(reference=ref))
    report_id = f"urn:uuid:{record.result_id}"
    report = DiagnosticReport(
        identifier=[Identifier(system=URI, value=report_id), Identifier(system=RECORD_HASH_SYSTEM, value=record.hash)],
        status="final",
        category=[CodeableConcept(coding=[Coding(system=SERVICE_SECTION, code="URN", display="Urinalysis")])],
        code=CodeableConcept(coding=[Coding(system=LOINC, code=PANEL_LOINC[0], display=PANEL_LOINC[1])],
                             text=f"Urine test strip ({reading.product_id})"),
        subject=patient, effectiveDateTime=provenance["captured_at"], issued=record.stored_at,
        result=observation_refs, conclusion=conclusion(reading), extension=_seal(record))
    entries.append(_entry(report_id, report, f"identifier={URI}|{report_id}"))
    return json.loads(Bundle(type="transaction", entry=entries).model_dump_json(exclude_none=True))


PRIORITY = {"info": "routine", "warning": "urgent", "urgent": "asap"}
ALERT_RULE_SYSTEM = "urn:stripread:alert-rule"
COMMUNICATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"


def alert_transaction(alert: dict, config: LabConfig) -> dict:
    """An alert for the clinic as a Communication (conditional create on the alert's id) about the
    reading's DiagnosticReport and the Observations its rule looked at, by their identifiers."""
    analytes = sorted(set(re.findall(r"[A-Z]{2,}", alert["condition_key"].partition(":")[2])))
    about = [Reference(identifier=Identifier(system=URI, value=f"urn:uuid:{alert['result_id']}"),
                       type="DiagnosticReport")]
    about += [Reference(identifier=Identifier(system=URI, value=_urn(analyte, alert["result_id"])), type="Observation")
              for analyte in analytes]
    identifier = f"urn:uuid:{alert['alert_id']}"
    communication = Communication(
        identifier=[Identifier(system=URI, value=identifier)], status="completed",
        category=[CodeableConcept(coding=[Coding(system=COMMUNICATION_CATEGORY, code="alert")],
                                  text="Home monitoring alert")],
        priority=PRIORITY[alert["severity"]],
        subject=Reference(identifier=Identifier(system=config.patient_system,
                                                value=alert["patient_id"] or config.default_patient)),
        sent=alert["created_at"], about=about,
        reasonCode=[CodeableConcept(coding=[Coding(system=ALERT_RULE_SYSTEM, code=alert["rule_id"])],
                                    text=alert["title"])],
        payload=[CommunicationPayload(contentString=f"{alert['title']}. {alert['message']}")])
    bundle = Bundle(type="transaction", entry=[_entry(identifier, communication, f"identifier={URI}|{identifier}")])
    return json.loads(bundle.model_dump_json(exclude_none=True))


def _seal(record: StoredResult) -> list[Extension] | None:
    """The record's signed chain head: the lab keeps it, so records deleted or rewritten on the
    device later show against it (checked with the key `stripread verify --export-key` prints)."""
    seal = record.seal()
    if seal is None:
        return None
    kinds = {"key": "valueString", "count": "valueInteger", "seq": "valueInteger", "sha256": "valueString",
             "signature": "valueBase64Binary"}
    return [Extension(url=SEAL_EXTENSION, extension=[Extension(url=name, **{kinds[name]: value})
                                                     for name, value in seal.items()])]


def _urn(name: str, result_id: str) -> str:
    """A stable URN per resource of a result: the same on every resend."""
    return f"urn:uuid:{uuid.uuid5(uuid.UUID(result_id), name)}"


def _entry(full_url: str, resource, if_none_exist: str) -> BundleEntry:
    return BundleEntry(fullUrl=full_url, resource=resource,
                       request=BundleEntryRequest(method="POST", url=resource.get_resource_type(),
                                                  ifNoneExist=if_none_exist))


def _device(provenance: dict) -> tuple[Device, str]:
    """The reader in one configuration: a new software, model, card or calibration is a new Device
    resource (same serial number), so every Observation points at exactly what produced it."""
    versions = {"software": f"{provenance['software']} {provenance['software_version']}",
                "pad model": provenance["model_version"], "reference card": provenance["card"],
                "calibration": provenance["calibration_id"]}
    configuration = hashlib.sha256(json.dumps([provenance["device_id"], versions], sort_keys=True).encode())
    configuration_id = f"{provenance['device_id']}/{configuration.hexdigest()[:16]}"
    device = Device(
        identifier=[Identifier(system=DEVICE_SYSTEM, value=provenance["device_id"]),
                    Identifier(system=CONFIGURATION_SYSTEM, value=configuration_id)],
        status="active", serialNumber=provenance["device_id"], manufacturer="stripread",
        deviceName=[DeviceDeviceName(name="stripread urine test-strip reader", type="model-name")],
        version=[DeviceVersion(type=CodeableConcept(text=kind), value=str(value)) for kind, value in versions.items()])
    return device, f"identifier={CONFIGURATION_SYSTEM}|{configuration_id}"


def _observation(pad: PadMessage, ref: str, patient: Reference, device: Reference, provenance: dict,
                 record: StoredResult) -> Observation:
    fields: dict = {}
    if pad.level is None:
        fields["dataAbsentReason"] = CodeableConcept(coding=[Coding(system=ABSENT, code="error", display="Error")],
                                                     text=pad.note)
    elif pad.quantitative:
        fields["valueQuantity"] = Quantity(value=pad.value, unit=pad.unit, system=UCUM, code=pad.unit)
    else:
        coding = [Coding(system=LEVEL_SYSTEM, code=pad.level, display=pad.level)]
        if pad.snomed:
            coding.insert(0, Coding(system=SNOMED_SYSTEM, code=pad.snomed[0], display=pad.snomed[1]))
        fields["valueCodeableConcept"] = CodeableConcept(coding=coding, text=pad.level)
    if pad.level is not None:
        code, display = ("A", "Abnormal") if pad.abnormal else ("N", "Normal")
        fields["interpretation"] = [CodeableConcept(coding=[Coding(system=INTERPRETATION, code=code,
                                                                   display=display)])]
    if pad.derived_from:
        fields["derivedFrom"] = [Reference(reference=_urn(source, record.result_id)) for source in pad.derived_from]
    return Observation(
        identifier=[Identifier(system=URI, value=ref)], status="final",
        category=[CodeableConcept(coding=[Coding(system=OBSERVATION_CATEGORY, code="laboratory")])],
        code=CodeableConcept(coding=[Coding(system=LOINC, code=pad.loinc)], text=pad.name),
        subject=patient, effectiveDateTime=provenance["captured_at"], issued=record.stored_at, device=device,
        method=CodeableConcept(text=f"Camera reflectance reading of a {provenance['product']} strip"),
        note=[Annotation(text=pad.note)], **fields)


class FhirDestination:
    """Posts transactions to one FHIR base URL over one kept-alive HTTPS connection."""

    name = "fhir"

    def __init__(self, settings: FhirSettings, config: LabConfig):
        self.settings, self.config = settings, config
        parts = urlsplit(settings.url)
        self._host, self._port, self._path = parts.hostname, parts.port, parts.path or "/"
        self._context = settings.tls.context() if settings.tls else None
        self._connection: http.client.HTTPConnection | None = None

    def describe(self) -> str:
        return self.settings.url

    def send(self, record: StoredResult) -> str:
        """Post the record; return the lab's location of its DiagnosticReport."""
        return self._post_bundle(lambda: transaction(record, self.config))

    def send_alert(self, alert: dict) -> str:
        """Post an alert; return the clinic's location of its Communication."""
        return self._post_bundle(lambda: alert_transaction(alert, self.config))

    def _post_bundle(self, build) -> str:
        try:
            body = json.dumps(build()).encode("utf-8")
        except ValidationError as exc:
            raise LabRejected("the result does not make valid FHIR resources", str(exc)) from None
        headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
        authorization = self.settings.authorization()
        if authorization:
            headers["Authorization"] = authorization
        status, reason, retry_after, answer = self._post(body, headers)
        if status in (401, 403):
            raise LabRefusedReader(f"the lab refused the reader's credentials (HTTP {status}): check [fhir]"
                                   " token_file / username in the lab configuration", _diagnostics(answer))
        if status in _TRANSIENT_STATUS:
            raise LabUnavailable(f"the lab answered HTTP {status} {reason}", _diagnostics(answer),
                                 _seconds(retry_after))
        if status != 200:
            raise LabRejected(f"the lab rejected the result (HTTP {status})", _diagnostics(answer))
        return _report_location(answer)

    def _post(self, body: bytes, headers: dict) -> tuple[int, str, str | None, bytes]:
        """One POST on the kept-alive connection; a connection the lab closed meanwhile is reopened
        once (the resend is harmless: every entry is a conditional create)."""
        for attempt in (1, 2):
            reused = self._connection is not None
            try:
                connection = self._connection or self._connect()
                connection.request("POST", self._path, body, headers)
                response = connection.getresponse()
                answer = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return response.status, response.reason, response.getheader("Retry-After"), answer
            except ssl.SSLError as exc:
                self.close()
                raise tls_failure(exc, "fhir") from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if not reused or attempt == 2:
                    raise LabUnavailable("the lab closed the connection without an answer", str(exc)) from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise LabUnavailable(f"cannot reach the lab at {self._host}:{self._port}", str(exc)) from None
        raise AssertionError("unreachable")

    def _connect(self) -> http.client.HTTPConnection:
        timeout = self.settings.timeout_s
        if self._context is None:
            self._connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        else:
            self._connection = http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                                           context=self._context)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _diagnostics(answer: bytes) -> str:
    """What an OperationOutcome says, else the start of the body."""
    try:
        outcome = json.loads(answer)
        return "; ".join(i.get("diagnostics") or i.get("details", {}).get("text", "") for i in outcome["issue"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return answer[:300].decode("utf-8", "replace")


def _seconds(retry_after: str | None) -> float | None:
    try:
        return float(retry_after) if retry_after else None
    except ValueError:
        return None     # an HTTP date: fall back to our own backoff


def _report_location(answer: bytes) -> str:
    try:
        entries = json.loads(answer)["entry"]
        statuses = [e["response"]["status"] for e in entries]
        location = entries[-1]["response"].get("location", "")
    except (ValueError, KeyError, TypeError, IndexError):
        raise LabRejected("the lab's answer is not a transaction-response Bundle",
                          answer[:300].decode("utf-8", "replace")) from None
    if not all(s.startswith(("200", "201")) for s in statuses):
        raise LabRejected("the lab did not accept every entry", ", ".join(statuses))
    return location or "accepted"
