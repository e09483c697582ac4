"""RADIUS accounting: the parser byte by byte, the authenticator, and the follower."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.radius import Radius, RadiusAttribute

from mediation.tap.radius import (
    AccountingRequest,
    RadiusError,
    RadiusRefusal,
    StatusType,
    accounting_response,
    encode_accounting,
    parse_accounting,
    request_authenticator,
)
from mediation.tap.radius_follow import MAX_SESSIONS, RadiusChange, RadiusFollower

SECRET = b"test-secret-1"
USER = "user-test-1"
T0 = dt.datetime(2026, 11, 23, 0, 11, tzinfo=dt.UTC)
A10, A11 = ipaddress.IPv4Address("192.0.2.10"), ipaddress.IPv4Address("192.0.2.11")
P1 = ipaddress.IPv6Network("2001:db8:0:1::/64")


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def start(address: str | None = "192.0.2.10", **kw) -> bytes:
    kw.setdefault("user_name", USER)
    return encode_accounting(
        StatusType.START, kw.pop("session_id", "SESS-0001"), framed_ip=address, secret=SECRET, **kw
    )


def refused(payload: bytes, secret: bytes | None = None) -> RadiusRefusal:
    with pytest.raises(RadiusError) as info:
        parse_accounting(payload, secret)
    return info.value.reason


# The parser -------------------------------------------------------------------------


def test_parses_every_attribute_following_needs():
    payload = encode_accounting(
        StatusType.START,
        "SESS-0001",
        user_name=USER,
        framed_ip="192.0.2.10",
        framed_prefix="2001:db8:0:1::/64",
        calling_station_id="02-00-5E-00-53-01",
        nas_identifier="nas-test-1",
        identifier=9,
        secret=SECRET,
    )
    request = parse_accounting(payload, SECRET)
    assert request == AccountingRequest(
        identifier=9,
        status=1,
        session_id="SESS-0001",
        user_name=USER.encode(),
        framed_ip=A10,
        framed_prefix=P1,
        calling_station_id="02-00-5E-00-53-01",
        nas="nas-test-1",
        verified=True,
    )
    assert not parse_accounting(payload).verified  # no secret: read, not checked


def test_reads_a_packet_scapy_builds_and_agrees_on_the_authenticator():
    attributes = [
        RadiusAttribute(type=1, value=USER.encode()),
        RadiusAttribute(type=40, value=(3).to_bytes(4, "big")),
        RadiusAttribute(type=44, value=b"SESS-0001"),
        RadiusAttribute(type=8, value=A11.packed),
        RadiusAttribute(type=4, value=ipaddress.IPv4Address("192.0.2.1").packed),
        RadiusAttribute(type=49, value=(1).to_bytes(4, "big")),
    ]
    packet = Radius(code=4, id=3, authenticator=bytes(16), attributes=attributes)
    packet.authenticator = packet.compute_authenticator(bytes(16), SECRET)
    raw = bytes(packet)
    request = parse_accounting(raw, SECRET)
    assert (request.status, request.framed_ip, request.nas) == (3, A11, "192.0.2.1")
    assert request.terminate_cause == 1
    assert request_authenticator(raw, SECRET) == raw[4:20]


def test_octets_past_length_are_padding_and_not_signed():
    payload = start()
    assert parse_accounting(payload + b"\x00" * 7, SECRET).framed_ip == A10


def test_framed_ip_that_asks_the_nas_to_choose_is_no_address():
    assert parse_accounting(start("255.255.255.254")).framed_ip is None


def _header(code: int, length: int) -> bytes:
    return bytes((code, 1)) + length.to_bytes(2, "big") + bytes(16)


def _with(attrs: bytes) -> bytes:
    return _header(4, 20 + len(attrs)) + attrs


STATUS = bytes((40, 6, 0, 0, 0, 1))
SESSION = bytes((44, 3)) + b"S"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x04\x01\x00", RadiusRefusal.TRUNCATED),
        (_header(4, 19), RadiusRefusal.BAD_LENGTH),
        (_header(4, 4097) + bytes(4077), RadiusRefusal.BAD_LENGTH),
        (_header(4, 40), RadiusRefusal.TRUNCATED),  # Length says more than there is
        (_header(1, 20), RadiusRefusal.NOT_ACCOUNTING_REQUEST),  # Access-Request
        (_with(STATUS + SESSION + bytes((1, 1))), RadiusRefusal.BAD_ATTRIBUTE),  # length 1
        (_with(STATUS + SESSION + bytes((1, 0))), RadiusRefusal.BAD_ATTRIBUTE),  # length 0
        (_with(STATUS + SESSION + bytes((1, 9, 65))), RadiusRefusal.BAD_ATTRIBUTE),  # overrun
        (_with(STATUS + SESSION + bytes((1,))), RadiusRefusal.BAD_ATTRIBUTE),  # no length
        (_with(STATUS + SESSION + bytes((8, 5, 192, 0, 2))), RadiusRefusal.BAD_ATTRIBUTE),
        (_with(STATUS + SESSION + bytes((97, 4, 0, 129))), RadiusRefusal.BAD_ATTRIBUTE),
        (_with(STATUS + SESSION + bytes((97, 5, 0, 64, 32))), RadiusRefusal.BAD_ATTRIBUTE),
        (_with(bytes((40, 5, 0, 0, 1)) + SESSION), RadiusRefusal.BAD_ATTRIBUTE),
        (_with(SESSION), RadiusRefusal.NO_STATUS_TYPE),
        (_with(STATUS), RadiusRefusal.NO_SESSION_ID),
    ],
)
def test_each_refusal_names_its_reason(payload, reason):
    assert refused(payload) is reason


def test_bad_authenticator_refused_when_a_secret_is_configured():
    forged = encode_accounting(StatusType.START, "S", user_name=USER, secret=b"wrong")
    assert refused(forged, SECRET) is RadiusRefusal.BAD_AUTHENTICATOR
    tampered = bytearray(start())
    tampered[-1] ^= 1  # the last octet of the address: 192.0.2.11
    assert refused(bytes(tampered), SECRET) is RadiusRefusal.BAD_AUTHENTICATOR
    assert parse_accounting(bytes(tampered)).framed_ip == A11  # unchecked, it would be believed


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.booleans())
def test_random_octets_only_ever_raise_radius_error(tail, as_request):
    payload = (_header(4, 20 + len(tail)) + tail) if as_request else tail
    follower = RadiusFollower(frozenset({USER.encode()}), SECRET if as_request else None)
    try:
        parse_accounting(payload)
    except RadiusError as exc:
        assert isinstance(exc.reason, RadiusRefusal)
    follower.observe_payload(payload, T0)  # never raises either
    assert follower.messages + follower.refused_total == 1


# The follower -----------------------------------------------------------------------


def follower() -> RadiusFollower:
    return RadiusFollower(frozenset({USER.encode()}), SECRET)


def changes(events) -> list[tuple[RadiusChange, object, str | None]]:
    return [(e.change, e.address, e.reason) for e in events]


def test_start_interim_move_and_stop():
    f = follower()
    events = f.observe_payload(start(framed_prefix="2001:db8:0:1::/64"), at(1))
    assert changes(events) == [
        (RadiusChange.ACCESS_ACCEPTED, A10, None),
        (RadiusChange.ADDRESS_GAINED, A10, None),
        (RadiusChange.ADDRESS_GAINED, P1, None),
    ]
    assert {e.when for e in events} == {at(1)} and {e.session_id for e in events} == {"SESS-0001"}
    numbers = {e.address: e.number for e in events[1:]}
    interim = encode_accounting(
        3, "SESS-0001", user_name=USER, framed_ip="192.0.2.10", secret=SECRET
    )
    assert f.observe_payload(interim, at(2)) == []  # nothing changed
    moved = encode_accounting(3, "SESS-0001", user_name=USER, framed_ip="192.0.2.11", secret=SECRET)
    events = f.observe_payload(moved, at(3))
    assert changes(events) == [
        (RadiusChange.ADDRESS_DROPPED, A10, "address-changed"),
        (RadiusChange.ADDRESS_GAINED, A11, None),
    ]
    assert events[0].number == numbers[A10] and events[1].number not in numbers.values()
    assert f.held() == {A11, P1}  # the prefix was not re-stated: still held
    stop = encode_accounting(2, "SESS-0001", user_name=USER, terminate_cause=1, secret=SECRET)
    events = f.observe_payload(stop, at(4))
    assert changes(events) == [
        (RadiusChange.ADDRESS_DROPPED, P1, "radius-stop user-request"),
        (RadiusChange.ADDRESS_DROPPED, A11, "radius-stop user-request"),
        (RadiusChange.ACCESS_ENDED, None, "radius-stop user-request"),
    ]
    assert f.held() == set() and f.sessions == {}


def test_first_seen_in_an_interim_was_already_held():
    f = follower()
    interim = encode_accounting(
        3, "SESS-0009", user_name=USER, framed_ip="192.0.2.10", secret=SECRET
    )
    assert changes(f.observe_payload(interim, at(1))) == [(RadiusChange.ALREADY_HELD, A10, None)]


def test_stop_of_a_session_never_seen_still_ends_access():
    f = follower()
    stop = encode_accounting(2, "SESS-0009", user_name=USER, framed_ip="192.0.2.10", secret=SECRET)
    assert changes(f.observe_payload(stop, at(1))) == [
        (RadiusChange.ACCESS_ENDED, None, "radius-stop")
    ]


def test_a_bystander_given_the_address_takes_it_from_the_target():
    f = follower()
    f.observe_payload(start(), at(1))
    other = encode_accounting(
        1, "SESS-0100", user_name="user-test-2", framed_ip="192.0.2.10", secret=SECRET
    )
    events = f.observe_payload(other, at(2))
    assert changes(events) == [(RadiusChange.ADDRESS_DROPPED, A10, "address-reassigned")]
    assert f.held() == set()
    other_stop = encode_accounting(2, "SESS-0100", user_name="user-test-2", secret=SECRET)
    assert f.observe_payload(other_stop, at(3)) == []  # nothing of others is reported


def test_nas_restart_ends_its_sessions_only():
    f = follower()
    f.observe_payload(start(nas_identifier="nas-1"), at(1))
    f.observe_payload(start("192.0.2.11", nas_identifier="nas-2"), at(1))
    on = encode_accounting(StatusType.ACCOUNTING_ON, "0", nas_identifier="nas-1", secret=SECRET)
    events = f.observe_payload(on, at(2))
    assert changes(events) == [
        (RadiusChange.ADDRESS_DROPPED, A10, "nas-accounting-on"),
        (RadiusChange.ACCESS_ENDED, None, "nas-accounting-on"),
    ]
    assert f.held() == {A11}


def test_state_is_bounded_by_the_session_limit():
    f = follower()
    for i in range(MAX_SESSIONS + 1):
        events = f.observe_payload(start(None, session_id=f"SESS-{i:04d}"), at(i))
    assert len(f.sessions) == MAX_SESSIONS
    assert changes(events)[0] == (RadiusChange.ACCESS_ENDED, None, "session-limit")


def test_bad_authenticator_changes_nothing_and_is_counted():
    f = follower()
    forged = encode_accounting(1, "SESS-0001", user_name=USER, framed_ip="192.0.2.10", secret=b"x")
    assert f.observe_payload(forged, at(1)) == []
    assert f.refused["bad-authenticator"] == 1 and f.messages == 0 and f.held() == set()


def test_accounting_response_authenticator_agrees_with_scapy():
    request = start()
    response = accounting_response(request, SECRET)
    parsed = Radius(response)
    assert (parsed.code, parsed.id, parsed.len) == (5, request[1], 20)
    assert parsed.compute_authenticator(request[4:20], SECRET) == response[4:20]


def test_a_listener_feeds_payloads_to_the_tap_directly():
    import test_tap_frames as F

    from mediation.pdu import decode
    from mediation.pdu.confirmation import parse_frame_message
    from mediation.tap.replay import Tap

    tap = Tap.for_warrant(F.warrant(f"user:{USER}"), radius_secret=SECRET)
    payload = start()
    *events, shown = tap.accounting(payload, at(1))
    assert len(events) == 2  # access-Accepted, session-Start; then the datagram's report
    evidence = parse_frame_message(decode(shown.der).signaling_msg[0])
    assert (evidence.layer, evidence.what) == ("udp-payload", "accounting-start")
    assert evidence.sha256 == hashlib.sha256(payload).hexdigest() and evidence.octets == payload
    assert tap.matcher.is_learned(A10.packed)
    assert tap.accounting(b"\x04", at(2)) == [] and tap.counters.radius_refused == 1
    late = tap.accounting(start("192.0.2.11", session_id="S2"), F.WINDOW[1])
    assert late == [] and tap.counters.outside_window == 1
    assert Tap.for_warrant(F.warrant("192.0.2.10")).accounting(start(), at(1)) == []


_STEPS = st.tuples(
    st.sampled_from([1, 2, 3, 7]),  # Start, Stop, Interim-Update, Accounting-On
    st.sampled_from(["S1", "S2", "S3"]),
    st.sampled_from([USER, "user-test-2"]),
    st.sampled_from([None, "192.0.2.10", "192.0.2.11", "192.0.2.12"]),
    st.sampled_from([None, "2001:db8:0:1::/64", "2001:db8:0:2::/64"]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_STEPS, max_size=25))
def test_the_matcher_follows_exactly_what_the_sessions_hold(steps):
    """Any accounting sequence: matched addresses are the held ones, every gain has its drop."""
    import test_tap_frames as F

    from mediation.pdu import SessionEnd, SessionStart, decode
    from mediation.tap.replay import Tap

    tap = Tap.for_warrant(F.warrant(f"user:{USER}"), radius_secret=SECRET)
    open_numbers: set[int] = set()
    for i, (status, session, user, address, prefix) in enumerate(steps):
        payload = encode_accounting(
            status,
            session,
            user_name=user,
            framed_ip=address,
            framed_prefix=prefix,
            secret=SECRET,
        )
        for pdu in tap.accounting(payload, at(i)):
            message = decode(pdu.der)
            if isinstance(message, SessionStart):  # or session-Already-Established
                open_numbers.add(message.packet_data_session_id.value)
            elif type(message) is SessionEnd:
                open_numbers.remove(message.packet_data_session_id.value)
        held = tap.radius.held()
        for candidate in ("192.0.2.10", "192.0.2.11", "192.0.2.12", "2001:db8:0:1::7"):
            ip = ipaddress.ip_address(candidate)
            inside = any(ip in h if isinstance(h, ipaddress.IPv6Network) else ip == h for h in held)
            assert tap.matcher.is_learned(ip.packed) == inside
    assert len(open_numbers) == sum(len(s.held) for s in tap.radius.sessions.values())
