"""TLS/TCP delivery: window, cumulative acks, keepalives, resume, duplicates."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_protocol_fixtures import CMCC, CMII, OTHER, T, cc_der, messages, record, utc_now

from mediation import pdu as P
from mediation.protocol import (
    AckReceived,
    CheckpointReceived,
    EnvelopeReceived,
    KeepaliveAnswered,
    PeerTimedOut,
    ProtocolError,
    StreamReceiver,
    StreamSender,
    UnknownMessage,
)


def sender(positions=None, **kw) -> StreamSender:
    machine = StreamSender(positions or {CMCC: 0}, utc_now=utc_now, **kw)
    machine.resume(0.0)
    return machine


def receiver(positions=None, **kw) -> StreamReceiver:
    machine = StreamReceiver(positions, utc_now=utc_now, **kw)
    machine.connection_made(0.0)
    return machine


def send(machine: StreamSender, first: int, last: int, stream=CMCC) -> bytes:
    return b"".join(machine.send(stream, record(n, stream=stream)) for n in range(first, last + 1))


def received(events) -> list[tuple[int, bool, bool]]:
    return [
        (e.envelope.sequence_number, e.duplicate, e.envelope.redelivered)
        for e in events
        if isinstance(e, EnvelopeReceived)
    ]


def test_envelopes_back_to_back_and_acked_after_the_delay() -> None:
    tx, rx = sender(), receiver()
    assert rx.data_to_send() == b""  # knows no position yet: nothing to ack
    events = rx.receive_data(send(tx, 0, 2), 1.0)
    assert received(events) == [(0, False, False), (1, False, False), (2, False, False)]
    assert rx.data_to_send() == b""
    assert rx.next_deadline() == pytest.approx(1.2)
    assert rx.tick(1.19) == [] and rx.data_to_send() == b""
    rx.tick(1.2)
    ack = rx.data_to_send()
    assert messages(ack) == [P.Acknowledgement(CMCC, 3)]
    assert tx.receive_data(ack, 1.3) == [AckReceived(CMCC, 3, 3)]
    assert (tx.acked(CMCC), tx.next_sequence(CMCC)) == (3, 3)


def test_ack_after_every_m_envelopes() -> None:
    tx, rx = sender(), receiver(ack_every=2)
    rx.receive_data(send(tx, 0, 4), 0.0)
    assert messages(rx.data_to_send()) == [P.Acknowledgement(CMCC, 2), P.Acknowledgement(CMCC, 4)]


def test_window_limits_what_is_in_flight() -> None:
    tx = sender(window=3)
    send(tx, 0, 2)
    assert tx.window_room(CMCC) == 0
    with pytest.raises(ValueError, match="window of 3"):
        tx.send(CMCC, record(3))
    tx.receive_data(P.encode(P.Acknowledgement(CMCC, 2)), 0.0)
    assert tx.window_room(CMCC) == 2
    with pytest.raises(ValueError, match="3 is next"):
        tx.send(CMCC, record(4))


@pytest.mark.parametrize(
    ("ack", "problem"),
    [
        (P.Acknowledgement(CMCC, 6), "only up to 5 was sent"),
        (P.Acknowledgement(CMCC, 1), "goes back from 2 to 1"),
        (P.Acknowledgement(OTHER, 0), "not delivered here"),
    ],
)
def test_bad_acks_break_the_connection(ack: P.Acknowledgement, problem: str) -> None:
    tx = sender()
    send(tx, 0, 4)
    tx.receive_data(P.encode(P.Acknowledgement(CMCC, 2)), 0.0)
    with pytest.raises(ProtocolError, match=problem):
        tx.receive_data(P.encode(ack), 0.0)
    assert not tx.connected and tx.next_deadline() is None
    with pytest.raises(ProtocolError, match=problem):
        tx.receive_data(b"", 0.0)
    with pytest.raises(ValueError, match="no connection"):
        tx.send(CMCC, record(5))


def test_keepalive_after_idle_answered_with_acks_first() -> None:
    tx, rx = sender(keepalive_interval=10.0), receiver(keepalive_interval=60.0)
    rx.receive_data(send(tx, 0, 1), 1.0)  # 2 envelopes waiting for their ack
    assert tx.next_deadline() == 10.0
    assert tx.tick(9.9) == [] and tx.data_to_send() == b""
    tx.tick(10.0)
    keepalive = tx.data_to_send()
    assert messages(keepalive) == [P.Keepalive(1, T)]
    assert tx.next_deadline() == 40.0  # now waiting on the answer
    rx.receive_data(keepalive, 10.5)
    answer = rx.data_to_send()
    assert messages(answer) == [P.Acknowledgement(CMCC, 2), P.KeepaliveAnswer(1, T)]
    events = tx.receive_data(answer, 11.0)
    assert events == [AckReceived(CMCC, 2, 2), KeepaliveAnswered(1, 1.0)]
    assert tx.next_deadline() == 21.0  # idle counts from the last message heard
    tx.tick(21.0)
    assert messages(tx.data_to_send()) == [P.Keepalive(2, T)]


def test_traffic_from_the_peer_defers_keepalives() -> None:
    tx = sender()
    send(tx, 0, 0)
    tx.receive_data(P.encode(P.Acknowledgement(CMCC, 1)), 8.0)
    assert tx.next_deadline() == 18.0


def test_unanswered_keepalive_times_the_peer_out() -> None:
    tx = sender()
    tx.tick(10.0)
    assert tx.data_to_send()
    assert tx.tick(39.9) == []
    assert tx.tick(40.0) == [PeerTimedOut(30.0)]
    assert not tx.connected and tx.tick(50.0) == [] and tx.next_deadline() is None


def test_receiver_times_out_a_silent_server() -> None:
    rx = receiver(keepalive_interval=5.0, keepalive_timeout=7.0)
    rx.tick(5.0)
    assert messages(rx.data_to_send()) == [P.Keepalive(1, T)]
    assert rx.tick(12.0) == [PeerTimedOut(7.0)]


def test_answer_to_no_keepalive_is_a_protocol_error() -> None:
    tx = sender()
    with pytest.raises(ProtocolError, match="answers no keepalive"):
        tx.receive_data(P.encode(P.KeepaliveAnswer(9, T)), 1.0)


def test_resume_marks_what_was_sent_before_and_loses_nothing() -> None:
    tx, rx = sender(), receiver()
    data = send(tx, 0, 9)
    rx.receive_data(data[: len(data) // 2 + 3], 1.0)  # 0..4 and part of 5
    rx.tick(2.0)
    tx.receive_data(rx.data_to_send(), 2.0)  # the server saw acked up to 5
    tx.connection_lost()
    rx.connection_lost()
    assert tx.acked(CMCC) == 5 and rx.position(CMCC) == 5
    # Reconnect: the server resends from 5 before hearing the agency.
    tx.resume(10.0)
    rx.connection_made(10.0)
    assert messages(rx.data_to_send()) == [P.Acknowledgement(CMCC, 5)]
    events = rx.receive_data(send(tx, 5, 11), 10.1)
    assert received(events) == [(n, False, n <= 9) for n in range(5, 12)]
    assert rx.tracker(CMCC).held == [(0, 11)]


def test_resume_skips_what_the_agency_says_it_holds() -> None:
    tx, rx = sender(), receiver()
    rx.receive_data(send(tx, 0, 9), 1.0)  # all arrive; the ack is lost
    tx.connection_lost()
    tx.resume(5.0)
    rx.connection_made(5.0)
    assert tx.next_sequence(CMCC) == 0
    assert tx.receive_data(rx.data_to_send(), 5.1) == [AckReceived(CMCC, 10, 10)]
    assert tx.next_sequence(CMCC) == 10
    events = rx.receive_data(send(tx, 10, 10), 5.2)
    assert received(events) == [(10, False, False)]


def test_duplicates_after_resume_are_flagged_not_stored_twice() -> None:
    tx, rx = sender(), receiver()
    rx.receive_data(send(tx, 0, 3), 1.0)  # ack never sent
    tx.connection_lost()
    tx.resume(2.0)
    rx.connection_made(2.0)
    events = rx.receive_data(send(tx, 0, 5), 2.1)  # before the agency's ack arrives
    assert received(events) == [(n, n <= 3, n <= 3) for n in range(6)]
    assert rx.tracker(CMCC).received_count == 6


def test_restarted_server_acks_up_to_what_it_may_have_sent() -> None:
    tx = StreamSender({CMCC: 4}, sent_before={CMCC: 8}, utc_now=utc_now)
    tx.resume(0.0)
    assert P.decode(tx.send(CMCC, record(4))).redelivered
    assert tx.receive_data(P.encode(P.Acknowledgement(CMCC, 8)), 0.0) == [AckReceived(CMCC, 8, 4)]
    assert not P.decode(tx.send(CMCC, record(8))).redelivered


def test_restarted_agency_tells_its_positions() -> None:
    rx = receiver({CMCC: 7, CMII: 2})
    assert messages(rx.data_to_send()) == [P.Acknowledgement(CMCC, 7), P.Acknowledgement(CMII, 2)]
    tx = StreamSender({CMCC: 7}, utc_now=utc_now)
    tx.resume(0.0)
    events = rx.receive_data(send(tx, 7, 7) + P.encode(P.Envelope(CMCC, 3, T, _cc())), 0.0)
    assert received(events) == [(7, False, False), (3, True, False)]


def _cc() -> P.CCApdu:
    """Any CC content: these envelopes only need to be well-formed."""
    return P.decode(cc_der())


def test_a_gap_on_the_stream_is_a_protocol_error_and_acks_nothing() -> None:
    tx, rx = sender(), receiver(ack_every=1)
    data = send(tx, 0, 2)
    skip = P.encode(P.Envelope(CMCC, 5, T, _cc()))
    with pytest.raises(ProtocolError, match="skips from 3"):
        rx.receive_data(data + skip, 0.0)
    assert rx.data_to_send() == b""  # acks of 0..2 dropped with their events


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (P.ReceiverReport(CMCC, T, 0), "unexpected ReceiverReport"),
        (P.Acknowledgement(CMCC, 0), "unexpected Acknowledgement"),
        (P.ReplayRequest(1, CMCC, ()), "unexpected ReplayRequest"),
    ],
)
def test_receiver_refuses_what_only_an_agency_sends(message, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        receiver().receive_data(P.encode(message), 0.0)


def test_sender_refuses_envelopes_and_reports() -> None:
    with pytest.raises(ProtocolError, match="unexpected Envelope"):
        sender().receive_data(P.encode(P.Envelope(CMCC, 0, T, _cc())), 0.0)


def test_later_messages_are_skipped_and_checkpoints_surface() -> None:
    tx, rx = sender(), receiver(streams={CMCC})
    checkpoint = P.ChainCheckpoint(CMCC, 9, bytes(32), T, b"s" * 64, b"k" * 32)
    later, primitive = b"\xaf\x01\x00", b"\x88\x01\x05"
    events = rx.receive_data(later + primitive + tx.checkpoint(checkpoint), 0.0)
    assert events == [
        UnknownMessage(15, later),
        UnknownMessage(8, primitive),
        CheckpointReceived(checkpoint),
    ]
    assert tx.receive_data(later, 0.0) == [UnknownMessage(15, later)]
    other = P.ChainCheckpoint(OTHER, 9, bytes(32), T, b"s" * 64, b"k" * 32)
    with pytest.raises(ProtocolError, match=r"checkpoint for .* not delivered here"):
        receiver(streams={CMCC}).receive_data(P.encode(other), 0.0)
    with pytest.raises(ProtocolError, match="not delivered here"):
        rx.receive_data(
            P.encode(
                P.Envelope(OTHER, 0, T, P.CompletenessNotice(P.CompletenessEvent.TAP_RESTORED, T))
            ),
            0.0,
        )


def test_two_streams_have_their_own_windows_and_acks() -> None:
    tx, rx = sender({CMCC: 0, CMII: 100}, window=2), receiver()
    rx.receive_data(send(tx, 0, 1) + send(tx, 100, 101, CMII), 0.0)
    assert tx.window_room(CMCC) == 0 and tx.window_room(CMII) == 0
    rx.tick(1.0)
    events = tx.receive_data(rx.data_to_send(), 1.0)
    assert set(events) == {AckReceived(CMCC, 2, 2), AckReceived(CMII, 102, 2)}


def test_malformed_message_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="malformed"):
        receiver().receive_data(b"\xa0\x03\x02\x01\x00", 0.0)
    with pytest.raises(ProtocolError, match="cannot start"):
        receiver().receive_data(b"GET / HTTP/1.1\r\n", 0.0)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_every_envelope_arrives_once_in_order_across_disconnects(data) -> None:
    """Random cuts, partial deliveries and lost acks: the agency stores 0..N-1, in order."""
    total = 24
    tx = StreamSender({CMCC: 0}, window=data.draw(st.integers(1, 8)), utc_now=utc_now)
    rx = StreamReceiver(ack_every=data.draw(st.integers(1, 5)), utc_now=utc_now)
    stored: list[int] = []
    sent_once: set[int] = set()
    now = 0.0
    for _connection in range(12):
        tx.resume(now)
        rx.connection_made(now)
        to_rx, to_tx = b"", rx.data_to_send()
        for _step in range(data.draw(st.integers(1, 12))):
            now += 0.05
            while tx.window_room(CMCC) > 0 and tx.next_sequence(CMCC) < total:
                seq = tx.next_sequence(CMCC)
                chunk = tx.send(CMCC, record(seq))
                assert P.decode(chunk).redelivered == (seq in sent_once)
                sent_once.add(seq)
                to_rx += chunk
            cut = data.draw(st.integers(0, len(to_rx)))
            for event in rx.receive_data(to_rx[:cut], now):
                seq = event.envelope.sequence_number
                assert event.duplicate == (seq in stored)
                if not event.duplicate:
                    stored.append(seq)
            to_rx = to_rx[cut:]
            rx.tick(now)
            to_tx += rx.data_to_send()
            if data.draw(st.booleans()):  # the acks make it across this time
                tx.receive_data(to_tx, now)
                to_tx = b""
        tx.connection_lost()  # whatever is in flight is lost
        rx.connection_lost()
    assert stored == list(range(len(stored)))
    # One good connection at the end, and nothing is missing.
    tx.resume(now)
    rx.connection_made(now)
    tx.receive_data(rx.data_to_send(), now)
    while tx.next_sequence(CMCC) < total:
        while tx.window_room(CMCC) > 0 and tx.next_sequence(CMCC) < total:
            chunk = tx.send(CMCC, record(tx.next_sequence(CMCC)))
            stored += [
                e.envelope.sequence_number for e in rx.receive_data(chunk, now) if not e.duplicate
            ]
        rx.tick(now + 1)
        tx.receive_data(rx.data_to_send(), now)
    assert stored == list(range(total))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 12), st.lists(st.integers(1, 4000), max_size=12), st.integers(0, 12))
def test_events_keep_their_message_octets_however_the_reads_split(
    count: int, cuts: list[int], checkpoint_after: int
) -> None:
    """The receiver stores what each event's ``raw`` holds: the message exactly as received."""
    tx, rx = sender(), receiver()
    later = (
        b"\xbf\x1f\x03\x02\x01\x07"  # a later version's message: framed, skipped, no octets kept
    )
    checkpoint = tx.checkpoint(P.ChainCheckpoint(CMCC, 9, bytes(32), T, b"s" * 64, b"k" * 32))
    parts = [tx.send(CMCC, record(n)) for n in range(count)]
    parts.insert(min(checkpoint_after, count), checkpoint)
    parts.insert(1, later)
    data = b"".join(parts)
    events, at = [], 0
    for cut in [*sorted({c % len(data) for c in cuts}), len(data)]:
        events += rx.receive_data(data[at:cut], 0.0)
        at = max(at, cut)
    kept = [e.raw for e in events if isinstance(e, EnvelopeReceived | CheckpointReceived)]
    assert kept == [p for p in parts if p != later]
    assert [e.raw for e in events if isinstance(e, UnknownMessage)] == [later]


def test_envelopes_before_a_broken_message_are_not_lost() -> None:
    """Envelopes tracked in a read that then breaks the protocol reach the owner, or come again."""
    tx = sender()
    trackers: dict = {}
    rx = receiver(trackers=trackers)
    good = send(tx, 0, 1)
    with pytest.raises(ProtocolError):
        rx.receive_data(good + b"\x30\x00", 0.0)  # two envelopes, then no delivery message
    kept = rx.events_before_break()
    again = receiver(trackers=trackers)  # the next connection; the server resends from 0
    events = again.receive_data(good, 1.0)
    stored = received(kept) + [r for r in received(events) if not r[1]]
    assert sorted(s for s, _dup, _re in stored) == [0, 1]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([CMII, CMCC, OTHER]), st.booleans()), max_size=60),
    st.integers(1, 4),
)
def test_streams_interleaved_any_way_are_acked_as_each_alone(
    picks: list[tuple[P.StreamId, bool]], ack_every: int
) -> None:
    """The machine keeps the last two streams' position, tracker and whether each is
    due an ack (not hashed per envelope): any interleaving of three streams, with
    envelopes sent again, gives the events and the acks of a plain model."""
    from mediation.protocol.envelope import record_envelope

    rx = receiver(ack_every=ack_every)
    position: dict[P.StreamId, int] = {}
    due: set[P.StreamId] = set()
    unacked = 0
    for stream, again in picks:
        top = position.get(stream, 0)
        seq = top - 1 if again and top else top
        data = record_envelope(stream, record(seq, stream=stream), redelivered=again)
        assert received(rx.receive_data(data, 0.0)) == [(seq, seq < top, again)]
        position[stream] = max(top, seq + 1)
        due.add(stream)
        unacked += 1
        acks = []
        if unacked >= ack_every:
            acks = [P.Acknowledgement(s, position[s]) for s in sorted(due, key=str)]
            due, unacked = set(), 0
        assert messages(rx.data_to_send()) == acks
    for stream, top in position.items():
        assert rx.position(stream) == top
        assert rx.tracker(stream).received_count == top
