"""Replay: the agency asks for what it missed; the server answers from the log."""

from __future__ import annotations

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
    RetrievalServer,
    SequenceTracker,
    StreamReceiver,
    StreamSender,
)


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
