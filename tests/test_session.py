"""The reading session's state machine, driven by a fake clock, a scripted board and the simulated
camera whose pads develop over time."""
import contextlib
import queue
from dataclasses import dataclass

import pytest

from calibration.specs import load_card, load_product
from device.runtime.camera import CameraLost
from device.reading.reader import Reader
from device.runtime.session import LATE_TOLERANCE_S, ReadingSession
from device.store.results import ResultStore
from firmware_bridge.host import BoardUnavailable, Climate, Event
from models.onnx_model import OnnxPadModel
from simulator.camera import SimulatedCamera


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def now(self):
        return self.t

    def sleep(self, seconds):
        self.t += max(seconds, 0.0)

    def held(self):
        return contextlib.nullcontext()


class ScriptedEvents:
    """Board events that become visible when the fake clock reaches their time."""

    def __init__(self, clock, script):
        self.clock, self.script, self.due = clock, sorted(script, key=lambda e: e[0]), queue.Queue()

    def _release(self):
        while self.script and self.script[0][0] <= self.clock.now():
            self.due.put(self.script.pop(0)[1])

    def empty(self):
        self._release()
        return self.due.empty()

    def get_nowait(self):
        self._release()
        return self.due.get_nowait()


@dataclass
class FakeBoard:
    clock: FakeClock
    script: list
    climate_now: Climate = Climate(humidity_pct=45.0, temperature_c=22.0)
    fail: bool = False

    def __post_init__(self):
        self.events = ScriptedEvents(self.clock, self.script)
        self.leds = (0, 0, 0)
        self.led_history = []

    def climate(self):
        if self.fail:
            raise BoardUnavailable("gone")
        return self.climate_now

    def set_leds(self, r, g, b):
        self.leds = (r, g, b)
        self.led_history.append(self.leds)

    def leds_off(self):
        self.leds = (0, 0, 0)


class DippingCamera(SimulatedCamera):
    """The simulated camera, told by the scripted board when the strip went in; optionally slow to
    start, slow to deliver (capture number k takes `delays[k]` seconds of the fake clock after its
    exposure, so the reader falls behind) or lost after some captures."""

    def __init__(self, *args, delays=None, start_delay=0.0, lose_after=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.delays, self.start_delay, self.lose_after, self.taken = delays or {}, start_delay, lose_after, 0

    def start(self, locked=None):
        self.clock.sleep(self.start_delay)
        return super().start(locked)

    def capture(self):
        if self.lose_after is not None and self.taken >= self.lose_after:
            raise CameraLost("unplugged")
        photo = super().capture()
        self.clock.sleep(self.delays.get(self.taken, 0.0))
        self.taken += 1
        return photo


@pytest.fixture(scope="module")
def reader():
    product = load_product("generic-10")
    return Reader(load_card(), product, OnnxPadModel(product))


def _session(reader, tmp_path, script, dip_at=5.0, **camera_options):
    clock = FakeClock()
    board = FakeBoard(clock, [(dip_at, Event("strip_inserted"))] + script)
    camera = DippingCamera(reader.product, clock, seed=3, resolution=(1456, 1088), **camera_options)
    camera.dip(dip_at)
    store = ResultStore(tmp_path / "r.db")
    return ReadingSession(reader, board, camera, store, clock), board, camera, store


def test_a_full_session_reads_each_pad_at_its_own_time(reader, tmp_path):
    session, board, camera, store = _session(reader, tmp_path, [])
    report = session.run(patient_id="P-1", operator_id="N-1")
    assert [s for _, s in report.state_log] == ["armed", "developing", "stored", "idle"]
    assert report.outcome == "completed"
    stored = store.history()[0]
    captures = stored.result["session"]["captures"]
    assert [c["read_at_s"] for c in captures] == sorted({p.read_at_s for p in reader.product.pads})
    assert all(c["read_at_s"] - 1 <= c["taken_at_s"] <= c["read_at_s"] + 1 for c in captures)
    got = {a["analyte"]: a["level"] for a in stored.result["analytes"]}
    assert sum(got[a] == level for a, level in camera.final_levels.items()) >= 9
    assert stored.patient_id == "P-1" and store.outbox_counts()["pending"] == 1
    assert board.led_history == [(255, 255, 255)] and board.leds == (0, 0, 0)


def test_qc_locks_patient_sessions_and_the_passing_run_is_named_in_provenance(reader, tmp_path):
    from calibration.in_force import QcStatus
    session, board, camera, store = _session(reader, tmp_path, [])
    session.admit = lambda: QcStatus(True, "Quality control failed (neg): patient tests are locked.", None)
    locked = session.run(patient_id="P-1")
    assert locked.outcome == "locked" and board.led_history == []          # no strip was read
    assert store.history()[0].result["message"].startswith("Quality control failed")
    qc_session = session.run(purpose="qc")                                  # a control strip still reads
    assert qc_session.outcome == "completed" and store.outbox_counts()["pending"] == 0
    session, *_, store = _session(reader, tmp_path / "again", [])
    session.admit = lambda: QcStatus(False, "Quality control passed.", "qc-0123456789ab")
    session.run(patient_id="P-1")
    assert store.history()[0].result["provenance"]["qc_run_id"] == "qc-0123456789ab"


def test_reading_every_pad_at_the_first_read_time_would_misread_the_slow_ones(reader):
    """Why the session captures at each pad's time: at 30 s the 120 s leukocyte pad is not there yet."""
    clock = FakeClock()
    camera = SimulatedCamera(reader.product, clock, seed=3, resolution=(1456, 1088))
    camera.dip(0.0)
    late_pad = reader.product.pad("LEU")
    if camera.spec.levels.get("LEU", 0) < 1.5:
        camera.spec.levels["LEU"] = float(len(late_pad.levels) - 1)
    clock.t = 30.0
    early = {a["analyte"]: a["level"] for a in reader.read(camera.capture())["analytes"]}
    assert early["LEU"] != camera.final_levels["LEU"]


def test_late_captures_leave_their_pads_unreported(reader, tmp_path):
    # the 40 s capture is delivered 20 s late, so the 45 s one is taken about 15 s after its time
    session, *_, store = _session(reader, tmp_path, [], delays={1: LATE_TOLERANCE_S + 10})
    report = session.run()
    assert report.outcome == "completed"
    analytes = {a["analyte"]: a for a in store.history()[0].result["analytes"]}
    late = {a for a, entry in analytes.items() if "outside_read_window" in entry["flags"]}
    assert late == {p.analyte for p in reader.product.pads if p.read_at_s == 45}
    assert all(analytes[a]["level"] is None and analytes[a]["value"] is None for a in late)
    assert all(analytes[a]["level"] is not None for a in analytes if a not in late)


def test_a_session_left_past_discard_after_is_refused(reader, tmp_path):
    session, *_, store = _session(reader, tmp_path, [], start_delay=200.0)   # nothing taken before 180 s
    session.run()
    result = store.history()[0].result
    assert result["status"] == "error" and result["error"]["code"] == "outside_read_window"


@pytest.mark.parametrize("script,outcome", [
    ([(40.0, Event("button", "cancel"))], "cancelled"),
    ([(50.0, Event("strip_removed"))], "strip_removed"),
    ([(70.0, Event("link_lost", "port vanished"))], "board_lost"),
    ([(20.0, Event("board_reset"))], "board_lost"),
])
def test_interruptions_end_the_session_with_a_stored_record(reader, tmp_path, script, outcome):
    session, board, _, store = _session(reader, tmp_path, script)
    report = session.run(patient_id="P-2")
    assert report.outcome == outcome
    stored = store.history()[0]
    assert stored.result["status"] == "aborted" and stored.result["outcome"] == outcome
    assert stored.result["message"] and stored.patient_id == "P-2"
    assert board.leds == (0, 0, 0) and [s for _, s in report.state_log][-2:] == ["stored", "idle"]
    assert store.verify().first_broken_seq is None


def test_a_lost_camera_ends_the_session_cleanly(reader, tmp_path):
    session, board, _, store = _session(reader, tmp_path, [], lose_after=2)
    assert session.run().outcome == "camera_lost"
    assert len(store.history()[0].result["session"]["captures"]) == 2 and board.leds == (0, 0, 0)


def test_climate_out_of_range_gates_the_start(reader, tmp_path):
    session, board, _, store = _session(reader, tmp_path, [])
    board.climate_now = Climate(humidity_pct=95.0, temperature_c=22.0)
    report = session.run()
    assert report.outcome == "climate_out_of_range" and board.led_history == []
    assert "95 % humidity" in store.history()[0].result["message"]


def test_a_controller_gone_before_the_start(reader, tmp_path):
    session, board, _, store = _session(reader, tmp_path, [])
    board.fail = True
    assert session.run().outcome == "board_lost"
    assert store.history()[0].result["outcome"] == "board_lost"


def test_no_strip_disarms_after_a_while(reader, tmp_path):
    session, _, _, store = _session(reader, tmp_path, [], dip_at=10_000.0)
    assert session.run().outcome == "no_strip"


def test_demo_runs_a_whole_session_end_to_end_in_a_subprocess(tmp_path):
    """What a new user runs first: the simulated board over a real pty, the simulated camera, a
    stored result, all within seconds."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, STRIPREAD_DATA=str(tmp_path))
    run = subprocess.run([sys.executable, "-m", "device.cli.commands", "demo", "--seed", "2", "--speed", "40"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "completed: stored as record #1" in run.stdout
    assert "pads read at the level the simulator developed them to" in run.stdout
    with ResultStore(tmp_path / "results.db") as store:
        (record,) = store.history()
        assert record.result["status"] == "ok" and record.patient_id == "DEMO"
        assert store.verify().first_broken_seq is None
    assert "DEMO" not in run.stderr          # no patient identifier in anything logged


def test_each_pad_is_pictured_from_its_own_capture(reader, tmp_path):
    import cv2
    import numpy as np
    session, _, _, store = _session(reader, tmp_path, [])
    record = session.run().record
    thumbnails = store.thumbnails(record.result_id)
    assert set(thumbnails) == {p.analyte for p in reader.product.pads}
    glu = cv2.imdecode(np.frombuffer(thumbnails["GLU"], np.uint8), cv2.IMREAD_COLOR)
    assert glu.shape == (40, 40, 3)
    centre, rim = glu[14:26, 14:26].reshape(-1, 3).mean(0), glu[:, :3].reshape(-1, 3).mean(0)
    assert np.abs(centre - rim).max() > 5        # the pad differs from the strip around it


class StoppingClock(FakeClock):
    """A fake clock that asks the reader to shut down once it reaches `at`."""

    def __init__(self, stop, at):
        super().__init__()
        self.stop, self.at = stop, at

    def sleep(self, seconds):
        super().sleep(seconds)
        if self.t >= self.at:
            self.stop.set()


def test_shutdown_during_a_session_stores_it_as_such(reader, tmp_path):
    import threading
    stop = threading.Event()
    clock = StoppingClock(stop, at=50.0)
    board = FakeBoard(clock, [(5.0, Event("strip_inserted"))])
    camera = DippingCamera(reader.product, clock, seed=3, resolution=(1456, 1088))
    camera.dip(5.0)
    with ResultStore(tmp_path / "r.db") as store:
        report = ReadingSession(reader, board, camera, store, clock, stop=stop).run()
        assert report.outcome == "shutdown" and board.leds == (0, 0, 0)
        assert store.history()[0].result["outcome"] == "shutdown"


def test_a_patient_card_in_view_identifies_the_patient():
    import cv2
    import numpy as np
    from device.runtime.service import patient_from_photo
    from simulator.scene import photograph, random_scene
    rng = np.random.default_rng(8)
    data, _ = photograph(random_scene(rng, product="generic-10", resolution=(1456, 1088)), rng)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert patient_from_photo(data) is None
    code = cv2.resize(cv2.QRCodeEncoder.create().encode("P-4711"), (160, 160), interpolation=cv2.INTER_NEAREST)
    image[20:180, 20:180] = cv2.copyMakeBorder(code, 0, 0, 0, 0, cv2.BORDER_CONSTANT)[..., None]
    assert patient_from_photo(cv2.imencode(".jpg", image)[1].tobytes()) == "P-4711"
    # a code that is no patient id (a URL, a hostile string) links nothing: the web's rule holds here too
    code = cv2.resize(cv2.QRCodeEncoder.create().encode("<b>P 47/11</b>"), (160, 160), interpolation=cv2.INTER_NEAREST)
    image[20:180, 20:180] = code[..., None]
    assert patient_from_photo(cv2.imencode(".jpg", image)[1].tobytes()) is None


def test_the_service_runs_sessions_syncs_them_logs_json_without_patient_data_and_stops_on_sigterm(tmp_path):
    """`stripread run` end to end: two simulated strips, each result sent by the background sync
    to a FHIR lab on loopback as the home reader's patient, whose id no log line shows."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from simulator.lab_fhir import FhirPeer
    lab = FhirPeer().start()
    (tmp_path / "lab.toml").write_text('[lab]\nallow_insecure_loopback = true\ndefault_patient = "HOME-1"\n'
                                       f'[fhir]\nurl = "{lab.url}"\n')
    env = dict(os.environ, STRIPREAD_DATA=str(tmp_path), STRIPREAD_LAB_CONFIG=str(tmp_path / "lab.toml"))
    service = subprocess.Popen([sys.executable, "-m", "device.cli.commands", "run", "--simulate", "--speed", "60",
                                "--strips", "2", "--operator", "N-9", "--web", "127.0.0.1:0"],
                               stderr=subprocess.PIPE, text=True, env=env)
    deadline, lines = time.monotonic() + 90, []
    while time.monotonic() < deadline:
        line = service.stderr.readline()
        lines.append(line)
        if sum('"session completed"' in ln for ln in lines) == 2:
            break
    ok = sum('"status": "ok"' in ln for ln in lines)
    while len(lab.resources("DiagnosticReport")) < ok and time.monotonic() < deadline:
        time.sleep(0.05)
    service.send_signal(signal.SIGTERM)
    _, rest = service.communicate(timeout=30)
    lines += rest.splitlines()
    assert service.returncode == 0
    entries = [json.loads(ln) for ln in lines if ln.strip()]
    assert entries[-1]["msg"] == "reader stopped" and entries[-1]["sessions"] == 2
    assert "N-9" not in "".join(lines) and "HOME-1" not in "".join(lines)
    with ResultStore(tmp_path / "results.db") as store:
        records = store.history()
        assert len(records) == 2 and all(r.operator_id == "N-9" for r in records)
        assert store.outbox_counts()["sent"] == ok >= 1
    sent = {r["identifier"][0]["value"] for r in lab.resources("DiagnosticReport")}
    assert sent == {f"urn:uuid:{r.result_id}" for r in records if r.result["status"] == "ok"}
    assert lab.resources("DiagnosticReport")[0]["subject"]["identifier"]["value"] == "HOME-1"
    lab.stop()


def test_the_clock_stands_still_while_the_simulator_renders():
    """At 20 times speed, a second of rendering must not age the strip by 20 s."""
    import time
    from device.runtime.session import Clock
    clock = Clock(speed=20.0)
    with clock.held():
        inside = clock.now()
        time.sleep(0.05)
        assert clock.now() == inside
    assert inside <= clock.now() < inside + 20 * 0.04    # on from where it stopped, not 1 s later
