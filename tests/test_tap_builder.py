"""mediation/tap/builder.py: header reports, CC APDUs, flows, correlation, lease events."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress

import pytest
import test_tap_frames as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mediation.pdu import (
    AccessSignalingMessageReport,
    CCApdu,
    HeaderReport,
    PDUError,
    SessionAlreadyEstablished,
    SessionEnd,
    SessionStart,
    decode,
    encode,
)
from mediation.tap.access_messages import SESSION_MESSAGES
from mediation.tap.builder import FixedCorrelation, FlowCorrelation, PDUBuilder
from mediation.tap.dhcp import AccessEvent, EndReason, Lease, LeaseChange
from mediation.tap.header_report import HeaderReportTemplate
from mediation.tap.packet import parse_frame
from mediation.tap.targets import Direction
from mediation.warrants.model import ContentLevel

FROM, TO = Direction.FROM_SUBJECT, Direction.TO_SUBJECT
FULL, HEADERS = ContentLevel.FULL, ContentLevel.HEADERS
T0 = F.T0


def builder(level: ContentLevel = FULL, **options: object) -> PDUBuilder:
    return PDUBuilder("CASE-0001", "IAP-0001", level, **options)  # type: ignore[arg-type]


def frame(src: str, sport: int, dst: str, dport: int, data: bytes = b"data") -> bytes:
    packet = F.ipv4(src, dst, 6, F.tcp(sport, dport, data))
    return F.eth(F.GATEWAY_MAC, F.TARGET_MAC, 0x0800, packet) + bytes(4)  # and some padding


OUT = frame("192.0.2.10", 49152, "203.0.113.80", 80)
BACK = frame("203.0.113.80", 80, "192.0.2.10", 49152, b"answer")


def build(b: PDUBuilder, data: bytes, direction: Direction, when: dt.datetime = T0) -> list:
    return [decode(p.der) for p in b.packet(data, parse_frame(data), direction, when)]


def test_header_report_and_cc_of_one_packet() -> None:
    b = builder()
    pdus = b.packet(OUT, parse_frame(OUT), FROM, T0, subject_learned=True)
    assert [p.kind for p in pdus] == ["cmII", "cmCC"] and all(p.time == T0 for p in pdus)
    report, cc = (decode(p.der) for p in pdus)
    assert isinstance(report, HeaderReport) and isinstance(cc, CCApdu)
    assert (report.case_id, report.iap_system_id, report.timestamp) == ("CASE-0001", "IAP-0001", T0)
    hs = report.header_set
    assert hs.source_ip.address == ipaddress.ip_address("192.0.2.10")
    assert (hs.source_ip.allocation.value, hs.destination_ip.allocation.value) == (
        "dynamic",
        "notApplicable",
    )
    assert (hs.source_port, hs.destination_port, hs.stream_id.value) == ("49152", "80", 1)
    info = cc.header.correlation_info
    assert (info.case_id, info.iap_id) == ("CASE-0001", "IAP-0001")
    assert info.content_identifier == report.content_identifier
    assert cc.header.packet_direction.value == "fromSubject" and cc.header.sequence_number == 1
    assert cc.header.time_stamp == T0
    assert cc.payload == OUT[14:-4]  # the IP packet, without the Ethernet header or padding


def test_both_directions_are_one_flow_with_one_sequence() -> None:
    b = builder()
    out1 = build(b, OUT, FROM)
    back = build(b, BACK, TO, T0 + dt.timedelta(microseconds=250))
    out2 = build(b, OUT, FROM, T0 + dt.timedelta(seconds=1))
    reports = [out1[0], back[0], out2[0]]
    assert {r.content_identifier for r in reports} == {out1[0].content_identifier}
    assert {r.header_set.stream_id for r in reports} == {out1[0].header_set.stream_id}
    assert back[0].header_set.source_port == "80"
    assert back[0].header_set.destination_ip.allocation.value == "unknown"  # not learned
    assert [p[1].header.sequence_number for p in (out1, back, out2)] == [1, 2, 3]
    assert back[1].header.packet_direction.value == "toSubject"
    assert len(b) == 1


def test_each_flow_its_own_identifier_and_sequence() -> None:
    b = builder(correlation=FlowCorrelation(epoch=0x0A0B0C0D))
    first = build(b, OUT, FROM)
    other = build(b, frame("192.0.2.10", 49153, "203.0.113.80", 80), FROM)
    assert first[0].content_identifier.value == bytes.fromhex("0a0b0c0d") + (1).to_bytes(8, "big")
    assert other[0].content_identifier.value.endswith((2).to_bytes(8, "big"))
    assert other[0].header_set.stream_id.value == 2 and other[1].header.sequence_number == 1


def test_fixed_correlation_numbers_cc_across_flows() -> None:
    b = builder(correlation=FixedCorrelation(b"\xc0\xff\xee"))
    first = build(b, OUT, FROM)
    other = build(b, frame("192.0.2.10", 49153, "203.0.113.80", 80), FROM)
    assert {
        first[0].content_identifier.value,
        other[1].header.correlation_info.content_identifier.value,
    } == {b"\xc0\xff\xee"}
    assert (first[1].header.sequence_number, other[1].header.sequence_number) == (1, 2)
    assert other[0].header_set.stream_id.value == 2


def test_headers_only_builds_no_cc() -> None:
    b = builder(HEADERS, max_flows=8)
    kinds = {p.kind for i in range(20) for p in b.packet(OUT, parse_frame(OUT), FROM, T0)}
    assert kinds == {"cmII"}


def test_flows_are_bounded_and_a_returning_flow_is_new() -> None:
    b = builder(max_flows=4)
    for port in range(1000, 1010):
        build(b, frame("192.0.2.10", port, "203.0.113.80", 80), FROM)
    assert len(b) == 4 and b.flows_evicted == 6
    again = build(b, frame("192.0.2.10", 1000, "203.0.113.80", 80), FROM)
    assert again[0].header_set.stream_id.value == 11 and again[1].header.sequence_number == 1


def test_unknown_direction_leaves_packet_direction_out() -> None:
    b = builder()
    out = build(b, OUT, Direction.UNKNOWN)
    back = build(b, BACK, Direction.UNKNOWN)
    assert out[1].header.packet_direction is None
    assert out[0].content_identifier == back[0].content_identifier
    assert out[0].header_set.source_ip.allocation.value == "unknown"


def test_later_fragments_have_no_ports() -> None:
    packet = F.ipv4("192.0.2.10", "198.51.100.7", 17, b"x" * 16, flags_fragment=185)
    data = F.eth(F.GATEWAY_MAC, F.TARGET_MAC, 0x0800, packet)
    report, cc = build(builder(), data, FROM)
    assert (report.header_set.source_port, report.header_set.destination_port) == (None, None)
    assert cc.payload == packet


@pytest.mark.parametrize("level", [FULL, HEADERS])
def test_frames_without_ip_are_signalling_reports_never_cc(level: ContentLevel) -> None:
    arp = F.eth(F.BROADCAST, F.TARGET_MAC, 0x0806, bytes(28), (0x8100, 100))
    [pdu] = builder(level).packet(arp, parse_frame(arp), FROM, T0)
    report = decode(pdu.der)
    assert pdu.kind == "cmII" and isinstance(report, AccessSignalingMessageReport)
    text = report.signaling_msg[0].message
    assert "src=02:00:5e:00:53:01" in text and "vlan=100" in text and "ethertype=0x0806" in text
    assert ("octets=" + arp.hex() in text) is (level is FULL)


def test_identities_are_checked_when_built() -> None:
    with pytest.raises(PDUError, match="iapId"):
        PDUBuilder("CASE-0001", "IAP-LONGER-THAN-15", FULL)
    PDUBuilder("CASE-0001", "IAP-LONGER-THAN-15", HEADERS)  # CmII has no such limit
    with pytest.raises(PDUError, match="caseId"):
        PDUBuilder("C" * 26, "IAP-0001", HEADERS)
    with pytest.raises(ValueError, match="aware"):
        builder().packet(OUT, parse_frame(OUT), FROM, dt.datetime(2026, 11, 23))


def test_session_messages_for_each_lease_change() -> None:
    lease = Lease(
        F.mac(F.TARGET_MAC),
        ipaddress.IPv4Address("192.0.2.10"),
        7,
        T0,
        T0 + dt.timedelta(hours=1),
        3600,
        ipaddress.IPv4Address("192.0.2.1"),
        24,
        None,
    )
    b = builder()
    decoded = {}
    for change in LeaseChange:
        reason = EndReason.RELEASE if change is LeaseChange.ENDED else None
        pdu = b.access_event(AccessEvent(change, lease, T0, reason))
        decoded[change] = decode(pdu.der)
        assert pdu.kind == "cmII" and isinstance(decoded[change], SESSION_MESSAGES[change])
    start = decoded[LeaseChange.STARTED]
    assert type(start) is SessionStart
    assert isinstance(decoded[LeaseChange.ALREADY_ESTABLISHED], SessionAlreadyEstablished)
    assert start.subscriber_identity.value == F.TARGET_MAC
    assert start.packet_data_session_id.value == 7
    assert (start.ip_address.allocation.value, start.ip_address.prefix_len) == ("dynamic", 24)
    assert start.access_session_characteristics.value == "dhcp lease-time=3600 server=192.0.2.1"
    end = decoded[LeaseChange.ENDED]
    assert isinstance(end, SessionEnd) and end.reason_for_termination.value == "dhcp-release"


times = st.datetimes(
    min_value=dt.datetime(1970, 1, 1),
    max_value=dt.datetime(2105, 12, 31),
    timezones=st.just(dt.UTC),
)


@settings(max_examples=200, deadline=None)
@given(first=times, later=times, port=st.integers(0, 65535), long=st.booleans(), v6=st.booleans())
def test_template_is_byte_identical_to_the_reference(
    first: dt.datetime, later: dt.datetime, port: int, long: bool, v6: bool
) -> None:
    """The spliced report equals what the reference codec makes, for any time.

    A 200-character IAP identity makes the lengths take the long form.
    """
    b = PDUBuilder("C" * 25 if long else "X", "IAP-" + "9" * 200 if long else "I", HEADERS)
    if v6:
        packet = F.ipv6("2001:db8:0:1::10", "2001:db8:0:2::80", 17, F.udp(port, 53))
        data = F.eth(F.GATEWAY_MAC, F.TARGET_MAC, 0x86DD, packet)
    else:
        data = frame("192.0.2.10", port, "203.0.113.80", 80)
    [pdu] = b.packet(data, parse_frame(data), FROM, first)
    report = decode(pdu.der)
    template = HeaderReportTemplate(report)
    assert template.render(later) == encode(dataclasses.replace(report, timestamp=later))
    assert template.render(first) == encode(report)  # its prefixes are kept per time length
    assert pdu.der == encode(report)


@settings(max_examples=100, deadline=None)
@given(
    when=times,
    skip=st.integers(0, 70000),
    size=st.sampled_from([0, 1, 100, 1480, 9000, 65000]),
    direction=st.sampled_from(list(Direction)),
    long=st.booleans(),
)
def test_cc_template_is_byte_identical_to_the_reference(
    when: dt.datetime, skip: int, size: int, direction: Direction, long: bool
) -> None:
    """The per-flow CC template equals encode_cc of the same record, for any
    time, sequence number (short and long), direction and payload size."""
    from mediation.pdu.fast import encode_cc

    b = PDUBuilder("C" * 25 if long else "X", "I" * 15 if long else "I", FULL)
    data = frame("192.0.2.10", 49152, "203.0.113.80", 80, bytes(size))
    parsed = parse_frame(data)
    b.packet(data, parsed, direction, when)  # sequence 1, and the flow's templates
    next(iter(b._flows.values())).counter.value += skip  # jump to a larger sequence number
    _report, cc = b.packet(data, parsed, direction, when)
    record = decode(cc.der)
    assert isinstance(record, CCApdu) and record.header.sequence_number == skip + 2
    assert cc.der == encode_cc(record)
    assert record.payload == parsed.ip_packet(data) and record.header.time_stamp == when
