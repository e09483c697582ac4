"""mediation/server/tap_gate.py: what each PDU carries is checked against its warrant's targets.

The PDUs are built by the tap's own code (``Tap.process``) for a tap that
is misconfigured: same case identity, another subscriber's target. The
gate must refuse those it can tell apart (``not_target``) and pass the
real target's.
"""

from __future__ import annotations

import test_tap_frames as F

from mediation.server.tap_gate import TapGate, header_addresses, link_frame
from mediation.tap.replay import Tap

TARGET, BYSTANDER, PEER = "192.0.2.10", "192.0.2.11", "203.0.113.5"
CASE = "CASE-TEST-0001"


def udp(src: str, dst: str, *tags: tuple[int, int], src_mac: str = F.OTHER_MAC) -> bytes:
    packet = F.ipv4(src, dst, 17, F.udp(5000, 53, b"q"))
    return F.eth(F.GATEWAY_MAC, src_mac, 0x0800, packet, *tags)


def lldp(src_mac: str, *tags: tuple[int, int]) -> bytes:
    """A frame with no IP packet: reported as a link-layer frame."""
    return F.eth("01:80:c2:00:00:0e", src_mac, 0x88CC, bytes(46), *tags)


def arp(src_mac: str, asked: str) -> bytes:
    body = bytes.fromhex("0001080006040001") + F.mac(src_mac) + F.ip(PEER)
    return F.eth(F.BROADCAST, src_mac, 0x0806, body + bytes(6) + F.ip(asked))


def pdus(targets: tuple[str, ...], frame: bytes) -> list[tuple[str, bytes]]:
    """What a tap serving ``targets`` under CASE sends for ``frame``."""
    tap = Tap.for_warrant(F.warrant(*targets, case_id=CASE))
    return [(p.kind, p.der) for p in tap.process(frame, F.T0)]


def gate(*targets: str) -> tuple[TapGate, str]:
    warrant = F.warrant(*targets, case_id=CASE)
    return TapGate("edge-1", [warrant]), warrant.handle


def test_header_reports_of_an_address_warrant_are_checked_like_content() -> None:
    check, handle = gate(TARGET)
    good = pdus((TARGET,), udp(TARGET, PEER))
    bad = pdus((BYSTANDER,), udp(BYSTANDER, PEER))  # a tap set up for the wrong subscriber
    assert [kind for kind, _ in good] == ["cmII", "cmCC"]
    assert [check.warrant_for(kind, der) for kind, der in good] == [(handle, "")] * 2
    assert [check.warrant_for(kind, der) for kind, der in bad] == [(None, "not_target")] * 2
    assert header_addresses(good[0][1]) == (F.ip(TARGET), F.ip(PEER))
    assert header_addresses(good[1][1]) is None  # CC is no CmII message


def test_link_frame_reports_of_a_mac_warrant_are_checked_with_their_vlan() -> None:
    scoped = f"{F.TARGET_MAC}@vlan:100"
    check, handle = gate(scoped)
    [good] = pdus((scoped,), lldp(F.TARGET_MAC, (0x8100, 100)))
    [other_mac] = pdus((F.OTHER_MAC,), lldp(F.OTHER_MAC, (0x8100, 100)))
    [other_vlan] = pdus((F.TARGET_MAC,), lldp(F.TARGET_MAC, (0x8100, 200)))
    assert check.warrant_for(*good) == (handle, "")
    assert check.warrant_for(*other_mac) == (None, "not_target")
    assert check.warrant_for(*other_vlan) == (None, "not_target")
    assert link_frame(good[1]) == (
        F.mac("01:80:c2:00:00:0e") + F.mac(F.TARGET_MAC) + bytes.fromhex("81000064") + b"\x08\x06"
    )


def test_what_a_pdu_cannot_show_is_not_refused() -> None:
    check, handle = gate(F.TARGET_MAC)
    # Header reports and content carry no MAC: a MAC warrant's cannot be checked.
    for kind, der in pdus((F.TARGET_MAC,), udp(BYSTANDER, PEER, src_mac=F.TARGET_MAC)):
        assert check.warrant_for(kind, der) == (handle, "")
    # ARP asking for an address the target leased is sent by others' MACs.
    tap = Tap.for_warrant(F.warrant(F.TARGET_MAC, case_id=CASE))
    tap.matcher.follow(__import__("ipaddress").ip_address(TARGET), F.mac(F.TARGET_MAC))
    [report] = [(p.kind, p.der) for p in tap.process(arp(F.OTHER_MAC, TARGET), F.T0)]
    assert check.warrant_for(*report) == (handle, "")
    # An address warrant's ARP report carries no address in its text.
    check, handle = gate(TARGET)
    [report] = pdus((TARGET,), arp(F.OTHER_MAC, TARGET))
    assert check.warrant_for(*report) == (handle, "")
