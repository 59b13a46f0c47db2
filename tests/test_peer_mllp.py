"""The loopback laboratory the lab link is tested against: it must answer like a strict LIS, or those tests prove
nothing. A tiny MLLP client here, independent of the reader's."""
from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

from simulator.lab_mllp import MllpPeer, observations

START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\r"


def urinalysis(control_id: str = "SR000001", *, version: str = "2.5.1") -> Message:
    """An ORU^R01 as the reader sends it: a patient, the dipstick panel order, one NM and one CWE observation."""
    message = Message("ORU_R01", version=version, validation_level=VALIDATION_LEVEL.STRICT)
    message.msh.msh_3 = "STRIPREAD"
    message.msh.msh_4 = "WARD7"
    message.msh.msh_5 = "LIS"
    message.msh.msh_6 = "CENTRAL-LAB"
    message.msh.msh_9 = "ORU^R01^ORU_R01"
    message.msh.msh_10 = control_id
    message.msh.msh_11 = "P"
    patient_result = message.add_group("ORU_R01_PATIENT_RESULT")
    patient = patient_result.add_group("ORU_R01_PATIENT")
    patient.pid.pid_3 = "P-0042^^^WARD7^MR"
    patient.pid.pid_5 = "DOE^JANE"
    order = patient_result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.obr.obr_1 = "1"
    order.obr.obr_4 = "50556-0^Urinalysis dipstick panel^LN"
    for set_id, value_type, code, value, unit in (
            ("1", "NM", "5803-2^pH of Urine by Test strip^LN", "6.5", "[pH]^pH^UCUM"),
            ("2", "CWE", "5804-0^Protein [Mass/volume] in Urine by Test strip^LN", "2+^2+^L", "mg/dL^mg/dL^UCUM")):
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1, obx.obx_2, obx.obx_3, obx.obx_5, obx.obx_6, obx.obx_11 = set_id, value_type, code, value, unit, "F"
    return message


def exchange(peer: MllpPeer, er7: str, *, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> bytes:
    """Send one framed message on a new connection and read up to the end block; b"" if the peer hangs up."""
    with socket.create_connection((peer.host, peer.port), timeout=timeout) as plain:
        with context.wrap_socket(plain, server_hostname="localhost") if context else plain as connection:
            connection.sendall(START_BLOCK + er7.encode() + END_BLOCK)
            reply = b""
            while not reply.endswith(END_BLOCK):
                chunk = connection.recv(4096)
                if not chunk:
                    break
                reply += chunk
            return reply


def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the peer never got there"
        time.sleep(0.01)


def ack_of(reply: bytes) -> Message:
    assert reply.startswith(START_BLOCK) and reply.endswith(END_BLOCK), reply
    return parse_message(reply[1:-2].decode(), validation_level=VALIDATION_LEVEL.STRICT)


def error_code(ack: Message) -> str:
    return ack.err.err_3.cwe_1.to_er7()


@pytest.fixture
def peer():
    with MllpPeer() as running:
        yield running


def test_a_result_is_acknowledged_aa_addressed_back_and_stored_readable(peer):
    sent = urinalysis("SR000001").to_er7()
    ack = ack_of(exchange(peer, sent))

    assert ack.validate()  # hl7apy's strict 2.5.1 ACK structure, required fields included
    assert (ack.msa.msa_1.to_er7(), ack.msa.msa_2.to_er7()) == ("AA", "SR000001")
    assert [ack.msh.msh_3.to_er7(), ack.msh.msh_4.to_er7(), ack.msh.msh_5.to_er7(), ack.msh.msh_6.to_er7()] == \
        ["LIS", "CENTRAL-LAB", "STRIPREAD", "WARD7"]
    assert (ack.msh.msh_9.to_er7(), ack.msh.msh_12.to_er7()) == ("ACK^R01^ACK", "2.5.1")
    assert ack.msh.msh_10.to_er7() not in ("", "SR000001")
    assert not ack.children.get("ERR")

    assert peer.raw == [sent]
    [stored] = peer.messages
    assert stored.oru_r01_patient_result.oru_r01_patient.pid.pid_3.cx_1.to_er7() == "P-0042"
    assert stored.oru_r01_patient_result.oru_r01_order_observation.obr.obr_4.ce_1.to_er7() == "50556-0"
    assert [(obx.obx_3.ce_1.to_er7(), obx.obx_2.to_er7(), obx.obx_5.to_er7(), obx.obx_6.ce_1.to_er7())
            for obx in observations(stored)] == [("5803-2", "NM", "6.5", "[pH]"), ("5804-0", "CWE", "2+^2+^L", "mg/dL")]
    assert (peer.stats["received"], peer.stats["stored"], peer.stats["AA"]) == (1, 1, 1)


def test_a_resent_result_is_acknowledged_again_but_stored_once(peer):
    sent = urinalysis("SR000002").to_er7()
    first, again = ack_of(exchange(peer, sent)), ack_of(exchange(peer, sent))

    assert [ack.msa.msa_1.to_er7() for ack in (first, again)] == ["AA", "AA"]
    assert again.msa.msa_2.to_er7() == "SR000002"
    assert first.msh.msh_10.to_er7() != again.msh.msh_10.to_er7()
    assert len(peer.messages) == 1 and len(peer.raw) == 2
    assert (peer.stats["stored"], peer.stats["duplicates"]) == (1, 1)


@pytest.mark.parametrize("how", ["AE", "AR"])
def test_commanded_refusals_answer_with_err_and_store_nothing_then_normal_answers_resume(peer, how):
    peer.answer_next(2, how)
    acks = [ack_of(exchange(peer, urinalysis(f"SR00001{n}").to_er7())) for n in range(3)]

    assert [ack.msa.msa_1.to_er7() for ack in acks] == [how, how, "AA"]
    assert [ack.msa.msa_2.to_er7() for ack in acks] == ["SR000010", "SR000011", "SR000012"]
    refused = acks[0]
    assert refused.msa.msa_3.to_er7() and error_code(refused) == "207" and refused.err.err_4.to_er7() == "E"
    assert [message.msh.msh_10.to_er7() for message in peer.messages] == ["SR000012"]
    assert peer.stats[how] == 2 and peer.stats["unparseable"] == 0


def test_a_dropped_message_gets_no_ack_and_is_not_stored(peer):
    peer.answer_next(1, "drop")

    assert exchange(peer, urinalysis("SR000020").to_er7()) == b""
    assert peer.messages == [] and len(peer.raw) == 1 and peer.stats["dropped"] == 1
    assert ack_of(exchange(peer, urinalysis("SR000020").to_er7())).msa.msa_1.to_er7() == "AA"


def test_a_silent_peer_keeps_the_client_waiting_until_it_gives_up(peer):
    peer.answer_next(1, "silent")

    with pytest.raises(TimeoutError):
        exchange(peer, urinalysis("SR000030").to_er7(), timeout=0.3)
    assert peer.messages == [] and peer.stats["silent"] == 1
    assert ack_of(exchange(peer, urinalysis("SR000031").to_er7())).msa.msa_1.to_er7() == "AA"


def test_a_late_ack_follows_storage_so_a_resend_after_giving_up_is_a_duplicate(peer):
    peer.set_delay(1.0)
    with pytest.raises(TimeoutError):
        exchange(peer, urinalysis("SR000040").to_er7(), timeout=0.3)
    assert len(peer.messages) == 1  # already stored while the client was still waiting

    peer.set_delay(0)
    assert ack_of(exchange(peer, urinalysis("SR000040").to_er7())).msa.msa_1.to_er7() == "AA"
    assert (len(peer.messages), peer.stats["duplicates"]) == (1, 1)


def _replace_segment(er7: str, prefix: str, replacement: str | None) -> str:
    segments = [replacement if segment.startswith(prefix) else segment for segment in er7.split("\r")]
    return "\r".join(segment for segment in segments if segment is not None)


def _swap_obr_and_first_obx(er7: str) -> str:
    segments = er7.split("\r")
    obr = next(i for i, segment in enumerate(segments) if segment.startswith("OBR"))
    segments[obr], segments[obr + 1] = segments[obr + 1], segments[obr]
    return "\r".join(segments)


GOOD = urinalysis("SR000050").to_er7()
FAULTY = {
    "not HL7": ("hello lab", "AR", "100"),
    "not a result": (GOOD.replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01"), "AR", "200"),
    "other version": (urinalysis("SR000050", version="2.4").to_er7(), "AR", "203"),
    "no control id": (GOOD.replace("|SR000050|", "||"), "AE", "101"),
    "no PID": (_replace_segment(GOOD, "PID", None), "AE", "100"),
    "no OBX": (_replace_segment(GOOD, "OBX", None), "AE", "100"),
    "OBX before OBR": (_swap_obr_and_first_obx(GOOD), "AE", "100"),
    "unknown segment": (_replace_segment(GOOD, "PID", "XYZ|1"), "AE", "100"),
    "NM not a number": (GOOD.replace("||6.5|", "||six|"), "AE", "102"),
    "required field missing": (_replace_segment(GOOD, "PID", "PID|||P-0042^^^WARD7^MR"), "AE", "101"),
}


@pytest.mark.parametrize("er7, code, error", FAULTY.values(), ids=FAULTY.keys())
def test_faulty_messages_are_refused_with_a_readable_reason(peer, er7, code, error):
    ack = ack_of(exchange(peer, er7))

    assert ack.msa.msa_1.to_er7() == code and error_code(ack) == error
    assert ack.msa.msa_3.to_er7() and ack.err.err_8.to_er7()
    assert peer.messages == [] and peer.raw == [er7]
    assert peer.stats["unparseable"] == 1 and peer.stats[code] == 1


def test_a_refusal_is_still_addressed_to_the_sender_and_quotes_its_control_id(peer):
    ack = ack_of(exchange(peer, GOOD.replace("||6.5|", "||six|")))

    assert (ack.msh.msh_5.to_er7(), ack.msa.msa_2.to_er7()) == ("STRIPREAD", "SR000050")


@pytest.fixture(scope="module")
def server_certificate(lab_ca):
    return lab_ca.issue_cert("127.0.0.1", "localhost")


def _server_context(certificate, lab_ca, *, client_certificates: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(context)
    if client_certificates:
        lab_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _client_context(lab_ca, certificate=None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    lab_ca.configure_trust(context)
    if certificate is not None:
        certificate.configure_cert(context)
    return context


def test_tls_results_are_acknowledged_and_a_plain_client_does_not_break_the_server(lab_ca, server_certificate):
    with MllpPeer(tls=_server_context(server_certificate, lab_ca, client_certificates=False)) as peer:
        assert exchange(peer, GOOD) == b""  # plain MLLP to a TLS port: the handshake fails, no message
        ack = ack_of(exchange(peer, GOOD, context=_client_context(lab_ca)))

    assert ack.msa.msa_1.to_er7() == "AA" and len(peer.messages) == 1
    assert peer.raw == [GOOD] and peer.stats["connection_errors"] == 1


def test_tls_with_required_client_certificates_refuses_a_client_without_one(lab_ca, server_certificate):
    reader_certificate = lab_ca.issue_cert("stripread-reader")
    with MllpPeer(tls=_server_context(server_certificate, lab_ca, client_certificates=True)) as peer:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            exchange(peer, GOOD, context=_client_context(lab_ca))
        ack = ack_of(exchange(peer, GOOD, context=_client_context(lab_ca, reader_certificate)))

    assert ack.msa.msa_1.to_er7() == "AA"
    assert peer.raw == [GOOD] and len(peer.messages) == 1


def test_going_down_refuses_connections_and_coming_up_keeps_the_data_and_port(peer):
    exchange(peer, urinalysis("SR000060").to_er7())
    port = peer.port

    peer.go_down()
    with pytest.raises(ConnectionRefusedError):
        exchange(peer, urinalysis("SR000061").to_er7())

    peer.come_up()
    assert peer.port == port
    assert ack_of(exchange(peer, urinalysis("SR000061").to_er7())).msa.msa_1.to_er7() == "AA"
    assert [message.msh.msh_10.to_er7() for message in peer.messages] == ["SR000060", "SR000061"]


def test_going_down_hangs_up_on_a_client_waiting_for_its_ack(peer):
    peer.answer_next(1, "silent")
    with socket.create_connection((peer.host, peer.port), timeout=2.0) as connection:
        connection.sendall(START_BLOCK + GOOD.encode() + END_BLOCK)
        wait_until(lambda: peer.stats["silent"] == 1)
        peer.go_down()
        assert connection.recv(4096) == b""
