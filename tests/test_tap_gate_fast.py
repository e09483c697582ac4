"""The gate's one-walk reading (pdu/fast_identity.py) answers as its reference readers.

``TapGate.warrant_for`` reads a PDU's first headers once and, for a
warrant of addresses, takes a CC packet's two addresses where the IP
header has them; ``_warrant_for_reference`` is the gate as it was, every
reader walking the PDU from its start and every packet parsed and matched.
On PDUs the tap builds, on every CmII message and CC APDU, and on altered
encodings of them, both give the same answer for gates of address,
prefix, IPv6 and MAC warrants, and for a case identity two warrants share.
"""

from __future__ import annotations

import dataclasses

import strategies as S
import test_tap_frames as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutation_support import altered

from mediation import pdu as P
from mediation.pdu import codec
from mediation.pdu.fast_identity import first_headers, header, ip_pair, span
from mediation.pdu.tlv import read_header
from mediation.server.tap_gate import TapGate
from mediation.tap.packet import LINKTYPE_RAW, parse_frame
from mediation.tap.replay import Tap

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CASE, SHARED, OTHER = "CASE-TEST-0001", "CASE-TEST-0002", "CASE-TEST-0009"
TARGET, BYSTANDER, PEER = "192.0.2.10", "192.0.2.11", "203.0.113.5"
V6_TARGET, V6_PEER = "2001:db8::10", "2001:db8:1::5"
ADDRESSES = (TARGET, BYSTANDER, PEER, "198.51.100.7")
CASES = st.sampled_from((CASE, SHARED, OTHER))


def _gates() -> list[TapGate]:
    """A gate per kind of warrant, each also holding two warrants of one case (SHARED)."""
    shared = [
        F.warrant(TARGET, handle="w-0a0002", case_id=SHARED),
        F.warrant(PEER, handle="w-0a0003", case_id=SHARED),
    ]
    served = [
        (TARGET,),
        ("198.51.100.0/24",),
        (V6_TARGET, TARGET),
        (f"{F.TARGET_MAC}@vlan:100",),
        (F.TARGET_MAC,),
    ]
    return [TapGate("edge-1", [F.warrant(*t, case_id=CASE), *shared]) for t in served]


GATES = _gates()


def _same(kind: str, der: bytes) -> None:
    for gate in GATES:
        assert gate.warrant_for(kind, der) == gate._warrant_for_reference(kind, der)


@st.composite
def frames(draw: st.DrawFn) -> tuple[str, bytes]:
    """A frame, and a target of a tap that takes it (its source)."""
    choice = draw(st.integers(0, 2))
    if choice == 0:
        src, dst = draw(st.sampled_from(ADDRESSES)), draw(st.sampled_from(ADDRESSES))
        packet = F.ipv4(src, dst, 17, F.udp(1, 2, bytes(draw(st.sampled_from((0, 200, 1400))))))
        return src, F.eth(F.GATEWAY_MAC, F.OTHER_MAC, 0x0800, packet)
    if choice == 1:
        src, dst = draw(st.sampled_from((V6_TARGET, V6_PEER))), V6_PEER
        return src, F.eth(F.GATEWAY_MAC, F.OTHER_MAC, 0x86DD, F.ipv6(src, dst, 17, F.udp(1, 2)))
    src, vlan = (
        draw(st.sampled_from((F.TARGET_MAC, F.OTHER_MAC))),
        draw(st.sampled_from((100, 200))),
    )
    return src, F.eth("01:80:c2:00:00:0e", src, 0x88CC, bytes(46), (0x8100, vlan))


@st.composite
def tap_pdus(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """What a tap's core builds for a frame (what the gate sees at saturation), for one case."""
    target, frame = draw(frames())
    tap = Tap.for_warrant(F.warrant(target, case_id=draw(CASES)))
    return [(pdu.kind, pdu.der) for pdu in tap.process(frame, F.T0)]


@st.composite
def encoded(draw: st.DrawFn) -> tuple[str, bytes]:
    """Any CmII message or CC APDU of the codec, often with a case identity the gates serve."""
    if draw(st.booleans()):
        message = draw(S.cmii_messages())
        if draw(st.booleans()):
            message = dataclasses.replace(message, case_id=draw(CASES))
        return "cmII", codec.encode(message)
    packets = st.one_of(st.binary(max_size=60), frames().map(lambda found: found[1][14:]))
    apdu = draw(S.cc_apdus(packets))
    if apdu.header is not None and draw(st.booleans()):
        info = dataclasses.replace(apdu.header.correlation_info, case_id=draw(CASES))
        header = dataclasses.replace(apdu.header, correlation_info=info)
        apdu = dataclasses.replace(apdu, header=header)
    return "cmCC", codec.encode(apdu)


@PROPERTY
@given(tap_pdus())
def test_the_tap_s_pdus_are_answered_as_the_reference(pdus: list[tuple[str, bytes]]) -> None:
    assert pdus
    for kind, der in pdus:
        assert first_headers(kind, der) is not None  # the common form: no reference needed
        _same(kind, der)


@PROPERTY
@given(encoded())
def test_every_message_and_apdu_is_answered_as_the_reference(pdu: tuple[str, bytes]) -> None:
    _same(*pdu)


@FUZZ
@given(st.one_of(tap_pdus().map(lambda pdus: pdus[-1]), encoded()), st.data())
def test_altered_encodings_are_answered_as_the_reference(
    pdu: tuple[str, bytes], data: st.DataObject
) -> None:
    """One octet changed, cut short, one more, spliced; given as the other kind, or none."""
    kind, der = pdu
    for variant in altered(der, data):
        _same(kind, variant)
        _same("cmCC" if kind == "cmII" else "cmII", variant)
        _same("cmXX", variant)  # no such kind: the reference's answer too


@FUZZ
@given(st.binary(max_size=300), st.data())
def test_header_reads_as_the_reference_reader(data: bytes, draw: st.DataObject) -> None:
    """``header`` gives ``read_header``'s TLV or its refusal; ``span`` its bounds or None."""
    pos = draw.draw(st.integers(0, len(data)))
    end = draw.draw(st.integers(pos, len(data)))
    if draw.draw(st.booleans()):  # a header in the long forms, minimal or not, then contents
        octets, size = draw.draw(st.integers(1, 3)), draw.draw(st.integers(0, 255))
        head = bytes((0x30, 0x80 | octets)) + size.to_bytes(octets, "big")
        data = data[:pos] + head + bytes(max(0, size + draw.draw(st.integers(-2, 2))))
        end = len(data)
    found = span(data, pos, end) if pos < end and data[pos] & 0x1F != 0x1F else None
    try:
        tag, start, size = read_header(data, pos, end)
    except P.PDUError as exc:
        assert found is None
        try:
            header(data, pos, end)
        except P.PDUError as again:
            assert (again.message, again.offset) == (exc.message, exc.offset)
        else:
            raise AssertionError("header accepted what read_header refuses") from None
        return
    assert header(data, pos, end) == (tag, start, start + size)
    assert found is None or found == (start, start + size)


@FUZZ
@given(st.binary(max_size=60))
def test_the_packet_s_addresses_are_the_parser_s(packet: bytes) -> None:
    parsed = parse_frame(packet, LINKTYPE_RAW)
    pair = ip_pair(packet)
    assert pair == (None if parsed.src_raw is None else (parsed.src_raw, parsed.dst_raw))


def test_a_case_two_warrants_share_and_an_unknown_one_are_not_served() -> None:
    tap = Tap.for_warrant(F.warrant(TARGET, case_id=SHARED))
    frame = F.eth(F.GATEWAY_MAC, F.OTHER_MAC, 0x0800, F.ipv4(TARGET, PEER, 17, F.udp(1, 2)))
    for pdu in tap.process(frame, F.T0):
        assert GATES[0].warrant_for(pdu.kind, pdu.der) == (None, "not_served")
    info = P.CorrelationInfo(P.ContentIdentifier.correlation(b"\x01"), case_id=CASE)
    good = codec.encode(P.CCApdu(b"", P.CCDeliveryHeader(info)))
    not_ascii = good.replace(CASE.encode(), b"CASE-TEST-000\xb1")
    assert GATES[0].warrant_for("cmCC", not_ascii) == (None, "malformed")
