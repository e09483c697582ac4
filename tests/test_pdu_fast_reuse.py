"""The receiver's shortcuts in the hot-path readers give what a full read gives.

A time read again is looked up, not parsed (``fast_der.read_time``'s
cache): the value must equal a fresh parse, a refused time must stay
refused however often it comes, and the cache must stay bounded whatever
a peer sends.
"""

from __future__ import annotations

import datetime as dt

import pytest
import strategies as S
from hypothesis import given, settings
from hypothesis import strategies as st

from mediation.pdu import fast_der
from mediation.pdu.errors import PDUError

PROPERTY = settings(max_examples=200, deadline=None)


@PROPERTY
@given(st.lists(S.utc_times(), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_a_time_read_again_equals_a_fresh_parse(times: list[dt.datetime], rnd) -> None:
    encoded = [fast_der.generalized_time(t) for t in times]
    order = encoded * 3
    rnd.shuffle(order)
    for contents in order:
        framed = b"\x82" + bytes((len(contents),)) + contents + b"\x00"
        got = fast_der.read_time(framed, 2, 2 + len(contents), "t")
        assert got == fast_der._parse_time(framed, 2, 2 + len(contents), "t")
        assert got.tzinfo is dt.UTC


@pytest.mark.parametrize(
    "contents",
    [b"20261301000000Z", b"20261203234500.10Z", b"20261203234500", b"2026120323450aZ"],
)
def test_a_refused_time_is_refused_every_time(contents: bytes) -> None:
    for _ in range(3):
        with pytest.raises(PDUError, match="t: "):
            fast_der.read_time(contents, 0, len(contents), "t")
    assert contents not in fast_der._TIMES


def test_the_time_cache_is_bounded() -> None:
    start = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    for n in range(fast_der.TIMES_KEPT * 2 + 5):
        contents = fast_der.generalized_time(start + dt.timedelta(microseconds=n))
        assert fast_der.read_time(contents, 0, len(contents), "t") == start + dt.timedelta(
            microseconds=n
        )
        assert len(fast_der._TIMES) <= fast_der.TIMES_KEPT
