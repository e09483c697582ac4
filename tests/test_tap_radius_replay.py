"""A scripted RADIUS accounting exchange in a pcap, through the tap: the capture follows the user.

The pcap is built here with scapy: a NAS (192.0.2.1) reports user-test-1's
sessions to the RADIUS server (192.0.2.2, port 1813); routed traffic of
the user and of a bystander passes the same link. Every frame's PDUs are
checked: exactly the user's traffic while it holds an address, and the
CmII events at the capture times of the accounting packets.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress

import pytest
import test_tap_frames as F
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from mediation.evidence.pcap import PcapWriter
from mediation.pdu import (
    AccessAccepted,
    AccessSessionEnd,
    AccessSignalingMessageReport,
    HeaderReport,
    SessionAlreadyEstablished,
    SessionEnd,
    SessionStart,
    decode,
)
from mediation.pdu.confirmation import parse_frame_message
from mediation.tap.radius import StatusType, encode_accounting
from mediation.tap.replay import Tap, replay_pcap
from mediation.warrants.model import ContentLevel

SECRET = b"test-secret-1"
USER = "user-test-1"
NAS, SERVER = "192.0.2.1", "192.0.2.2"
T0 = dt.datetime(2026, 11, 23, 0, 11, tzinfo=dt.UTC)


def at(step: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=step, microseconds=step * 1001)


def accounting(status: int, session: str, *, sport: int = 40000, dport: int = 1813, **kw) -> bytes:
    kw.setdefault("user_name", USER)
    kw.setdefault("secret", SECRET)
    payload = encode_accounting(status, session, nas_identifier="nas-test-1", **kw)
    return bytes(
        Ether(src=F.GATEWAY_MAC, dst=F.UPSTREAM_MAC)
        / IP(src=NAS, dst=SERVER)
        / UDP(sport=sport, dport=dport)
        / payload
    )


def traffic(src: str, dst: str = "198.51.100.7") -> bytes:
    layer = IPv6 if ":" in src else IP
    return bytes(
        Ether(src=F.GATEWAY_MAC, dst=F.UPSTREAM_MAC)
        / layer(src=src, dst=dst)
        / UDP(sport=50000, dport=5004)
        / b"payload"
    )


def back(dst: str) -> bytes:
    """A packet to ``dst`` from the far end."""
    layer = IPv6 if ":" in dst else IP
    src = "2001:db8:ffff::7" if ":" in dst else "198.51.100.7"
    return bytes(
        Ether(src=F.UPSTREAM_MAC, dst=F.GATEWAY_MAC)
        / layer(src=src, dst=dst)
        / UDP(sport=5004, dport=50000)
        / b"answer"
    )


def malformed(frame: bytes) -> bytes:
    """The first attribute's length made to run past the packet (42 = 14 + 20 + 8)."""
    return frame[: 42 + 21] + b"\xff" + frame[42 + 22 :]


# (what the frame is, the frame, whether the user's traffic must be captured)
SCRIPT: list[tuple[str, bytes, bool]] = [
    ("before any session", traffic("192.0.2.10"), False),
    (
        "Start: 192.0.2.10 and 2001:db8:0:1::/64",
        accounting(
            StatusType.START,
            "SESS-0001",
            framed_ip="192.0.2.10",
            framed_prefix="2001:db8:0:1::/64",
            calling_station_id="02-00-5E-00-53-01",
        ),
        False,
    ),
    ("user's v4", traffic("192.0.2.10"), True),
    ("to the user's v4", back("192.0.2.10"), True),
    ("user's v6 in the prefix", traffic("2001:db8:0:1::5", "2001:db8:ffff::7"), True),
    ("bystander", traffic("192.0.2.20"), False),
    ("bystander v6 beside the prefix", traffic("2001:db8:0:2::5", "2001:db8:ffff::7"), False),
    ("malformed accounting", malformed(accounting(1, "SESS-0001", framed_ip="192.0.2.40")), False),
    (
        "forged Start to 192.0.2.30 (wrong secret)",
        accounting(1, "SESS-6666", framed_ip="192.0.2.30", secret=b"wrong"),
        False,
    ),
    ("forged address", traffic("192.0.2.30"), False),
    ("Interim: moved to 192.0.2.11", accounting(3, "SESS-0001", framed_ip="192.0.2.11"), False),
    ("old address", traffic("192.0.2.10"), False),
    ("new address", traffic("192.0.2.11"), True),
    ("v6 still held", back("2001:db8:0:1::5"), True),
    ("Stop", accounting(2, "SESS-0001", terminate_cause=1, dport=1646), False),
    ("after Stop, v4", traffic("192.0.2.11"), False),
    ("after Stop, v6", traffic("2001:db8:0:1::5", "2001:db8:ffff::7"), False),
    (
        "bystander gets 192.0.2.10",
        accounting(1, "SESS-0100", user_name="user-test-2", framed_ip="192.0.2.10"),
        False,
    ),
    ("bystander on the old address", traffic("192.0.2.10"), False),
    ("Start again: 192.0.2.12", accounting(1, "SESS-0002", framed_ip="192.0.2.12"), False),
    ("user again", traffic("192.0.2.12"), True),
    ("bystander on the user's first address", back("192.0.2.10"), False),
    (
        "bystander given 192.0.2.12 (user's session never stopped)",
        accounting(1, "SESS-0101", user_name="user-test-3", framed_ip="192.0.2.12"),
        False,
    ),
    ("bystander on 192.0.2.12", traffic("192.0.2.12"), False),
]


@pytest.fixture()
def capture(tmp_path):
    path = tmp_path / "radius.pcap"
    with PcapWriter.open(path) as writer:
        for step, (_what, frame, _mine) in enumerate(SCRIPT):
            writer.write(frame, at(step))
    return path


SHOWN: dict[int, list] = {}  # step -> frame reports (confirmation), of the last _run


def _run(capture, secret=SECRET, content=ContentLevel.FULL):
    tap = Tap.for_warrant(F.warrant(f"user:{USER}", content=content), radius_secret=secret)
    by_step: dict[int, list] = {}
    SHOWN.clear()
    times = {at(step): step for step in range(len(SCRIPT))}
    for item in replay_pcap(capture, [tap]):
        pdu = decode(item.der)
        evidence = None
        if isinstance(pdu, AccessSignalingMessageReport):
            evidence = parse_frame_message(pdu.signaling_msg[0])
        if evidence is not None:
            SHOWN.setdefault(times[item.time], []).append(evidence)
        else:
            by_step.setdefault(times[item.time], []).append(pdu)
    return tap, by_step


def test_captured_traffic_follows_the_user_exactly(capture):
    tap, by_step = _run(capture)
    for step, (what, _frame, mine) in enumerate(SCRIPT):
        reports = [p for p in by_step.get(step, []) if isinstance(p, HeaderReport)]
        assert bool(reports) == mine, what
        if mine:
            assert len(reports) == 1 and reports[0].timestamp == at(step), what
    assert tap.counters.radius_messages == 6
    assert tap.counters.radius_refused == 2
    assert tap.radius.refused["bad-authenticator"] == 1
    assert tap.radius.refused["bad-attribute"] == 1


def test_cmii_events_at_the_accounting_times_with_the_session_ids(capture):
    _tap, by_step = _run(capture, content=ContentLevel.HEADERS)
    a10, a11 = ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("192.0.2.11")
    p1 = ipaddress.ip_address("2001:db8:0:1::")

    accepted, start10, start_p1 = by_step[1]
    assert isinstance(accepted, AccessAccepted) and accepted.timestamp == at(1)
    assert accepted.subscriber_identity.value == USER
    assert accepted.access_session_id.value == "SESS-0001"
    assert accepted.ip_address.address == a10
    assert accepted.network_access_node_identity.value == "nas-test-1"
    assert "calling-station-id=02-00-5E-00-53-01" in accepted.access_session_characteristics.value
    assert isinstance(start10, SessionStart) and start10.ip_address.address == a10
    assert isinstance(start_p1, SessionStart)
    assert (start_p1.ip_address.address, start_p1.ip_address.prefix_len) == (p1, 64)
    assert {start10.access_session_id.value, start_p1.access_session_id.value} == {"SESS-0001"}

    end10, start11 = by_step[10]
    assert isinstance(end10, SessionEnd) and end10.timestamp == at(10)
    assert end10.packet_data_session_id == start10.packet_data_session_id
    assert end10.reason_for_termination.value == "address-changed"
    assert isinstance(start11, SessionStart) and start11.ip_address.address == a11

    *ends, access_end = by_step[14]
    assert [type(e) for e in ends] == [SessionEnd, SessionEnd]
    assert {e.packet_data_session_id for e in ends} == {
        start_p1.packet_data_session_id,
        start11.packet_data_session_id,
    }
    assert isinstance(access_end, AccessSessionEnd) and access_end.timestamp == at(14)
    assert access_end.access_session_id.value == "SESS-0001"
    assert access_end.reason_for_termination.value == "radius-stop user-request"

    taken = by_step[22]
    assert [type(e) for e in taken] == [SessionEnd]
    assert taken[0].reason_for_termination.value == "address-reassigned"
    assert taken[0].access_session_id.value == "SESS-0002"
    # Nothing of the bystanders' own sessions is reported.
    assert 17 not in by_step and 8 not in by_step and 7 not in by_step
    # Each accounting frame that changed something is reported once, by its
    # hash and capture time; a headers-only warrant is not given the frame.
    assert set(SHOWN) == {1, 10, 14, 19, 22}
    for step, [evidence] in SHOWN.items():
        assert evidence.sha256 == hashlib.sha256(SCRIPT[step][1]).hexdigest()
        assert evidence.captured == at(step) and evidence.octets is None
        assert evidence.length == len(SCRIPT[step][1]) and evidence.proto == "radius"
    assert SHOWN[10][0].what == "accounting-interim-update" and SHOWN[14][0].what == (
        "accounting-stop"
    )
    assert all(not isinstance(p, SessionAlreadyEstablished) for ps in by_step.values() for p in ps)


def test_without_a_secret_the_forged_start_would_be_believed(capture):
    tap, by_step = _run(capture, secret=None)
    forged_traffic = [p for p in by_step.get(9, []) if isinstance(p, HeaderReport)]
    assert forged_traffic  # which is why docs/tap.md says to configure the secret
    assert tap.radius.refused["bad-authenticator"] == 0


def test_a_user_warrant_has_no_radius_follower_for_other_targets():
    tap = Tap.for_warrant(F.warrant("192.0.2.10"))
    assert tap.radius is None
    assert tap.process(accounting(1, "SESS-0001", framed_ip="192.0.2.11"), at(0)) == []


def test_the_tzsp_path_follows_the_same_way():
    """The same frames mirrored by a router over TZSP: decoded, then the same tap core."""
    from mediation.protocol.tzsp import TzspReceiver, encode_tzsp

    receiver = TzspReceiver({NAS})
    tap = Tap.for_warrant(F.warrant(f"user:{USER}"), radius_secret=SECRET)
    captured = []
    for step, (what, frame, mine) in enumerate(SCRIPT):
        decoded = receiver.receive(encode_tzsp(frame), NAS)
        pdus = tap.process(decoded.frame, at(step), linktype=decoded.linktype)
        captured.append(any(p.kind == "cmCC" for p in pdus))
        assert captured[-1] == mine, what
    assert receiver.accepted == len(SCRIPT) and receiver.refused_total == 0
    assert tap.counters.radius_refused == 2
