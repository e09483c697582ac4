"""mediation/tap/replay.py on fixtures/sample: isolation, content levels, warrants apart.

The sample's sidecar (sample.json) says frame by frame which are the
target's; a tap must produce PDUs for exactly those and for nothing else.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest
import test_tap_frames as F

from mediation.evidence.pcap import PcapReader
from mediation.pdu import CCApdu, CmIIMessage, HeaderReport, SessionStart, decode
from mediation.tap.packet import parse_frame
from mediation.tap.replay import ReplayItem, Tap, replay_pcap
from mediation.warrants.model import ContentLevel

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "sample" / "sample.pcap"
META = json.loads(SAMPLE.with_suffix(".json").read_text())
TARGETS = set(META["target_indices"])
DHCP_FRAMES = {0, 1, 2, 3}
VLAN_FRAME = 31
IPV6_FRAMES = {i for i in TARGETS if META["packets"][i]["protocol"] == "ipv6"}


def frames() -> list:
    with PcapReader.open(SAMPLE) as reader:
        return list(reader)


def per_frame(*warrants: object, interface: str | None = None) -> list[dict[str, list]]:
    """For each frame, each warrant handle's PDUs (decoded), via Tap.process."""
    taps = [Tap.for_warrant(w) for w in warrants]  # type: ignore[arg-type]
    out = []
    for packet in frames():
        parsed = parse_frame(packet.data)
        out.append(
            {
                t.handle: [
                    decode(p.der)
                    for p in t.process(packet.data, packet.time, parsed, interface=interface)
                ]
                for t in taps
            }
        )
    return out


def matched(results: list[dict[str, list]], handle: str) -> set[int]:
    return {i for i, by_handle in enumerate(results) if by_handle[handle]}


def test_mac_warrant_isolates_exactly_the_target_frames() -> None:
    w = F.warrant(META["target"]["mac"])
    results = per_frame(w)
    assert matched(results, w.handle) == TARGETS
    assert DHCP_FRAMES | {VLAN_FRAME} | IPV6_FRAMES <= TARGETS


def test_every_cc_payload_is_its_frames_ip_packet() -> None:
    w = F.warrant(META["target"]["mac"])
    results = per_frame(w)
    for index, packet in enumerate(frames()):
        pdus = results[index][w.handle]
        ccs = [p for p in pdus if isinstance(p, CCApdu)]
        reports = [p for p in pdus if isinstance(p, HeaderReport)]
        if index not in TARGETS:
            assert pdus == []
            continue
        assert len(ccs) == len(reports) == 1, index
        parsed = parse_frame(packet.data)
        assert ccs[0].payload == packet.data[parsed.ip_offset : parsed.ip_offset + parsed.ip_length]
        assert ccs[0].payload[0] >> 4 in (4, 6)
        assert ccs[0].header.correlation_info.content_identifier == reports[0].content_identifier
        assert ccs[0].header.time_stamp == packet.time == reports[0].timestamp


def test_dhcp_ack_reports_the_session_start() -> None:
    w = F.warrant(META["target"]["mac"])
    results = per_frame(w)
    starts = [
        (i, p) for i, r in enumerate(results) for p in r[w.handle] if isinstance(p, SessionStart)
    ]
    [(index, start)] = starts
    assert index == 3 and str(start.ip_address.address) == META["target"]["ipv4"]


def test_ip_warrant_misses_the_pre_dhcp_frames() -> None:
    """Before the ACK the target has no address: DISCOVER and REQUEST go from 0.0.0.0.

    Why the seed white paper asks for the MAC on DHCP networks: an IP
    warrant cannot see out-of-band traffic (and here not the target's IPv6
    either, an address the warrant did not list).
    """
    w = F.warrant(META["target"]["ipv4"])
    got = matched(per_frame(w), w.handle)
    assert got == TARGETS - {0, 2} - IPV6_FRAMES
    assert VLAN_FRAME in got and {1, 3} <= got  # the server's answers go to 192.0.2.10


def test_mac_and_ip_together_is_the_mac_result() -> None:
    w = F.warrant(META["target"]["mac"], META["target"]["ipv4"], META["target"]["ipv6"])
    assert matched(per_frame(w), w.handle) == TARGETS


def test_headers_only_warrant_produces_no_cc() -> None:
    w = F.warrant(META["target"]["mac"], content=ContentLevel.HEADERS)
    items = list(replay_pcap(SAMPLE, [w]))
    assert {item.kind for item in items} == {"cmII"}
    # A header report each, the session start, and the report of the ACK that showed it.
    assert len(items) == len(TARGETS) + 2


def test_replay_pcap_items() -> None:
    w = F.warrant(META["target"]["mac"])
    items = list(replay_pcap(SAMPLE, [w]))
    assert all(isinstance(i, ReplayItem) and i.handle == w.handle for i in items)
    assert collections.Counter(i.kind for i in items) == {"cmII": 24, "cmCC": 22}
    times = [i.time for i in items]
    assert times == sorted(times) and times[0].tzinfo is dt.UTC
    for item in items:
        record = decode(item.der)
        assert isinstance(record, CCApdu) is (item.kind == "cmCC")


def test_two_warrants_on_one_target_are_kept_apart() -> None:
    fbi = F.warrant(META["target"]["mac"], handle="w-0a0001", case_id="CASE-0001")
    dea = F.warrant(
        META["target"]["mac"],
        handle="w-0b0002",
        case_id="CASE-0002",
        content=ContentLevel.HEADERS,
        iap="IAP-0002",
    )
    items = list(replay_pcap(SAMPLE, [fbi, dea]))
    by_handle = collections.defaultdict(list)
    for item in items:
        by_handle[item.handle].append(decode(item.der))
    assert set(by_handle) == {fbi.handle, dea.handle}
    for handle, case, iap in (
        (fbi.handle, "CASE-0001", "IAP-0001"),
        (dea.handle, "CASE-0002", "IAP-0002"),
    ):
        records = by_handle[handle]
        cmii = [r for r in records if isinstance(r, CmIIMessage)]
        cc = [r for r in records if isinstance(r, CCApdu)]
        assert {(r.case_id, r.iap_system_id) for r in cmii} == {(case, iap)}
        assert {
            (r.header.correlation_info.case_id, r.header.correlation_info.iap_id) for r in cc
        } <= {(case, iap)}
        assert len(cmii) == len(TARGETS) + 2
    assert not any(isinstance(r, CCApdu) for r in by_handle[dea.handle])
    # Each warrant's sequence is its own: both start at 1.
    firsts = [r.header.sequence_number for r in by_handle[fbi.handle] if isinstance(r, CCApdu)]
    assert firsts[0] == 1


def test_frames_outside_the_warrant_window_are_dropped() -> None:
    capture = [p.time for p in frames()]
    middle = capture[8]  # the TCP SYN
    late = F.warrant(META["target"]["mac"], window=(middle, F.WINDOW[1]))
    early = F.warrant(META["target"]["mac"], window=(F.WINDOW[0], middle))
    assert matched(per_frame(late), late.handle) == {i for i in TARGETS if i >= 8}
    assert matched(per_frame(early), early.handle) == {i for i in TARGETS if i < 8}
    # No DHCP seen inside the window, so no address learned and no session start.
    assert not any(isinstance(p, SessionStart) for r in per_frame(late) for p in r[late.handle])


def test_interface_warrant_takes_everything_on_its_interface() -> None:
    w = F.warrant("iface:eth1")
    assert matched(per_frame(w, interface="eth1"), w.handle) == set(range(META["packet_count"]))
    assert matched(per_frame(w, interface="eth0"), w.handle) == set()


def test_no_target_no_pdus() -> None:
    w = F.warrant("02:00:5e:00:53:99", "192.0.2.99", "2001:db8:0:1::99", "203.0.113.128/25")
    tap = Tap.for_warrant(w)
    assert list(replay_pcap(SAMPLE, [tap])) == []
    assert tap.counters.frames == META["packet_count"] and tap.counters.matched == 0


def test_warrants_that_cannot_be_tapped() -> None:
    w = F.warrant(META["target"]["mac"])
    with pytest.raises(ValueError, match="not loaded"):
        Tap.for_warrant(dataclasses.replace(w, details=None))
    with pytest.raises(ValueError, match="removed"):
        Tap.for_warrant(dataclasses.replace(w, removed=F.WINDOW[0]))
    with pytest.raises(ValueError, match="IAP"):
        Tap.for_warrant(F.warrant(META["target"]["mac"], iap=None))
    tap = Tap.for_warrant(F.warrant(META["target"]["mac"], iap=None), iap_system_id="IAP-TAP")
    assert tap.builder.iap_system_id == "IAP-TAP"
