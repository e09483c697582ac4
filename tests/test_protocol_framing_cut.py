"""A read's leading whole messages cut from it equal the buffer's framing of that read.

``framing.leading_messages`` and ``StreamReceiver.receive_data``'s use of it
are checked against ``MessageBuffer`` and ``StreamConnection.receive_data``
(the way before): any messages (usual and unusual headers, oversize, junk),
any split into reads.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_protocol_fixtures import CMCC, OTHER, record, utc_now

from mediation.protocol import ProtocolError, StreamReceiver, StreamSender
from mediation.protocol.connection import StreamConnection
from mediation.protocol.framing import MessageBuffer, leading_messages

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _tlv(tag: bytes, size: int, form: int) -> bytes:
    """A TLV of ``size`` content octets, its length in the chosen form (some not minimal)."""
    if form == 0 and size < 0x80:
        length = bytes([size])
    elif form <= 1 and size < 0x100:
        length = bytes([0x81, size])  # not minimal below 0x80
    elif form <= 2 and size < 0x10000:
        length = b"\x82" + size.to_bytes(2, "big")  # not minimal below 0x100
    else:
        length = b"\x83" + size.to_bytes(3, "big")  # never minimal here
    return tag + length + bytes(range(256)) * (size // 256) + bytes(range(size % 256))


messages = st.builds(
    _tlv,
    st.sampled_from([b"\xa0", b"\xa3", b"\x85", b"\xbf\x1f", b"\xbf\x81\x00", b"\x30", b"\x1f"]),
    st.integers(min_value=0, max_value=700),
    st.integers(min_value=0, max_value=3),
)
streams = st.lists(messages, max_size=8).map(b"".join)


def _buffered(data: bytes, limit: int) -> tuple[list[bytes], str | None]:
    """What a fresh buffer frames of ``data``: its messages, then the fault if any."""
    buffer, out = MessageBuffer(limit), []
    buffer.feed(data)
    try:
        while (message := buffer.next_message()) is not None:
            out.append(message)
    except ProtocolError as exc:
        return out, str(exc)
    return out, None


@PROPERTY
@given(streams, st.sampled_from([64, 300, 1024 * 1024]), st.binary(max_size=3))
def test_the_leading_messages_are_the_buffers_first_ones(
    data: bytes, limit: int, tail: bytes
) -> None:
    data += tail
    whole, rest, _need = leading_messages(data, limit)
    assert rest == sum(map(len, whole))
    everything, fault = _buffered(data, limit)
    assert everything[: len(whole)] == whole
    # The rest through a fresh buffer: the buffer's remaining messages, and its fault.
    assert _buffered(data[rest:], limit) == (everything[len(whole) :], fault)


def _envelopes(count: int) -> list[bytes]:
    tx = StreamSender({CMCC: 0}, utc_now=utc_now)
    tx.resume(0.0)
    return [tx.send(CMCC, record(n)) for n in range(count)]


def _run(machine: StreamReceiver, reads: list[bytes], base: bool) -> tuple[list, object, list]:
    """Events of each read, the error that ended it (its type and text), events before it."""
    receive = StreamConnection.receive_data if base else StreamReceiver.receive_data
    events: list = []
    for data in reads:
        try:
            events.append(receive(machine, data, 0.0))
        except (ProtocolError, ValueError) as exc:
            return events, (type(exc), str(exc)), machine.events_before_break()
    return events, None, []


def _comparable(result: tuple[list, object, list]) -> tuple:
    """Each event (its value: envelope, duplicate, ...) with its octets, per read."""
    events, error, before = result
    raw = [[(e, getattr(e, "raw", None)) for e in read] for read in events]
    return raw, error, [(e, getattr(e, "raw", None)) for e in before]


@PROPERTY
@given(
    st.integers(min_value=0, max_value=6),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
    st.sampled_from([b"", b"\x30\x00", b"\x9f\x1f\x00", b"\xa0\x83\x00\x00\x01\x00"]),
    st.booleans(),
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 6)), max_size=3),
)
def test_the_receiver_gives_the_same_events_and_errors_for_any_reads(
    count: int, cuts: list[int], bad: bytes, foreign: bool, again: list[tuple[int, int]]
) -> None:
    parts = _envelopes(count)
    for which, where in again:  # an envelope sent again later: a duplicate
        if which < where <= len(parts) and which < count:
            parts.insert(where, parts[which])
    if foreign:  # an envelope of a stream not accepted: the machine breaks the connection
        tx = StreamSender({OTHER: 0}, utc_now=utc_now)
        tx.resume(0.0)
        parts.insert(count // 2, tx.send(OTHER, record(0, stream=OTHER)))
    data = b"".join(parts) + bad
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    reads = [data[a:b] for a, b in itertools.pairwise(bounds)]
    results = []
    for base in (True, False):
        machine = StreamReceiver(streams={CMCC}, utc_now=utc_now, ack_every=3)
        machine.connection_made(0.0)
        results.append((_comparable(_run(machine, reads, base)), machine.data_to_send()))
    assert results[0] == results[1]


def test_a_read_after_a_break_raises_the_same_error() -> None:
    machine = StreamReceiver(utc_now=utc_now)
    machine.connection_made(0.0)
    good = b"".join(_envelopes(2))
    with pytest.raises(ProtocolError) as first:
        machine.receive_data(good + b"\x30\x00", 0.0)
    assert len(machine.events_before_break()) == 2
    with pytest.raises(ProtocolError) as again:
        machine.receive_data(good, 0.0)
    assert again.value is first.value


@pytest.mark.parametrize("size", [1, 2, 7, 100, 333, 1000, 4096])
def test_reads_of_any_fixed_size_give_the_same_events(size: int) -> None:
    """Messages cut short by many reads in a row (the octets they lack carried over)."""
    data = b"".join(_envelopes(12)) + b"\xa0\x81\x85"  # then a message that never ends
    reads = [data[at : at + size] for at in range(0, len(data), size)]
    results = []
    for base in (True, False):
        machine = StreamReceiver(utc_now=utc_now, ack_every=5)
        machine.connection_made(0.0)
        results.append((_comparable(_run(machine, reads, base)), machine.data_to_send()))
        assert len([e for read in results[-1][0][0] for e in read]) == 12
    assert results[0] == results[1]
