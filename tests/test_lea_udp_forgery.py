"""`mediate receive` over UDP against a forger on loopback: nothing forged is stored or answered.

The server is played by its machines (``UdpServer``, sealing with the
endpoint's key); the forger is another loopback socket that knows the
handles and sequence numbers (it could have watched unsealed traffic) but
not the key. Each test would pass a forgery on the receiver before UDP
delivery was sealed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from pathlib import Path

import pytest
import trio
from test_lea_serverside import UdpServer
from test_lea_support import (
    CMCC,
    CMII,
    HANDLE,
    UDP_KEY,
    Receiver,
    config,
    raw_envelopes,
    raw_sequences,
    record_for,
    start,
    wait_until,
)

from mediation import pdu as P
from mediation.lea.udp import SESSIONS_FILE
from mediation.protocol import DatagramSender
from mediation.protocol.envelope import encode_message
from mediation.protocol.sealed import GRACE_US, DatagramSealer, Direction, SealKey

MADE_UP = P.StreamId("w-abcdef", P.StreamKind.CMCC)
WRONG_KEY = SealKey(UDP_KEY.key_id, bytes(32))  # the right key id, not the key


def files(out: Path) -> dict[str, bytes]:
    """Every evidence file under ``out`` (the replay state aside), by relative path."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != SESSIONS_FILE
    }


def _renumbered(stream: P.StreamId, seq: int) -> bytes:
    """A well-formed envelope with a number the forger guessed, carrying other content."""
    record = record_for(stream, seq + 8)._replace(seq=seq)
    return DatagramSender(stream).envelope(record, 0.0)


def forger_socket() -> socket.socket:
    """The forger: another loopback socket (non-blocking: an answer would be waiting)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    return sock


def checkpoint(stream: P.StreamId) -> bytes:
    when = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
    return encode_message(P.ChainCheckpoint(stream, 2, bytes(32), when, bytes(64), b"k1"))


def unauthenticated(receiver: Receiver) -> int:
    return receiver.state.counters.unauthenticated.total()


async def test_a_forged_next_envelope_is_not_stored_and_the_genuine_one_is(
    tmp_path: Path,
) -> None:
    out = tmp_path / "intercepts"
    receiver = Receiver(config(out, udp=("127.0.0.1", 0)))
    forger = forger_socket()
    async with trio.open_nursery() as nursery:
        running = await start(nursery, receiver)
        target = running.bound.udp
        server = UdpServer(target)
        nursery.start_soon(server.read_reports)
        genuine = [server.datagram(CMCC, n) for n in range(4)]
        for datagram in genuine[:3]:
            await server.sock.sendto(datagram, target)
        await wait_until(lambda: receiver.state.trackers[CMCC].received_count == 3, "0..2")
        receiver.state.flush()
        before = files(out)
        forged_plain = _renumbered(CMCC, 3)  # what was stored before sealing
        forged_sealed = DatagramSealer(WRONG_KEY, Direction.SERVER_TO_AGENCY, 1).seal(forged_plain)
        for datagram in (forged_plain, forged_sealed, genuine[1]):  # and a replay of 1
            forger.sendto(datagram, target)
        await wait_until(lambda: unauthenticated(receiver) == 3, "three refusals")
        receiver.state.flush()
        assert files(out) == before  # raw, pcap, JSON: not a byte more
        assert receiver.state.trackers[CMCC].highest == 2  # no gap, no sequence number taken
        await server.sock.sendto(genuine[3], target)
        await wait_until(lambda: receiver.state.trackers[CMCC].received_count == 4, "3")
        # Reports keep going to the server; none ever reaches the forger.
        seen = len(server.reports)
        await server.wait_report(CMCC, lambda e: e.report.highest_sequence == 3)
        await wait_until(lambda: len(server.reports) >= seen + 2, "two more reports")
        await running.stop()
        nursery.cancel_scope.cancel()
    with forger, pytest.raises(BlockingIOError):
        forger.recv(65536)  # never answered
    counts = receiver.state.counters.unauthenticated
    assert counts == {"bad tag": 1, "bad magic": 1, "replayed": 1}, counts
    assert receiver.state.stream_stats(CMCC).duplicates == 0  # the genuine 3 was new
    assert raw_sequences(out / "w-3f9a1c" / "cmcc.raw") == [0, 1, 2, 3]
    stored = raw_envelopes(out / HANDLE / "cmcc.raw")[3]
    genuine_3 = P.decode_delivery(DatagramSender(CMCC).envelope(record_for(CMCC, 3), 0.0))
    assert stored.content == genuine_3.content


async def test_forged_checkpoints_notices_and_made_up_handles_leave_no_trace(
    tmp_path: Path,
) -> None:
    out = tmp_path / "intercepts"
    receiver = Receiver(config(out, udp=("127.0.0.1", 0)))
    async with trio.open_nursery() as nursery:
        running = await start(nursery, receiver)
        target = running.bound.udp
        server = UdpServer(target)
        await server.send(CMII, 2)
        await wait_until(
            lambda: (
                CMII in receiver.state.trackers
                and receiver.state.trackers[CMII].received_count == 2
            ),
            "both genuine CmII",
        )  # both stored before the snapshot: only a forgery may change the files after it
        receiver.state.flush()
        before = files(out)
        forger = forger_socket()
        forgeries = [
            checkpoint(CMII),  # a checkpoint "signed" by nobody
            _renumbered(CMII, 3),  # 3 is a notice (odd numbers in the test CmII)
            _renumbered(CMII, 900),  # a jump: would open a gap of 897
            _renumbered(MADE_UP, 0),  # a handle nobody issued
            checkpoint(MADE_UP),
            encode_message(P.ReceiverReport(CMII, dt.datetime.now(dt.UTC), 0)),
        ]
        for datagram in forgeries:
            forger.sendto(datagram, target)
        await wait_until(lambda: unauthenticated(receiver) == len(forgeries), "all refused")
        receiver.state.flush()
        assert files(out) == before
        await running.stop()
        nursery.cancel_scope.cancel()
        forger.close()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [HANDLE]
    assert not (out / HANDLE / "checkpoints.raw").exists()
    assert set(receiver.state.trackers) == {CMII}
    assert receiver.state.trackers[CMII].missing() == []  # no forged gap
    gaps = json.loads((out / HANDLE / "gaps.json").read_text())
    assert gaps["streams"]["cmII"]["missing"] == []


async def test_the_receiver_survives_a_checkpoint_or_junk_as_its_first_datagram(
    tmp_path: Path,
) -> None:
    """Finding 3: the first datagram was assumed to be an envelope (an assertion)."""
    out = tmp_path / "intercepts"
    receiver = Receiver(config(out, udp=("127.0.0.1", 0)))
    async with trio.open_nursery() as nursery:
        running = await start(nursery, receiver)
        target = running.bound.udp
        server = UdpServer(target)
        nursery.start_soon(server.read_reports)
        for message in (
            checkpoint(CMCC),  # the server's checkpoint overtook the first envelope
            b"\x30\x03\x02\x01\x00",  # authentic junk
            encode_message(P.ReceiverReport(CMCC, dt.datetime.now(dt.UTC), 0)),
        ):
            await server.sock.sendto(server.sealer.seal(message), target)
        await wait_until(lambda: receiver.state.counters.bad_datagrams == 2, "junk counted")
        await trio.sleep(0.5)  # more than two report intervals with no stream known
        await server.send(CMCC, 3)
        report = await server.wait_report(CMCC, lambda e: e.report.highest_sequence == 2)
        result = await running.stop()
        nursery.cancel_scope.cancel()
    assert result.reason == "test done"
    assert report.report.received_count == 3
    assert (out / HANDLE / "checkpoints.raw").stat().st_size > 0  # the checkpoint is kept
    assert raw_sequences(out / HANDLE / "cmcc.raw") == [0, 1, 2]


async def test_a_recording_is_refused_after_the_receiver_restarts(tmp_path: Path) -> None:
    out = tmp_path / "intercepts"
    first = Receiver(config(out, udp=("127.0.0.1", 0)))
    async with trio.open_nursery() as nursery:
        running = await start(nursery, first)
        server = UdpServer(running.bound.udp)
        recorded = [server.datagram(CMCC, n) for n in range(3)]
        for datagram in recorded:
            await server.sock.sendto(datagram, running.bound.udp)
        await wait_until(lambda: first.state.trackers[CMCC].received_count == 3, "0..2")
        await running.stop()
        nursery.cancel_scope.cancel()
    assert (out / SESSIONS_FILE).stat().st_mode & 0o777 == 0o600
    before = files(out)

    second = Receiver(config(out, udp=("127.0.0.1", 0)))
    old_start = server.sealer.start_us - GRACE_US - 1
    old_session = DatagramSealer(UDP_KEY, Direction.SERVER_TO_AGENCY, old_start, os.urandom)
    other = P.StreamId(HANDLE, P.StreamKind.CMII)
    async with trio.open_nursery() as nursery:
        running = await start(nursery, second)
        target = running.bound.udp
        for datagram in recorded:  # played back from the recording
            await server.sock.sendto(datagram, target)
        stale = old_session.seal(DatagramSender(other).envelope(record_for(other, 0), 0.0))
        await server.sock.sendto(stale, target)  # a recording of an older server run
        await wait_until(lambda: unauthenticated(second) == 4, "all refused")
        second.state.flush()
        assert files(out) == before
        await server.sock.sendto(server.datagram(CMCC, 3), target)  # the live session goes on
        await wait_until(lambda: second.state.trackers[CMCC].received_count == 4, "3")
        await running.stop()
        nursery.cancel_scope.cancel()
    assert second.state.counters.unauthenticated == {"replayed": 3, "stale session": 1}
    assert raw_sequences(out / HANDLE / "cmcc.raw") == [0, 1, 2, 3]
