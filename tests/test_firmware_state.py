"""The Firmware state machine on its own: bytes in, bytes out, no transport."""
from firmware_bridge import protocol as p
from firmware_bridge.firmware import Firmware


def _replies(data):
    return p.FrameDecoder().feed(data)


def test_boot_queues_one_boot_event_with_versions():
    firmware = Firmware(firmware_version=(3, 4, 5))
    (frame,) = _replies(firmware.take_events())
    assert (frame.seq, frame.msg_type) == (0, p.EV_BOOT)
    fields = p.unpack_payload(p.EV_BOOT, frame.payload)
    assert fields == (p.PROTOCOL_MAJOR, p.PROTOCOL_MINOR, 3, 4, 5)
    assert firmware.take_events() == b""


def test_events_only_on_change_with_their_own_counter():
    firmware = Firmware()
    firmware.take_events()
    firmware.strip_sensor(True)
    firmware.strip_sensor(True)
    firmware.lid_sensor(False)  # already closed
    firmware.button_pressed(p.BUTTON_CANCEL)
    events = _replies(firmware.take_events())
    assert [(e.seq, e.msg_type, e.payload) for e in events] == [
        (1, p.EV_STRIP, b"\x01"), (2, p.EV_BUTTON, bytes([p.BUTTON_CANCEL]))]


def test_unknown_type_and_bad_payload_get_nak():
    firmware = Firmware()
    (unknown,) = _replies(firmware.receive(p.encode_frame(7, 0x30)))
    (bad,) = _replies(firmware.receive(p.encode_frame(8, p.SET_LEDS, b"\x01")))
    assert unknown == p.Frame(7, p.NAK, bytes([p.NAK_UNKNOWN_TYPE, 0x30]))
    assert bad == p.Frame(8, p.NAK, bytes([p.NAK_BAD_PAYLOAD, p.SET_LEDS]))
    assert firmware.leds == (0, 0, 0)


def test_a_retried_request_is_answered_again_but_executed_once():
    firmware = Firmware()
    request = p.encode_message(5, p.SET_LEDS, 9, 8, 7)
    first = firmware.receive(request)
    firmware.leds = (0, 0, 0)  # were it executed again, the LEDs would come back on
    assert firmware.receive(request) == first
    assert (firmware.leds, firmware.requests_handled, firmware.duplicates) == ((0, 0, 0), 1, 1)


def test_garbage_is_counted_and_requests_in_one_chunk_all_answered():
    firmware = Firmware()
    replies = _replies(firmware.receive(
        b"\x13\x37\x00" + p.encode_message(1, p.PING) + p.encode_message(2, p.GET_STATUS)))
    assert [r.msg_type for r in replies] == [p.PONG, p.STATUS]
    assert firmware.garbage_frames == 1


def test_climate_is_clamped_to_its_wire_range():
    firmware = Firmware()
    firmware.climate_sensor(150.0, 400.0)
    (frame,) = _replies(firmware.receive(p.encode_message(1, p.GET_CLIMATE)))
    assert p.unpack_payload(p.CLIMATE, frame.payload) == (1000, 32767)
