"""What a receiver holds of one stream, and what it is missing.

Held sequence numbers are kept as merged intervals, so a stream of
millions of envelopes with a few losses costs a few intervals: memory
grows with the number of gaps, not the number of envelopes.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator

from mediation.pdu.delivery import MAX_SEQUENCE
from mediation.protocol.events import Range

# A gap wider than this is not asked for: at a million records a second a
# stream takes 12 days to number 2**40, so a wider hole between what a
# receiver holds can only come from a forged or corrupt sequence number
# (a datagram claiming 2**63, say). It stays counted as missing and is
# reported; the server bounds every request anyway.
MAX_GAP_SPAN = 2**40
# "Not yet" answers (past the stream's end, or left over by a server limit)
# are asked again after this pause, doubling per repeat up to the cap.
NOT_YET_FIRST = 1.0
NOT_YET_MAX = 60.0


class IntervalSet:
    """A set of non-negative integers stored as sorted, disjoint, non-adjacent intervals."""

    def __init__(self) -> None:
        # _firsts[i].._lasts[i] inclusive; _lasts[i] + 1 < _firsts[i + 1].
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        self._count = 0

    # No __len__: the count can pass sys.maxsize (len() would raise), and
    # tuple()/list() take __len__ as a size hint and allocate by it, so a set
    # of one interval 0..10**9 would cost 8 GB to turn into its one pair.

    @property
    def count(self) -> int:
        """How many integers the set holds (kept as it changes: O(1))."""
        return self._count

    def __bool__(self) -> bool:
        return bool(self._firsts)

    def __contains__(self, value: int) -> bool:
        i = bisect.bisect_right(self._firsts, value) - 1
        return i >= 0 and value <= self._lasts[i]

    def __iter__(self) -> Iterator[Range]:
        """The intervals, lowest first."""
        return zip(self._firsts, self._lasts, strict=True)

    @property
    def interval_count(self) -> int:
        """How many separate intervals the set is made of."""
        return len(self._firsts)

    def interval(self, index: int) -> Range:
        """The ``index``-th interval, lowest first (negative counts from the top)."""
        return self._firsts[index], self._lasts[index]

    def add(self, first: int, last: int) -> int:
        """Add ``first``..``last`` (inclusive).

        Returns:
            How many of them were not in the set before.
        """
        firsts, lasts = self._firsts, self._lasts
        # The common case, one past the top interval, costs no bisect.
        if lasts and first == lasts[-1] + 1:
            lasts[-1] = last
            self._count += last - first + 1
            return last - first + 1
        # Intervals touching or overlapping [first - 1, last + 1] merge into one.
        lo = bisect.bisect_left(lasts, first - 1)
        hi = bisect.bisect_right(firsts, last + 1)
        if lo == hi:
            firsts.insert(lo, first)
            lasts.insert(lo, last)
            self._count += last - first + 1
            return last - first + 1
        covered = sum(
            min(lasts[i], last) - max(firsts[i], first) + 1
            for i in range(lo, hi)
            if lasts[i] >= first and firsts[i] <= last
        )
        new_first, new_last = min(firsts[lo], first), max(lasts[hi - 1], last)
        old = sum(lasts[i] - firsts[i] + 1 for i in range(lo, hi))
        firsts[lo:hi] = [new_first]
        lasts[lo:hi] = [new_last]
        self._count += (new_last - new_first + 1) - old
        return last - first + 1 - covered

    def count_within(self, first: int, last: int) -> int:
        """How many members lie in ``first``..``last``."""
        if last < first:
            return 0
        lo = bisect.bisect_left(self._lasts, first)
        hi = bisect.bisect_right(self._firsts, last)
        return sum(
            min(self._lasts[i], last) - max(self._firsts[i], first) + 1 for i in range(lo, hi)
        )

    def gaps(self, first: int, last: int) -> Iterator[Range]:
        """The ranges of ``first``..``last`` *not* in the set, lowest first."""
        pos = first
        lo = bisect.bisect_left(self._lasts, first)
        for i in range(lo, len(self._firsts)):
            if self._firsts[i] > last:
                break
            if self._firsts[i] > pos:
                yield pos, self._firsts[i] - 1
            pos = self._lasts[i] + 1
        if pos <= last:
            yield pos, last


class SequenceTracker:
    """One stream at a receiver: what has arrived, in any order, and what is missing.

    Sequence numbers of a stream start at 0 (they are assigned at append
    and never reused), so everything from 0 up to the highest seen that has
    not arrived is missing, including the history before a late start.
    """

    def __init__(self) -> None:
        self._held = IntervalSet()
        self._unavailable = IntervalSet()
        self._reasons: list[tuple[Range, str | None]] = []
        self._not_yet = IntervalSet()
        self._not_yet_reason: str | None = None
        self._retry_at = -math.inf
        self._delay = NOT_YET_FIRST
        self.duplicates = 0
        """Arrivals of a sequence number already held."""

    def add(self, sequence: int) -> bool:
        """Record one arrival.

        Returns:
            True if it is new, False for a duplicate (counted in :attr:`duplicates`).

        Raises:
            ValueError: not a valid sequence number.
        """
        _check(sequence)
        if sequence in self._held:
            self.duplicates += 1
            return False
        self._held.add(sequence, sequence)
        return True

    def arrive(self, sequence: int) -> tuple[int, bool]:
        """:meth:`add`, telling also what was next: one call per envelope on a receiver's hot path.

        Returns:
            ``(expected, new)``: one past the highest held before this
            arrival (0 if nothing was), and whether ``sequence`` is new (a
            duplicate is counted in :attr:`duplicates`).

        Raises:
            ValueError: not a valid sequence number.
        """
        held = self._held
        lasts = held._lasts  # this module's own set: its top read without two calls
        if not lasts:
            return 0, self.add(sequence)
        expected = lasts[-1] + 1
        if sequence == expected and sequence.__class__ is int and sequence <= MAX_SEQUENCE:
            lasts[-1] = sequence  # the next in order extends the top interval
            held._count += 1
            return expected, True
        return expected, self.add(sequence)

    def add_range(self, first: int, last: int) -> int:
        """Record ``first``..``last`` as held (filled by retrieval, or known stored).

        Returns:
            How many of them were new. Overlap is not counted as duplicates:
            this is bookkeeping, not arrivals.
        """
        _check(first)
        _check(last)
        if last < first:
            raise ValueError(f"range {first}..{last} is empty")
        return self._held.add(first, last)

    def mark_unavailable(self, first: int, last: int, reason: str | None = None) -> None:
        """The server cannot supply ``first``..``last``: they stay missing for good.

        They still count as missing (that is the truth about the intercept)
        but :meth:`retrievable` no longer offers them.
        """
        _check(first)
        _check(last)
        if last < first:
            raise ValueError(f"range {first}..{last} is empty")
        self._unavailable.add(first, last)
        self._reasons.append(((first, last), reason))

    def mark_not_yet(self, first: int, last: int, reason: str | None = None) -> None:
        """The server cannot send ``first``..``last`` *now* (past its end, or a limit).

        They stay missing and retrievable: asked for again once the pause
        set by :meth:`not_yet_answered` has passed.
        """
        _check(first)
        _check(last)
        if last < first:
            raise ValueError(f"range {first}..{last} is empty")
        self._not_yet.add(first, last)
        self._not_yet_reason = reason

    def not_yet_answered(self, now: float, *, progress: bool) -> None:
        """A replay answer left ranges "not yet": when to ask for them again.

        :meth:`retrievable` given a time before then leaves them out. The
        pause doubles with each answer that made no progress, from
        :data:`NOT_YET_FIRST` to :data:`NOT_YET_MAX` seconds; an answer that
        delivered something before a limit cut it means ask again at once.
        """
        if progress:
            self._delay = NOT_YET_FIRST
            self._retry_at = now
            return
        self._retry_at = now + self._delay
        self._delay = min(self._delay * 2, NOT_YET_MAX)

    def answered_in_full(self) -> None:
        """A replay came back with nothing left for later: the next pause starts short again."""
        self._delay = NOT_YET_FIRST

    def __contains__(self, sequence: int) -> bool:
        return sequence in self._held

    @property
    def highest(self) -> int | None:
        """The highest sequence number held, None before the first arrival."""
        return self._held.interval(-1)[1] if self._held else None

    @property
    def received_count(self) -> int:
        """Distinct sequence numbers held."""
        return self._held.count

    @property
    def next_contiguous(self) -> int:
        """The first sequence number not held counting up from 0."""
        if self._held and self._held.interval(0)[0] == 0:
            return self._held.interval(0)[1] + 1
        return 0

    @property
    def missing_count(self) -> int:
        """Sequence numbers from 0 to :attr:`highest` not held."""
        top = self.highest
        return 0 if top is None else top + 1 - self._held.count

    def missing(self, limit: int | None = None) -> list[Range]:
        """Missing ranges from 0 to :attr:`highest`, lowest first, at most ``limit`` of them."""
        return _take(self._held.gaps(0, self.highest), limit) if self._held else []

    def missing_within(self, first: int, last: int) -> int:
        """How many of ``first``..``last`` are not held (no matter the highest)."""
        return 0 if last < first else last - first + 1 - self._held.count_within(first, last)

    def gaps_within(self, first: int, last: int) -> list[Range]:
        """The ranges of ``first``..``last`` not held (no matter the highest)."""
        return list(self._held.gaps(first, last))

    @property
    def missing_range_count(self) -> int:
        """How many separate missing ranges there are."""
        if not self._held:
            return 0
        return self._held.interval_count - (1 if self._held.interval(0)[0] == 0 else 0)

    def missing_sample(self, limit: int) -> tuple[list[Range], int]:
        """At most ``limit`` missing ranges for a report that must stay small.

        Keeps the lowest range and the newest ``limit - 1``: the newest are
        what the sender's live loss figure is about, and keeping the lowest
        (typically the history before this receiver started) means every
        left-out range lies between the first and second listed, which lets
        the sender still count its loss exactly (see docs/delivery-protocol.md).

        Returns:
            ``(ranges lowest first, how many ranges were left out)``.
        """
        if limit < 1:
            raise ValueError("a report needs room for at least one range")
        total = self.missing_range_count
        if total <= limit:
            return self.missing(), 0
        lead = 1 if self._held.interval(0)[0] > 0 else 0

        def nth(j: int) -> Range:
            if lead and j == 0:
                return 0, self._held.interval(0)[0] - 1
            below, above = self._held.interval(j - lead), self._held.interval(j - lead + 1)
            return below[1] + 1, above[0] - 1

        picks = [0, *range(total - limit + 1, total)]
        return [nth(j) for j in picks], total - limit

    def retrievable(self, limit: int | None = None, now: float | None = None) -> list[Range]:
        """Missing ranges worth asking for, lowest first.

        Left out: ranges the server called unavailable (never), gaps wider
        than :data:`MAX_GAP_SPAN` (see :meth:`implausible`), and, when
        ``now`` is given, ranges answered "not yet" whose pause has not
        passed.
        """
        out: list[Range] = []
        waiting = now is not None and now < self._retry_at
        for first, last in self._held.gaps(0, self.highest) if self._held else ():
            if last - first + 1 > MAX_GAP_SPAN:
                continue
            for piece in self._unavailable.gaps(first, last):
                pieces = self._not_yet.gaps(*piece) if waiting else (piece,)
                for item in pieces:
                    if limit is not None and len(out) >= limit:
                        return out
                    out.append(item)
        return out

    def implausible(self, limit: int | None = None) -> list[Range]:
        """Missing ranges wider than :data:`MAX_GAP_SPAN`: never asked for (a forged number?)."""
        gaps = self._held.gaps(0, self.highest) if self._held else iter(())
        return _take((g for g in gaps if g[1] - g[0] + 1 > MAX_GAP_SPAN), limit)

    def not_yet(self, limit: int | None = None) -> list[Range]:
        """Ranges the server answered "not yet" that are still not held, lowest first."""
        out: list[Range] = []
        for first, last in self._not_yet:
            for piece in self._held.gaps(first, last):
                if limit is not None and len(out) >= limit:
                    return out
                out.append(piece)
        return out

    @property
    def not_yet_reason(self) -> str | None:
        """The server's words with its latest "not yet" answer."""
        return self._not_yet_reason

    @property
    def unavailable(self) -> list[tuple[Range, str | None]]:
        """Ranges marked unavailable, with the server's reason, in the order marked."""
        return list(self._reasons)

    @property
    def held(self) -> list[Range]:
        """The held sequence numbers as merged intervals, lowest first."""
        return list(self._held)


def _check(sequence: int) -> None:
    if not isinstance(sequence, int) or not 0 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"{sequence!r} is not a sequence number")


def _take(ranges: Iterator[Range], limit: int | None) -> list[Range]:
    out = []
    for item in ranges:
        if limit is not None and len(out) >= limit:
            break
        out.append(item)
    return out
