"""Capture workers on a real veth pair: fanout steering, flow numbers, following across workers.

mediation/tap/fanout.py and mediation/tap/workers.py: every frame reaches
exactly one worker, both directions of a conversation the same one, DHCP
worker 0; workers number flows apart; what worker 0 learns by following
reaches the others. Needs root (network namespace), like test_tap_live.py.
"""

from __future__ import annotations

import datetime as dt

import pytest
import test_tap_frames as F
import trio
from netns_support import veth_pair_or_skip

from mediation.pdu import HeaderReport, SessionStart, decode
from mediation.pdu.cmii import Allocation
from mediation.pdu.fast_der import length
from mediation.pdu.taplink import TapWarrant, read_batch
from mediation.tap.capture import CapturedFrame
from mediation.tap.fanout import steering_program
from mediation.tap.live import LiveTap
from mediation.tap.workers import CaptureWorkers

pytestmark = pytest.mark.netns

TARGET = "192.0.2.10"
PEERS = [f"203.0.113.{i}" for i in range(1, 33)]


def conversation(peer: str, *, mac: str = F.OTHER_MAC) -> list[bytes]:
    """One frame each way between the target (at ``mac``) and ``peer`` (behind the gateway)."""
    there = F.ipv4(TARGET, peer, 17, F.udp(40000, 443, b"x" * 64))
    back = F.ipv4(peer, TARGET, 17, F.udp(443, 40000, b"x" * 64))
    return [F.eth(F.GATEWAY_MAC, mac, 0x0800, there), F.eth(mac, F.GATEWAY_MAC, 0x0800, back)]


def window() -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(hours=1), now + dt.timedelta(hours=1)


async def drain(live: LiveTap, seconds: float = 1.0) -> list[CapturedFrame]:
    frames: list[CapturedFrame] = []
    with trio.move_on_after(seconds):
        while True:
            frames += await live.capture.next_batch(0.1)
    return frames


async def test_fanout_gives_each_frame_to_one_socket_and_a_conversation_to_one() -> None:
    w = F.warrant(TARGET, F.TARGET_MAC, window=window())
    ack = F.dhcp(5, F.TARGET_MAC, yiaddr=TARGET, lease=3600, server="192.0.2.1")
    dhcp = [F.dhcp_frame(ack, from_client=False, dst_ip=TARGET)]
    sent = [f for peer in PEERS for f in conversation(peer)] + dhcp
    program = steering_program(2)
    with veth_pair_or_skip("f") as pair:
        group = 0x5A00 | (hash(pair.capture) & 0xFF)
        with (
            LiveTap(pair.capture, [w], fanout=(group, program)) as zero,
            LiveTap(pair.capture, [w], fanout=(group, program)) as one,
        ):
            zero.start()
            one.start()
            assert pair.send(sent) == len(sent)
            got = [[f.data for f in await drain(zero)], [f.data for f in await drain(one)]]
    assert sorted(got[0] + got[1]) == sorted(sent)  # each frame once, none missing
    assert got[0] and got[1]  # 32 conversations: both sockets have some
    assert dhcp[0] in got[0]  # following frames go to worker 0
    for peer in PEERS:
        there, back = conversation(peer)
        assert (there in got[0]) == (back in got[0])  # both ways in one place


async def test_workers_number_flows_apart_and_share_what_following_learned() -> None:
    start, end = window()
    warrant = TapWarrant("w-0a0001", "CASE-TEST-0001", "IAP-TEST", "headers", start, end,
                         (F.TARGET_MAC,))  # fmt: skip
    ack = F.dhcp(5, F.TARGET_MAC, yiaddr=TARGET, lease=3600, server="192.0.2.1")
    records: list[bytes] = []
    got_lease = trio.Event()

    async def take(payload: bytes, count: int, first: dt.datetime, last: dt.datetime) -> None:
        body = b"\x80\x01\x01\xa1" + length(len(payload)) + payload
        batch = read_batch(body, 0, len(body))
        assert len(batch.pdus) == count and first <= last
        records.extend(pdu.der for pdu in batch.pdus)
        if any(isinstance(decode(pdu.der), SessionStart) for pdu in batch.pdus):
            got_lease.set()

    with veth_pair_or_skip("w") as pair:
        workers = CaptureWorkers(pair.capture, 2, (warrant,), epoch=7, chunk_pdus=64,
                                 chunk_bytes=65536)  # fmt: skip
        async with trio.open_nursery() as nursery:
            nursery.start_soon(workers.run, take)
            with trio.fail_after(60):
                await workers.started.wait()
            assert pair.send([F.dhcp_frame(ack, from_client=False, dst_ip=TARGET)]) == 1
            with trio.fail_after(10):
                await got_lease.wait()
                await workers.learned_pushed.wait()
            frames = [f for peer in PEERS for f in conversation(peer, mac=F.TARGET_MAC)]
            assert pair.send(frames) == len(frames)
            with trio.fail_after(10):
                while len(records) < 1 + len(frames):
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    stats = workers.stats()
    assert stats.kernel_dropped == 0 and stats.frames == 1 + len(frames)
    reports = [p for p in map(decode, records) if isinstance(p, HeaderReport)]
    assert len(reports) == len(frames) + 1  # and the DHCP ACK's own
    reports = [r for r in reports if r.header_set.source_port != "67"]
    flows: dict[str, set[int]] = {}
    for report in reports:
        header = report.header_set
        peer = {str(header.source_ip.address), str(header.destination_ip.address)} - {TARGET}
        flows.setdefault(peer.pop(), set()).add(header.stream_id.value)
        subject = (
            header.source_ip if str(header.source_ip.address) == TARGET else header.destination_ip
        )
        assert subject.allocation is Allocation.DYNAMIC  # worker 1 learned the lease too
    numbers = [n for peer_numbers in flows.values() for n in peer_numbers]
    assert all(len(n) == 1 for n in flows.values())  # both ways: one flow, one worker
    assert len(set(numbers)) == len(PEERS)  # no number given twice
    assert {n % 2 for n in numbers} == {0, 1}  # both workers numbered flows
