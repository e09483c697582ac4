"""StreamEnvelopes: the hot-path envelope of a log record, encoded once for every endpoint.

The framer (pdu.fast_envelope.RecordFramer) must give the reference
codec's bytes for every record, and refuse exactly what the general
splice refuses; the cache must hand each endpoint the bytes of *its*
record and keep nothing once every endpoint has taken it.
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import envelopes, sequence_numbers, utc_times
from test_protocol_fixtures import CMCC, CMII, T_US, cc_der, notice_der

from mediation import pdu as P
from mediation.log.format import ContentKind as LogKind
from mediation.log.format import LogRecord
from mediation.pdu.fast import encode_content
from mediation.protocol.envelope import (
    PAUSE_GENERATIONS,
    StoredRecord,
    StreamEnvelopes,
    record_envelope,
)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_LOG_KIND = {"cmII": LogKind.CMII, "cmCC": LogKind.CMCC, "notice": LogKind.NOTICE}


def _us(when: dt.datetime) -> int:
    return (when - _EPOCH) // dt.timedelta(microseconds=1)


def _outcome(make):
    try:
        return make()
    except ValueError:
        return ValueError


@settings(max_examples=300, deadline=None)
@given(envelopes())
def test_every_envelope_is_the_reference_codecs(envelope: P.Envelope) -> None:
    kind, der = encode_content(envelope.content)
    record = LogRecord(
        envelope.sequence_number,
        _us(envelope.mediation_time),
        _LOG_KIND[kind],
        envelope.clock_status,
        der,
    )
    shared = StreamEnvelopes(envelope.stream)
    # The first call may take the general splice (and teach the framer the
    # kind); the second goes through the framer: both must be the reference.
    for _ in range(2):
        assert shared.envelope(record, envelope.redelivered) == P.encode(envelope)


_RECORD_FIELDS = st.tuples(
    sequence_numbers,
    st.one_of(
        st.just(T_US), st.integers(T_US - 2_000_000, T_US + 2_000_000), st.integers(0, 2**62)
    ),
    st.sampled_from([None, *P.ClockStatus]),
    st.booleans(),
    st.integers(3, 1500),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_RECORD_FIELDS, min_size=1, max_size=12))
def test_one_framer_over_many_records_writes_each_as_the_reference(fields: list) -> None:
    # The framer keeps the octets of the last receive time, clock and flag:
    # records that share some of them and differ in others must each be right.
    shared = StreamEnvelopes(CMCC)
    for seq, received, clock, redelivered, size in fields:
        record = LogRecord(seq, received, LogKind.CMCC, clock, cc_der(size))
        expected = _outcome(lambda r=record, f=redelivered: record_envelope(CMCC, r, f))
        for _ in range(2):
            assert _outcome(lambda r=record, f=redelivered: shared.envelope(r, f)) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["cmCC", "notice"]),
    st.integers(0, 200),
    st.binary(max_size=3),
    st.integers(0, 255),
    sequence_numbers,
    utc_times(1900, 9999),
)
def test_a_damaged_record_is_refused_as_the_general_splice_refuses_it(
    kind: str, at: int, insert: bytes, octet: int, seq: int, when: dt.datetime
) -> None:
    good = cc_der(300) if kind == "cmCC" else notice_der()
    at = min(at, len(good))
    damaged = good[:at] + insert + bytes([octet]) + good[at + 1 :]
    stream = CMCC if kind == "cmCC" else CMII
    record = LogRecord(seq, _us(when), _LOG_KIND[kind], P.ClockStatus.UNKNOWN, damaged)
    warm = LogRecord(0, T_US, _LOG_KIND[kind], None, good)
    shared = StreamEnvelopes(stream)
    shared.envelope(warm)  # the framer knows the kind: the damaged one meets it
    expected = _outcome(lambda: record_envelope(stream, record, False))
    assert _outcome(lambda: shared.envelope(record)) == expected


def test_a_kind_the_stream_does_not_carry_is_refused_on_both_paths() -> None:
    shared = StreamEnvelopes(CMII)
    shared.envelope(LogRecord(0, T_US, LogKind.NOTICE, None, notice_der()))
    cc = LogRecord(1, T_US, LogKind.CMCC, None, cc_der())
    for _ in range(2):
        with pytest.raises(ValueError, match="cannot ride in this stream"):
            shared.envelope(cc)


def test_two_endpoints_share_one_encoding_and_nothing_stays_behind() -> None:
    shared = StreamEnvelopes(CMCC, consumers=2)
    records = [LogRecord(i, T_US + i, LogKind.CMCC, None, cc_der()) for i in range(50)]
    first = [shared.envelope(r) for r in records]  # the UDP endpoint, say
    assert shared.held == 50
    second = [shared.envelope(r) for r in records]  # the TLS endpoint
    assert all(a is b for a, b in zip(first, second, strict=True))
    assert shared.encoded == 50 and shared.held == 0


def test_another_record_at_the_same_number_is_encoded_for_itself() -> None:
    shared = StreamEnvelopes(CMCC, consumers=2)
    old = LogRecord(7, T_US, LogKind.CMCC, None, cc_der())
    new = LogRecord(7, T_US + 1, LogKind.CMCC, None, cc_der())  # e.g. read again from disk
    shared.envelope(old)
    assert shared.envelope(new) == record_envelope(CMCC, new, False)
    assert shared.encoded == 2


def test_a_redelivered_envelope_is_never_taken_from_the_cache() -> None:
    shared = StreamEnvelopes(CMCC, consumers=2)
    record = LogRecord(3, T_US, LogKind.CMCC, None, cc_der())
    plain = shared.envelope(record)
    again = shared.envelope(record, redelivered=True)
    assert again != plain and again == record_envelope(CMCC, record, True)


def test_an_endpoint_that_lags_costs_at_most_two_generations() -> None:
    shared = StreamEnvelopes(CMCC, consumers=2, generation_bytes=10_000)
    for i in range(2000):  # only one endpoint takes them
        shared.envelope(LogRecord(i, T_US, LogKind.CMCC, None, cc_der(100)))
    size = len(record_envelope(CMCC, LogRecord(0, T_US, LogKind.CMCC, None, cc_der(100)), False))
    assert shared.held * size <= 2 * (10_000 + size)  # none, while the cache pauses (below)
    shared.leave()  # that endpoint disconnects: nothing is kept for it
    assert shared.held == 0 and shared.consumers == 1
    shared.envelope(LogRecord(2000, T_US, LogKind.CMCC, None, cc_der(100)))
    assert shared.held == 0  # one endpoint: nothing kept


def test_endpoints_join_and_leave() -> None:
    shared = StreamEnvelopes(CMCC)
    shared.join()
    shared.envelope(LogRecord(0, T_US, LogKind.CMCC, None, cc_der()))
    assert shared.held == 0
    shared.join()
    shared.envelope(LogRecord(1, T_US, LogKind.CMCC, None, cc_der()))
    assert shared.held == 1


def test_one_endpoint_keeps_nothing() -> None:
    shared = StreamEnvelopes(CMCC, consumers=1)
    for i in range(10):
        shared.envelope(LogRecord(i, T_US, LogKind.CMCC, None, cc_der()))
    assert shared.held == 0


@pytest.mark.parametrize("octets", [1, 2])
def test_a_length_not_in_its_shortest_form_is_refused_on_both_paths(octets: int) -> None:
    body = notice_der()[2:]  # a short-form length: rewrite it the long way
    size = bytes((0x80 | octets,)) + len(body).to_bytes(octets, "big")
    stretched = b"\x30" + size + body
    shared = StreamEnvelopes(CMII)
    shared.envelope(LogRecord(0, T_US, LogKind.NOTICE, None, notice_der()))
    record = LogRecord(1, T_US, LogKind.NOTICE, None, stretched)
    assert _outcome(lambda: record_envelope(CMII, record, False)) is ValueError
    assert _outcome(lambda: shared.envelope(record)) is ValueError


def test_a_run_is_each_records_envelope_and_shares_like_one_by_one() -> None:
    records = [LogRecord(i, T_US + i // 3, LogKind.CMCC, None, cc_der(50 + i)) for i in range(20)]
    shared = StreamEnvelopes(CMCC, consumers=2)
    first = shared.envelopes(records, redelivered_below=5)  # the first five were sent before
    assert first == [record_envelope(CMCC, r, r.seq < 5) for r in records]
    assert shared.held == 15  # redelivered ones are not kept
    second = shared.envelopes(records[5:])
    assert all(a is b for a, b in zip(first[5:], second, strict=True))
    assert shared.held == 0 and shared.encoded == 20
    alone = StreamEnvelopes(CMCC)
    assert alone.envelopes(records, redelivered_below=5) == first


@pytest.mark.parametrize(
    "micro", [0, 1, 10, 100, 120, 1000, 1200, 5000, 10000, 100000, 100001, 999000, 999999]
)
def test_every_form_of_the_fraction_is_the_reference(micro: int) -> None:
    shared = StreamEnvelopes(CMCC)
    for seq, received in enumerate((T_US, T_US // 1_000_000 * 1_000_000 + micro)):
        record = LogRecord(seq, received, LogKind.CMCC, None, cc_der())
        assert shared.envelope(record) == record_envelope(CMCC, record, False)


def test_a_cache_nobody_takes_from_pauses_and_then_tries_again() -> None:
    shared = StreamEnvelopes(CMCC, consumers=2, generation_bytes=10_000)
    held = []
    for i in range(800):  # only the leading endpoint takes them: the other is far behind
        shared.envelopes([LogRecord(i, T_US, LogKind.CMCC, None, cc_der(100))])
        held.append(shared.held)
    first_pause = held.index(0, 1)  # two generations kept, none taken: emptied, paused
    assert max(held[:first_pause]) > 0
    resumed = next(i for i in range(first_pause, 800) if held[i] > 0)
    assert resumed - first_pause >= PAUSE_GENERATIONS * 10_000 // 250  # envelopes of ~200 octets
    assert shared.encoded == 800


def test_endpoints_in_step_never_pause_the_cache() -> None:
    shared = StreamEnvelopes(CMCC, consumers=2, generation_bytes=10_000)
    for i in range(800):
        run = [LogRecord(i, T_US, LogKind.CMCC, None, cc_der(100))]
        assert shared.envelopes(run)[0] is shared.envelopes(run)[0]
    assert shared.encoded == 800 and shared.held == 0


def test_runs_across_every_size_of_sequence_number_are_the_reference() -> None:
    """The framer keeps a number's size while numbers stay in its range: at every edge,
    up, down and back, each envelope is the reference's."""
    edges = [0, 1, 127, 128, 255, 256, 32767, 32768, 2**23 - 1, 2**23, 2**31 - 1, 2**31]
    edges += [2**39, 2**47 - 1, 2**47, 2**55, 2**63 - 1, 2**63, 2**64 - 1]
    seqs = [s for edge in edges for s in (edge - 1, edge, edge + 1) if 0 <= s < 2**64]
    mixed = [s for pair in zip(seqs, seqs[::-1], strict=True) for s in pair]
    for order in (seqs, seqs[::-1], mixed):
        records = [LogRecord(s, T_US, LogKind.CMCC, None, cc_der(40)) for s in order]
        shared = StreamEnvelopes(CMCC)
        shared.envelope(records[0])  # the framer learns the kind: the run is its own
        got = shared.envelopes(records)
        assert shared.encoded == len(records) + 1
        assert got == [record_envelope(CMCC, r, False) for r in records]


def test_an_endpoint_a_window_behind_takes_every_envelope_from_the_cache() -> None:
    """The leader frames and keeps each run; the follower, 1,024 behind, frames nothing."""
    shared = StreamEnvelopes(CMCC, consumers=2, generation_bytes=2 * 1024 * 1024)
    records = [LogRecord(i, T_US + i // 100, LogKind.CMCC, None, cc_der(1400)) for i in range(6000)]
    for start in range(0, len(records), 256):
        led = shared.envelopes(records[start : start + 256])
        assert led == [record_envelope(CMCC, r, False) for r in records[start : start + 256]]
        if start >= 1024:
            behind = records[start - 1024 : start - 768]
            assert shared.envelopes(behind) == [record_envelope(CMCC, r, False) for r in behind]
    assert shared.encoded == len(records)  # each framed once, by the leader


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_RECORD_FIELDS, min_size=1, max_size=40),
    st.integers(0, 2**32),
    st.booleans(),
    st.integers(1, 3),
)
def test_a_run_of_records_is_each_records_reference_envelope(
    fields: list, below: int, stored: bool, consumers: int
) -> None:
    # envelopes() frames a whole run in one call (RecordFramer.frame_run):
    # each record of the run must still be the reference's, or refused as it.
    make = StoredRecord if stored else LogRecord
    records = [
        make(seq, received, LogKind.CMCC, clock, cc_der(size))
        for seq, received, clock, _flag, size in fields
    ]
    expected = [
        _outcome(lambda r=record: record_envelope(CMCC, r, r.seq < below)) for record in records
    ]
    shared = StreamEnvelopes(CMCC, consumers=consumers)
    if ValueError in expected:  # a run with a broken record raises, as the reference
        with pytest.raises(ValueError):
            shared.envelopes(records, below)
        return
    for _ in range(2):  # the second run meets the cache (consumers > 1) and the framer's state
        assert shared.envelopes(records, below) == expected


def test_a_run_longer_than_a_generation_is_shared_whole() -> None:
    # At saturation a log read is 256 records, longer than a generation of
    # 1500-byte envelopes: the endpoint that comes second must find all of
    # them, run after run (turning over inside a run paused the cache).
    shared = StreamEnvelopes(CMCC, consumers=2, generation_bytes=16 * 1024)
    seq, der = 0, cc_der(1400)  # 40 a run: 60 KB, nearly four generations
    for run in range(6):
        records = [LogRecord(i, T_US + run, LogKind.CMCC, None, der) for i in range(seq, seq + 40)]
        seq += 40
        first = shared.envelopes(records)  # the UDP endpoint, say
        second = shared.envelopes(records)  # the TLS endpoint, just behind
        assert all(a is b for a, b in zip(first, second, strict=True))
    assert shared.encoded == seq and shared.held == 0
