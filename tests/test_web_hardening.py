"""The web interface under hostile or broken clients (issue 18): the login throttle and lockout, the
bound on concurrent password hashes, ids and numbers checked where they enter, unexpected errors
logged without patient ids, the security headers, and schemathesis fuzzing the JSON API."""
import logging
import re

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from device.store.results import ResultStore
from device.web.app import FORM_COOKIE, SESSION_COOKIE, WebContext, create_app
from device.web.auth import Accounts
from device.web.security import CSP, MAX_BODY, LoginGuard
from labdata import RESULT, fill

PASSWORD = "correct horse battery"
HEADERS = {"content-security-policy": CSP, "x-frame-options": "DENY", "x-content-type-options": "nosniff",
           "referrer-policy": "no-referrer"}


class FakeClock:
    """The login guard's clock, moved on by the test instead of sleeping."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "results.db"
    with ResultStore(path) as store:
        fill(store, 3)
        store.add(RESULT, patient_id="P-000123", thumbnails={"GLU": b"\x89PNG\r\n\x1a\nfake"})
    with Accounts(path) as accounts:
        for name in ("tech-1", "tech-2", "tech-3", "tech-4", "tech-5"):
            accounts.set_password(name, PASSWORD)
    return path


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def client(db, product, clock):
    return TestClient(create_app(WebContext(db, product, login_guard=LoginGuard(clock=clock))),
                      raise_server_exceptions=False)


def _login(client, username="tech-1", password=PASSWORD):
    token = re.search(r'name="form_token" value="([^"]+)"', client.get("/tech/login").text).group(1)
    return client.post("/tech/login", data={"username": username, "password": password, "form_token": token},
                       follow_redirects=False)


def test_wrong_passwords_lock_the_account_the_right_one_included_until_the_lockout_ends(client, clock):
    statuses = [_login(client, password=f"guess number {i}").status_code for i in range(200)]
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
    refused = _login(client)                                   # the right password, while locked out
    assert refused.status_code == 429 and "session" not in str(refused.cookies)
    assert "locked for 15 more minutes" in refused.text and int(refused.headers["retry-after"]) == 900
    clock.now += 899
    assert _login(client).status_code == 429
    clock.now += 2
    assert _login(client).status_code == 303                   # the lockout ended


def test_a_right_password_clears_the_accounts_count_but_not_the_addresss(client, clock):
    for _ in range(3):
        assert [_login(client, password="not the password").status_code for _ in range(4)] == [401] * 4
        assert _login(client).status_code == 303               # 12 wrong in all, never 5 in a row
    for name in ("tech-2", "tech-3"):                           # 8 more from this address: 20 in the window
        assert [_login(client, name, "not the password").status_code for _ in range(4)] == [401] * 4
    refused = _login(client, "tech-5")
    assert refused.status_code == 429 and "this device&#39;s address" in refused.text
    clock.now += 901
    assert _login(client, "tech-5").status_code == 303


def test_logins_beyond_the_hashes_in_flight_are_answered_busy_not_queued(db, product):
    guard = LoginGuard(hashes=1, hash_wait_s=0.01)
    client = TestClient(create_app(WebContext(db, product, login_guard=guard)))
    with guard.hashing():                                      # another login is hashing its password
        busy = _login(client)
    assert busy.status_code == 503 and "busy checking other logins" in busy.text and busy.headers["retry-after"]
    assert _login(client).status_code == 303                   # the slot is free again


BIG = "99999999999999999999"


@pytest.mark.parametrize("path, status", [
    (f"/results/{BIG}", 404), ("/results/0", 404), ("/results/-3", 404), (f"/api/results/{BIG}", 422),
    ("/api/results/0", 422), (f"/api/results?limit={BIG}", 422), ("/api/results?limit=-1", 422),
    ("/api/results?limit=0", 422), ("/api/results?limit=1001", 422), (f"/thumbnails/{BIG}/LEU.png", 404),
    ("/thumbnails/4/L%2F..%2FEU.png", 404), ("/thumbnails/4/LEU.png", 404), ("/patients/" + "P" * 65, 404),
    ("/patients/P%20000123", 404), ("/api/patients/" + "é" * 10 + "/trends", 422),
    ("/api/results?patient=" + "x" * 100, 422), ("/patients?p=%3Cscript%3E", 400),
    ("/patients/" + "P" * 60_000, 404),      # httpx sends at most 64 kB; 1 MB goes over HTTP in bench/faults_web.py
])
def test_malformed_ids_and_numbers_are_bad_requests_named_with_their_rule(client, path, status):
    answer = client.get(path)
    assert answer.status_code == status
    assert len(answer.content) < 8000                          # the input is not echoed back
    if status != 404 or path.startswith("/results/"):
        assert re.search(r"whole number from 1|patient ID is 1 to 64|no picture|analyte", answer.text), answer.text


def test_the_history_search_goes_to_the_patients_page_without_a_script(client):
    assert client.get("/patients", params={"p": "P-000123"}, follow_redirects=False).headers["location"] \
        == "/patients/P-000123"


def test_a_test_for_a_malformed_or_huge_patient_id_is_refused(client, db):
    client.get("/test")
    token = client.cookies[FORM_COOKIE]
    refused = client.post("/test", data={"patient_id": "P 1;<b>", "form_token": token})
    assert refused.status_code == 400 and "patient ID is 1 to 64" in refused.text
    huge = client.post("/test", data={"patient_id": "P" * 10 ** 6, "form_token": token})
    assert huge.status_code == 413 and f"{MAX_BODY // 1024} kB" in huge.text
    with ResultStore(db) as store:
        assert len(store.history()) == 4


def test_a_login_with_a_missing_or_oversized_field_is_a_bad_request_named_as_such(client):
    token = re.search(r'name="form_token" value="([^"]+)"', client.get("/tech/login").text).group(1)
    missing = client.post("/tech/login", data={"username": "tech-1", "form_token": token})
    assert missing.status_code == 400 and "Password is missing." in missing.text
    long = client.post("/tech/login", data={"username": "t" * 65, "password": PASSWORD, "form_token": token})
    assert long.status_code == 400 and "A name has at most 64 characters." in long.text


def test_non_ascii_cookies_and_tokens_are_refused_not_crashed_on(db, product):
    client = TestClient(create_app(WebContext(db, product, login_everywhere=True)), raise_server_exceptions=False)
    odd = {"cookie": f"{SESSION_COOKIE}=caf\u00e9\u2603; {FORM_COOKIE}=\u00e9t\u00e9".encode()}
    assert client.get("/", headers=odd, follow_redirects=False).status_code == 303
    assert client.get("/api/results", headers=odd).status_code == 401
    login_page = client.get("/tech/login", headers=odd)
    assert login_page.status_code == 200 and FORM_COOKIE + '=' in login_page.headers["set-cookie"]
    forged = client.post("/tech/login", headers=odd, data={"username": "tech-1", "password": PASSWORD,
                                                           "form_token": "\u00e9t\u00e9"})
    assert forged.status_code == 403
    assert _login(client).status_code == 303
    assert client.post("/tech/sync/retry", data={"csrf": "\u00e9\u2603"}).status_code == 403


def test_an_unexpected_error_is_logged_with_its_frames_and_no_patient_id(client, monkeypatch, caplog):
    def broken(self, patient_id=None, limit=None):
        raise RuntimeError(f"lost the index of {patient_id}")
    monkeypatch.setattr(ResultStore, "history", broken)
    with caplog.at_level(logging.ERROR, logger="stripread.web"):
        answer = client.get("/patients/P-000123")
    assert answer.status_code == 500 and answer.text.startswith("Something went wrong on the reader")
    assert all(answer.headers[name] == value for name, value in HEADERS.items())
    assert "unexpected RuntimeError in GET /patients/{patient_id}" in caplog.text
    assert "in broken" in caplog.text and "P-000123" not in caplog.text


PAGES = ["/", "/test", "/test/live", "/history", "/results/4", "/patients/P-000123", "/tech/login", "/tech",
         "/clinic", "/api/session", "/api/results", "/api/results/4", "/api/patients/P-000123/trends",
         "/api/tech/status", "/api/clinic/alerts", "/openapi.json", "/static/style.css", "/static/live.js",
         "/thumbnails/4/GLU.png", "/nowhere", "/results/99", "/results/x"]


def test_every_response_carries_the_security_headers_and_patient_data_is_never_cached(client):
    _login(client)
    for path in PAGES:
        answer = client.get(path, follow_redirects=False)
        assert all(answer.headers.get(name) == value for name, value in HEADERS.items()), path
        if not path.startswith("/static/"):
            assert answer.headers["cache-control"] == "no-store", path
    assert _login(client, password="wrong again!").headers["content-security-policy"] == CSP


def test_the_pages_need_no_inline_script_or_style(client):
    _login(client)
    for path in PAGES[:9]:
        html = client.get(path).text
        assert not re.search(r"<script(?![^>]*\bsrc=)|<style|\sstyle=|\son[a-z]+=", html), path


# -- schemathesis: the JSON API as its OpenAPI schema describes it ----------------------------------------------

def test_the_api_answers_fuzzed_requests_as_its_schema_says(db, product):
    """Valid and invalid requests to every API operation: no 500, and status codes, content types and
    bodies as documented (401, 404 and 422 included); invalid requests are rejected."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(WebContext(db, product)))
    checks = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
              schemathesis.checks.content_type_conformance, schemathesis.checks.response_schema_conformance,
              schemathesis.checks.negative_data_rejection]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6
    for operation in operations:
        modes = list(schemathesis.GenerationMode) if any(operation.iter_parameters()) else [
            schemathesis.GenerationMode.POSITIVE]        # nothing to get wrong in a request without parameters
        for mode in modes:
            @given(case=operation.as_strategy(mode))
            @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def fuzz(case):
                case.call_and_validate(checks=checks)
            fuzz()
