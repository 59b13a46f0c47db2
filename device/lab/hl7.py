"""A stored reading as an HL7 v2.5.1 ORU^R01 message, and the MLLP client that delivers it.

MSH, PID (the patient by identifier only: PID-5 carries no name), OBR (the strip panel, LOINC
50556-0) with an NTE carrying the record's device-signed chain head (`device.store.signing`), and one OBX
per pad with its LOINC code, value and UCUM unit, each followed by an NTE with the reader's estimate.
The message control id (MSH-10) and every timestamp come from the stored record, so a resend is the
identical message and the lab's duplicate detection keeps it once.
Built and checked with hl7apy; only the MLLP frame bytes are written by hand.
"""
from __future__ import annotations

import socket
import ssl
from datetime import datetime

from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message
from hl7apy.v2_5_1 import ST

from device.lab.config import Hl7Settings, LabConfig, LabRejected, LabUnavailable, patient_of, tls_failure
from device.lab.messages import PANEL_LOINC, PadMessage, pad_messages
from device.store.signing import seal_line
from device.store.results import StoredResult

START, END = b"\x0b", b"\x1c\x0d"
LOCAL_CODES = "99SRL"      # HL7 table 0396: a local coding system (the product's level codes)


def control_id(record: StoredResult) -> str:
    """MSH-10: the same for every send of one result (20 characters, as older receivers allow)."""
    return record.result_id.replace("-", "")[:20]


def oru_message(record: StoredResult, settings: Hl7Settings, config: LabConfig) -> str:
    """The ORU^R01 for one stored reading, in ER7 (segments separated by carriage returns)."""
    provenance = record.reading.provenance
    patient = patient_of(record.patient_id, config)
    message, patient_result = _oru(settings, config, provenance["device_id"], record.stored_at, control_id(record),
                                   patient)
    order = patient_result.add_group("ORU_R01_ORDER_OBSERVATION")
    obr = order.obr
    obr.obr_1 = "1"
    obr.obr_3.ei_1 = _escaped(record.result_id)
    obr.obr_3.ei_2 = _escaped(provenance["device_id"])
    obr.obr_4 = f"{PANEL_LOINC[0]}^Urinalysis dipstick panel^LN"
    obr.obr_7 = _dtm(provenance["captured_at"])
    obr.obr_22 = _dtm(record.stored_at)
    obr.obr_24 = "URN"
    obr.obr_25 = "F"
    seal = record.seal()
    if seal is not None:             # the lab keeps it: later deletions or rewrites on the device show against it
        order.add_segment("NTE").nte_3 = _escaped(seal_line(seal))
    for number, pad in enumerate(pad_messages(record.reading), start=1):
        _observation(order.add_group("ORU_R01_OBSERVATION"), number, pad, provenance)
    try:
        message.validate()
    except HL7apyException as exc:
        raise LabRejected("the result does not make a valid ORU^R01 message", str(exc)) from None
    return message.to_er7()


def alert_control_id(alert: dict) -> str:
    return alert["alert_id"].replace("-", "")[:20]


def alert_message(alert: dict, settings: Hl7Settings, config: LabConfig) -> str:
    """An alert for the clinic as an ORU^R01: OBR for the alert (filler number = the alert's id,
    parent = the reading that raised it), one TX OBX with the clinic's message, flagged A or AA
    (urgent), and an NTE with what the patient was told to do."""
    message, patient_result = _oru(settings, config, "STRIPREAD", alert["created_at"], alert_control_id(alert),
                                   alert["patient_id"] or config.default_patient)
    order = patient_result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.obr.obr_1 = "1"
    order.obr.obr_3.ei_1 = _escaped(alert["alert_id"])
    order.obr.obr_4 = "ALERT^Home monitoring alert^99SRL"
    order.obr.obr_7 = _dtm(alert["created_at"])
    order.obr.obr_25 = "F"
    observation = order.add_group("ORU_R01_OBSERVATION")
    obx = observation.obx
    obx.obx_1, obx.obx_2 = "1", "TX"
    obx.obx_3 = f"{alert['rule_id']}^{_escaped(alert['title'])}^99SRL"
    obx.obx_5 = _escaped(alert["message"])
    obx.obx_8 = "AA" if alert["severity"] == "urgent" else "A"
    obx.obx_11 = "F"
    observation.add_segment("NTE").nte_3 = _escaped(f"Told to the patient: {alert['advice']} "
                                                   f"Raised by reading {alert['result_id']}.")
    try:
        message.validate()
    except HL7apyException as exc:
        raise LabRejected("the alert does not make a valid ORU^R01 message", str(exc)) from None
    return message.to_er7()


def _oru(settings: Hl7Settings, config: LabConfig, facility: str, at: str, control: str, patient: str):
    """An ORU^R01 with its MSH and the patient's PID (identifier only), and the group the orders go in."""
    message = Message("ORU_R01", version="2.5.1")
    msh = message.msh
    msh.msh_3.hd_1 = _escaped(settings.sending_application)
    msh.msh_4.hd_1 = _escaped(settings.sending_facility or facility)
    msh.msh_5.hd_1 = _escaped(settings.receiving_application)
    msh.msh_6.hd_1 = _escaped(settings.receiving_facility)
    msh.msh_7 = _dtm(at)
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = control
    msh.msh_11 = "P"
    patient_result = message.add_group("ORU_R01_PATIENT_RESULT")
    pid = patient_result.add_group("ORU_R01_PATIENT").pid
    pid.pid_1 = "1"
    pid.pid_3.cx_1 = _escaped(patient)
    _assigning_authority(pid.pid_3.cx_4, config.patient_system)
    pid.pid_3.cx_5 = "MR"
    pid.pid_5.xpn_7 = "U"             # name type "unspecified": the reader never knows the name
    return message, patient_result


def _observation(group, number: int, pad: PadMessage, provenance: dict) -> None:
    obx = group.obx
    obx.obx_1 = str(number)
    obx.obx_3 = f"{pad.loinc}^{_escaped(pad.name)}^LN"
    if pad.level is None:
        obx.obx_11 = "X"                # the result cannot be obtained for this observation
    else:
        if pad.quantitative:
            obx.obx_2, obx.obx_5 = "NM", f"{pad.value:.6f}".rstrip("0").rstrip(".")   # never 1e+06
            obx.obx_6 = f"{pad.unit}^{pad.unit}^UCUM"
        else:
            obx.obx_2 = "CWE"
            local = f"{pad.level}^{pad.level}^{LOCAL_CODES}"
            obx.obx_5 = f"{pad.snomed[0]}^{pad.snomed[1]}^SCT^{local}" if pad.snomed else local
        obx.obx_8 = "A" if pad.abnormal else "N"
        obx.obx_11 = "F"
    obx.obx_14 = _dtm(provenance["captured_at"])
    obx.obx_17.ce_2 = _escaped(f"Camera reflectance reading, {provenance['software']} "
                               f"{provenance['software_version']}, pad model {provenance['model_version']}")
    obx.obx_18.ei_1 = _escaped(provenance["device_id"])
    obx.obx_18.ei_2 = "STRIPREAD"
    group.add_segment("NTE").nte_3 = _escaped(pad.note)


def _assigning_authority(hd, system: str) -> None:
    """The patient identifier's system as HL7 wants it: an OID as `&oid&ISO`, a URI as `&uri&URI`,
    a short local name (up to 20 characters) as the namespace."""
    if system.startswith("urn:oid:"):
        hd.hd_2, hd.hd_3 = _escaped(system[len("urn:oid:"):]), "ISO"
    elif ":" in system:
        hd.hd_2, hd.hd_3 = _escaped(system), "URI"
    else:
        hd.hd_1 = _escaped(system)


def _escaped(text: str) -> str:
    """Free text (a patient id from a QR code, a note) with HL7's delimiters escaped by hl7apy."""
    return ST(text).to_er7()


def _dtm(iso: str) -> str:
    """An ISO 8601 timestamp as HL7 DTM with its offset (YYYYMMDDHHMMSS+ZZZZ)."""
    return datetime.fromisoformat(iso).strftime("%Y%m%d%H%M%S%z")


def parse_ack(text: str) -> tuple[str, str, str]:
    """(MSA-1 code, MSA-2 control id it acknowledges, the error text of MSA-3/ERR)."""
    ack = parse_message(text.strip("\r\n"), find_groups=False)
    msa = ack.msa
    details = [msa.msa_3.to_er7()] + [s.to_er7() for s in ack.children if s.name == "ERR"]
    return msa.msa_1.to_er7(), msa.msa_2.to_er7(), " ".join(filter(None, details))


class MllpDestination:
    """One connection per message (as hl7apy's MLLP server and many LIS expect), over TLS unless
    the configuration allows a plain loopback lab."""

    name = "hl7"

    def __init__(self, settings: Hl7Settings, config: LabConfig):
        self.settings, self.config = settings, config
        self._context = settings.tls.context() if settings.tls else None

    def describe(self) -> str:
        return f"{'mllps' if self._context else 'mllp'}://{self.settings.host}:{self.settings.port}"

    def send(self, record: StoredResult) -> str:
        """Deliver the message and wait for the ACK: AA returns the control id, AE/AR is a
        rejection kept for a person, no ACK is a retry."""
        return self._deliver(oru_message(record, self.settings, self.config), control_id(record))

    def send_alert(self, alert: dict) -> str:
        return self._deliver(alert_message(alert, self.settings, self.config), alert_control_id(alert))

    def _deliver(self, message: str, expected_control_id: str) -> str:
        answer = self._exchange(START + message.encode("utf-8") + END)
        try:
            code, acknowledged, detail = parse_ack(answer.decode("utf-8", "replace"))
        except (HL7apyException, AttributeError, IndexError, KeyError) as exc:
            raise LabUnavailable("the lab's ACK could not be read", str(exc)) from None
        if acknowledged != expected_control_id:
            raise LabUnavailable("the lab acknowledged another message",
                                 f"MSA-2 {acknowledged!r}, expected {expected_control_id!r}")
        if code in ("AA", "CA"):
            return f"MSA|{code}|{acknowledged}"
        if code in ("AE", "AR", "CE", "CR"):
            raise LabRejected(f"the lab answered {code}", detail or f"MSA-1 {code} without a reason")
        raise LabUnavailable(f"the lab answered an unknown acknowledgement code {code!r}", detail)

    def close(self) -> None:
        """Nothing is held between messages."""

    def _exchange(self, frame: bytes) -> bytes:
        host, port, timeout = self.settings.host, self.settings.port, self.settings.timeout_s
        try:
            with socket.create_connection((host, port), timeout=timeout) as raw:
                connection = self._context.wrap_socket(raw, server_hostname=host) if self._context else raw
                with connection:
                    connection.sendall(frame)
                    return _read_frame(connection)
        except ssl.SSLError as exc:
            raise tls_failure(exc, "hl7") from None
        except TimeoutError:
            raise LabUnavailable("no ACK from the lab in time", f"waited {timeout} s") from None
        except OSError as exc:
            raise LabUnavailable(f"cannot reach the lab at {host}:{port}", str(exc)) from None


def _read_frame(connection: socket.socket) -> bytes:
    """Bytes between the MLLP start block and the end block; a closed connection before the end is
    no acknowledgement."""
    data = b""
    while END not in data:
        chunk = connection.recv(4096)
        if not chunk:
            raise LabUnavailable("the lab closed the connection without an ACK", f"received {len(data)} bytes")
        data += chunk
    start = data.find(START)
    return data[start + 1 if start >= 0 else 0:data.index(END)]
