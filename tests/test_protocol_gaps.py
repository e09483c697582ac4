"""SequenceTracker against a plain set, and its memory with millions of numbers."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediation.protocol import SequenceTracker
from mediation.protocol.gaps import IntervalSet


def model_missing(held: set[int]) -> list[tuple[int, int]]:
    """Missing ranges from 0 to max(held), the slow obvious way."""
    out: list[tuple[int, int]] = []
    if not held:
        return out
    for n in range(max(held) + 1):
        if n in held:
            continue
        if out and out[-1][1] == n - 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 120)),
        st.tuples(st.just("arrive"), st.integers(0, 120)),
        st.tuples(st.just("next"), st.integers(0, 2)),  # arrive() in order, or just past
        st.tuples(st.just("range"), st.integers(0, 120), st.integers(0, 15)),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(operations)
def test_tracker_agrees_with_a_set(ops: list[tuple]) -> None:
    tracker, held, duplicates = SequenceTracker(), set(), 0
    for op in ops:
        if op[0] in ("add", "arrive", "next"):
            seq = op[1]
            if op[0] == "next":
                seq += max(held) + 1 if held else 0
            if op[0] == "add":
                new = tracker.add(seq)
            else:  # the receiver's hot path: add() and what was next before it
                expected, new = tracker.arrive(seq)
                assert expected == (max(held) + 1 if held else 0)
            assert new == (seq not in held)
            duplicates += not new
            held.add(seq)
        else:
            first, last = op[1], op[1] + op[2]
            assert tracker.add_range(first, last) == len(set(range(first, last + 1)) - held)
            held |= set(range(first, last + 1))
        assert tracker.received_count == len(held)
        assert tracker.duplicates == duplicates
        assert tracker.highest == (max(held) if held else None)
        missing = model_missing(held)
        assert tracker.missing() == missing
        assert tracker.missing_count == sum(b - a + 1 for a, b in missing)
        assert tracker.missing_range_count == len(missing)
        assert all((n in tracker) == (n in held) for n in range(200))
        next_contiguous = 0
        while next_contiguous in held:
            next_contiguous += 1
        assert tracker.next_contiguous == next_contiguous
    # Intervals stay merged: never two touching.
    intervals = tracker.held
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(intervals))


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(0, 200), max_size=80), st.integers(1, 6))
def test_missing_sample_keeps_the_lowest_and_the_newest(held: set[int], limit: int) -> None:
    tracker = SequenceTracker()
    for n in held:
        tracker.add(n)
    missing = model_missing(held)
    ranges, omitted = tracker.missing_sample(limit)
    if len(missing) <= limit:
        assert (ranges, omitted) == (missing, 0)
    else:
        assert ranges == [missing[0], *missing[len(missing) - limit + 1 :]]
        assert omitted == len(missing) - limit


@settings(max_examples=200, deadline=None)
@given(
    st.sets(st.integers(0, 100), max_size=60),
    st.lists(st.tuples(st.integers(0, 100), st.integers(0, 10)), max_size=4),
    st.integers(0, 100),
    st.integers(0, 100),
)
def test_unavailable_ranges_stay_missing_but_are_not_retrievable(
    held: set[int], gone: list[tuple[int, int]], a: int, b: int
) -> None:
    tracker = SequenceTracker()
    for n in held:
        tracker.add(n)
    unavailable = set()
    for first, length in gone:
        tracker.mark_unavailable(first, first + length, "past retention")
        unavailable |= set(range(first, first + length + 1))
    missing = {n for r in model_missing(held) for n in range(r[0], r[1] + 1)}
    retrievable = {n for r in tracker.retrievable() for n in range(r[0], r[1] + 1)}
    assert retrievable == missing - unavailable
    assert tracker.missing_count == len(missing)
    assert tracker.unavailable == [((f, f + n), "past retention") for f, n in gone]
    assert tracker.missing_within(a, b) == len({n for n in range(a, b + 1)} - held)
    gaps = {n for r in tracker.gaps_within(a, b) for n in range(r[0], r[1] + 1)}
    assert gaps == set(range(a, b + 1)) - held


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8)), max_size=12), st.data())
def test_interval_set_count_within_and_gaps(pieces: list[tuple[int, int]], data) -> None:
    intervals, model = IntervalSet(), set()
    for first, length in pieces:
        intervals.add(first, first + length)
        model |= set(range(first, first + length + 1))
    a = data.draw(st.integers(0, 80))
    b = data.draw(st.integers(0, 80))
    assert intervals.count_within(a, b) == len(model & set(range(a, b + 1)))
    assert intervals.count == len(model)


def test_a_million_in_order_with_some_losses_is_a_few_intervals() -> None:
    tracker = SequenceTracker()
    for n in range(1_000_000):
        if n % 250_000 != 7:  # four losses
            tracker.add(n)
    assert tracker.received_count == 999_996
    assert tracker.missing() == [(7, 7), (250_007, 250_007), (500_007, 500_007), (750_007, 750_007)]
    assert len(tracker.held) == 5


def test_reordered_and_duplicated_arrivals() -> None:
    tracker = SequenceTracker()
    for n in [3, 1, 2, 2, 0, 5, 3]:
        tracker.add(n)
    assert tracker.missing() == [(4, 4)]
    assert tracker.duplicates == 2
    assert tracker.received_count == 5


def test_huge_sequence_numbers_and_late_start() -> None:
    tracker = SequenceTracker()
    top = 2**64 - 1
    tracker.add(top)
    assert tracker.missing() == [(0, top - 1)]
    assert tracker.missing_count == top
    with pytest.raises(ValueError):
        tracker.add(2**64)
    with pytest.raises(ValueError):
        tracker.add(-1)
    with pytest.raises(ValueError):
        tracker.add_range(5, 4)


def test_arrive_refuses_what_add_refuses() -> None:
    from mediation.pdu.delivery import MAX_SEQUENCE

    tracker = SequenceTracker()
    assert tracker.arrive(MAX_SEQUENCE) == (0, True)
    for bad in (-1, MAX_SEQUENCE + 1, 2**70, "7"):
        with pytest.raises(ValueError, match="is not a sequence number"):
            tracker.arrive(bad)  # type: ignore[arg-type]
    assert tracker.received_count == 1
