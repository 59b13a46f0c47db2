"""Host and simulated board over a real pseudo-terminal: every message type and every fault.

The host side is pyserial on the pty's slave path; the board side is the pty master. Heartbeats
are off (an hour apart) except where a test is about them, so fault counters stay exact.
"""
import queue
import threading
import time

import pytest
import serial

from firmware_bridge import protocol as p
from firmware_bridge.firmware import Firmware
from firmware_bridge.host import (BoardInfo, BoardRejected, BoardUnavailable, Climate, Event,
                                  IncompatibleProtocol, ReaderBoard, ReplyTimeout)
from firmware_bridge.simulator import SimulatedBoard

TIMEOUT = 0.1
QUIET = dict(timeout=TIMEOUT, retries=2, heartbeat_interval=3600.0, reconnect_backoff=(0.02, 0.2))


@pytest.fixture
def sim():
    with SimulatedBoard(seed=1) as board:
        yield board


@pytest.fixture
def board(sim):
    with ReaderBoard(sim.port, **QUIET) as reader:
        yield reader


def next_event(board, kind, timeout=3.0):
    """The first event of `kind`, skipping others; fails the test if none comes in time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            event = board.events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail("no %s event within %.1f s" % (kind, timeout))
        if event.kind == kind:
            return event


def eventually(predicate, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not met within %.1f s" % timeout)
        time.sleep(0.01)


def why_unavailable(board):
    try:
        board.ping()
    except BoardUnavailable as error:
        return str(error)
    return ""


def no_more_events(board):
    """True if nothing is queued once a ping's reply has come back: the board sends events and
    replies down one stream in order, so a round trip flushes anything already sent."""
    board.ping()
    return board.events.empty()


# ---- every message type ---------------------------------------------------------------------

def test_hello_reports_firmware_and_protocol_versions(board):
    expected = BoardInfo(firmware_version=(1, 2, 0), protocol_version=(1, 0))
    assert board.info == expected and board.hello() == expected


def test_ping_measures_a_round_trip(board):
    assert 0 < board.ping() < TIMEOUT


def test_leds_are_set_per_channel_and_switched_off(sim, board):
    board.set_leds(10, 200, 255)
    assert sim.firmware.leds == (10, 200, 255) and board.status().leds == (10, 200, 255)
    board.leds_off()
    assert sim.firmware.leds == (0, 0, 0)
    with pytest.raises(ValueError):
        board.set_leds(256, 0, 0)


def test_climate_carries_humidity_and_negative_temperature(sim, board):
    sim.set_climate(humidity=55.5, temperature=-3.25)
    assert board.climate() == Climate(humidity_pct=55.5, temperature_c=-3.25)


def test_strip_insert_and_remove_are_events_and_status(sim, board):
    sim.insert_strip()
    assert next_event(board, "strip_inserted") == Event("strip_inserted")
    assert board.strip_present()
    sim.remove_strip()
    next_event(board, "strip_removed")
    assert not board.strip_present()


def test_buttons_and_lid_arrive_in_order_on_queue_and_callback(sim):
    seen = []
    with ReaderBoard(sim.port, on_event=seen.append, **QUIET) as board:
        sim.press(p.BUTTON_START)
        sim.open_lid()
        sim.close_lid()
        sim.press(p.BUTTON_CANCEL)
        kinds = [board.events.get(timeout=1) for _ in range(4)]
        assert [(e.kind, e.detail) for e in kinds] == [
            ("button", "start"), ("lid", "open"), ("lid", "closed"), ("button", "cancel")]
        assert seen == kinds and board.status().lid_open is False


def test_nak_for_unknown_type_and_bad_payload_over_the_wire(sim):
    with serial.Serial(sim.port, timeout=1) as port:
        port.write(p.encode_frame(7, 0x30) + p.encode_frame(8, p.SET_LEDS, b"\x01"))
        decoder, replies = p.FrameDecoder(), []
        while len(replies) < 2:
            chunk = port.read(1)
            assert chunk, "board did not answer"
            replies += decoder.feed(chunk)
    assert replies == [p.Frame(7, p.NAK, bytes([p.NAK_UNKNOWN_TYPE, 0x30])),
                       p.Frame(8, p.NAK, bytes([p.NAK_BAD_PAYLOAD, p.SET_LEDS]))]


class FirmwareWithoutClimate(Firmware):
    """An older board that does not know GET_CLIMATE."""

    def _handle(self, frame):
        if frame.msg_type == p.GET_CLIMATE:
            return p.encode_message(frame.seq, p.NAK, p.NAK_UNKNOWN_TYPE, frame.msg_type)
        return super()._handle(frame)


def test_host_raises_board_rejected_on_nak():
    with SimulatedBoard(FirmwareWithoutClimate()) as sim, ReaderBoard(sim.port, **QUIET) as board:
        with pytest.raises(BoardRejected, match="unknown message type") as info:
            board.climate()
        assert info.value.msg_type == p.GET_CLIMATE
        assert board.stats.retries == 0  # a NAK is an answer, not a loss


# ---- versions and lifecycle -----------------------------------------------------------------

def test_incompatible_protocol_major_is_refused_and_threads_stop():
    with SimulatedBoard(Firmware(protocol_version=(2, 0))) as sim:
        with pytest.raises(IncompatibleProtocol, match="protocol 2.0.*update the host"):
            ReaderBoard(sim.port, **QUIET)
    assert not [t for t in threading.enumerate() if t.name.startswith("board-")]


def test_newer_minor_version_is_accepted():
    with SimulatedBoard(Firmware(protocol_version=(1, 7))) as sim:
        with ReaderBoard(sim.port, **QUIET) as board:
            assert board.info.protocol_version == (1, 7)


def test_missing_port_raises_board_unavailable(tmp_path):
    with pytest.raises(BoardUnavailable):
        ReaderBoard(str(tmp_path / "ttyNOPE"), **QUIET)


def test_close_joins_threads_and_later_calls_fail_cleanly(sim):
    board = ReaderBoard(sim.port, **QUIET)
    board.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("board-")]
    with pytest.raises(BoardUnavailable):
        board.ping()


# ---- faults -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fault,climate", [("drop_byte_probability", (40.0, 25.5)),
                                           ("corrupt_byte_probability", (61.2, 18.75))])
def test_damaged_bytes_are_survived_by_retries_and_never_taken_for_data(sim, fault, climate):
    with ReaderBoard(sim.port, timeout=TIMEOUT, retries=8, heartbeat_interval=3600.0) as board:
        setattr(sim.faults, fault, 0.02)
        sim.set_climate(*climate)
        for _ in range(20):
            assert board.climate() == Climate(*climate)
        stats = board.stats
        assert stats.retries > 0 and stats.timeouts == 0
        assert stats.garbage_frames + sim.firmware.garbage_frames > 0


def test_missing_replies_are_retried_with_the_same_sequence_number(sim, board):
    handled = sim.firmware.requests_handled
    sim.faults.replies_to_drop = 2
    board.set_leds(1, 2, 3)
    assert board.stats.retries == 2
    assert sim.firmware.duplicates == 2  # the retries were recognised, not executed again
    assert sim.firmware.requests_handled == handled + 1


def test_a_board_that_never_answers_times_out_within_the_budget(sim, board):
    sim.faults.replies_to_drop = 1000
    started = time.monotonic()
    with pytest.raises(ReplyTimeout, match="after 3 attempts"):
        board.ping()
    assert time.monotonic() - started < 3 * TIMEOUT + 0.1
    assert board.stats.timeouts == 1
    sim.faults.replies_to_drop = 0
    board.ping()


def test_a_delayed_reply_is_taken_after_a_retry(sim, board):
    sim.faults.reply_delay_s = 1.5 * TIMEOUT
    board.set_leds(4, 5, 6)
    assert board.stats.retries >= 1 and sim.firmware.leds == (4, 5, 6)
    sim.faults.reply_delay_s = 0.0
    eventually(lambda: sim.firmware.duplicates >= 1)
    assert board.climate() == Climate(45.0, 22.0)  # the late duplicate reply did not confuse it
    assert board.stats.stale_replies >= 1


def test_spontaneous_reset_is_reported_and_the_host_says_hello_and_restores_leds(sim, board):
    board.set_leds(7, 8, 9)
    sim.reset()
    reset = next_event(board, "board_reset")
    assert reset.detail == BoardInfo((1, 2, 0), (1, 0))
    eventually(lambda: sim.firmware.leds == (7, 8, 9))
    assert sim.firmware.requests_handled >= 2  # HELLO, then SET_LEDS, since the reset
    assert board.connected and board.ping() > 0


def test_stuck_strip_sensor_reports_nothing_until_it_frees(sim, board):
    sim.faults.strip_sensor_stuck = True
    sim.insert_strip()
    assert no_more_events(board) and not board.strip_present()
    sim.faults.strip_sensor_stuck = False
    sim.insert_strip()
    next_event(board, "strip_inserted")
    assert board.strip_present()


def test_lost_event_shows_in_the_missed_counter(sim, board):
    sim.faults.drop_byte_probability = 1.0
    sim.insert_strip()
    sim.faults.drop_byte_probability = 0.0
    sim.press(p.BUTTON_START)
    next_event(board, "button")
    assert board.stats.events_missed == 1


def test_unplug_then_replug_loses_and_restores_the_link(sim, board):
    sim.unplug()
    assert "serial error" in next_event(board, "link_lost").detail
    started = time.monotonic()
    with pytest.raises(BoardUnavailable, match="link is down"):
        board.ping()
    assert time.monotonic() - started < TIMEOUT
    sim.replug()
    assert next_event(board, "link_restored").detail == BoardInfo((1, 2, 0), (1, 0))
    assert board.ping() > 0 and board.connected
    assert (board.stats.link_losses, board.stats.reconnects) == (1, 1)


def test_silent_board_is_detected_by_missed_heartbeats_and_recovers(sim):
    with ReaderBoard(sim.port, timeout=0.05, retries=0, heartbeat_interval=0.05,
                     max_missed_heartbeats=2, reconnect_backoff=(0.02, 0.1)) as board:
        sim.faults.replies_to_drop = 10**6
        assert "heartbeats missed" in next_event(board, "link_lost").detail
        with pytest.raises(BoardUnavailable):
            board.climate()
        sim.faults.replies_to_drop = 0
        next_event(board, "link_restored")
        assert board.climate() == Climate(45.0, 22.0)


def test_reflashed_board_with_new_protocol_is_refused_with_backoff(sim):
    with ReaderBoard(sim.port, timeout=TIMEOUT, heartbeat_interval=3600.0,
                     reconnect_backoff=(0.02, 1.0)) as board:
        sim.unplug()
        next_event(board, "link_lost")
        sim.firmware = Firmware(protocol_version=(2, 0))
        sim.replug()
        eventually(lambda: "protocol 2.0" in why_unavailable(board))
        time.sleep(1.0)  # let the host keep trying: the backoff must keep it from spinning
        assert "update the host software" in why_unavailable(board)
        # HELLOs: backoff 0.02 s doubling gives at most 6 in this time, a fixed 0.02 s over 12
        assert sim.firmware.requests_handled <= 7
        assert not board.connected and board.stats.reconnects == 0
