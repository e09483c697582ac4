"""A scripted intercept for the confirmation record: DHCP and RADIUS changes, as a pcap.

The target is named by its MAC (DHCP) and by a user name (RADIUS). In order:
a lease of 192.0.2.10, a renewal of it, an ACK moving it to 192.0.2.11, a
release; then a RADIUS Start with 192.0.2.20, an Interim-Update moving it to
192.0.2.21, a Stop. Routed traffic of the target sits between. Each step has
its own capture time (microseconds too), so a wrong time cannot pass.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import test_tap_frames as F
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from mediation.evidence.pcap import PcapWriter
from mediation.tap.radius import StatusType, encode_accounting

USER = "user-test-1"
TARGETS = (F.TARGET_MAC, f"user:{USER}")  # as `mediate add --target` takes them
T0 = dt.datetime(2026, 11, 23, 0, 11, tzinfo=dt.UTC)
LEASE = {"server": "192.0.2.1", "lease": 3600, "mask": "255.255.255.0"}


def at(step: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=step, microseconds=step * 1001)


def ack(address: str, ciaddr: str = "0.0.0.0") -> bytes:
    payload = F.dhcp(5, F.TARGET_MAC, yiaddr=address, ciaddr=ciaddr, **LEASE)  # type: ignore[arg-type]
    return F.dhcp_frame(payload, from_client=False, dst_ip=address)


def release(address: str) -> bytes:
    payload = F.dhcp(7, F.TARGET_MAC, ciaddr=address)
    packet = F.ipv4(address, "192.0.2.1", 17, F.udp(68, 67, payload))
    return F.eth(F.GATEWAY_MAC, F.TARGET_MAC, 0x0800, packet)


def accounting(status: int, address: str | None = None, cause: int | None = None) -> bytes:
    payload = encode_accounting(
        status,
        "SESS-0001",
        user_name=USER,
        framed_ip=address,
        nas_identifier="nas-test-1",
        terminate_cause=cause,
    )
    return bytes(
        Ether(src=F.GATEWAY_MAC, dst=F.UPSTREAM_MAC)
        / IP(src="192.0.2.1", dst="192.0.2.2")
        / UDP(sport=40000, dport=1813)
        / payload
    )


def routed(src: str) -> bytes:
    packet = F.ipv4(src, "198.51.100.7", 17, F.udp(50000, 5004, b"payload"))
    return F.eth(F.UPSTREAM_MAC, F.GATEWAY_MAC, 0x0800, packet)


# (step, frame): the step is the capture time's index (at(step)).
SCRIPT: list[tuple[int, bytes]] = [
    (1, ack("192.0.2.10")),
    (2, routed("192.0.2.10")),
    (3, ack("192.0.2.10", ciaddr="192.0.2.10")),  # a renewal: nothing changes
    (4, ack("192.0.2.11")),  # moved to a new address
    (5, routed("192.0.2.11")),
    (6, release("192.0.2.11")),
    (7, accounting(StatusType.START, "192.0.2.20")),
    (8, routed("192.0.2.20")),
    (9, accounting(StatusType.INTERIM_UPDATE, "192.0.2.21")),
    (10, accounting(StatusType.STOP, cause=1)),
]
FRAME = dict(SCRIPT)

# What the record must say, in order: (event, source, address, step of the frame).
EXPECTED = [
    ("session-start", "dhcp", "192.0.2.10", 1),
    ("lease-renewed", "dhcp", None, 3),
    ("session-end", "dhcp", "192.0.2.10", 4),
    ("session-start", "dhcp", "192.0.2.11", 4),
    ("session-end", "dhcp", "192.0.2.11", 6),
    ("access-accepted", "radius", "192.0.2.20", 7),
    ("session-start", "radius", "192.0.2.20", 7),
    ("session-end", "radius", "192.0.2.20", 9),
    ("session-start", "radius", "192.0.2.21", 9),
    ("session-end", "radius", "192.0.2.21", 10),
    ("access-ended", "radius", None, 10),
]


def write_capture(path: Path) -> Path:
    with PcapWriter.open(path) as writer:
        for step, frame in SCRIPT:
            writer.write(frame, at(step))
    return path


def frame_hash(step: int) -> str:
    return hashlib.sha256(FRAME[step]).hexdigest()


def stamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_followed(records: list[dict], *, octets: bool) -> None:
    """The tap-made entries of ``records`` are exactly :data:`EXPECTED`, times and frames right."""
    followed = [r for r in records if r["source"] in ("dhcp", "radius")]
    got = [(r["event"], r["source"], r.get("address")) for r in followed]
    assert got == [e[:3] for e in EXPECTED], got
    for entry, (_event, _source, _address, step) in zip(followed, EXPECTED, strict=True):
        assert entry["time"] == stamp(at(step)), entry
        [frame] = entry["frames"]
        assert frame["sha256"] == frame_hash(step) and frame["length"] == len(FRAME[step])
        assert frame["captured"] == stamp(at(step))
        assert ("octets" in frame) is octets
        if octets:
            assert bytes.fromhex(frame["octets"]) == FRAME[step]
    subscribers = {r["subscriber"] for r in followed if r["event"] != "lease-renewed"}
    assert subscribers == {F.TARGET_MAC, USER}
    ends = {r["reason"] for r in followed if r["event"] == "session-end"}
    assert ends == {"address-changed", "dhcp-release", "radius-stop user-request"}
