"""UDP delivery: envelopes as datagrams, receiver reports, loss accounting."""

from __future__ import annotations

import datetime as dt
import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_protocol_fixtures import CMCC, CMII, OTHER, T, messages, record, utc_now

from mediation import pdu as P
from mediation.protocol import (
    CheckpointReceived,
    DatagramReceiver,
    DatagramSender,
    EndpointResponsive,
    EndpointSilent,
    EnvelopeReceived,
    GapDetected,
    LossCount,
    ProtocolError,
    ReportReceived,
    UnknownMessage,
)
from mediation.protocol.envelope import record_envelope


@functools.cache
def datagram(seq: int, stream: P.StreamId = CMCC) -> bytes:
    """The datagram of ``seq``, made once (the reference codec is slow)."""
    return record_envelope(stream, record(seq, stream=stream), redelivered=False)


def report(
    highest: int | None, count: int, missing=(), omitted=None, stream=CMCC, at=T
) -> P.ReceiverReport:
    ranges = tuple(P.SequenceRange(a, b) for a, b in missing)
    return P.ReceiverReport(stream, at, count, ranges, highest, omitted)


def send(sender: DatagramSender, first: int, last: int, now: float = 0.0) -> list[bytes]:
    out = []
    for seq in range(first, last + 1):
        if sender.next_sequence is None or sender.next_sequence == seq:
            out.append(sender.envelope(record(seq), now))
    return out


def test_one_envelope_per_datagram() -> None:
    sender = DatagramSender(CMCC)
    data = sender.envelope(record(0), 0.0)
    [envelope] = messages(data)
    assert isinstance(envelope, P.Envelope)
    assert (envelope.stream, envelope.sequence_number, envelope.redelivered) == (CMCC, 0, False)
    with pytest.raises(ValueError, match="1 was next"):
        sender.envelope(record(2), 0.0)


def test_receiver_flags_gaps_duplicates_and_reordering() -> None:
    receiver = DatagramReceiver(utc_now=utc_now)
    events = []
    for seq in [0, 1, 4, 2, 4]:
        events += receiver.receive_datagram(datagram(seq), 0.0)
    assert events[2] == GapDetected(CMCC, 2, 3)
    received = [e for e in events if isinstance(e, EnvelopeReceived)]
    assert [(e.envelope.sequence_number, e.duplicate) for e in received] == [
        (0, False),
        (1, False),
        (4, False),
        (2, False),
        (4, True),
    ]
    tracker = receiver.tracker(CMCC)
    assert (tracker.missing(), tracker.duplicates) == ([(3, 3)], 1)


def test_first_datagram_past_zero_is_a_gap_from_zero() -> None:
    receiver = DatagramReceiver()
    assert receiver.receive_datagram(datagram(3), 0.0)[0] == GapDetected(CMCC, 0, 2)


def test_reports_every_interval_one_per_stream() -> None:
    receiver = DatagramReceiver(utc_now=utc_now)
    assert receiver.next_deadline() is None and not receiver.report_due(5.0)
    assert receiver.make_reports(0.0) == []
    receiver.receive_datagram(datagram(0), 10.0)
    receiver.receive_datagram(datagram(2), 10.2)
    receiver.receive_datagram(datagram(0, CMII), 10.3)
    assert receiver.next_deadline() == 11.0
    assert not receiver.report_due(10.999)
    assert receiver.report_due(11.0)
    reports = [messages(d)[0] for d in receiver.make_reports(11.0)]
    assert reports == [report(2, 2, [(1, 1)]), report(0, 1, stream=CMII)]
    assert receiver.next_deadline() == 12.0


def test_unknown_checkpoint_and_unexpected_datagrams() -> None:
    receiver = DatagramReceiver()
    later = b"\xaf\x01\x00"
    assert receiver.receive_datagram(later, 0.0) == [UnknownMessage(15, later)]
    checkpoint = P.ChainCheckpoint(CMCC, 9, bytes(32), T, b"s" * 64, b"k" * 32)
    assert receiver.receive_datagram(P.encode(checkpoint), 0.0) == [CheckpointReceived(checkpoint)]
    with pytest.raises(ProtocolError, match="unexpected Keepalive"):
        receiver.receive_datagram(P.encode(P.Keepalive(1, T)), 0.0)
    with pytest.raises(ProtocolError, match="malformed"):
        receiver.receive_datagram(b"\xa0\x05\x00", 0.0)
    with pytest.raises(ProtocolError, match="malformed"):
        receiver.receive_datagram(b"\x30\x00", 0.0)
    with pytest.raises(ProtocolError, match="malformed"):
        receiver.receive_datagram(datagram(0) + b"\x00", 0.0)
    only = DatagramReceiver(streams={CMII})
    with pytest.raises(ProtocolError, match="not delivered to this receiver"):
        only.receive_datagram(datagram(0), 0.0)
    with pytest.raises(ProtocolError, match=r"checkpoint for .* not delivered to this receiver"):
        only.receive_datagram(P.encode(checkpoint), 0.0)  # another stream's: not stored
    # A bad datagram spoils nothing: the next good one is taken.
    assert isinstance(receiver.receive_datagram(datagram(0), 0.0)[-1], EnvelopeReceived)


def test_report_fits_one_datagram_and_counts_what_it_leaves_out() -> None:
    stream = P.StreamId("w-" + "f" * 30, P.StreamKind.CMCC)
    receiver = DatagramReceiver(utc_now=utc_now)
    top = 2**64 - 1
    tracker = receiver.tracker(stream)
    for n in range(200):  # 200 missing ranges near the top of the number space
        tracker.add(top - 2 * n)
    tracker.add(0)
    [data] = receiver.make_reports(0.0)
    assert len(data) <= 1400
    sent = messages(data)[0]
    assert sent.missing_omitted == 200 - len(sent.missing)
    assert sent.missing[0] == P.SequenceRange(1, top - 399)  # the lowest is kept
    assert sent.missing[-1] == P.SequenceRange(top - 1, top - 1)  # and the newest


def test_loss_counts_after_reports() -> None:
    sender = DatagramSender(CMCC)
    assert sender.loss == LossCount()
    send(sender, 0, 9)
    assert sender.loss == LossCount(sent=10, unreported=10)
    [event] = sender.receive_report(report(7, 6, [(2, 3)]), 1.0)
    assert event == ReportReceived(report(7, 6, [(2, 3)]), LossCount(10, 6, 2, 2))
    # A reordered datagram turns up: the next report corrects the figure.
    sender.receive_report(report(9, 9, [(3, 3)], at=T + dt.timedelta(seconds=1)), 2.0)
    assert sender.loss == LossCount(10, 9, 1, 0)
    # A late, older report is proof of life but no news.
    assert sender.receive_report(report(7, 6, [(2, 3)]), 2.1) == []
    assert sender.loss == LossCount(10, 9, 1, 0)


def test_loss_is_counted_over_the_senders_range_only() -> None:
    sender = DatagramSender(CMCC)
    send(sender, 100, 109)
    # The receiver joined late: 0..99 are missing to it, not lost by us.
    sender.receive_report(report(109, 8, [(0, 99), (104, 105)]), 1.0)
    assert sender.loss == LossCount(10, 8, 2, 0)


@settings(max_examples=60, deadline=None)
@given(
    start=st.integers(0, 5),
    count=st.integers(1, 30),
    fate=st.data(),
    max_ranges=st.sampled_from([1, 2, 3, 50]),
    earlier=st.sets(st.integers(0, 4), max_size=3),
)
def test_server_loss_equals_receivers_missing_for_the_same_range(
    start: int, count: int, fate, max_ranges: int, earlier: set[int]
) -> None:
    sender = DatagramSender(CMCC)
    receiver = DatagramReceiver(max_report_octets=128 + 24 * max_ranges, utc_now=utc_now)
    for seq in earlier:  # what the receiver got elsewhere before (e.g. retrieval)
        if seq < start:
            receiver.tracker(CMCC).add(seq)
    delivered = []
    for seq in range(start, start + count):
        data = sender.envelope(record(seq), 0.0)
        if fate.draw(st.booleans(), label=f"arrives {seq}"):
            delivered.append(data)
    order = fate.draw(st.permutations(delivered), label="order")
    for data in order:
        receiver.receive_datagram(data, 0.0)
    [data] = receiver.make_reports(1.0) or [None]
    if data is None:
        return
    sender.receive_datagram(data, 1.0)
    tracker, loss = receiver.tracker(CMCC), sender.loss
    top = min(tracker.highest, start + count - 1)
    truth = tracker.missing_within(start, top) if top >= start else 0
    assert loss.sent == count == loss.received + loss.lost + loss.unreported
    if loss.exact:
        assert loss.lost == truth
    else:
        assert loss.lost >= truth
    if not earlier or start == 0:  # nothing held below our range: always exact
        assert loss.exact


def test_silent_after_three_missed_intervals_and_back() -> None:
    sender = DatagramSender(CMCC)
    assert sender.next_deadline() is None and sender.tick(100.0) == []
    send(sender, 0, 0, now=10.0)
    assert sender.next_deadline() == 13.0
    assert sender.tick(12.999) == []
    assert sender.tick(13.0) == [EndpointSilent(CMCC, None)]
    assert sender.silent and sender.tick(20.0) == [] and sender.next_deadline() is None
    events = sender.receive_report(report(0, 1), 21.0)
    assert events[0] == EndpointResponsive(CMCC)
    assert isinstance(events[1], ReportReceived)
    assert not sender.silent and sender.last_report_at == 21.0
    assert sender.next_deadline() == 24.0
    assert sender.tick(24.0) == [EndpointSilent(CMCC, 21.0)]


def test_silence_uses_the_configured_interval() -> None:
    sender = DatagramSender(CMCC, report_interval=0.5, silent_after=4)
    send(sender, 0, 0, now=0.0)
    sender.receive_report(report(0, 1), 1.0)
    assert sender.next_deadline() == 3.0


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (report(5, 1, stream=OTHER), "reached"),
        (report(None, 1), "without highestSequence"),
        (report(5, 7), "receivedCount 7 impossible"),
        (report(5, 4, [(2, 2), (1, 1)]), "unsorted"),
        (report(5, 3, [(1, 1), (2, 2)]), "unsorted"),  # adjacent: should be one range
        (report(5, 5, [(5, 5)]), "too high"),
        (report(5, 5, [(1, 2)], omitted=1), "more missing listed"),
        (report(5, 3, [(1, 1)]), "disagree with receivedCount"),
    ],
)
def test_contradictory_reports_are_refused(bad: P.ReceiverReport, problem: str) -> None:
    sender = DatagramSender(CMCC)
    send(sender, 0, 5)
    with pytest.raises(ProtocolError, match=problem):
        sender.receive_datagram(P.encode(bad), 1.0)
    assert sender.loss == LossCount(sent=6, unreported=6)


def test_sender_takes_only_reports() -> None:
    sender = DatagramSender(CMCC)
    with pytest.raises(ProtocolError, match="unexpected Envelope"):
        sender.receive_datagram(datagram(0), 0.0)
    assert sender.receive_datagram(b"\xaf\x01\x00", 0.0) == [UnknownMessage(15, b"\xaf\x01\x00")]


def test_sender_sends_checkpoints_of_its_own_stream_only() -> None:
    sender = DatagramSender(CMCC)
    checkpoint = P.ChainCheckpoint(CMCC, 9, bytes(32), T, b"s" * 64, b"k" * 32)
    assert messages(sender.checkpoint(checkpoint)) == [checkpoint]
    assert sender.next_sequence is None  # no sequence number taken
    with pytest.raises(ValueError, match="checkpoint of"):
        sender.checkpoint(P.ChainCheckpoint(CMII, 9, bytes(32), T, b"s" * 64, b"k" * 32))


def test_a_report_listing_a_range_wider_than_sys_maxsize_is_weighed_not_a_crash() -> None:
    """len() of a SequenceRange of 2**64 - 1 numbers raised OverflowError in the sender."""
    sender = DatagramSender(CMCC)
    for n in range(3):
        sender.envelope(record(n), 0.0)
    report = P.ReceiverReport(
        CMCC, T, 1, (P.SequenceRange(0, 2**64 - 2),), highest_sequence=2**64 - 1
    )
    [event] = sender.receive_datagram(P.encode(report), 1.0)
    assert event.loss.lost == 3 and event.loss.sent == 3


THIRD = P.StreamId("w-000000", P.StreamKind.CMCC)  # OTHER's warrant: refused below


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([CMII, CMCC, OTHER, THIRD]), st.integers(0, 9))))
def test_streams_interleaved_any_way_are_tracked_as_each_alone(
    arrivals: list[tuple[P.StreamId, int]],
) -> None:
    """The machine remembers the last two streams' trackers (not hashed per datagram):
    any order of any streams gives the events a plain model gives, and a refused
    stream stays refused however it is interleaved."""
    machine = DatagramReceiver(streams={CMII, CMCC, OTHER})
    held: dict[P.StreamId, set[int]] = {}
    for stream, seq in arrivals:
        if stream == THIRD:
            with pytest.raises(ProtocolError, match="not delivered to this receiver"):
                machine.receive_datagram(datagram(seq, stream), 0.0)
            continue
        events = machine.receive_datagram(datagram(seq, stream), 0.0)
        seen = held.setdefault(stream, set())
        expected = max(seen) + 1 if seen else 0
        gap = [GapDetected(stream, expected, seq - 1)] if seq > expected else []
        assert events[:-1] == gap
        assert events[-1].envelope.sequence_number == seq
        assert events[-1].duplicate == (seq in seen)
        seen.add(seq)
    assert set(machine.trackers) == set(held)
    for stream, seen in held.items():
        assert machine.trackers[stream].received_count == len(seen)
