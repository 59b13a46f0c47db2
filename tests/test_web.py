"""The web interface's pages, JSON API and security, through FastAPI's test client (httpx)."""
import re
import sqlite3

import pytest
from fastapi.testclient import TestClient

from device.store import ResultStore
from device.web.app import FORM_COOKIE, SESSION_COOKIE, WebContext, create_app
from device.web.auth import Accounts
from labdata import RESULT, fill

PASSWORD = "correct horse battery"


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
    return TestClient(create_app(WebContext(db, product))), db


def _form_token(client, path):
    page = client.get(path)
    return re.search(r'name="form_token" value="([^"]+)"', page.text).group(1)


def _login(client):
    token = _form_token(client, "/tech/login")
    return client.post("/tech/login", data={"username": "tech-1", "password": PASSWORD, "form_token": token},
                       follow_redirects=False)


def test_a_result_page_shows_each_pad_beside_its_chart_colour_with_next_steps(web):
    client, _ = web
    page = client.get("/results/4")
    assert page.status_code == 200
    assert page.text.count('class="crop"') == 7 and 'src="/thumbnails/4/GLU.png"' in page.text
    assert '<rect width="1" height="1" fill="#' in page.text       # the chart swatch of the read level
    assert "Sugar in the urine" in page.text and "Possible urinary infection" in page.text
    assert client.get("/thumbnails/4/GLU.png").content.startswith(b"\x89PNG")
    assert client.get("/results/99").status_code == 404


def test_history_and_trends_as_pages_and_json(web, product):
    client, _ = web
    assert client.get("/history").text.count('href="/results/') == 4
    trends = client.get("/api/patients/P-000123/trends").json()
    glucose = next(t for t in trends if t["analyte"] == "GLU")
    assert [round(p["position"], 2) for p in glucose["points"]] == [1.95, 1.96, 1.97, 1.96]  # 243, 244, 245, 243.7 mg/dL
    assert glucose["levels"] == [lv.code for lv in product.pad("GLU").levels]
    page = client.get("/patients/P-000123")
    assert page.text.count("<svg") == 6 and page.text.count('class="abnormal"') >= 4   # KET never read
    assert client.get("/api/patients/nobody/trends").status_code == 404
    assert client.get("/api/results", params={"patient": "P-000123", "limit": 2}).json()[0]["seq"] == 4


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
    assert client.get("/tech", follow_redirects=False).headers["location"] == "/tech/login"
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


def test_accounts_need_long_passwords_and_sessions_expire(tmp_path):
    with Accounts(tmp_path / "r.db") as accounts:
        with pytest.raises(ValueError, match="at least"):
            accounts.set_password("t", "short")
        accounts.set_password("t", PASSWORD)
        token, session = accounts.login("t", PASSWORD)
        assert accounts.session(token).username == "t" and accounts.login("t", "not it at all") is None
        assert accounts.login("nobody", PASSWORD) is None
        accounts._db.execute("UPDATE web_sessions SET expires = '2000-01-01T00:00:00+00:00'")
        assert accounts.session(token) is None
        token, _ = accounts.login("t", PASSWORD)
        accounts.set_password("t", PASSWORD + "!")                 # a new password ends every session
        assert accounts.session(token) is None


def test_on_a_clinic_network_every_page_needs_a_login(web, product):
    _, db = web
    client = TestClient(create_app(WebContext(db, product, login_everywhere=True)))
    for path in ("/", "/history", "/results/4", "/patients/P-000123"):
        assert client.get(path, follow_redirects=False).headers["location"] == "/tech/login", path
    assert client.get("/api/results").status_code == 401 and client.get("/static/style.css").status_code == 200
    assert _login(client).status_code == 303
    assert client.get("/patients/P-000123").status_code == 200 and client.get("/api/results").status_code == 200
