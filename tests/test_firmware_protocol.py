"""Frame encoding and the streaming FrameDecoder, including property-based fuzzing of garbage."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import protocol as p

MESSAGES = [
    (p.HELLO, ()), (p.PING, ()), (p.SET_LEDS, (255, 0, 17)), (p.GET_CLIMATE, ()),
    (p.GET_STATUS, ()), (p.EV_BOOT, (1, 0, 1, 2, 0)), (p.EV_STRIP, (1,)), (p.EV_BUTTON, (2,)),
    (p.EV_LID, (0,)), (p.HELLO_REPLY, (1, 0, 1, 2, 3, 9)), (p.PONG, ()), (p.ACK, ()),
    (p.CLIMATE, (455, -325)), (p.STATUS, (3, 1, 2, 3)), (p.NAK, (p.NAK_BAD_PAYLOAD, p.SET_LEDS)),
]


def test_crc_is_ccitt_false():
    assert p.crc16(b"123456789") == 0x29B1


@pytest.mark.parametrize("msg_type, fields", MESSAGES)
def test_every_message_type_round_trips(msg_type, fields):
    wire = p.encode_message(200, msg_type, *fields)
    assert wire.endswith(p.DELIMITER) and wire.count(p.DELIMITER) == 1
    (frame,) = p.FrameDecoder(accept_types=p.REQUESTS + p.DEVICE_TO_HOST).feed(wire)
    assert (frame.seq, frame.msg_type) == (200, msg_type)
    assert p.unpack_payload(msg_type, frame.payload) == fields


def test_wrong_payload_length_is_a_protocol_error():
    with pytest.raises(p.ProtocolError):
        p.unpack_payload(p.SET_LEDS, b"\x01\x02")
    with pytest.raises(p.ProtocolError):
        p.pack_payload(p.SET_LEDS, 256, 0, 0)
    with pytest.raises(p.ProtocolError):
        p.encode_frame(0, p.PING, bytes(p.MAX_PAYLOAD + 1))


def _body_frame(body, crc_error=0):
    crc = p.crc16(body) ^ crc_error
    return p.cobs_encode(body + crc.to_bytes(2, "little")) + p.DELIMITER


@pytest.mark.parametrize("wire, reason", [
    (_body_frame(bytes((p.FRAME_FORMAT, 1, p.PONG)), crc_error=0x0100), "bad_crc"),
    (p.encode_message(1, 0x30), "unknown_type"),
    (_body_frame(bytes((p.FRAME_FORMAT, 1, p.PING)) + bytes(p.MAX_PAYLOAD + 1)), "oversized"),
    (bytes(range(1, 250)) * 3 + b"\x00", "oversized"),
    (_body_frame(b"\x01\x02"), "truncated"),
    (_body_frame(bytes((0x07, 1, p.PING))), "bad_format"),
    (b"\x05\x01\x00", "bad_cobs"),
])
def test_each_kind_of_garbage_is_counted_and_the_next_frame_survives(wire, reason):
    decoder = p.FrameDecoder(accept_types=p.DEVICE_TO_HOST)
    good = p.encode_message(9, p.PONG)
    assert decoder.feed(wire + good) == [p.Frame(9, p.PONG, b"")]
    assert decoder.garbage[reason] == 1 and decoder.garbage_total == 1


def test_idle_delimiters_are_not_garbage():
    decoder = p.FrameDecoder()
    assert decoder.feed(b"\x00\x00\x00") == [] and decoder.garbage_total == 0


def test_reset_drops_a_partial_frame():
    decoder = p.FrameDecoder()
    decoder.feed(b"\x03\x11")
    decoder.reset()
    assert decoder.feed(p.encode_message(4, p.PONG)) == [p.Frame(4, p.PONG, b"")]
    assert decoder.garbage_total == 0


frames = st.lists(
    st.tuples(st.integers(0, 255), st.sampled_from(p.DEVICE_TO_HOST),
              st.binary(max_size=p.MAX_PAYLOAD)).map(lambda t: p.Frame(*t)),
    min_size=1, max_size=6)


# plain random bytes rarely hold a run without 0x00 longer than a frame: ask for such runs too
noise = st.one_of(
    st.binary(min_size=1, max_size=400),
    st.binary(min_size=p.MAX_ENCODED - 8, max_size=300).map(lambda b: b.replace(b"\x00", b"\x01")))


def _feed_in_chunks(decoder, stream, cuts):
    out, start = [], 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        out.extend(decoder.feed(stream[start:cut]))
        start = cut
    return out


@settings(max_examples=300, deadline=None)
@given(noise=noise, valid=frames,
       cuts=st.lists(st.integers(0, 1200), max_size=8))
def test_random_noise_never_raises_and_frames_after_the_next_delimiter_survive(noise, valid, cuts):
    decoder = p.FrameDecoder(accept_types=p.DEVICE_TO_HOST)
    stream = noise + p.DELIMITER + b"".join(p.encode_frame(*f) for f in valid)
    out = _feed_in_chunks(decoder, stream, cuts)
    assert out[len(out) - len(valid):] == valid


CORRUPTIONS = ("none", "flip", "truncate", "lose_delimiter", "noise_before")


@settings(max_examples=300, deadline=None)
@given(data=st.data(), valid=frames)
def test_corrupted_traffic_loses_at_most_the_frame_hit(data, valid):
    """A frame survives when its own bytes are untouched and a 0x00 precedes it."""
    stream = bytearray()
    intact = []
    for frame in valid:
        wire = bytearray(p.encode_frame(*frame))
        corruption = data.draw(st.sampled_from(CORRUPTIONS))
        if corruption == "flip":
            at = data.draw(st.integers(0, len(wire) - 2))
            wire[at] ^= data.draw(st.integers(1, 255))
        elif corruption == "truncate":
            wire = wire[:data.draw(st.integers(0, len(wire) - 2))] + p.DELIMITER
        elif corruption == "lose_delimiter":
            wire = wire[:-1]
        elif corruption == "noise_before":
            stream += data.draw(noise)
        start = len(stream)
        if corruption in ("none", "noise_before") and (start == 0 or stream[start - 1] == 0):
            intact.append(frame)
        stream += wire
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    out = iter(_feed_in_chunks(p.FrameDecoder(accept_types=p.DEVICE_TO_HOST), bytes(stream), cuts))
    assert all(frame in out for frame in intact)  # an ordered subsequence of the output


@pytest.mark.parametrize("data,encoded", [
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
    (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255))),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
])
def test_cobs_matches_the_published_examples(data, encoded):
    """The worked examples of Cheshire & Baker's COBS (as listed on its Wikipedia page)."""
    assert p.cobs_encode(data) == encoded
    assert p.cobs_decode(encoded) == data
