"""The web interface's pages, JSON API and roles, through FastAPI's test client (httpx): what a
patient, a nurse and a technician are shown (issue 19), against a real SQLite store."""
import queue
import re
import sqlite3
import subprocess
import sys
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from device.store.records import Records
from device.monitoring.alerts import judge, load_rules
from device.runtime.session import State
from device.store.results import ResultStore
from device.web.app import FORM_COOKIE, SESSION_COOKIE, WebContext, create_app
from device.web.auth import Accounts
from device.language.i18n import Words
from device.language.plain import chart_rounded, reference_range, trend_svg
from labdata import RESULT, fill

PASSWORD = "correct horse battery"
JUDGE = judge(load_rules())


def _reading(**levels):
    """RESULT with some pads at other levels: {"GLU": ("1000", 883.5)}."""
    analytes = [a for a in RESULT["analytes"] if a["analyte"] not in levels]
    for code, (level, value) in levels.items():
        analytes.append({"analyte": code, "loinc": "", "unit": "mg/dL", "level": level, "value": value,
                         "confidence": 0.95, "flags": ["abnormal"]})
    return {**RESULT, "analytes": analytes}


@pytest.fixture
def web(tmp_path, product):
    db = tmp_path / "results.db"
    with ResultStore(db) as store:
        records = fill(store, 3)
        store.add({**RESULT, "analytes": RESULT["analytes"]}, patient_id="P-000123",
                  thumbnails={"GLU": b"\x89PNG\r\n\x1a\nfake"})
        store.record_attempt(records[0].result_id, "hl7: the lab answered AE: unknown patient", permanent=True)
    with Accounts(db) as accounts:
        accounts.set_password("tech-1", PASSWORD)
        accounts.set_password("nurse-1", PASSWORD, role="nurse")
    return TestClient(create_app(WebContext(db, product))), db


def _form_token(client, path):
    page = client.get(path)
    return re.search(r'name="form_token" value="([^"]+)"', page.text).group(1)


def _login(client, name="tech-1"):
    token = _form_token(client, "/tech/login")
    return client.post("/tech/login", data={"username": name, "password": PASSWORD, "form_token": token},
                       follow_redirects=False)


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html.split("<main>")[1])).replace("&middot;", "·")


# -- the result page ---------------------------------------------------------------------------------------------

def test_a_result_opens_with_its_verdict_then_the_pads_needing_attention_in_plain_words(web):
    client, _ = web
    page = client.get("/results/4")
    assert page.status_code == 200
    text = _text(page.text)
    assert text.startswith(" 3 results need attention, 1 pad could not be read.")
    attention = page.text.index('id="attention"')
    assert attention < page.text.index('id="normal"')
    needing = re.findall(r'<th scope="row">([^<]+)</th>', page.text[attention:page.text.index('id="normal"')])
    assert needing == ["White blood cells", "Nitrite (infection sign)", "Ketones", "Sugar (glucose)"]
    # levels with units and plus grades, rounded estimates, reference ranges; no codes, no UCUM brackets
    assert "250 mg/dL (2+)" in text and "about 240 mg/dL" in text and "about 70 cells/µL" in text
    assert "5.0 to 8.0" in text and "1.005 to 1.030" in text and "about 1.015" in text
    assert not re.search(r"\[pH\]|\{SG\}|Ery/uL|Leu/uL|\bGLU\b|\bLEU:|0\.0882|243\.7", text)
    assert "Sugar (glucose) 250 mg/dL (2+): If you have diabetes" in text
    assert page.text.count('class="crop"') == 1 and 'src="/thumbnails/4/GLU.png"' in page.text   # the one stored
    assert '<rect width="1" height="1" fill="#' in page.text
    assert client.get("/thumbnails/4/GLU.png").content.startswith(b"\x89PNG")
    assert client.get("/results/99").status_code == 404


def test_values_are_rounded_as_the_chart_resolves_them(product):
    glucose, blood, sg, ph = (product.pad(a) for a in ("GLU", "BLD", "SG", "PH"))
    en = Words()
    assert chart_rounded(glucose, 883.5, en) == "900" and chart_rounded(glucose, 243.7, en) == "240"
    assert chart_rounded(blood, 0.08825, en) == "0" and chart_rounded(sg, 1.0153, en) == "1.015"
    assert chart_rounded(ph, 6.52, en) == "6.5" and chart_rounded(product.pad("NIT"), None, en) is None
    assert reference_range(product.pad("URO"), en) == "0.2 to 1 mg/dL" and reference_range(glucose, en) == "negative"


def test_a_reading_without_a_patient_shows_its_alerts_and_says_no_clinic_was_told(web):
    client, db = web
    with ResultStore(db) as store:
        seq = store.add(_reading(GLU=("1000", 883.5), KET=("moderate", 40.0)), judge=JUDGE).seq
    page = client.get(f"/results/{seq}")
    text = _text(page.text)
    assert 'id="unlinked"' in page.text and "not linked to a patient" in text
    assert "Very high glucose in the urine" in text and "possible ketoacidosis" in text
    assert "has been told" not in text.replace("No clinic has been told", "")
    assert "1000 mg/dL (4+)" in text and "about 900 mg/dL" in text


def test_an_open_alert_from_an_earlier_reading_does_not_silence_this_ones(web):
    client, db = web
    with ResultStore(db) as store:
        store.add(_reading(GLU=("1000", 990.0), KET=("xlarge", 160.0)), patient_id="P-9", judge=JUDGE)
        seq = store.add(_reading(GLU=("250", 250.0), KET=("xlarge", 160.0)), patient_id="P-9", judge=JUDGE).seq
        assert [a["rule_id"] for a in store.alerts(result_id=store.get(seq).result_id)] == ["glucose_high"]
    text = _text(client.get(f"/results/{seq}").text)
    assert "possible ketoacidosis" in text and "High glucose in the urine" in text


def test_your_clinic_has_been_told_only_after_the_lab_acknowledged_the_alert(tmp_path, product):
    db = tmp_path / "r.db"
    with ResultStore(db) as store:
        for _ in range(2):
            seq = store.add(_reading(PRO=("100", 100.0)), patient_id="P-5", judge=JUDGE).seq
        row = next(a for a in store.alerts(patient_id="P-5") if a["rule_id"] == "protein_consecutive")
    no_lab = _text(TestClient(create_app(WebContext(db, product))).get(f"/results/{seq}").text)
    assert "does not send results to a clinic" in no_lab and "has been told" not in no_lab
    client = TestClient(create_app(WebContext(db, product, lab=True)))
    pending = _text(client.get(f"/results/{seq}").text)
    assert "will be told when the reader next reaches it" in pending and "has been told" not in pending
    assert "Contact your doctor or kidney nurse" in pending      # the rule's own claim turned into a request
    with ResultStore(db) as store:
        store.record_alert_delivery(row["id"])
    assert "Your clinic has been told" in _text(client.get(f"/results/{seq}").text)


# -- QC: the lock before Start, QC records kept apart ----------------------------------------------------------

class FakeService:
    """The reader service as the web app sees it, without a board: state, sessions, requests."""

    def __init__(self, product):
        self.session = SimpleNamespace(state=State.IDLE, board=SimpleNamespace(events=queue.Queue()),
                                       camera=SimpleNamespace(name="simulated"),
                                       clock=SimpleNamespace(now=lambda: 100.0), dipped_at=None, last_photo=None,
                                       read_times=sorted({p.read_at_s for p in product.pads}), product=product)
        self.sessions, self.last_record, self.requests = 0, None, []

    def request_test(self, patient_id, operator_id=None, purpose="patient"):
        self.requests.append((patient_id, operator_id, purpose))

    def withdraw_request(self):
        self.requests.append("withdrawn")


def _fail_qc(db):
    with Records(db) as records:
        records.add("qc", "generic-10-neg", {"passed": False, "run": {"summary": "out of range on GLU"}})


def test_a_qc_lock_is_shown_before_start_with_whom_to_contact_and_start_is_disabled(web, product):
    client, db = web
    service = FakeService(product)
    client = TestClient(create_app(WebContext(db, product, service=service, contact="Ward 3, 0123 456 789")))
    assert 'class="button primary" type="submit" id="start">Start</button>' in client.get("/test").text
    _fail_qc(db)
    for path in ("/", "/test"):
        page = client.get(path)
        assert 'id="qc-lock"' in page.text and "Ward 3, 0123 456 789" in page.text and "Do not dip" in page.text
    assert re.search(r'id="start" disabled', client.get("/test").text)
    refused = client.post("/test", data={"patient_id": "P-1", "form_token": client.cookies[FORM_COOKIE]})
    assert refused.status_code == 423 and service.requests == []


def test_no_qc_yet_is_neutral_not_green(web):
    client, _ = web
    _login(client)
    assert re.search(r'class="notice" id="qc-status">No quality control is set up', client.get("/tech").text)


def test_control_strips_stay_out_of_the_history_and_get_no_patient_advice(web):
    client, db = web
    qc = {**_reading(GLU=("100", 100.0)), "session": {"purpose": "qc", "outcome": "completed"}}
    with ResultStore(db) as store:
        seq = store.add(qc, operator_id="tech-1", for_lab=False).seq
    assert f'href="/results/{seq}"' not in client.get("/history").text
    page = _text(client.get(f"/results/{seq}").text)
    assert page.startswith(" Quality-control strip") and "What to do next" not in page and "Tell your doctor" not in page
    assert client.get("/api/results").json()[0]["qc"] is True


# -- a test in progress -----------------------------------------------------------------------------------------

def test_start_during_a_test_offers_to_go_back_and_cancel_presses_the_cancel_button(web, product):
    _, db = web
    service = FakeService(product)
    client = TestClient(create_app(WebContext(db, product, service=service)))
    client.get("/test")
    token = client.cookies[FORM_COOKIE]
    started = client.post("/test", data={"patient_id": "P-1", "form_token": token}, follow_redirects=False)
    assert started.headers["location"] == "/test/live?after=0" and service.requests == [("P-1", None, "patient")]
    again = client.post("/test", data={"patient_id": "P-2", "form_token": token})
    assert again.status_code == 409 and 'id="back-to-test"' in again.text and len(service.requests) == 1
    assert client.post("/test/cancel", data={"form_token": token}, follow_redirects=False).headers["location"] == "/"
    assert service.requests[-1] == "withdrawn" and 'id="in-progress"' not in client.get("/").text   # before the strip
    client.post("/test", data={"patient_id": "P-1", "form_token": token})
    service.session.state, service.session.dipped_at = State.DEVELOPING, 90.0
    live = client.get("/test/live?after=0")
    assert '<meta http-equiv="refresh" content="3">' in live.text and "<noscript>" in live.text
    assert "Bilirubin, Sugar (glucose)</strong>: read in 20 s" in live.text and "110 s left in all" in live.text
    assert client.get("/api/session").json()["read_groups"][0]["pads"] == ["Bilirubin", "Sugar (glucose)"]
    assert client.post("/test/cancel", data={"form_token": token, "after": 0}, follow_redirects=False).status_code == 303
    event = service.session.board.events.get_nowait()
    assert (event.kind, event.detail) == ("button", "cancel")
    service.sessions, service.last_record = 1, SimpleNamespace(seq=4, result={"status": "aborted"})
    assert client.get("/test/live?after=0", follow_redirects=False).headers["location"] == "/results/4"


# -- staff: roles, the clinic view, QC from the page ------------------------------------------------------------

def test_a_nurse_sees_the_clinic_and_histories_but_not_the_technicians_pages(web):
    client, _ = web
    assert client.get("/clinic", follow_redirects=False).headers["location"] == "/tech/login?next=/clinic"
    token = _form_token(client, "/tech/login?next=/clinic")
    signed_in = client.post("/tech/login", data={"username": "nurse-1", "password": PASSWORD, "form_token": token,
                                                 "next": "/clinic"}, follow_redirects=False)
    assert signed_in.headers["location"] == "/clinic"
    assert client.get("/clinic").status_code == 200 and client.get("/patients/P-000123").status_code == 200
    assert client.get("/tech").status_code == 403 and client.get("/api/tech/status").status_code == 401
    assert "Technician</a>" not in client.get("/clinic").text


def test_acknowledging_an_urgent_alert_takes_a_note_and_can_be_undone(web):
    client, db = web
    with ResultStore(db) as store:
        store.add(_reading(GLU=("1000", 990.0)), patient_id="HOME-5", judge=JUDGE)
        row = next(a for a in store.alerts(open_only=True) if a["patient_id"] == "HOME-5" and a["severity"] == "urgent")
    _login(client, "nurse-1")
    page = client.get("/clinic").text
    assert f'id="note-{row["id"]}" name="note" maxlength="500" autocomplete="off" required' in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    url = f"/clinic/alerts/{row['id']}/acknowledge"
    assert client.post(url, data={"csrf": csrf, "note": "  "}).status_code == 400
    assert client.post(url, data={"csrf": csrf, "note": "phoned, seen today"}, follow_redirects=False).status_code == 303
    page = client.get("/clinic").text
    assert f'action="/clinic/alerts/{row["id"]}/acknowledge"' not in page
    assert f'action="/clinic/alerts/{row["id"]}/reopen"' in page and "by nurse-1" in page and "phoned, seen today" in page
    client.post(f"/clinic/alerts/{row['id']}/reopen", data={"csrf": csrf})
    with ResultStore(db) as store:
        assert row["id"] in [a["id"] for a in store.alerts(open_only=True)]
    notes = sqlite3.connect(db).execute("SELECT action, by_user FROM alert_notes ORDER BY id").fetchall()
    assert notes == [("acknowledged", "nurse-1"), ("reopened", "nurse-1")]


def test_a_technician_runs_qc_from_the_page_with_the_clis_guidance(web, product):
    _, db = web
    service = FakeService(product)
    client = TestClient(create_app(WebContext(db, product, service=service)))
    _login(client)
    page = client.get("/tech").text
    assert "Dip a strip in" in page and 'id="qc-negative"' in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    answer = client.post("/tech/qc/run", data={"csrf": csrf, "control": "negative"}, follow_redirects=False)
    assert answer.headers["location"] == "/test/live?after=0&control=negative"
    assert service.requests == [(None, "tech-1", "qc")]
    assert client.post("/tech/qc/run", data={"csrf": csrf, "control": "bleach"}).status_code == 400


def _a_passing_qc_run(db, times=1):
    """Runs of the shipped negative control judged and stored as the CLI stores them."""
    from calibration.in_force import find_control, judge_qc_run
    control, text = find_control("negative")
    analytes = [{"analyte": a.pad.analyte, "loinc": "", "unit": a.pad.unit, "level": a.accepted[0], "value": None,
                 "confidence": 0.95, "flags": []} for a in control.analytes]
    with Records(db) as records:
        for _ in range(times):
            judge_qc_run(records, [(control, text)], [{**RESULT, "analytes": analytes}], "tech-1")
    return control


def test_a_control_strips_verdict_is_judged_and_stored_once(web):
    from calibration.in_force import find_control
    client, db = web
    control, _ = find_control("negative")
    analytes = [{"analyte": a.pad.analyte, "loinc": "", "unit": a.pad.unit, "level": a.accepted[0], "value": None,
                 "confidence": 0.95, "flags": []} for a in control.analytes]
    qc = {**RESULT, "analytes": analytes, "session": {"purpose": "qc", "outcome": "completed"}}
    with ResultStore(db) as store:
        seq = store.add(qc, operator_id="tech-1", for_lab=False).seq
        cancelled = store.add({"status": "aborted", "outcome": "cancelled", "message": "The test was cancelled.",
                               "session": {"purpose": "qc"}}, for_lab=False).seq
    _login(client)
    for _ in range(2):
        page = client.get(f"/tech/qc/result/{seq}?control=negative")
        assert page.status_code == 200 and "(negative): passed" in page.text
    with Records(db) as records:
        assert len(records.history("qc", control.id)) == 1
    assert client.get(f"/tech/qc/result/{cancelled}?control=negative").status_code == 409
    assert client.get("/tech/qc/result/1?control=negative").status_code == 404       # a patient's reading


def test_levey_jennings_plots_are_readable_svg_and_the_printable_png_is_drawn_once_per_run(web, monkeypatch):
    client, db = web
    control = _a_passing_qc_run(db, times=2)
    _login(client)
    page = client.get("/tech").text
    assert re.search(r'class="ok" id="qc-status">Quality control passed', page)
    assert page.count('aria-labelledby="lj-generic-10-neg-') == len(control.analytes)
    assert ">target</text>" in page and ">+2 SD</text>" in page and "passed (passed)" not in page
    import calibration.qc
    drawn = []
    real = calibration.qc.levey_jennings_png
    monkeypatch.setattr(calibration.qc, "levey_jennings_png", lambda *a: drawn.append(1) or real(*a))
    first = client.get("/tech/qc/generic-10-neg.png")
    assert first.content.startswith(b"\x89PNG") and client.get("/tech/qc/generic-10-neg.png").content == first.content
    assert len(drawn) == 1
    _a_passing_qc_run(db)                                                   # a new run: drawn again
    client.get("/tech/qc/generic-10-neg.png")
    assert len(drawn) == 2


def test_device_health_judges_the_climate_against_the_strips_range(web, product):
    _, db = web
    service = FakeService(product)
    service.session.board.climate = lambda: SimpleNamespace(temperature_c=34.2, humidity_pct=40.0)
    service.session.board.info = SimpleNamespace(firmware_version=(1, 4, 0))
    client = TestClient(create_app(WebContext(db, product, service=service)))
    _login(client)
    device = _text(client.get("/tech").text).split("Device")[-1]
    assert "Temperature 34.2 °C: OUTSIDE the strips' range (15 to 30 °C)" in device
    assert "Humidity 40 %: within the strips' range (10 to 85 %)" in device and "1.4.0" in device


# -- trends ---------------------------------------------------------------------------------------------------

def test_trend_plots_use_a_time_axis_and_list_their_values(web, product):
    client, _ = web
    trends = client.get("/api/patients/P-000123/trends").json()
    glucose = next(t for t in trends if t["analyte"] == "GLU")
    assert [round(p["position"], 2) for p in glucose["points"]] == [1.95, 1.96, 1.97, 1.96]
    page = client.get("/patients/P-000123").text
    assert page.count("<svg") == 6 and 'aria-labelledby="trend-GLU"' in page
    assert "Sugar (glucose) (mg/dL) over time" in page and "about 240 mg/dL" in page
    points = [{"at": at, "position": 1.0, "confidence": 1.0, "abnormal": False}
              for at in ("2026-01-01T10:00:00+00:00", "2026-01-02T10:00:00+00:00", "2026-01-31T10:00:00+00:00")]
    xs = [float(x) for x in re.findall(r'<circle cx="([\d.]+)"', trend_svg(None, "mg/dL", ["neg", "100"], points, "t", Words()))]
    assert abs((xs[1] - xs[0]) / (xs[2] - xs[0]) - 1 / 30) < 1e-3          # spaced by date, not by index
    assert client.get("/api/patients/nobody/trends").status_code == 404


# -- carried over: API, login, CSRF, accounts ---------------------------------------------------------------

def test_the_api_is_described_by_openapi_and_nothing_loads_from_a_cdn(web):
    client, _ = web
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/session", "/api/results", "/api/results/{seq}", "/api/patients/{patient_id}/trends",
            "/api/tech/status"} <= set(paths)
    for page in ("/", "/test", "/history", "/results/4", "/tech/login"):
        assert not re.search(r'(src|href)="(https?:)?//', client.get(page).text), page
    assert client.get("/docs").status_code == 404


def test_technician_pages_refuse_without_login(web):
    client, _ = web
    assert client.get("/tech", follow_redirects=False).headers["location"] == "/tech/login?next=/tech"
    assert client.get("/api/tech/status").status_code == 401
    assert client.get("/tech/qc/generic-10-neg.png", follow_redirects=False).status_code == 303
    assert client.post("/tech/sync/retry", data={"csrf": "x"}, follow_redirects=False).status_code == 303
    client.cookies.set(SESSION_COOKIE, "forged")
    assert client.get("/api/tech/status").status_code == 401


def test_login_with_a_hashed_password_and_a_strict_session_cookie(web):
    client, db = web
    token = _form_token(client, "/tech/login")
    wrong = client.post("/tech/login", data={"username": "tech-1", "password": "wrong password!", "form_token": token})
    assert wrong.status_code == 401 and "Wrong name or password" in wrong.text
    signed_in = _login(client)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/tech"
    cookie = next(h for h in signed_in.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    status = client.get("/api/tech/status").json()
    assert status["sync"]["counts"]["failed"] == 1 and status["device"]["reader"] == "not running"
    stored = sqlite3.connect(db).execute("SELECT hash, salt FROM web_users").fetchone()
    assert PASSWORD.encode() not in stored[0] and len(stored[1]) == 16
    assert "Quality control" in client.get("/tech").text


def test_state_changing_forms_need_their_csrf_token(web):
    client, db = web
    assert client.post("/test", data={"patient_id": "P-1"}).status_code == 403          # no form token
    client.get("/test")
    assert client.post("/test", data={"patient_id": "P-1", "form_token": "guess"}).status_code == 403
    assert client.post("/test", data={"patient_id": "P-1", "form_token": client.cookies[FORM_COOKIE]}).status_code \
        == 409                                                                            # accepted: no reader here
    _login(client)
    assert client.post("/tech/sync/retry", data={"csrf": "guess"}).status_code == 403
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/tech").text).group(1)
    assert client.post("/tech/sync/retry", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    with ResultStore(db) as store:
        assert store.outbox_counts()["failed"] == 0
    assert client.post("/tech/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert client.get("/api/tech/status").status_code == 401                             # the session ended


def test_accounts_need_long_passwords_known_roles_and_sessions_expire(tmp_path):
    with Accounts(tmp_path / "r.db") as accounts:
        with pytest.raises(ValueError, match="at least"):
            accounts.set_password("t", "short")
        with pytest.raises(ValueError, match="a role is one of nurse, technician"):
            accounts.set_password("t", PASSWORD, role="admin")
        accounts.set_password("t", PASSWORD)
        token, session = accounts.login("t", PASSWORD)
        assert accounts.session(token).role == "technician" and accounts.login("t", "not it at all") is None
        assert accounts.login("nobody", PASSWORD) is None
        accounts._db.execute("UPDATE web_sessions SET expires = '2000-01-01T00:00:00+00:00'")
        assert accounts.session(token) is None
        token, _ = accounts.login("t", PASSWORD)
        accounts.set_password("t", PASSWORD + "!", role="nurse")     # a new password ends every session
        assert accounts.session(token) is None
        assert accounts.login("t", PASSWORD + "!")[1].role == "nurse"


def test_the_user_command_gives_an_account_its_role(tmp_path):
    db, secret = tmp_path / "r.db", tmp_path / "pw"
    secret.write_text(PASSWORD)
    done = subprocess.run([sys.executable, "-m", "device.cli.commands", "user", "nurse-2", "--role", "nurse",
                           "--password-file", str(secret), "--db", str(db)], capture_output=True, text=True)
    assert done.returncode == 0 and "nurse nurse-2 can log in" in done.stdout
    with Accounts(db) as accounts:
        assert accounts.login("nurse-2", PASSWORD)[1].role == "nurse"


def test_on_a_clinic_network_every_page_needs_a_login(web, product):
    _, db = web
    client = TestClient(create_app(WebContext(db, product, login_everywhere=True)))
    for path in ("/", "/history", "/results/4", "/patients/P-000123"):
        assert client.get(path, follow_redirects=False).headers["location"] == "/tech/login", path
    assert client.get("/api/results").status_code == 401 and client.get("/static/style.css").status_code == 200
    assert _login(client).status_code == 303
    assert client.get("/patients/P-000123").status_code == 200 and client.get("/api/results").status_code == 200
