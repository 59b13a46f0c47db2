"""Home monitoring: alerts raised as readings are stored (deduplicated, escalated, reopened after
acknowledgement), delivered to the clinic over FHIR and HL7, shown in the clinic view, and a
patient's trend plot from the command line."""
import re
import ssl
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from device.monitoring.alerts import judge, load_rules
from device.lab.config import load_config
from device.store.results import ResultStore
from device.lab.sync import Syncer, destinations
from device.web.app import WebContext, create_app
from device.web.auth import Accounts
from labdata import RESULT
from simulator.lab_fhir import FhirPeer
from simulator.lab_mllp import MllpPeer

RULES = judge(load_rules())


def _reading(glucose: str, value: float) -> dict:
    analytes = [dict(a, level=glucose, value=value, flags=["abnormal"] if glucose != "neg" else [])
                if a["analyte"] == "GLU" else a for a in RESULT["analytes"]]
    return {**RESULT, "analytes": analytes}


@pytest.fixture
def store(tmp_path):
    with ResultStore(tmp_path / "results.db") as s:
        yield s


def test_alerts_are_stored_with_the_reading_once_per_condition_and_escalate(store):
    first = store.add(_reading("250", 260.0), patient_id="P-1", judge=RULES)
    alerts = store.alerts(result_id=first.result_id)
    assert sorted(a["rule_id"] for a in alerts) == ["glucose_high", "nitrite_with_leukocytes"]
    assert {a["severity"] for a in alerts} == {"warning"}
    store.add(_reading("250", 255.0), patient_id="P-1", judge=RULES)
    assert len(store.alerts("P-1")) == 2                                     # the same conditions: no new alert
    worse = store.add(_reading("500", 520.0), patient_id="P-1", judge=RULES)
    escalated, = store.alerts(result_id=worse.result_id)
    assert escalated["severity"] == "urgent" and escalated["condition_key"] == "glucose_high:GLU>=500"
    for alert in store.alerts("P-1", open_only=True):
        assert store.acknowledge(alert["id"], "nurse-2")
    assert store.alerts("P-1", open_only=True) == []
    again = store.add(_reading("250", 262.0), patient_id="P-1", judge=RULES)
    assert {a["rule_id"] for a in store.alerts(result_id=again.result_id)} == {"glucose_high", "nitrite_with_leukocytes"}
    calm = store.add(_reading("neg", 5.0), patient_id="P-2", judge=RULES)
    assert [a["rule_id"] for a in store.alerts(result_id=calm.result_id)] == ["nitrite_with_leukocytes"]
    assert all("P-1" not in a["message"] and "P-1" not in a["advice"] for a in store.alerts())


def test_qc_readings_and_refusals_raise_no_alert(store):
    store.add(_reading("500", 520.0), patient_id="P-1", judge=RULES, for_lab=False)
    store.add({"schema": "stripread.read/1", "status": "error"}, patient_id="P-1", judge=RULES)
    assert store.alerts() == []


@pytest.fixture(scope="module")
def server_tls(lab_ca):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    lab_ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


def test_alerts_reach_the_clinic_over_fhir_and_hl7_once(tmp_path, store, lab_ca, server_tls):
    lab_ca.cert_pem.write_to_path(str(tmp_path / "lab-ca.pem"))
    with FhirPeer(tls=server_tls) as fhir, MllpPeer(tls=server_tls) as mllp:
        (tmp_path / "lab.toml").write_text(f'[fhir]\nurl = "{fhir.url}"\nca_file = "lab-ca.pem"\n'
                                           f'[hl7]\nhost = "127.0.0.1"\nport = {mllp.port}\nca_file = "lab-ca.pem"\n')
        config = load_config(tmp_path / "lab.toml")
        reading = store.add(_reading("500", 520.0), patient_id="P-1", judge=RULES)
        syncer = Syncer(store, destinations(config), config)
        summary = syncer.sync_once()
        assert (summary.sent, summary.alerts_sent) == (1, 2)
        assert syncer.sync_once().alerts_sent == 0                           # delivered: not sent again
        syncer.close()
        communications = fhir.resources("Communication")
        assert len(communications) == 2
        urgent = next(c for c in communications if c["priority"] == "asap")
        assert urgent["subject"]["identifier"]["value"] == "P-1"
        about = {ref["identifier"]["value"] for ref in urgent["about"]}
        glucose = next(o for o in fhir.resources("Observation") if o["code"]["text"] == "Glucose")
        assert f"urn:uuid:{reading.result_id}" in about and glucose["identifier"][0]["value"] in about
        assert "Very high glucose" in urgent["payload"][0]["contentString"]
        alert_messages = [m for m in mllp.messages if "ALERT" in m.to_er7().split("\r")[2]]
        assert len(alert_messages) == 2
        obx = next(s for s in alert_messages[0].to_er7().split("\r") if s.startswith("OBX")).split("|")
        assert obx[2] == "TX" and obx[8] in ("A", "AA")
        assert all(a["delivery"] == "sent" for a in store.alerts())


def test_the_clinic_view_lists_patients_needing_review_and_acknowledges(tmp_path, store, product):
    store.add(_reading("250", 260.0), patient_id="P-1", judge=RULES)
    store.add(_reading("1000", 990.0), patient_id="P-9", judge=RULES)
    with Accounts(store.path) as accounts:
        accounts.set_password("nurse-2", "a long clinic password")
    client = TestClient(create_app(WebContext(store.path, product)))
    assert client.get("/api/clinic/alerts").status_code == 401
    assert client.get("/clinic", follow_redirects=False).status_code == 303
    token = re.search(r'name="form_token" value="([^"]+)"', client.get("/tech/login").text).group(1)
    client.post("/tech/login", data={"username": "nurse-2", "password": "a long clinic password", "form_token": token})
    view = client.get("/api/clinic/alerts").json()
    assert [p["patient_id"] for p in view["review"]] == ["P-9", "P-1"]       # the urgent one first
    page = client.get("/clinic").text
    assert "Very high glucose" in page and "/patients/P-9" in page
    first = view["open"][0]["id"]
    assert client.post(f"/clinic/alerts/{first}/acknowledge", data={"csrf": "guess"}).status_code == 403
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert client.post(f"/clinic/alerts/{first}/acknowledge", data={"csrf": csrf}).status_code == 200
    after = client.get("/api/clinic/alerts").json()
    assert first not in [a["id"] for a in after["open"]] and after["acknowledged"][0]["acknowledged_by"] == "nurse-2"
    result_page = client.get(f"/results/{view['open'][-1]['seq']}").text
    # no lab is configured on this reader: nobody has been told, and the page says so
    assert "Your clinic has been told" not in result_page
    assert "This reader does not send results to a clinic" in result_page


def test_stripread_trend_prints_each_analyte_and_draws_the_plot(tmp_path, store):
    for glucose, value in (("neg", 5.0), ("100", 110.0), ("250", 260.0), ("500", 520.0)):
        store.add(_reading(glucose, value), patient_id="P-1")
    out = tmp_path / "trend.png"
    run = subprocess.run([sys.executable, "-m", "device.cli.commands", "trend", "--patient", "P-1", "--out", str(out),
                          "--db", str(store.path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert re.search(r"GLU\s+4 tests, latest 500 .*rising", run.stdout)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    nobody = subprocess.run([sys.executable, "-m", "device.cli.commands", "trend", "--patient", "nobody", "--db",
                             str(store.path)], capture_output=True, text=True, timeout=60)
    assert nobody.returncode == 1 and "no readings" in nobody.stdout
