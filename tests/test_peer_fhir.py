"""The loopback FHIR lab peer behaves like a real FHIR server, so lab-sync tests against it mean something."""
from __future__ import annotations

import base64
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from http.client import HTTPConnection, HTTPMessage, HTTPSConnection
from typing import Any, Callable, Iterator
from urllib.parse import quote, urlsplit

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome

from simulator.lab_fhir import BASE_PATH, FHIR_JSON, FhirPeer

SYSTEM = "urn:stripread:test"

Answer = tuple[int, HTTPMessage, dict]


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def conditional(full_url: str, resource: dict) -> dict:
    """A transaction entry creating `resource` unless one with its first identifier exists."""
    identifier = resource["identifier"][0]
    return {"fullUrl": full_url, "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"],
                        "ifNoneExist": f"identifier={identifier['system']}|{identifier['value']}"}}


def reading_bundle(reading: str = "r1", analytes: tuple[str, ...] = ("pH", "GLU")) -> dict:
    """What the reader sends for one reading: its device, the report and one observation per pad."""
    device_url, report_url = urn(), urn()
    observation_urls = [urn() for _ in analytes]
    device = {"resourceType": "Device", "identifier": [{"system": SYSTEM, "value": "reader-1"}]}
    report = {"resourceType": "DiagnosticReport", "identifier": [{"system": SYSTEM, "value": reading}],
              "status": "final", "code": {"text": "urinalysis"},
              "result": [{"reference": url} for url in observation_urls]}
    observations = [{"resourceType": "Observation", "identifier": [{"system": SYSTEM, "value": f"{reading}-{analyte}"}],
                     "status": "final", "code": {"text": analyte}, "valueQuantity": {"value": 6.5},
                     "device": {"reference": device_url}} for analyte in analytes]
    return {"resourceType": "Bundle", "type": "transaction",
            "entry": [conditional(device_url, device), conditional(report_url, report)]
            + [conditional(url, observation) for url, observation in zip(observation_urls, observations)]}


def connect(peer: FhirPeer, context: ssl.SSLContext | None = None, timeout: float = 5.0) -> HTTPConnection:
    url = urlsplit(peer.url)
    if url.scheme == "https":
        return HTTPSConnection(url.hostname, url.port, timeout=timeout, context=context)
    return HTTPConnection(url.hostname, url.port, timeout=timeout)


def send(connection: HTTPConnection, method: str, path: str = "", document: Any = None,
         headers: dict[str, str] | None = None) -> Answer:
    body = None if document is None else json.dumps(document).encode()
    connection.request(method, BASE_PATH + path, body=body, headers={"Content-Type": FHIR_JSON, **(headers or {})})
    response = connection.getresponse()
    return response.status, response.headers, json.loads(response.read())


def call(peer: FhirPeer, method: str = "POST", path: str = "", document: Any = None, *,
         headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None, timeout: float = 5.0) -> Answer:
    with closing(connect(peer, context, timeout)) as connection:
        return send(connection, method, path, document, headers)


def locations(response_bundle: dict) -> list[str]:
    return [entry["response"]["location"] for entry in response_bundle["entry"]]


@pytest.fixture
def peer() -> Iterator[FhirPeer]:
    with FhirPeer() as running:
        yield running


def test_a_transaction_is_stored_with_its_references_pointing_at_the_stored_resources(peer):
    bundle = reading_bundle()

    status, headers, answer = call(peer, document=bundle)

    assert status == 200 and headers["Content-Type"].startswith(FHIR_JSON)
    Bundle.model_validate(answer)
    assert answer["type"] == "transaction-response"
    assert [entry["response"]["status"] for entry in answer["entry"]] == ["201 Created"] * 4
    (device,), (report,) = peer.resources("Device"), peer.resources("DiagnosticReport")
    observations = peer.resources("Observation")
    assert locations(answer) == [f"{r['resourceType']}/{r['id']}/_history/1" for r in [device, report, *observations]]
    assert report["result"] == [{"reference": f"Observation/{o['id']}"} for o in observations]
    assert {o["device"]["reference"] for o in observations} == {f"Device/{device['id']}"}
    assert [o["code"]["text"] for o in observations] == ["pH", "GLU"]
    assert report["meta"]["versionId"] == "1" and report["meta"]["lastUpdated"]
    assert peer.stats["created"] == 4 and peer.bundles == [bundle]


def test_resending_the_same_bundle_creates_nothing_and_answers_the_same_locations(peer):
    bundle = reading_bundle()
    first = call(peer, document=bundle)[2]

    status, _, second = call(peer, document=bundle)

    assert status == 200
    assert [entry["response"]["status"] for entry in second["entry"]] == ["200 OK"] * 4
    assert locations(second) == locations(first)
    assert len(peer.resources("Observation")) == 2 and peer.stats["matched"] == 4
    assert len(peer.bundles) == 2


def test_the_next_reading_reuses_the_stored_device(peer):
    call(peer, document=reading_bundle("r1"))

    answer = call(peer, document=reading_bundle("r2"))[2]

    assert [entry["response"]["status"] for entry in answer["entry"]] == ["200 OK"] + ["201 Created"] * 3
    device_reference = f"Device/{peer.resources('Device')[0]['id']}"
    assert {o["device"]["reference"] for o in peer.resources("Observation")} == {device_reference}


@pytest.mark.parametrize("criteria", [f"identifier={quote(SYSTEM + '|reader-1', safe='')}", "identifier=reader-1"],
                         ids=["url-encoded", "value-in-any-system"])
def test_if_none_exist_may_be_url_encoded_or_name_only_the_value(peer, criteria):
    call(peer, document=reading_bundle())
    bundle = reading_bundle("r2")
    bundle["entry"][0]["request"]["ifNoneExist"] = criteria

    answer = call(peer, document=bundle)[2]

    assert answer["entry"][0]["response"]["status"] == "200 OK" and len(peer.resources("Device")) == 1


def test_a_conditional_create_matches_a_resource_created_earlier_in_the_same_transaction(peer):
    bundle = reading_bundle(analytes=("pH", "pH"))

    answer = call(peer, document=bundle)[2]

    assert [entry["response"]["status"] for entry in answer["entry"]][2:] == ["201 Created", "200 OK"]
    (observation,) = peer.resources("Observation")
    assert peer.resources("DiagnosticReport")[0]["result"] == [{"reference": f"Observation/{observation['id']}"}] * 2


def test_a_condition_matching_several_resources_fails_the_whole_transaction_with_412(peer):
    device = {"resourceType": "Device", "identifier": [{"system": SYSTEM, "value": "reader-1"}]}
    twice = {"resourceType": "Bundle", "type": "transaction",
             "entry": [{"resource": device, "request": {"method": "POST", "url": "Device"}}] * 2}
    assert call(peer, document=twice)[0] == 200

    status, _, outcome = call(peer, document=reading_bundle())

    assert status == 412 and outcome["issue"][0]["code"] == "multiple-matches"
    assert peer.resources("Observation") == [] and len(peer.resources("Device")) == 2


def test_concurrent_transactions_create_the_shared_device_once(peer):
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda n: call(peer, document=reading_bundle(f"r{n}"))[0], range(16)))

    assert statuses == [200] * 16
    assert len(peer.resources("Device")) == 1 and len(peer.resources("DiagnosticReport")) == 16


def drop(key: str, position: int = 2) -> Callable[[dict], None]:
    return lambda bundle: bundle["entry"][position]["resource"].pop(key)


def set_field(key: str, value: Any, position: int = 2) -> Callable[[dict], None]:
    return lambda bundle: bundle["entry"][position]["resource"].update({key: value})


@pytest.mark.parametrize("spoil, named", [
    (drop("status"), "status"),
    (drop("code"), "code"),
    (set_field("resourceType", "Nope"), "Nope"),
    (set_field("valueQuantity", {"value": "six"}), "valueQuantity"),
    (set_field("result", [{"reference": "urn:uuid:0"}], position=1), "urn:uuid:0"),
    (lambda bundle: bundle.update(type="batch"), "transaction"),
    (lambda bundle: bundle.update(resourceType="Parameters"), "Bundle"),
    (lambda bundle: bundle["entry"][2]["request"].update(url="DiagnosticReport"), "POST"),
], ids=["no-status", "no-code", "unknown-type", "bad-decimal", "dangling-reference", "batch", "not-a-bundle",
        "url-mismatch"])
def test_an_invalid_transaction_is_refused_with_400_and_nothing_is_stored(peer, spoil, named):
    bundle = reading_bundle()
    spoil(bundle)

    status, _, outcome = call(peer, document=bundle)

    assert status == 400
    OperationOutcome.model_validate(outcome)
    assert named in outcome["issue"][0]["diagnostics"]
    assert [peer.resources(kind) for kind in ("Device", "DiagnosticReport", "Observation")] == [[], [], []]
    assert peer.stats["invalid"] == 1 and peer.stats["created"] == 0


def test_a_body_that_is_not_fhir_json_is_refused(peer):
    with closing(connect(peer)) as connection:
        connection.request("POST", BASE_PATH, body=b"{not json", headers={"Content-Type": FHIR_JSON})
        response = connection.getresponse()
        assert response.status == 400 and "JSON" in json.loads(response.read())["issue"][0]["diagnostics"]
        connection.request("POST", BASE_PATH, body=json.dumps(reading_bundle()), headers={"Content-Type": "text/plain"})
        assert connection.getresponse().status == 415


def test_planned_failures_store_nothing_and_then_the_peer_recovers(peer):
    peer.fail_next(2, 500)
    bundle = reading_bundle()

    answers = [call(peer, document=bundle) for _ in range(3)]

    assert [status for status, _, _ in answers] == [500, 500, 200]
    assert answers[0][2]["issue"][0]["code"] == "transient" and "Retry-After" not in answers[0][1]
    assert len(peer.resources("Observation")) == 2 and peer.stats["failed_on_purpose"] == 2
    assert len(peer.bundles) == 3


@pytest.mark.parametrize("retry_after, header", [(3, "3"), (0.25, "0.25")])
def test_throttling_answers_429_with_retry_after(peer, retry_after, header):
    peer.fail_next(1, 429, retry_after=retry_after)

    status, headers, outcome = call(peer, document=reading_bundle())

    assert (status, headers["Retry-After"], outcome["issue"][0]["code"]) == (429, header, "throttled")
    assert call(peer, document=reading_bundle())[0] == 200


def test_a_bearer_token_is_required_when_configured():
    with FhirPeer(token="s3cret") as peer:
        missing = call(peer, document=reading_bundle())
        wrong = call(peer, document=reading_bundle(), headers={"Authorization": "Bearer guess"})
        right = call(peer, document=reading_bundle(), headers={"Authorization": "Bearer s3cret"})
        metadata = call(peer, "GET", "/metadata")

    assert [missing[0], wrong[0], right[0], metadata[0]] == [401, 401, 200, 200]
    assert missing[1]["WWW-Authenticate"].startswith("Bearer") and missing[2]["issue"][0]["code"] == "login"
    assert peer.stats["unauthorized"] == 2 and len(peer.bundles) == 1
    assert len(peer.resources("Observation")) == 2


def basic_auth_opener(peer: FhirPeer, password: str) -> urllib.request.OpenerDirector:
    """urllib's own Basic handler, which only answers a proper 401 challenge."""
    passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    passwords.add_password(None, peer.url, "lab", password)
    return urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(passwords))


def transaction_request(peer: FhirPeer) -> urllib.request.Request:
    """A fresh request each time: urllib's auth handler adds its header to the request it retries."""
    return urllib.request.Request(peer.url, data=json.dumps(reading_bundle()).encode(), method="POST",
                                  headers={"Content-Type": FHIR_JSON})


def test_basic_credentials_are_required_when_configured():
    with FhirPeer(basic=("lab", "pa55")) as peer:
        with basic_auth_opener(peer, "pa55").open(transaction_request(peer), timeout=5) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            basic_auth_opener(peer, "wrong").open(transaction_request(peer), timeout=5)
        token = base64.b64encode(b"lab:pa55").decode()
        assert call(peer, "GET", "/Device", headers={"Authorization": f"basic {token}"})[0] == 200

    assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"] == 'Basic realm="fhir"'
    assert len(peer.resources("Observation")) == 2


def test_stored_resources_can_be_searched_by_identifier_and_read(peer):
    call(peer, document=reading_bundle("r1"))
    call(peer, document=reading_bundle("r2"))

    status, _, found = call(peer, "GET", f"/Observation?identifier={quote(SYSTEM + '|r2-GLU', safe='')}")
    _, _, everything = call(peer, "GET", "/Observation")
    _, _, nothing = call(peer, "GET", "/Observation?identifier=other|r2-GLU")

    assert status == 200 and found["type"] == "searchset" and found["total"] == 1
    Bundle.model_validate(found)
    observation = found["entry"][0]["resource"]
    assert observation["identifier"][0]["value"] == "r2-GLU"
    assert (everything["total"], nothing["total"], "entry" in nothing) == (4, 0, False)
    assert call(peer, "GET", f"/Observation/{observation['id']}")[2] == observation
    refused = ("/Observation/999", "/Nope", "/Observation?code=x")
    assert [call(peer, "GET", path)[0] for path in refused] == [404, 404, 400]


def test_the_capability_statement_is_valid_fhir_4_0_1(peer):
    with urllib.request.urlopen(f"{peer.url}/metadata", timeout=5) as response:
        statement = json.loads(response.read())

    CapabilityStatement.model_validate(statement)
    assert statement["fhirVersion"] == "4.0.1"


def test_a_client_may_reuse_its_connection_and_send_chunked_bodies(peer):
    with closing(connect(peer)) as connection:
        assert send(connection, "POST", document=reading_bundle("r1"))[0] == 200
        first_socket = connection.sock
        assert first_socket is not None     # http.client drops the socket when the server won't keep it
        connection.request("POST", BASE_PATH, body=iter([json.dumps(reading_bundle("r2")).encode()]),
                           headers={"Content-Type": FHIR_JSON})
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["type"] == "transaction-response"
        assert send(connection, "GET", "/metadata")[0] == 200
        assert connection.sock is first_socket

    assert len(peer.resources("DiagnosticReport")) == 2


def test_going_down_refuses_connections_and_coming_up_keeps_the_data(peer):
    call(peer, document=reading_bundle("r1"))
    port = peer.port
    kept_alive = connect(peer)
    send(kept_alive, "GET", "/metadata")

    peer.go_down()
    with pytest.raises(ConnectionRefusedError):
        call(peer, "GET", "/metadata")
    with pytest.raises(ConnectionError):    # a down lab drops its open connections too
        send(kept_alive, "GET", "/metadata")
    kept_alive.close()
    peer.come_up()

    assert peer.port == port
    assert call(peer, document=reading_bundle("r2"))[0] == 200
    assert len(peer.resources("DiagnosticReport")) == 2


def test_a_delayed_answer_comes_after_the_transaction_is_stored(peer):
    peer.set_delay(0.4)
    bundle = reading_bundle()
    sent = time.monotonic()

    with pytest.raises(socket.timeout):
        call(peer, document=bundle, timeout=0.1)
    while not peer.resources("DiagnosticReport") and time.monotonic() < sent + 0.3:
        time.sleep(0.01)
    assert len(peer.resources("DiagnosticReport")) == 1     # stored while the answer is still held back
    resent = time.monotonic()
    status, _, answer = call(peer, document=bundle)

    assert time.monotonic() - resent >= 0.4
    assert status == 200 and {entry["response"]["status"] for entry in answer["entry"]} == {"200 OK"}


def test_the_peer_prints_nothing(peer, capfd):
    call(peer, document=reading_bundle())
    call(peer, document={"resourceType": "Bundle"})
    with closing(connect(peer)) as connection:
        connection.request("DELETE", BASE_PATH)
        assert connection.getresponse().status == 501

    assert capfd.readouterr() == ("", "")


@pytest.fixture(scope="module")
def server_certificate(lab_ca):
    return lab_ca.issue_cert("127.0.0.1", "localhost")


def server_context(lab_ca, certificate, *, client_certificates: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(context)
    if client_certificates:
        context.verify_mode = ssl.CERT_REQUIRED
        lab_ca.configure_trust(context)
    return context


def client_context(lab_ca, certificate=None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    lab_ca.configure_trust(context)
    if certificate is not None:
        certificate.configure_cert(context)
    return context


def test_tls_serves_clients_trusting_the_lab_ca_and_survives_others(lab_ca, server_certificate, capfd):
    with FhirPeer(tls=server_context(lab_ca, server_certificate)) as peer:
        assert peer.url.startswith("https://127.0.0.1:")
        with pytest.raises(ssl.SSLCertVerificationError):
            call(peer, "GET", "/metadata", context=ssl.create_default_context())
        with pytest.raises(ConnectionError), closing(HTTPConnection("127.0.0.1", peer.port, timeout=5)) as plain:
            send(plain, "GET", "/metadata")

        assert call(peer, document=reading_bundle(), context=client_context(lab_ca))[0] == 200

    assert peer.stats["connection_errors"] == 2 and len(peer.resources("Observation")) == 2
    assert capfd.readouterr() == ("", "")


def test_a_peer_demanding_client_certificates_refuses_a_client_without_one(lab_ca, server_certificate):
    reader_certificate = lab_ca.issue_cert("stripread-reader.test")
    with FhirPeer(tls=server_context(lab_ca, server_certificate, client_certificates=True)) as peer:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            call(peer, document=reading_bundle(), context=client_context(lab_ca))

        status, _, _ = call(peer, document=reading_bundle(), context=client_context(lab_ca, reader_certificate))

    assert status == 200 and peer.stats["connection_errors"] == 1
    assert len(peer.resources("Observation")) == 2
