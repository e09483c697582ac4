"""The tap's records path equals its PDU path encoded (tap, session 11).

``Tap.records`` (a frame's PDUs handed on as tap-link records, with
``PDUBuilder.records`` and the templates' ``record`` methods) replaced, on
the replay's and the live capture's hot path, ``Tap.process`` followed by
``encode_pdu`` of each PDU. Here the two are run side by side on the same
frames and times, each through its own tap built alike: the same records,
octet for octet, and the same counters and flows, for any sequence of
target, peer, DHCP, RADIUS-port, non-IP, tagged and IPv6 frames, times
shared or not, inside the window and out, and both content levels. And
``chunk_records`` (now on ``chunk_bounds``, which the batching uses without
joining) cuts records as it did before, kept verbatim below.
"""

from __future__ import annotations

import datetime as dt

import test_tap_frames as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mediation.pdu import ContentIdentifier, CorrelationInfo
from mediation.pdu import taplink as T
from mediation.pdu.fast_der import generalized_time
from mediation.pdu.fast_envelope import CMCC, CMII
from mediation.tap.batching import chunk_bounds, chunk_records
from mediation.tap.builder import _PACKET_DIRECTION, FlowCorrelation
from mediation.tap.header_report import CCTemplate
from mediation.tap.packet import parse_frame
from mediation.tap.replay import Tap
from mediation.tap.targets import Direction
from mediation.warrants.model import ContentLevel

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_TARGET_IP, _PEER_IP = "192.0.2.10", "198.51.100.20"


def _udp(src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int) -> bytes:
    return F.eth(dst_mac, src_mac, 0x0800, F.ipv4(src, dst, 17, F.udp(sport, dport, b"p" * 60)))


FRAMES = [
    _udp(F.TARGET_MAC, F.OTHER_MAC, _TARGET_IP, _PEER_IP, 40000, 5004),  # from the target
    _udp(F.OTHER_MAC, F.TARGET_MAC, _PEER_IP, _TARGET_IP, 5004, 40000),  # to it
    _udp(F.OTHER_MAC, F.TARGET_MAC, _PEER_IP, _TARGET_IP, 5004, 1 + 40000),  # another flow
    # to its address from another MAC: matched once the address is learned (DHCP)
    _udp(F.GATEWAY_MAC, F.UPSTREAM_MAC, _PEER_IP, _TARGET_IP, 443, 50000),
    _udp(F.OTHER_MAC, F.GATEWAY_MAC, "203.0.113.5", _PEER_IP, 1, 2),  # nobody's
    F.eth(F.OTHER_MAC, F.TARGET_MAC, 0x0800,
          F.ipv4(_TARGET_IP, _PEER_IP, 6, F.tcp(49152, 80, b"GET / HTTP/1.1\r\n"))),
    F.eth(F.OTHER_MAC, F.TARGET_MAC, 0x8100, b"\x00\x07\x08\x00"
          + F.ipv4(_TARGET_IP, _PEER_IP, 17, F.udp(40000, 5004, b"v"))),  # VLAN 7
    F.eth(F.OTHER_MAC, F.TARGET_MAC, 0x86DD,
          F.ipv6("2001:db8::10", "2001:db8::20", 17, F.udp(40000, 5004, b"6"))),
    F.eth(F.BROADCAST, F.TARGET_MAC, 0x0806, bytes(28)),  # ARP: a link-layer report
    F.eth(F.OTHER_MAC, F.TARGET_MAC, 0x0800,
          F.ipv4(_TARGET_IP, _PEER_IP, 17, b"frag", flags_fragment=0x0010)),  # no ports
    F.dhcp_frame(F.dhcp(3, F.TARGET_MAC, requested=_TARGET_IP), from_client=True),
    F.dhcp_frame(F.dhcp(5, F.TARGET_MAC, yiaddr=_TARGET_IP, lease=30, server="192.0.2.1"),
                 from_client=False),  # an ACK: a lease of 30 s
    F.dhcp_frame(F.dhcp(7, F.TARGET_MAC, ciaddr=_TARGET_IP), from_client=True),  # release
    _udp(F.OTHER_MAC, F.TARGET_MAC, _PEER_IP, _TARGET_IP, 1812, 1813),  # RADIUS ports
    _udp(F.TARGET_MAC, F.OTHER_MAC, _TARGET_IP, _PEER_IP, 68, 40000),  # a DHCP port, not DHCP
]  # fmt: skip

TARGETS = [
    (F.TARGET_MAC,),
    (_TARGET_IP,),
    ("192.0.2.0/24", "2001:db8::10"),
    ("iface:eth1",),
    (F.TARGET_MAC + "@vlan:7",),
]

steps = st.lists(
    st.tuples(
        st.integers(0, len(FRAMES) - 1),
        st.integers(0, 45),  # seconds after the last frame's time (0: the same object)
        st.sampled_from([None, "eth1"]),
        st.sampled_from([None, True, False]),
    ),
    max_size=40,
)


def _pair(targets: tuple[str, ...], level: ContentLevel, start: dt.datetime) -> tuple[Tap, Tap]:
    window = (start, start + dt.timedelta(minutes=10))
    w = F.warrant(*targets, content=level, window=window)
    return tuple(  # type: ignore[return-value]
        Tap.for_warrant(w, correlation=FlowCorrelation(0x5EED), max_flows=3) for _ in range(2)
    )


@FUZZ
@given(
    targets=st.sampled_from(TARGETS),
    level=st.sampled_from(list(ContentLevel)),
    before=st.integers(-30, 30),  # the window opens this many seconds after the first frame
    micros=st.integers(0, 999_999),
    frames=steps,
)
def test_records_equal_the_pdus_encoded(
    targets: tuple[str, ...],
    level: ContentLevel,
    before: int,
    micros: int,
    frames: list[tuple[int, int, str | None, bool | None]],
) -> None:
    when = F.T0.replace(microsecond=micros)
    general, fast = _pair(targets, level, when + dt.timedelta(seconds=before))
    expected: list[tuple[bytes, dt.datetime]] = []
    got: list[tuple[bytes, dt.datetime]] = []
    for index, later, interface, outgoing in frames:
        if later:
            when = when + dt.timedelta(seconds=later, microseconds=later * 7919)
        data = FRAMES[index]
        parsed = parse_frame(data)
        for pdu in general.process(data, when, parsed, interface=interface, outgoing=outgoing):
            expected.append((T.encode_pdu(pdu.kind, pdu.time, pdu.der), pdu.time))
        fast.records(data, when, parsed, got.append, interface=interface, outgoing=outgoing)
        assert got == expected
    assert fast.counters == general.counters
    for attribute in ("flows_started", "flows_evicted"):
        assert getattr(fast.builder, attribute) == getattr(general.builder, attribute)
    assert list(fast.builder._flows) == list(general.builder._flows)  # the same LRU order
    assert fast.matcher.learned_state() == general.matcher.learned_state()


def test_a_replay_steps_frames_share_one_header_report_record() -> None:
    """The frames of a flow captured at one time get one record object, and a new
    time a new one (the template keeps the last)."""
    _general, fast = _pair((F.TARGET_MAC,), ContentLevel.HEADERS, F.T0)
    data, got = FRAMES[0], []
    later = F.T0 + dt.timedelta(seconds=1)
    for when in (F.T0, F.T0, later):
        fast.records(data, when, parse_frame(data), got.append)
    assert got[0][0] is got[1][0] and got[2][0] != got[0][0]
    expected = [T.encode_pdu(p.kind, p.time, p.der) for p in _general.process(data, later)]
    assert [got[2][0]] == expected


times = st.datetimes(
    min_value=dt.datetime(1970, 1, 1),
    max_value=dt.datetime(9999, 12, 31),
    timezones=st.just(dt.UTC),
)


sequences = st.one_of(st.integers(1, 300), st.integers(1, 2**63))
sizes = st.sampled_from([0, 1, 60, 127, 128, 255, 256, 1480, 9000, 9999, 10000, 70000])


@settings(max_examples=200, deadline=None)
@given(
    packets=st.lists(st.tuples(times, sequences, sizes), min_size=1, max_size=4),
    direction=st.sampled_from(list(Direction)),
    long=st.booleans(),
)
def test_cc_record_equals_the_apdu_encoded(
    packets: list[tuple[dt.datetime, int, int]], direction: Direction, long: bool
) -> None:
    """Every length form (short and long times, sequence numbers, payloads and
    records), one template for several packets (its parts kept by size)."""
    info = CorrelationInfo(
        ContentIdentifier.correlation(bytes(12)), "C" * 25 if long else "X", "I" * 15
    )
    cc = CCTemplate(info, _PACKET_DIRECTION[direction])
    for when, sequence, size in packets:
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        der = cc.render(generalized_time(when), sequence, payload)
        assert cc.record(when, sequence, payload) == T.encode_pdu(CMCC, when, der)
        assert T.pdu_head(CMII, when) != T.pdu_head(CMCC, when)


def _chunk_records_before(
    records: list[tuple[bytes, dt.datetime]], most: int, size: int
) -> list[tuple[bytes, int, dt.datetime, dt.datetime]]:
    """mediation/tap/batching.chunk_records before session 11, verbatim."""
    out, start, octets = [], 0, 0
    for i, (record, _when) in enumerate(records):
        if i > start and (i - start >= most or octets + len(record) + 8 > size):
            part = records[start:i]
            out.append((b"".join([r for r, _ in part]), len(part), part[0][1], part[-1][1]))
            start, octets = i, 0
        octets += len(record) + 8
    if start < len(records):
        part = records[start:]
        out.append((b"".join([r for r, _ in part]), len(part), part[0][1], part[-1][1]))
    return out


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), max_size=60),
    most=st.integers(1, 70),
    size=st.integers(1, 4000),
)
def test_records_are_chunked_as_before(sizes: list[int], most: int, size: int) -> None:
    """The same chunks (one counted in C when all fit), and bounds whose octets
    are what add_chunk counts for them."""
    records = [
        (bytes([i % 251]) * n, F.T0 + dt.timedelta(seconds=i)) for i, n in enumerate(sizes)
    ]
    chunks = chunk_records(records, most, size)
    assert chunks == _chunk_records_before(records, most, size)
    bounds = chunk_bounds(records, most, size)
    assert [(p, n) for p, n, _f, _l in chunks] == [
        (b"".join(r for r, _ in records[a:b]), b - a) for a, b, _o in bounds
    ]
    assert [o for _a, _b, o in bounds] == [len(p) + 8 * n for p, n, _f, _l in chunks]
