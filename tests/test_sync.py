"""Lab sync against real peers on loopback: the FHIR server and the MLLP listener of `simulator/`,
over TLS with a certificate authority made for the test run. Nothing is lost, nothing duplicated."""
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
import time

import pytest

from device.lab.config import load_config
from device.runtime.session import Clock
from device.store.results import ResultStore
from device.lab.sync import Backoff, Syncer, destinations
from labdata import fill
from simulator.lab_fhir import FhirPeer
from simulator.lab_mllp import MllpPeer

PATIENT = "P-000123"


@pytest.fixture(scope="module")
def server_tls(lab_ca):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    lab_ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def ca_file(tmp_path, lab_ca):
    path = tmp_path / "lab-ca.pem"
    lab_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def store(tmp_path):
    with ResultStore(tmp_path / "results.db") as s:
        yield s


def write_config(folder, fhir: FhirPeer | None = None, mllp: MllpPeer | None = None, extra: str = "",
                 token: str | None = None) -> os.PathLike:
    """A lab configuration file for the peers, with their CA (lab-ca.pem in the same folder)."""
    text = "[sync]\nbackoff_initial_s = 1\nbackoff_max_s = 8\ninterval_s = 5\n" + extra
    if fhir:
        text += f'[fhir]\nurl = "{fhir.url}"\nca_file = "lab-ca.pem"\ntimeout_s = 5\n'
        if token:
            (folder / "token").write_text(token)
            text += 'token_file = "token"\n'
    if mllp:
        text += (f'[hl7]\nhost = "127.0.0.1"\nport = {mllp.port}\nca_file = "lab-ca.pem"\ntimeout_s = 2\n'
                 'receiving_application = "LIS"\n')
    path = folder / "lab.toml"
    path.write_text(text)
    return path


def syncer_for(store, config_path, clock=None) -> Syncer:
    config = load_config(config_path)
    return Syncer(store, destinations(config), config, clock=clock)


def test_results_reach_both_labs_once_with_every_pad(tmp_path, store, server_tls, ca_file):
    with FhirPeer(tls=server_tls, token="t0ken") as fhir, MllpPeer(tls=server_tls) as mllp:
        syncer = syncer_for(store, write_config(tmp_path, fhir, mllp, token="t0ken"))
        records = fill(store, 5)
        progress = []
        summary = syncer.sync_once(on_progress=lambda done, total: progress.append((done, total)))
        syncer.close()
        assert (summary.sent, summary.failed, summary.waiting) == (5, 0, None)
        assert progress[-1] == (5, 5)
        assert store.outbox_counts() == {"pending": 0, "sent": 5, "failed": 0}
        reports = fhir.resources("DiagnosticReport")
        assert len(reports) == 5 and len(fhir.resources("Observation")) == 5 * 7
        assert len(fhir.resources("Device")) == 1                    # one reader configuration
        assert {r["identifier"][0]["value"] for r in reports} == {f"urn:uuid:{r.result_id}" for r in records}
        observation = fhir.resources("Observation")[0]
        assert observation["subject"]["identifier"]["value"] == PATIENT
        assert observation["device"]["reference"].startswith("Device/")          # resolved by the server
        assert all(ref["reference"].startswith("Observation/") for ref in reports[0]["result"])
        assert len(mllp.messages) == 5 and mllp.stats["AA"] == 5
        first = mllp.messages[0]
        assert first.msh.msh_10.to_er7() == records[0].result_id.replace("-", "")[:20]
        order = first.oru_r01_patient_result.oru_r01_order_observation
        assert len(order.oru_r01_observation) == 7
        assert first.oru_r01_patient_result.oru_r01_patient.pid.pid_3.cx_1.to_er7() == PATIENT
        deliveries = store.deliveries(records[0].result_id)
        assert set(deliveries) == {"fhir", "hl7"} and deliveries["fhir"].startswith("DiagnosticReport/")


def test_an_acknowledgement_lost_in_a_crash_is_resent_without_duplicating(tmp_path, store, server_tls, ca_file):
    """The lab stored the result but the reader died before marking it: the resend is recognised."""
    with FhirPeer(tls=server_tls) as fhir, MllpPeer(tls=server_tls) as mllp:
        syncer = syncer_for(store, write_config(tmp_path, fhir, mllp))
        record, = fill(store, 1)
        for sink in syncer.sinks:
            sink.send(record)                                 # acknowledged, never marked
        assert store.outbox_counts()["pending"] == 1
        assert syncer.sync_once().sent == 1
        assert len(fhir.resources("DiagnosticReport")) == 1 and len(fhir.resources("Observation")) == 7
        assert fhir.stats["matched"] == 1 + 7 + 1                # device, pads and report recognised
        assert len(mllp.messages) == 1 and mllp.stats["duplicates"] == 1


def _lab(transport: str, tls):
    return FhirPeer(tls=tls) if transport == "fhir" else MllpPeer(tls=tls)


def _held_by(lab) -> list[str]:
    """The result ids the lab holds, one per stored copy (a duplicate would show twice)."""
    if isinstance(lab, FhirPeer):
        return [r["identifier"][0]["value"].removeprefix("urn:uuid:") for r in lab.resources("DiagnosticReport")]
    return [m.oru_r01_patient_result.oru_r01_order_observation.obr.obr_3.ei_1.to_er7() for m in lab.messages]


def _configured(folder, lab) -> os.PathLike:
    return write_config(folder, **({"fhir": lab} if isinstance(lab, FhirPeer) else {"mllp": lab}))


# HL7 messages cost ~25 ms each to build and as much to check at the peer (hl7apy): fewer of them
TRANSPORTS = [("fhir", 200), ("hl7", 40)]


@pytest.mark.parametrize("transport,n", TRANSPORTS)
def test_a_thirty_second_outage_with_queued_results_delivers_each_exactly_once_in_order(
        tmp_path, store, server_tls, ca_file, transport, n):
    """Time runs 25x (each failed try costs real milliseconds, so not much faster): the lab is down
    for 30 s of reader time while results wait; the sync backs off (a handful of attempts, not a
    storm) and then delivers everything once, in order."""
    clock = Clock(speed=25)
    with _lab(transport, server_tls) as lab:
        syncer = syncer_for(store, _configured(tmp_path, lab), clock=clock)
        records = fill(store, n)
        lab.go_down()
        stop, wake = threading.Event(), threading.Event()
        worker = threading.Thread(target=syncer.run, args=(stop, wake))
        worker.start()
        clock.sleep(30)
        lab.come_up()
        deadline = time.monotonic() + 60
        while store.outbox_counts()["sent"] < n and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        worker.join(10)
        syncer.close()
        assert store.outbox_counts() == {"pending": 0, "sent": n, "failed": 0}
        assert _held_by(lab) == [r.result_id for r in records]          # each once, in the order taken
    first_attempts, = store._db.execute("SELECT attempts FROM outbox WHERE result_id = ?",
                                        (records[0].result_id,)).fetchone()
    # waits drawn from [0.5,1], [1,2], [2,4], [4,8], [4,8], ...: 30 s of outage is 5 to 9 failed tries
    assert 4 <= first_attempts - 1 <= 10


def test_5xx_and_429_are_retried_later_honouring_retry_after(tmp_path, store, server_tls, ca_file):
    with FhirPeer(tls=server_tls) as fhir:
        syncer = syncer_for(store, write_config(tmp_path, fhir))
        fill(store, 3)
        fhir.fail_next(1, status=503)
        summary = syncer.sync_once()
        assert summary.sent == 0 and "503" in summary.waiting and not summary.refused
        fhir.fail_next(1, status=429, retry_after=7)
        summary = syncer.sync_once()
        assert summary.retry_after == 7 and syncer.backoff.next(summary.retry_after) >= 7
        assert syncer.sync_once().sent == 3
        assert len(fhir.resources("DiagnosticReport")) == 3
        last_error = store._db.execute("SELECT attempts, last_error FROM outbox ORDER BY rowid LIMIT 1").fetchone()
        assert last_error == (3, None)                         # two failures, then the acknowledgement


def test_ae_and_ar_are_kept_for_a_person_and_the_others_go_on(tmp_path, store, server_tls, ca_file):
    with MllpPeer(tls=server_tls) as mllp:
        config = write_config(tmp_path, mllp=mllp)
        syncer = syncer_for(store, config)
        records = fill(store, 4)
        mllp.answer_next(1, "AE")
        summary = syncer.sync_once()
        assert (summary.sent, summary.failed) == (3, 1) and summary.failures[0][0] == records[0].seq
        (seq, _, attempts, error), = store.failures()
        assert seq == records[0].seq and error.startswith("hl7: the lab answered AE")
        assert store.outbox_counts() == {"pending": 0, "sent": 3, "failed": 1}
        status = _cli("sync", "--status", "--db", str(store.path))
        assert status.returncode == 1 and "0 pending, 1 failed, 3 sent" in status.stdout
        assert f"record #{seq} failed" in status.stdout
        mllp.answer_next(1, "AR")
        assert store.retry_failed() == 1
        summary = syncer.sync_once()
        assert summary.failed == 1 and "AR" in store.failures()[0][3]
        store.retry_failed()
        assert syncer.sync_once().sent == 1 and len(mllp.messages) == 4


def test_a_dropped_connection_without_ack_is_retried(tmp_path, store, server_tls, ca_file):
    with MllpPeer(tls=server_tls) as mllp:
        syncer = syncer_for(store, write_config(tmp_path, mllp=mllp))
        fill(store, 2)
        mllp.answer_next(1, "drop")
        summary = syncer.sync_once()
        assert summary.sent == 0 and "without an ACK" in summary.waiting
        assert syncer.sync_once().sent == 2 and len(mllp.messages) == 2


def test_wrong_credentials_stop_the_pass_with_one_request_not_a_retry_storm(tmp_path, store, server_tls, ca_file):
    with FhirPeer(tls=server_tls, token="right") as fhir:
        config = write_config(tmp_path, fhir, token="wrong")
        fill(store, 20)
        summary = syncer_for(store, config).sync_once()
        assert summary.refused and "credentials (HTTP 401)" in summary.waiting
        assert fhir.stats["unauthorized"] == 1 and fhir.resources("DiagnosticReport") == []
        assert store.outbox_counts()["pending"] == 20
        run = _cli("sync", "--lab-config", str(config), "--db", str(store.path))
        assert run.returncode == 1 and "the lab refused this reader" in run.stdout
        assert fhir.stats["unauthorized"] == 2


def test_an_untrusted_lab_certificate_is_refused_clearly(tmp_path, store, server_tls):
    import trustme
    (tmp_path / "lab-ca.pem").write_bytes(trustme.CA().cert_pem.bytes())     # some other authority
    with FhirPeer(tls=server_tls) as fhir, MllpPeer(tls=server_tls) as mllp:
        fill(store, 1)
        for peer in ({"fhir": fhir}, {"mllp": mllp}):
            summary = syncer_for(store, write_config(tmp_path, **peer)).sync_once()
            assert summary.refused and "certificate is not trusted" in summary.waiting
        assert fhir.resources("DiagnosticReport") == [] and mllp.messages == []


def test_a_lab_demanding_a_client_certificate_gets_the_readers(tmp_path, store, lab_ca, ca_file):
    demanding = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    lab_ca.issue_cert("127.0.0.1").configure_cert(demanding)
    lab_ca.configure_trust(demanding)
    demanding.verify_mode = ssl.CERT_REQUIRED
    reader = lab_ca.issue_cert("sr-test0001")
    reader.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "reader.pem"))
    with FhirPeer(tls=demanding) as fhir, MllpPeer(tls=demanding) as mllp:
        fill(store, 2)
        without = write_config(tmp_path, fhir, mllp)
        summary = syncer_for(store, without).sync_once()
        # TLS 1.3 reports a missing client certificate after the handshake: the reader sees the
        # lab's alert (refused) or, racing it, a reset connection (retried later)
        assert summary.sent == 0 and summary.waiting and fhir.resources("DiagnosticReport") == []
        text = without.read_text().replace('ca_file = "lab-ca.pem"\n', 'ca_file = "lab-ca.pem"\n'
                                                                        'client_cert = "reader.pem"\n')
        without.write_text(text)
        assert syncer_for(store, without).sync_once().sent == 2
        assert len(fhir.resources("DiagnosticReport")) == 2 and len(mllp.messages) == 2


def test_no_patient_identifier_reaches_a_log_line(tmp_path, store, server_tls, ca_file, caplog):
    with FhirPeer(tls=server_tls) as fhir, MllpPeer(tls=server_tls) as mllp:
        syncer = syncer_for(store, write_config(tmp_path, fhir, mllp))
        fill(store, 3)
        fill(store, 1, patient=None)                                # rejected: no patient at all
        mllp.answer_next(1, "AE")
        fhir.fail_next(1, status=500)
        with caplog.at_level(logging.DEBUG):
            for _ in range(4):
                syncer.sync_once()
        assert store.outbox_counts() == {"pending": 0, "sent": 2, "failed": 2}
        logged = [r.getMessage() + json.dumps(getattr(r, "fields", {})) for r in caplog.records]
        assert len(logged) >= 3 and not any(PATIENT in line for line in logged)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "device.cli.commands", *args], capture_output=True, text=True, timeout=60,
                          env=env)


@pytest.mark.parametrize("transport,n", TRANSPORTS)
def test_a_sync_killed_mid_batch_and_restarted_still_delivers_exactly_once(tmp_path, server_tls, ca_file,
                                                                          transport, n):
    """SIGKILL while the lab holds an answer back: that result is at the lab but not marked sent;
    the restarted sync resends it and the lab recognises it."""
    db = tmp_path / "results.db"
    with ResultStore(db) as store:
        records = fill(store, n)
    with _lab(transport, server_tls) as lab:
        config = _configured(tmp_path, lab)
        lab.set_delay(0.05)
        sync = subprocess.Popen([sys.executable, "-m", "device.cli.commands", "sync", "--lab-config", str(config),
                                 "--db", str(db)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(_held_by(lab)) < n // 3 and time.monotonic() < deadline:
            time.sleep(0.002)
        sync.send_signal(signal.SIGKILL)                  # inside the lab's 50 ms: the answer is pending
        sync.wait()
        with ResultStore(db) as store:
            assert 0 < store.outbox_counts()["sent"] < n
        lab.set_delay(0)
        again = _cli("sync", "--lab-config", str(config), "--db", str(db))
        assert again.returncode == 0, again.stdout + again.stderr
        with ResultStore(db) as store:
            assert store.outbox_counts() == {"pending": 0, "sent": n, "failed": 0}
        assert lab.stats["matched" if transport == "fhir" else "duplicates"] >= 1   # resent, recognised
        assert sorted(_held_by(lab)) == sorted(r.result_id for r in records)


def test_backoff_doubles_with_jitter_up_to_its_cap():
    import random
    backoff = Backoff(2, 60, random.Random(1))
    waits = [backoff.next() for _ in range(8)]
    for n, wait in enumerate(waits):
        ceiling = min(60, 2 * 2 ** n)
        assert ceiling / 2 <= wait <= ceiling
    assert len(set(waits)) == 8                              # jittered, not a fixed schedule
    assert backoff.next(at_least=45) >= 45 and backoff.next(at_least=1e6) <= 60
    backoff.reset()
    assert backoff.next() <= 2
