"""Replay: the agency asks for what it missed; the server answers from the log."""

from __future__ import annotations

import tracemalloc

import pytest
from test_protocol_fixtures import CMCC, CMII, OTHER, T, cc_der, messages, record, utc_now

from mediation import pdu as P
from mediation.protocol import (
    DatagramReceiver,
    DatagramSender,
    EnvelopeReceived,
    ProtocolError,
    ReplayFinished,
    ReplayWanted,
    RetrievalClient,
    RetrievalLimits,
    RetrievalServer,
    SequenceTracker,
    StreamReceiver,
    StreamSender,
)
from mediation.protocol.gaps import IntervalSet


def tracker_with(*held: int) -> SequenceTracker:
    tracker = SequenceTracker()
    for n in held:
        tracker.add(n)
    return tracker


def test_requests_cover_the_gaps_in_bounded_pieces() -> None:
    client = RetrievalClient({CMCC: tracker_with(1, 3, 5, 7, 9)}, max_ranges=2)
    requests = [messages(d)[0] for d in client.request_missing(CMCC)]
    assert requests == [
        P.ReplayRequest(1, CMCC, (P.SequenceRange(0, 0), P.SequenceRange(2, 2))),
        P.ReplayRequest(2, CMCC, (P.SequenceRange(4, 4), P.SequenceRange(6, 6))),
        P.ReplayRequest(3, CMCC, (P.SequenceRange(8, 8),)),
    ]
    assert client.request_missing(CMCC) == []  # already asked: not again
    assert client.open_requests == [1, 2, 3]


def test_request_missing_leaves_the_newest_alone_and_respects_the_open_limit() -> None:
    client = RetrievalClient({CMCC: tracker_with(1, 3, 5, 7, 9)}, max_ranges=1, max_outstanding=2)
    first = [messages(d)[0].ranges for d in client.request_missing(CMCC, below=3)]
    assert first == [(P.SequenceRange(0, 0),), (P.SequenceRange(2, 2),)]
    assert client.request_missing(CMCC) == []  # two open already
    with pytest.raises(ValueError, match="already open"):
        client.request(CMCC, [(4, 4)])


def test_server_tells_what_to_read_and_closes_with_a_result() -> None:
    server = RetrievalServer({CMCC})
    wanted = server.handle_request(
        P.ReplayRequest(
            7, CMCC, (P.SequenceRange(5, 9), P.SequenceRange(0, 2), P.SequenceRange(3, 3))
        )
    )
    assert wanted == ReplayWanted(7, CMCC, ((0, 3), (5, 9)))
    envelope = P.decode(server.envelope(7, record(0)))
    assert envelope.redelivered and envelope.stream == CMCC
    with pytest.raises(ValueError, match="was not asked for"):
        server.envelope(7, record(4))
    with pytest.raises(ValueError, match="was not asked for"):
        server.finish(7, unavailable=[(3, 4)])
    result = P.decode(server.finish(7, unavailable=[(1, 3), (5, 9)], reason="past retention"))
    assert result == P.ReplayResult(
        7, CMCC, 1, (P.SequenceRange(1, 3), P.SequenceRange(5, 9)), "past retention"
    )
    assert server.open_requests == []
    with pytest.raises(ValueError, match="no open replay request 7"):
        server.finish(7)


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        (P.ReplayRequest(1, OTHER, (P.SequenceRange(0, 1),)), "not this agency's stream"),
        (P.ReplayRequest(2, CMCC, (P.SequenceRange(0, 1),) * 65), "of 65 ranges"),
        (P.ReplayRequest(3, CMCC, (P.SequenceRange(0, 1),)), "already open"),
    ],
)
def test_server_refuses_bad_requests(request_: P.ReplayRequest, problem: str) -> None:
    server = RetrievalServer({CMCC})
    server.handle_request(P.ReplayRequest(3, CMCC, (P.SequenceRange(0, 0),)))
    with pytest.raises(ProtocolError, match=problem):
        server.handle_request(request_)


def test_server_limits_open_requests() -> None:
    server = RetrievalServer({CMCC}, max_outstanding=1)
    server.handle_request(P.ReplayRequest(1, CMCC, (P.SequenceRange(0, 0),)))
    with pytest.raises(ProtocolError, match="more than 1"):
        server.handle_request(P.ReplayRequest(2, CMCC, (P.SequenceRange(1, 1),)))


def test_client_takes_envelopes_and_records_what_is_gone_for_good() -> None:
    tracker = tracker_with(10)
    client, server = RetrievalClient({CMCC: tracker}), RetrievalServer({CMCC})
    [data] = client.request_missing(CMCC)
    wanted = server.handle_request(P.decode(data))
    assert wanted.ranges == ((0, 9),)
    arrived = [P.decode(server.envelope(1, record(n))) for n in (4, 5, 6)]
    assert all(client.claims(e) for e in arrived)
    assert [client.handle_envelope(e) for e in arrived] == [
        EnvelopeReceived(e, duplicate=False, retrieved=True) for e in arrived
    ]
    result = P.decode(server.finish(1, unavailable=[(0, 3)], reason="past retention"))
    finished = client.handle_result(result)
    # 7..9 were neither sent nor called unavailable: "not yet", asked again.
    assert finished == ReplayFinished(1, CMCC, 3, ((0, 3),), "past retention", 3, ((7, 9),))
    assert tracker.missing() == [(0, 3), (7, 9)]
    assert tracker.retrievable() == [(7, 9)]
    assert tracker.unavailable == [((0, 3), "past retention")]
    assert not client.claims(arrived[0])


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        (P.ReplayResult(9, CMCC, 0), "closes no open request"),
        (P.ReplayResult(1, CMII, 0), "another stream"),
        (P.ReplayResult(1, CMCC, 2), "says 2 delivered, 0 arrived"),
        (P.ReplayResult(1, CMCC, 0, (P.SequenceRange(0, 5),)), "not asked for"),
    ],
)
def test_client_refuses_bad_results(result: P.ReplayResult, problem: str) -> None:
    client = RetrievalClient({CMCC: tracker_with(4)})
    client.request_missing(CMCC)
    with pytest.raises(ProtocolError, match=problem):
        client.handle_result(result)


def test_requests_die_with_the_connection() -> None:
    client = RetrievalClient({CMCC: tracker_with(4)})
    assert client.request_missing(CMCC)
    client.connection_lost()
    assert client.open_requests == []
    assert len(client.request_missing(CMCC)) == 1


def test_udp_agency_fetches_its_gaps_over_a_stream_connection() -> None:
    """`mediate receive`: count UDP gaps, fetch them from the server's log."""
    log = {n: record(n) for n in range(12)}
    udp_tx, udp_rx = DatagramSender(CMCC), DatagramReceiver(utc_now=utc_now)
    for n in range(12):
        data = udp_tx.envelope(log[n], 0.0)
        if n not in (2, 3, 7):
            udp_rx.receive_datagram(data, 0.0)
    # The retrieval connection shares the UDP receiver's trackers.
    agency = StreamReceiver(trackers=udp_rx.trackers, utc_now=utc_now)
    server = StreamSender({CMCC: 0}, utc_now=utc_now)
    server.resume(1.0)
    agency.connection_made(1.0)
    assert agency.data_to_send() == b""  # a retrieval-only connection acks nothing
    asked = b"".join(agency.request_missing(CMCC))
    [wanted] = server.receive_data(asked, 1.1)
    assert wanted == ReplayWanted(1, CMCC, ((2, 3), (7, 7)))
    reply = b"".join(
        server.replay_envelope(1, log[n])
        for first, last in wanted.ranges
        for n in range(first, last + 1)
    )
    reply += server.finish_replay(1)
    events = agency.receive_data(reply, 1.2)
    assert [(e.envelope.sequence_number, e.retrieved) for e in events[:-1]] == [
        (2, True),
        (3, True),
        (7, True),
    ]
    assert events[-1] == ReplayFinished(1, CMCC, 3, (), None, 0)
    assert udp_rx.tracker(CMCC).missing() == []
    # The next receiver report says so: the server's loss figure drops to 0.
    [report] = udp_rx.make_reports(2.0)
    udp_tx.receive_datagram(report, 2.0)
    assert udp_tx.loss.lost == 0 and udp_tx.loss.received == 12


def test_retrieved_envelope_already_held_is_a_duplicate() -> None:
    tracker = tracker_with(3)
    client = RetrievalClient({CMCC: tracker})
    client.request(CMCC, [(0, 3)])
    envelope = P.Envelope(CMCC, 3, T, P.decode(cc_der()))
    assert client.handle_envelope(envelope).duplicate


# Bounds: nothing sized by the peer's numbers ------------------------------------

MAX = 2**64 - 1


@pytest.mark.parametrize("last", [10**9, 2**63 + 5, MAX])
def test_a_huge_range_costs_one_pair_not_one_slot_per_number(last: int) -> None:
    """Old code: tuple(IntervalSet) took __len__ (numbers held) as its size:
    8 GB for 10**9, OverflowError past 2**63 - 1, and the server died."""
    server = RetrievalServer({CMCC})
    tracemalloc.start()
    try:
        wanted = server.handle_request(P.ReplayRequest(1, CMCC, (P.SequenceRange(0, last),)))
        reads = server.plan(1, 0, 9)
        for n in range(10):
            server.envelope(1, record(n))
        data = server.finish(1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert wanted.ranges == ((0, last),) and reads == [(0, 9)]
    assert peak < 1_000_000  # flat: the same few hundred KB whatever ``last`` is
    result = P.decode(data)
    assert (result.delivered, result.unavailable, result.not_yet) == (
        10,
        (),
        (P.SequenceRange(10, last),),
    )


def test_interval_set_counts_past_sys_maxsize_and_converts_by_intervals() -> None:
    intervals = IntervalSet()
    intervals.add(0, MAX)
    assert intervals.count == 2**64 and intervals.interval_count == 1
    assert tuple(intervals) == ((0, MAX),) and bool(intervals)
    assert P.SequenceRange(0, MAX).count == 2**64


def test_a_request_past_the_stream_end_is_answered_not_yet_in_its_own_field() -> None:
    """Bytes: unavailable [3] holds the never part, notYet [5] the part past the end."""
    server = RetrievalServer({CMCC})
    server.handle_request(
        P.ReplayRequest(4, CMCC, (P.SequenceRange(0, 6), P.SequenceRange(20, 29)))
    )
    assert server.plan(4, 3, 24) == [(3, 6), (20, 24)]  # 0..2 gone, 25.. not stored yet
    for n in (3, 4, 5, 6, 20, 21, 22, 23, 24):
        assert server.envelope(4, record(n)) is not None
    data = server.finish(4)
    expected = P.ReplayResult(
        4,
        CMCC,
        9,
        (P.SequenceRange(0, 2),),
        "past retention; beyond the stream's end (stored up to 24)",
        (P.SequenceRange(25, 29),),
    )
    assert data == P.encode(expected)
    # unavailable [3] = 0..2; after the marker, notYet [5] = 25..29; no limited [6].
    assert bytes.fromhex("a30830068001008101") + b"\x02" in data
    assert bytes.fromhex("a508300680011981011d") in data
    assert b"\x86\x01" not in data


def test_an_empty_stream_answers_everything_not_yet() -> None:
    server = RetrievalServer({CMCC})
    server.handle_request(P.ReplayRequest(1, CMCC, (P.SequenceRange(0, 5),)))
    assert server.plan(1, 0, -1) == []
    result = P.decode(server.finish(1))
    assert result.not_yet == (P.SequenceRange(0, 5),) and result.unavailable == ()
    assert result.reason == "beyond the stream's end (nothing stored yet)"


def test_the_request_limit_in_records_and_bytes_leaves_the_rest_for_later() -> None:
    server = RetrievalServer({CMCC}, limits=RetrievalLimits(request_records=3))
    server.handle_request(P.ReplayRequest(1, CMCC, (P.SequenceRange(0, 9),)))
    assert server.plan(1, 0, 9) == [(0, 9)]
    sent = [server.envelope(1, record(n)) for n in range(4)]
    assert [d is not None for d in sent] == [True, True, True, False]
    result = P.decode(server.finish(1))
    assert result.delivered == 3 and result.limited is P.ReplayLimit.REQUEST
    assert result.not_yet == (P.SequenceRange(3, 9),) and result.unavailable == ()
    assert "request limit of 3 records" in result.reason

    one = len(_envelope_of(0))
    by_bytes = RetrievalServer({CMCC}, limits=RetrievalLimits(request_bytes=one + 1))
    by_bytes.handle_request(P.ReplayRequest(2, CMCC, (P.SequenceRange(0, 9),)))
    by_bytes.plan(2, 0, 9)
    assert by_bytes.envelope(2, record(0)) is not None  # the first always goes
    assert by_bytes.envelope(2, record(1)) is None
    assert P.decode(by_bytes.finish(2)).not_yet == (P.SequenceRange(1, 9),)


def _envelope_of(seq: int) -> bytes:
    server = RetrievalServer({CMCC})
    server.handle_request(P.ReplayRequest(1, CMCC, (P.SequenceRange(seq, seq),)))
    return server.envelope(1, record(seq))


def test_the_connection_budget_spans_requests_and_then_answers_all_not_yet() -> None:
    limits = RetrievalLimits(request_records=3, connection_records=5)
    server = RetrievalServer({CMCC}, limits=limits)
    server.handle_request(P.ReplayRequest(1, CMCC, (P.SequenceRange(0, 9),)))
    server.plan(1, 0, 9)
    assert [server.envelope(1, record(n)) is not None for n in range(4)] == [1, 1, 1, 0]
    first = P.decode(server.finish(1))
    assert first.limited is P.ReplayLimit.REQUEST
    server.handle_request(P.ReplayRequest(2, CMCC, (P.SequenceRange(3, 9),)))
    server.plan(2, 0, 9)
    assert [server.envelope(2, record(n)) is not None for n in range(3, 6)] == [1, 1, 0]
    second = P.decode(server.finish(2))
    assert (second.delivered, second.limited) == (2, P.ReplayLimit.CONNECTION)
    assert second.not_yet == (P.SequenceRange(5, 9),)
    assert "ask again on a new connection" in second.reason
    assert server.spent
    server.handle_request(P.ReplayRequest(3, CMCC, (P.SequenceRange(5, 9),)))
    assert server.plan(3, 0, 9) == []  # nothing is read any more on this connection
    third = P.decode(server.finish(3))
    assert (third.delivered, third.not_yet, third.limited) == (
        0,
        (P.SequenceRange(5, 9),),
        P.ReplayLimit.CONNECTION,
    )
    assert server.limited == 3 and server.records == 5


def test_records_the_log_lost_are_never_and_bound_the_result() -> None:
    server = RetrievalServer({CMCC})
    server.handle_request(P.ReplayRequest(1, CMCC, (P.SequenceRange(0, 9),)))
    server.plan(1, 0, 9)
    server.envelope(1, record(0))
    assert server.lost(1, 1, 3, "lost")
    for n in range(4, 10):
        server.envelope(1, record(n))
    result = P.decode(server.finish(1))
    assert result.unavailable == (P.SequenceRange(1, 3),) and result.not_yet is None
    assert result.reason == "lost"


@pytest.mark.parametrize(
    ("ranges", "problem"),
    [([(0, 2**64)], "not 0..18446744073709551615"), ([(5, 4)], "is empty"), ([(-1, 3)], "not 0")],
)
def test_the_client_refuses_ranges_outside_the_sequence_type(ranges, problem) -> None:
    with pytest.raises(ValueError, match=problem):
        RetrievalClient({}).request(CMCC, ranges)


def test_a_sequence_number_past_the_type_is_a_protocol_error_not_a_crash() -> None:
    """DER of a range ending at 2**64 (one past the type): refused, the machine survives."""
    server = StreamSender({CMCC: 0}, utc_now=utc_now)
    server.resume(0.0)
    good = P.encode(P.ReplayRequest(1, CMCC, (P.SequenceRange(0, MAX),)))
    # The last number's INTEGER: 00 ff*8 (9 octets) -> 01 00*8, one more.
    bad = good.replace(
        bytes.fromhex("810900ffffffffffffffff"), bytes.fromhex("8109010000000000000000")
    )
    assert bad != good
    with pytest.raises(ProtocolError):
        server.receive_data(bad, 0.1)


# The client: "not yet" is asked again after a pause, "never" is not ---------------


def finish_not_yet(client: RetrievalClient, server: RetrievalServer, data: bytes, now: float):
    """The server answers a request whose whole range is past its end."""
    request = P.decode(data)
    server.handle_request(request)
    server.plan(request.request_id, 0, -1)
    return client.handle_result(P.decode(server.finish(request.request_id)), now)


def test_not_yet_is_asked_again_after_a_doubling_pause_then_filled() -> None:
    tracker = tracker_with(10)
    client, server = RetrievalClient({CMCC: tracker}), RetrievalServer({CMCC})
    [data] = client.request_missing(CMCC, now=100.0)
    finished = finish_not_yet(client, server, data, 100.0)
    assert finished.not_yet == ((0, 9),) and finished.unavailable == ()
    assert tracker.unavailable == [] and tracker.not_yet() == [(0, 9)]
    assert client.request_missing(CMCC, now=100.5) == []  # pausing
    [again] = client.request_missing(CMCC, now=101.0)
    finish_not_yet(client, server, again, 101.0)
    assert client.request_missing(CMCC, now=102.5) == []  # the pause doubled to 2 s
    [third] = client.request_missing(CMCC, now=103.0)
    # This time the log has them: they arrive, and nothing is left for later.
    request = P.decode(third)
    server.handle_request(request)
    server.plan(request.request_id, 0, 10)
    for n in range(10):
        client.handle_envelope(P.decode(server.envelope(request.request_id, record(n))))
    done = client.handle_result(P.decode(server.finish(request.request_id)), 103.1)
    assert (done.delivered, done.not_yet, done.still_missing) == (10, (), 0)
    assert tracker.missing() == [] and tracker.not_yet() == []


def test_a_limit_that_cut_a_delivering_request_is_asked_again_at_once() -> None:
    tracker = tracker_with(10)
    client = RetrievalClient({CMCC: tracker})
    server = RetrievalServer({CMCC}, limits=RetrievalLimits(request_records=4))
    [data] = client.request_missing(CMCC, now=5.0)
    request = P.decode(data)
    server.handle_request(request)
    server.plan(1, 0, 10)
    for n in range(5):
        sent = server.envelope(1, record(n))
        if sent is not None:
            client.handle_envelope(P.decode(sent))
    finished = client.handle_result(P.decode(server.finish(1)), 5.0)
    assert finished.limited is P.ReplayLimit.REQUEST and finished.not_yet == ((4, 9),)
    assert len(client.request_missing(CMCC, now=5.0)) == 1  # progress: no pause


def test_never_stays_never() -> None:
    tracker = tracker_with(10)
    client, server = RetrievalClient({CMCC: tracker}), RetrievalServer({CMCC})
    [data] = client.request_missing(CMCC, now=0.0)
    server.handle_request(P.decode(data))
    assert server.plan(1, 10, 10) == []  # all of 0..9 is past retention
    finished = client.handle_result(P.decode(server.finish(1)), 0.0)
    assert finished.unavailable == ((0, 9),) and finished.not_yet == ()
    assert client.request_missing(CMCC, now=10_000.0) == []
    assert tracker.unavailable == [((0, 9), "past retention")] and tracker.missing_count == 10


def test_a_gap_wider_than_any_real_stream_is_not_asked_for() -> None:
    """A forged 2**63 held: the hole below it is reported, never requested."""
    tracker = tracker_with(0, 1, 5, 2**63)
    client = RetrievalClient({CMCC: tracker})
    [data] = client.request_missing(CMCC)
    assert P.decode(data).ranges == (P.SequenceRange(2, 4),)
    assert tracker.implausible() == [(6, 2**63 - 1)]
    assert tracker.missing_count == 3 + 2**63 - 6
