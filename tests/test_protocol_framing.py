"""MessageBuffer: whole DeliveryMessages out of a TCP byte stream."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_protocol_fixtures import CMCC, CMII, T, record

from mediation import pdu as P
from mediation.pdu.tlv import Truncated, read_header
from mediation.protocol import MessageBuffer, ProtocolError, envelope_bytes
from mediation.protocol.envelope import record_envelope

KEEPALIVE = P.encode(P.Keepalive(7, T))
ACK = P.encode(P.Acknowledgement(CMII, 300))
ENVELOPE = record_envelope(CMCC, record(5, payload=300), redelivered=False)
STREAM = KEEPALIVE + ENVELOPE + ACK


def test_envelope_is_long_enough_to_need_a_long_length() -> None:
    assert ENVELOPE[1] & 0x80  # the split tests cross a multi-octet length
    assert envelope_bytes  # re-exported


def test_whole_messages_come_out_in_order() -> None:
    buffer = MessageBuffer()
    buffer.feed(STREAM)
    assert buffer.messages() == [KEEPALIVE, ENVELOPE, ACK]
    assert buffer.pending == 0
    assert buffer.next_message() is None


def test_every_split_of_the_stream_at_every_boundary() -> None:
    for cut in range(len(STREAM) + 1):
        buffer = MessageBuffer()
        buffer.feed(STREAM[:cut])
        got = buffer.messages()
        buffer.feed(STREAM[cut:])
        got += buffer.messages()
        assert got == [KEEPALIVE, ENVELOPE, ACK], cut


def test_one_octet_at_a_time() -> None:
    buffer = MessageBuffer()
    got = []
    for octet in STREAM:
        buffer.feed(bytes([octet]))
        got += buffer.messages()
    assert got == [KEEPALIVE, ENVELOPE, ACK]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=8))
def test_any_chunking(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    buffer = MessageBuffer()
    got = []
    for a, b in itertools.pairwise(bounds):
        buffer.feed(STREAM[a:b])
        got += buffer.messages()
    assert got == [KEEPALIVE, ENVELOPE, ACK]
    buffer.check_closed_cleanly()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x30\x00", "cannot start a delivery message"),
        (b"\x40\x00", "cannot start a delivery message"),  # application class
        (b"\xc0\x00", "cannot start a delivery message"),  # private class
        (b"\xa0\x80", "indefinite length"),
        (b"\xa0\x81\x05", "shortest form"),
        (b"\xa0\x82\x00\x90", "shortest form"),
        (b"\xa0\x85\x01\x00\x00\x00\x00", "length of 5 octets"),
        (b"\xbf\xff\xff\xff\xff\xff\x01\x00", "tag number too large"),
    ],
)
def test_garbage_is_refused_at_once(data: bytes, problem: str) -> None:
    buffer = MessageBuffer()
    buffer.feed(data)
    with pytest.raises(ProtocolError, match=problem):
        buffer.next_message()
    with pytest.raises(ProtocolError, match=problem):  # and stays broken
        buffer.feed(KEEPALIVE)


def test_oversize_is_refused_from_its_header_before_the_body() -> None:
    buffer = MessageBuffer(max_message=1000)
    buffer.feed(b"\xa0\x82\x03\xe8")  # claims 1000 octets of content
    with pytest.raises(ProtocolError, match="exceeds the 1000-octet limit"):
        buffer.next_message()


def test_limit_counts_the_header() -> None:
    buffer = MessageBuffer(max_message=len(KEEPALIVE))
    buffer.feed(KEEPALIVE)
    assert buffer.messages() == [KEEPALIVE]
    small = MessageBuffer(max_message=len(KEEPALIVE) - 1)
    small.feed(KEEPALIVE[:2])
    with pytest.raises(ProtocolError):
        small.next_message()


def test_later_versions_high_tag_frames() -> None:
    later = b"\xbf\x25\x02\x01\x00"  # [37] constructed, high-tag form
    buffer = MessageBuffer()
    buffer.feed(later[:2])
    assert buffer.next_message() is None
    buffer.feed(later[2:] + KEEPALIVE)
    assert buffer.messages() == [later, KEEPALIVE]


def test_later_primitive_alternative_frames_too() -> None:
    later = b"\x88\x01\x05"  # a future [8] INTEGER
    buffer = MessageBuffer()
    buffer.feed(later + KEEPALIVE)
    assert buffer.messages() == [later, KEEPALIVE]


def test_close_inside_a_message_is_an_error() -> None:
    buffer = MessageBuffer()
    buffer.feed(ENVELOPE[:10])
    assert buffer.next_message() is None
    assert buffer.pending == 10
    with pytest.raises(ProtocolError, match="closed inside a message"):
        buffer.check_closed_cleanly()


def test_many_messages_keep_the_buffer_small() -> None:
    buffer = MessageBuffer()
    for _ in range(2000):
        buffer.feed(KEEPALIVE)
        assert buffer.next_message() == KEEPALIVE
    assert len(buffer._buf) < 4 * len(KEEPALIVE)


def test_a_leading_zero_length_octet_is_refused_before_the_rest_arrives() -> None:
    buffer = MessageBuffer()
    buffer.feed(b"\xa0\x83\x00")
    with pytest.raises(ProtocolError, match="shortest form"):
        buffer.next_message()


@settings(max_examples=500, deadline=None)
@given(st.sampled_from((0x80, 0xA0, 0xA5, 0xBF, 0x9F)), st.binary(max_size=12))
def test_framing_is_the_one_header_reader_with_the_buffers_limit(tag: int, rest: bytes) -> None:
    data = bytes((tag,)) + rest
    buffer = MessageBuffer(max_message=64)
    buffer.feed(data)
    try:
        _tag, content, length = read_header(data, 0, len(data), 64)
    except Truncated:
        assert buffer.next_message() is None
    except P.PDUError as exc:
        with pytest.raises(ProtocolError) as caught:
            buffer.next_message()
        assert exc.message in str(caught.value)
    else:
        assert buffer.next_message() == data[: content + length]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 70_000), min_size=1, max_size=6), st.integers(1, 50_000))
def test_large_messages_come_out_whole_and_the_buffer_still_compacts(
    sizes: list[int], chunk: int
) -> None:
    # Large messages are copied out through a memoryview of the buffer:
    # the view must be gone before the buffer is resized (compacted, fed).
    big = [
        record_envelope(CMCC, record(n, payload=size), redelivered=False)
        for n, size in enumerate(sizes)
    ]
    stream = b"".join(m for pair in zip(big, itertools.repeat(ACK)) for m in pair)
    buffer = MessageBuffer()
    got = []
    for at in range(0, len(stream), chunk):
        buffer.feed(stream[at : at + chunk])
        got += buffer.messages()
    assert got == [m for pair in zip(big, itertools.repeat(ACK)) for m in pair]
    assert all(type(m) is bytes for m in got) and buffer.pending == 0
