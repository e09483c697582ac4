"""UDP delivery per run of records: the same datagrams, state and skips as one by one.

The UDP worker envelopes and seals each run of log records (between
checkpoints) in one call each (``DatagramSender.envelope_run``,
``DatagramSealer.seal_run``); these prove the runs give exactly what the
per-record calls give, including a record too large for a datagram in
the middle of a run and a run that is not in sequence.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_protocol_fixtures import CMCC, record

from mediation.protocol import DatagramSender
from mediation.protocol.sealed import DatagramOpener, DatagramSealer, Direction, SealKey

KEY = SealKey(0x0A0B0C0D, bytes(range(32)))
DOWN = Direction.SERVER_TO_AGENCY


def _one_by_one(sender: DatagramSender, records: list, now: float) -> tuple[list, list]:
    """The worker's loop before runs: envelope each, skip what raises."""
    out, skipped = [], []
    for item in records:
        try:
            out.append(sender.envelope(item, now))
        except ValueError:
            skipped.append(item)
            if sender.first_sent is None:
                sender.first_sent = item.seq
            sender.next_sequence = item.seq + 1
    return out, skipped


def _state(sender: DatagramSender) -> tuple:
    return sender.first_sent, sender.next_sequence, sender.next_deadline()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 12), min_size=1, max_size=10),
    st.sets(st.integers(0, 12), max_size=2),
    st.lists(st.integers(0, 3), min_size=1, max_size=3),
)
def test_a_run_gives_what_one_by_one_gives(seqs: list, large: set, cuts: list) -> None:
    # Sequence numbers as a cursor would never give them (gaps, repeats)
    # and records too large for a datagram: the same envelopes, skips and state.
    records = [record(s, payload=70_000 if s in large else 30 + s) for s in seqs]
    runs, start = [], 0
    for cut in cuts:  # the batch cut into runs, as checkpoints cut it
        runs.append(records[start : start + cut])
        start += cut
    runs.append(records[start:])
    by_run, one = DatagramSender(CMCC), DatagramSender(CMCC)
    for now, run in enumerate(runs):
        assert by_run.envelope_run(run, float(now)) == _one_by_one(one, run, float(now))
        assert _state(by_run) == _state(one)


def test_a_large_record_in_a_run_is_skipped_and_the_run_goes_on() -> None:
    sender = DatagramSender(CMCC)
    records = [record(n, payload=70_000 if n == 2 else 40) for n in range(5)]
    sent, skipped = sender.envelope_run(records, 0.0)
    assert [r.seq for r in skipped] == [2] and len(sent) == 4
    assert (sender.first_sent, sender.next_sequence) == (0, 5)


def _sealer() -> DatagramSealer:
    return DatagramSealer(KEY, DOWN, 1_700_000_000_000_000, random=lambda n: b"\x22" * n)


def test_a_sealed_run_is_each_message_sealed_in_turn() -> None:
    messages = [bytes([n]) * (n * 100) for n in range(6)]
    one, run = _sealer(), _sealer()
    assert run.seal_run(messages) == [one.seal(m) for m in messages]
    assert run.counter == one.counter == 6
    opener = DatagramOpener([KEY], DOWN)
    assert [opener.open(d).message for d in run.seal_run(messages[:2])] == messages[:2]


def test_a_message_too_large_stops_the_run_with_the_counters_before_it_used() -> None:
    run = _sealer()
    with pytest.raises(ValueError, match="do not fit"):
        run.seal_run([b"a", b"b", bytes(70_000), b"c"])
    assert run.counter == 2
    assert run.seal_run([b"d"]) == [_sealer_at(2).seal(b"d")]


def _sealer_at(counter: int) -> DatagramSealer:
    sealer = _sealer()
    sealer.counter = counter
    return sealer
