"""mediation/tap/live.py on a real veth pair: the kernel filter, the ring, the PDUs.

A network namespace and a veth pair are made per test (tests/netns_support.py);
frames are written from the namespace end with a raw socket, and the tap
captures on the other end. Each test checks what Python received
(``capture.stats.frames``), so a bystander frame dropped by Python rather
than by the kernel would fail it.
"""

from __future__ import annotations

import datetime as dt

import pytest
import test_tap_frames as F
import trio
from netns_support import VethPair, veth_pair_or_skip

from mediation.pdu import AccessSignalingMessageReport, CCApdu, HeaderReport, decode
from mediation.pdu.cmcc import PacketDirection
from mediation.tap.capture import CapturedFrame
from mediation.tap.live import LiveTap
from mediation.tap.packet import parse_frame
from mediation.warrants.model import ContentLevel

pytestmark = pytest.mark.netns

TARGET, BYSTANDER, PEER, GATEWAY = "192.0.2.10", "192.0.2.11", "203.0.113.5", "192.0.2.1"
SCOPED = "192.0.2.20"  # the address VLAN 100's subscriber and VLAN 200's both use


def udp(src: str, dst: str, *tags: tuple[int, int], size: int = 0) -> bytes:
    payload = bytes(size)
    return F.eth(
        F.GATEWAY_MAC, F.OTHER_MAC, 0x0800, F.ipv4(src, dst, 17, F.udp(5000, 53, payload)), *tags
    )


def arp(sender: str, target: str) -> bytes:
    body = bytes.fromhex("0001080006040001") + F.mac(F.OTHER_MAC) + F.ip(sender)
    return F.eth(F.BROADCAST, F.OTHER_MAC, 0x0806, body + bytes(6) + F.ip(target))


def window(now: dt.datetime, *, ended: bool = False) -> tuple[dt.datetime, dt.datetime]:
    if ended:
        return now - dt.timedelta(hours=2), now - dt.timedelta(hours=1)
    return now - dt.timedelta(hours=1), now + dt.timedelta(hours=1)


async def collect(live: LiveTap, count: int, seconds: float = 5.0) -> list[CapturedFrame]:
    """Frames out of the ring until ``count`` arrived, or ``seconds`` passed."""
    frames: list[CapturedFrame] = []
    with trio.move_on_after(seconds):
        while len(frames) < count:
            frames += await live.capture.next_batch(0.2)
    # A little longer: anything the kernel should have dropped would show up now.
    frames += await live.capture.next_batch(0.2)
    return frames


def send(pair: VethPair, frames: list[bytes]) -> None:
    assert pair.send(frames) == len(frames)


async def test_only_the_targets_frames_reach_python_and_the_log() -> None:
    now = dt.datetime.now(dt.UTC)
    fbi = F.warrant(TARGET, f"{SCOPED}@vlan:100", handle="w-0a0001", case_id="CASE-TEST-0001",
                    window=window(now))  # fmt: skip
    dea = F.warrant(TARGET, handle="w-0a0002", case_id="CASE-TEST-0002",
                    content=ContentLevel.HEADERS, iap="IAP-0002", window=window(now))  # fmt: skip
    over = F.warrant(TARGET, handle="w-0a0003", case_id="CASE-TEST-0003",
                     window=window(now, ended=True))  # fmt: skip
    wanted = [
        udp(TARGET, PEER),  # fromSubject
        udp(PEER, TARGET),  # toSubject
        arp(TARGET, GATEWAY),  # ARP sent by the target
        udp(SCOPED, PEER, (0x8100, 100)),  # the VLAN 100 subscriber
    ]
    bystanders = [
        udp(BYSTANDER, PEER),
        udp(PEER, BYSTANDER),
        arp(BYSTANDER, GATEWAY),
        udp(SCOPED, PEER, (0x8100, 200)),  # same address, another VLAN's subscriber
        udp(SCOPED, PEER),  # same address, untagged
    ] * 40
    with veth_pair_or_skip("a") as pair, LiveTap(pair.capture, [fbi, dea, over]) as live:
        send(pair, bystanders[:100] + wanted + bystanders[100:])
        frames = await collect(live, len(wanted))
        stats = live.stats()
        items = live.process(frames)
    # The kernel filter, not Python, dropped the bystanders' 200 frames.
    assert [f.data for f in frames] == wanted
    assert stats.frames == len(wanted) == stats.kernel_received
    assert stats.kernel_dropped == 0
    assert not any(f.outgoing for f in frames)
    assert parse_frame(frames[3].data).vlans == (100,)  # the tag the kernel took off is back
    assert all(abs(f.time - now) < dt.timedelta(seconds=30) for f in frames)
    by_case: dict[str, list[object]] = {}
    for item in items:
        pdu = decode(item.der)
        case = pdu.header.correlation_info.case_id if isinstance(pdu, CCApdu) else pdu.case_id
        by_case.setdefault(case, []).append(pdu)
    assert set(by_case) == {"CASE-TEST-0001", "CASE-TEST-0002"}  # the ended window: nothing
    fbi_cc = [p for p in by_case["CASE-TEST-0001"] if isinstance(p, CCApdu)]
    assert [p.header.packet_direction for p in fbi_cc] == [
        PacketDirection.FROM_SUBJECT, PacketDirection.TO_SUBJECT, PacketDirection.FROM_SUBJECT,
    ]  # fmt: skip
    assert [p.payload for p in fbi_cc] == [
        parse_frame(f).ip_packet(f) for f in wanted if f[12:14] != b"\x08\x06"
    ]
    arp_reports = [
        p for p in by_case["CASE-TEST-0001"] if isinstance(p, AccessSignalingMessageReport)
    ]
    assert len(arp_reports) == 1
    assert "ethertype=0x0806" in arp_reports[0].signaling_msg[0].message
    assert "direction=fromSubject" in arp_reports[0].signaling_msg[0].message
    dea_kinds = [type(p) for p in by_case["CASE-TEST-0002"]]
    assert dea_kinds == [HeaderReport, HeaderReport, AccessSignalingMessageReport]


async def test_a_changed_warrant_replaces_the_kernel_filter() -> None:
    now = dt.datetime.now(dt.UTC)
    first = F.warrant(TARGET, handle="w-0a0001", case_id="CASE-TEST-0001", window=window(now))
    second = F.warrant(BYSTANDER, handle="w-0a0001", case_id="CASE-TEST-0001", window=window(now))
    with veth_pair_or_skip("b") as pair, LiveTap(pair.capture, [first]) as live:
        send(pair, [udp(BYSTANDER, PEER), udp(TARGET, PEER)])
        before = await collect(live, 1)
        live.set_warrants([second])
        send(pair, [udp(BYSTANDER, PEER), udp(TARGET, PEER)])
        after = await collect(live, 1)
        live.set_warrants([])
        send(pair, [udp(BYSTANDER, PEER), udp(TARGET, PEER)] * 20)
        none = await collect(live, 1, seconds=0.5)
        assert live.stats().filters_attached == 3
    src = [parse_frame(f.data).src_ip for f in before + after]
    assert [str(a) for a in src] == [TARGET, BYSTANDER]
    assert none == []


async def test_the_kernel_counts_what_a_full_ring_drops() -> None:
    from mediation.tap.capture import RingConfig

    now = dt.datetime.now(dt.UTC)
    w = F.warrant(TARGET, handle="w-0a0001", case_id="CASE-TEST-0001", window=window(now))
    ring = RingConfig(block_size=1 << 16, block_count=2, block_timeout_ms=10)
    with veth_pair_or_skip("c") as pair, LiveTap(pair.capture, [w], ring=ring) as live:
        # 600 frames of 1,500 octets cannot fit 128 KiB: the kernel must drop.
        send(pair, [udp(TARGET, PEER, size=1400)] * 600)
        frames = await collect(live, 600, seconds=1.0)
        stats = live.stats()
    assert stats.kernel_dropped > 0
    assert len(frames) + stats.kernel_dropped == stats.kernel_received == 600


async def test_an_ended_window_leaves_the_kernel_filter() -> None:
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(hours=1), now + dt.timedelta(minutes=1)
    w = F.warrant(TARGET, handle="w-0a0001", case_id="CASE-TEST-0001", window=(start, end))
    clock = [now]
    with veth_pair_or_skip("d") as pair, LiveTap(pair.capture, [w], clock=lambda: clock[0]) as live:
        assert live.filter.alternatives == 3
        assert not live.refilter_if_due(now)
        clock[0] = end
        assert live.refilter_if_due(end)
        assert live.filter.alternatives == 0  # nothing left: the kernel accepts nothing
        send(pair, [udp(TARGET, PEER)] * 10)
        assert await collect(live, 1, seconds=0.5) == []
