"""Sealed datagrams: the wire format byte by byte, tampering, replay, stale sessions."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediation.protocol.sealed import (
    GRACE_US,
    HEADER,
    MAX_DATAGRAM,
    OVERHEAD,
    WINDOW,
    DatagramOpener,
    DatagramSealer,
    Direction,
    Refusal,
    SealKey,
    SealRefused,
)

KEY = SealKey(0x01020304, bytes(range(32)))
OTHER_KEY = SealKey(0x01020304, bytes(32))
START = 1_795_000_000_000_000  # µs since the epoch, late 2026
DOWN = Direction.SERVER_TO_AGENCY


def sealer(start: int = START, session: bytes = b"\x11" * 8, key: SealKey = KEY) -> DatagramSealer:
    return DatagramSealer(key, DOWN, start, random=lambda n: session[:n])


def opener(**kwargs: object) -> DatagramOpener:
    return DatagramOpener([KEY], DOWN, **kwargs)  # type: ignore[arg-type]


def refusal(op: DatagramOpener, datagram: bytes) -> Refusal:
    with pytest.raises(SealRefused) as caught:
        op.open(datagram)
    return caught.value.reason


def test_the_header_is_exactly_as_documented() -> None:
    datagram = sealer().seal(b"hello")
    assert len(datagram) == 32 + 5 + 16 == len(b"hello") + OVERHEAD
    assert datagram[:2] == b"MD" and datagram[2] == 1 and datagram[3] == 0
    assert datagram[4:8] == bytes.fromhex("01020304")
    assert datagram[8:16] == b"\x11" * 8
    assert int.from_bytes(datagram[16:24], "big") == START
    assert int.from_bytes(datagram[24:32], "big") == 1
    assert b"hello" not in datagram  # encrypted, not only authenticated


def test_a_datagram_opens_once_and_counters_increase() -> None:
    s, o = sealer(), opener()
    first, second = s.seal(b"one"), s.seal(b"two")
    assert int.from_bytes(second[24:32], "big") == 2
    assert o.open(second).message == b"two"
    assert o.open(first).message == b"one"  # reordered: fine
    assert refusal(o, first) is Refusal.REPLAYED
    assert o.refused[Refusal.REPLAYED] == 1 and o.opened == 2


@settings(max_examples=200, deadline=None)
@given(
    message=st.binary(max_size=64),
    index=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
)
def test_any_changed_octet_is_refused_and_counted(message: bytes, index: int, flip: int) -> None:
    datagram = bytearray(sealer().seal(message))
    index %= len(datagram)
    datagram[index] ^= flip
    o = opener()
    reason = refusal(o, bytes(datagram))
    expected = {0: Refusal.BAD_MAGIC, 1: Refusal.BAD_MAGIC, 2: Refusal.BAD_VERSION}
    if index in expected:
        assert reason is expected[index]
    elif index == 3:
        assert reason in (Refusal.WRONG_DIRECTION,)
    elif 4 <= index < 8:
        assert reason is Refusal.UNKNOWN_KEY
    else:
        assert reason is Refusal.BAD_TAG
    assert sum(o.refused.values()) == 1 and o.opened == 0 and o.sessions == 0


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_junk_never_opens_and_never_raises_anything_else(junk: bytes) -> None:
    o = opener()
    with pytest.raises(SealRefused):
        o.open(junk)
    with pytest.raises(SealRefused):
        o.open(b"MD\x01\x00\x01\x02\x03\x04" + junk.ljust(40, b"\0"))


def test_sizes_are_refused_as_too_short_or_too_long() -> None:
    o = opener()
    assert refusal(o, sealer().seal(b"")[:-1]) is Refusal.TOO_SHORT
    assert refusal(o, b"x" * (MAX_DATAGRAM + 1)) is Refusal.TOO_LONG
    with pytest.raises(ValueError, match="do not fit"):
        sealer().seal(bytes(MAX_DATAGRAM - OVERHEAD + 1))
    assert len(sealer().seal(bytes(MAX_DATAGRAM - OVERHEAD))) == MAX_DATAGRAM


def test_the_wrong_key_and_a_reflected_datagram_are_refused() -> None:
    assert refusal(opener(), sealer(key=OTHER_KEY).seal(b"x")) is Refusal.BAD_TAG
    reflected = DatagramOpener([KEY], Direction.AGENCY_TO_SERVER)
    assert refusal(reflected, sealer().seal(b"x")) is Refusal.WRONG_DIRECTION
    # Even with the direction byte changed, the tag (and the session key) bind it.
    datagram = bytearray(sealer().seal(b"x"))
    datagram[3] = Direction.AGENCY_TO_SERVER
    assert refusal(reflected, bytes(datagram)) is Refusal.BAD_TAG


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=3 * WINDOW), min_size=1, max_size=60))
def test_the_window_accepts_each_counter_once_and_nothing_too_old(order: list[int]) -> None:
    s, o = sealer(), opener()
    datagrams = {n: None for n in range(1, 3 * WINDOW + 1)}
    for n in datagrams:
        datagrams[n] = s.seal(n.to_bytes(4, "big"))
    accepted: set[int] = set()
    highest = 0
    for n in order:
        fresh = n not in accepted and n > highest - WINDOW
        try:
            assert o.open(datagrams[n]).counter == n
            assert fresh, n
            accepted.add(n)
            highest = max(highest, n)
        except SealRefused as exc:
            assert not fresh and exc.reason is Refusal.REPLAYED


def test_a_restarted_sender_is_a_new_session_with_a_new_key() -> None:
    o = opener()
    before = sealer(session=b"\x01" * 8).seal(b"same")
    after = sealer(START + 5_000_000, session=b"\x02" * 8).seal(b"same")
    assert before[24:] != after[24:]  # same counter, same message: different key
    o.open(before)
    o.open(after)
    assert o.sessions == 2 and o.newest_start == START + 5_000_000


def test_a_session_older_than_the_newest_by_more_than_the_grace_is_stale() -> None:
    o = opener()
    old = sealer(START, session=b"\x01" * 8)
    recorded = [old.seal(b"a"), old.seal(b"b")]
    o.open(sealer(START + GRACE_US + 1, session=b"\x02" * 8).seal(b"new"))
    assert refusal(o, recorded[0]) is Refusal.STALE_SESSION
    assert o.sessions == 1
    # Within the grace, an older session is taken (another sender, a late one).
    o.open(sealer(START + 1, session=b"\x03" * 8).seal(b"late"))
    assert o.sessions == 2


def test_sessions_are_bounded_and_a_forgotten_one_never_comes_back() -> None:
    o = opener(max_sessions=3)
    sealers = [sealer(START + n, session=bytes([n + 1]) * 8) for n in range(5)]
    first = [s.seal(b"x") for s in sealers]
    for datagram in first[:4]:
        o.open(datagram)
    assert o.sessions == 3 and o.floor == START  # session 0 forgotten
    assert refusal(o, first[0]) is Refusal.STALE_SESSION  # its replay is refused
    assert refusal(o, sealers[0].seal(b"y")) is Refusal.STALE_SESSION
    o.open(first[4])
    assert o.sessions == 3 and o.floor == START + 1


def test_saved_state_refuses_replays_after_a_restart() -> None:
    s = sealer()
    datagrams = [s.seal(bytes([n])) for n in range(5)]
    o = opener()
    for datagram in datagrams[:3]:
        o.open(datagram)
    restarted = opener()
    restarted.restore(o.saved())
    for datagram in datagrams[:3]:
        assert refusal(restarted, datagram) is Refusal.REPLAYED
    assert restarted.open(datagrams[4]).counter == 5
    old = sealer(START - GRACE_US - 1, session=b"\x09" * 8).seal(b"old")
    assert refusal(restarted, old) is Refusal.STALE_SESSION


def test_restore_forgets_sessions_of_keys_no_longer_held_and_refuses_junk() -> None:
    o = opener()
    o.open(sealer().seal(b"x"))
    other = DatagramOpener([SealKey(7, bytes(32))], DOWN)
    other.restore(o.saved())
    assert other.sessions == 0 and other.newest_start == START
    with pytest.raises(ValueError):
        other.restore({"version": 2})


def test_keys_hide_themselves_and_are_checked() -> None:
    assert "0102" not in repr(SealKey(1, bytes(range(1, 33))))
    with pytest.raises(ValueError):
        SealKey(1, bytes(31))
    with pytest.raises(ValueError):
        SealKey(2**32, bytes(32))


def test_the_counter_of_a_sealer_is_unique_per_datagram() -> None:
    s = sealer()
    counters = [HEADER.unpack_from(s.seal(b""))[6] for _ in itertools.repeat(None, 50)]
    assert counters == list(range(1, 51))


def test_a_restore_takes_effect_for_the_session_opened_just_before() -> None:
    """The opener remembers the last session's header; a restore must replace that too."""
    s = sealer()
    datagrams = [s.seal(bytes([n])) for n in range(6)]
    o, other = opener(), opener()
    for datagram in datagrams[:3]:
        o.open(datagram)
    for datagram in datagrams[:5]:
        other.open(datagram)
    o.restore(other.saved())  # the same session, its highest now 5
    assert refusal(o, datagrams[3]) is Refusal.REPLAYED
    assert o.open(datagrams[5]).counter == 6


def test_the_same_session_header_is_checked_for_size_tag_and_replay() -> None:
    """A datagram starting like the last one opened is still sized, authenticated, windowed."""
    s, o = sealer(), opener()
    first, second = s.seal(b"one"), s.seal(b"two")
    o.open(first)
    assert refusal(o, first[:40]) is Refusal.TOO_SHORT
    forged = bytearray(second)
    forged[-1] ^= 1
    assert refusal(o, bytes(forged)) is Refusal.BAD_TAG
    assert refusal(o, first) is Refusal.REPLAYED
    assert o.open(second).message == b"two"
    assert o.refused == {Refusal.TOO_SHORT: 1, Refusal.BAD_TAG: 1, Refusal.REPLAYED: 1}
    assert o.opened == 2


def test_a_key_dropped_by_a_reload_refuses_its_session_at_once() -> None:
    """The last session's header is remembered, its key is not taken on trust (tap revoked)."""
    s, o = sealer(), opener()
    o.open(s.seal(b"one"))
    o.keys = {}  # as the server's sync_keys does after a reload that revokes the tap
    assert refusal(o, s.seal(b"two")) is Refusal.UNKNOWN_KEY
    o.keys = {KEY.key_id: KEY}
    assert o.open(s.seal(b"three")).message == b"three"
