"""`mediate receive` over UDP: loss counted, reported back each interval, fetched by retrieval.

The test plays the mediation server with its machines over loopback:
a DatagramSender per stream sends envelopes (skipping the "dropped" ones)
and reads the receiver's reports; a RetrievalServer answers from an
in-memory log over mutual TLS.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import pytest
import trio
from test_lea_serverside import UdpServer, serve_retrieval
from test_lea_support import (
    CMCC,
    CMII,
    HANDLE,
    UDP_KEY,
    Receiver,
    config,
    make_pki,
    raw_envelopes,
    raw_sequences,
    record_for,
    retrieval_options,
    start,
    wait_until,
)

from mediation import pdu as P
from mediation import udpbuffer
from mediation.lea import udp
from mediation.lea.retrieve import FetchRange
from mediation.lea.state import ReceiverState
from mediation.lea.tls import fingerprint_pem_file
from mediation.lea.udp import UdpDelivery
from mediation.protocol import DatagramSender


def gaps(out: Path) -> dict:
    return json.loads((out / HANDLE / "gaps.json").read_text())


async def test_udp_drops_are_counted_reported_back_and_written_in_the_gap_report(
    tmp_path: Path,
) -> None:
    out = tmp_path / "intercepts"
    async with trio.open_nursery() as nursery:
        running = await start(nursery, Receiver(config(out, udp=("127.0.0.1", 0))))
        server = UdpServer(running.bound.udp)
        nursery.start_soon(server.read_reports)
        await server.send(CMCC, 40, drop={5, 17, 18, 19})
        await server.send(CMII, 10, drop={3})
        report = await server.wait_report(CMCC, lambda e: e.report.highest_sequence == 39)
        cmii = await server.wait_report(CMII, lambda e: e.report.highest_sequence == 9)
        await running.stop()
        nursery.cancel_scope.cancel()

    # The receiver's report, decoded on the server side: exactly the drops.
    assert report.report.missing == (P.SequenceRange(5, 5), P.SequenceRange(17, 19))
    assert report.report.received_count == 36
    assert report.loss.lost == 4 and report.loss.sent == 40 and report.loss.exact
    assert cmii.report.missing == (P.SequenceRange(3, 3),)

    cc = gaps(out)["streams"]["cmCC"]
    assert (cc["highestSequence"], cc["held"], cc["missingCount"]) == (39, 36, 4)
    assert cc["missing"] == [[5, 5], [17, 19]]
    assert cc["received"] == 36 and cc["retrieved"] == 0 and cc["unavailable"] == []
    assert gaps(out)["streams"]["cmII"]["missing"] == [[3, 3]]
    assert gaps(out)["final"] is True
    expected = [n for n in range(40) if n not in {5, 17, 18, 19}]
    assert raw_sequences(out / HANDLE / "cmcc.raw") == expected


async def test_ipv6_loopback_gets_its_reports_too(tmp_path: Path) -> None:
    out = tmp_path / "intercepts"
    async with trio.open_nursery() as nursery:
        running = await start(nursery, Receiver(config(out, udp=("::1", 0))))
        assert running.bound.udp[0] == "::1"
        server = UdpServer(running.bound.udp)
        nursery.start_soon(server.read_reports)
        await server.send(CMII, 3, drop={1})
        report = await server.wait_report(CMII, lambda e: e.report.highest_sequence == 2)
        await running.stop()
        nursery.cancel_scope.cancel()
    assert report.report.missing == (P.SequenceRange(1, 1),)
    assert raw_sequences(out / HANDLE / "cmii.raw") == [0, 2]


async def test_a_late_datagram_closes_its_gap_and_a_duplicate_is_not_stored(
    tmp_path: Path,
) -> None:
    out = tmp_path / "intercepts"
    async with trio.open_nursery() as nursery:
        running = await start(nursery, Receiver(config(out, udp=("127.0.0.1", 0))))
        server = UdpServer(running.bound.udp)
        sender = server.senders[CMCC]
        envelopes = [sender.envelope(record_for(CMCC, n), 0.0) for n in range(4)]
        for n in (0, 2, 3, 1, 2):  # 1 late, 2 twice (sent again: sealed anew)
            await server.sock.sendto(server.sealer.seal(envelopes[n]), running.bound.udp)
        await wait_until(lambda: running.receiver.state.stream_stats(CMCC).duplicates, "dup")
        await running.stop()
        nursery.cancel_scope.cancel()
    cc = gaps(out)["streams"]["cmCC"]
    assert (cc["missingCount"], cc["duplicates"], cc["held"]) == (0, 1, 4)
    assert raw_sequences(out / HANDLE / "cmcc.raw") == [0, 2, 3, 1]  # arrival order


@pytest.mark.parametrize("by_volume", [True, False])
async def test_a_busy_receiver_fsyncs_at_the_flush_not_only_every_sync_interval(
    tmp_path: Path, by_volume: bool
) -> None:
    # The time bound never comes in this test (an hour): only the volume
    # written brings the fsync forward. Under the threshold, a flush hands
    # the octets to the kernel and the files stay unsynced; over it, the
    # same flush syncs them. (The housekeeping flushes, then decides, with
    # no wait between: once the raw file holds everything, it has decided.)
    out = tmp_path / "intercepts"
    sync_octets = 1024 if by_volume else 1 << 40
    options = {"udp": ("127.0.0.1", 0), "sync_interval": 3600.0, "sync_octets": sync_octets}
    async with trio.open_nursery() as nursery:
        running = await start(nursery, Receiver(config(out, **options)))
        state = running.receiver.state
        server = UdpServer(running.bound.udp)
        await server.send(CMCC, 40)
        raw = out / HANDLE / "cmcc.raw"
        await wait_until(lambda: state.stream_stats(CMCC).received == 40, "40 stored")
        total = state.case(HANDLE).files[0].size
        await wait_until(lambda: raw.stat().st_size == total, "the raw file flushed")
        if by_volume:
            await wait_until(lambda: state.unsynced() == 0, "the fsync by volume")
        else:
            assert state.unsynced() >= total  # flushed, not synced: the interval is an hour
            assert all(f.dirty for f in state.case(HANDLE).files)
        await running.stop()
        nursery.cancel_scope.cancel()
    assert raw_sequences(raw) == list(range(40))


async def test_garbage_and_foreign_handles_are_dropped_and_counted(tmp_path: Path) -> None:
    out = tmp_path / "intercepts"
    receiver = Receiver(config(out, udp=("127.0.0.1", 0), handles=frozenset({HANDLE})))
    other = P.StreamId("w-000000", P.StreamKind.CMCC)
    async with trio.open_nursery() as nursery:
        running = await start(nursery, receiver)
        server = UdpServer(running.bound.udp)
        await server.sock.sendto(server.sealer.seal(b"\x30\x03\x02\x01\x00"), running.bound.udp)
        foreign = DatagramSender(other).envelope(record_for(other, 0), 0.0)
        await server.sock.sendto(server.sealer.seal(foreign), running.bound.udp)
        await server.send(CMCC, 1)
        await wait_until(lambda: receiver.state.trackers.get(CMCC), "the good datagram")
        await wait_until(lambda: receiver.state.counters.bad_datagrams == 2, "two bad ones")
        await running.stop()
        nursery.cancel_scope.cancel()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [HANDLE]  # none for w-000000


async def test_retrieval_fills_the_gaps_and_records_what_is_unavailable(tmp_path: Path) -> None:
    out, pki = tmp_path / "intercepts", make_pki(tmp_path / "pki")
    dropped = {4, 10, 11, 12, 25}
    log = {CMCC: {n: record_for(CMCC, n) for n in range(30) if n != 4}}  # 4: past retention
    async with trio.open_nursery() as nursery:
        port, connections = await serve_retrieval(nursery, pki, log)
        options = retrieval_options(pki, port)
        running = await start(nursery, Receiver(config(out, udp=("127.0.0.1", 0), **options)))
        server = UdpServer(running.bound.udp)
        nursery.start_soon(server.read_reports)
        await server.send(CMCC, 30, drop=dropped)
        tracker = running.receiver.state.trackers
        await wait_until(lambda: tracker[CMCC].missing() == [(4, 4)], "retrieval")
        await wait_until(lambda: tracker[CMCC].unavailable, "the unavailable range")
        # The next report counts only what is still missing: 4.
        report = await server.wait_report(CMCC, lambda e: e.loss.lost == 1)
        await running.stop()
        nursery.cancel_scope.cancel()

    assert report.report.missing == (P.SequenceRange(4, 4),)
    assert len(connections) == 1  # one retrieval connection did it all
    cc = gaps(out)["streams"]["cmCC"]
    assert cc["missing"] == [[4, 4]] and cc["missingCount"] == 1
    assert cc["retrieved"] == 4 and cc["received"] == 25
    assert cc["unavailable"] == [{"first": 4, "last": 4, "reason": "past retention"}]
    assert "retrieval" in cc["transports"] and "udp" in cc["transports"]
    envelopes = raw_envelopes(out / HANDLE / "cmcc.raw")
    assert sorted(e.sequence_number for e in envelopes) == [n for n in range(30) if n != 4]
    retrieved = [e.sequence_number for e in envelopes if e.redelivered]
    assert sorted(retrieved) == [10, 11, 12, 25]


async def test_fetch_asks_for_explicit_ranges_stores_them_and_stops(tmp_path: Path) -> None:
    out, pki = tmp_path / "intercepts", make_pki(tmp_path / "pki")
    log = {CMCC: {n: record_for(CMCC, n) for n in range(20)}}
    wanted = (FetchRange(CMCC, 5, 9), FetchRange(CMCC, 18, 24))  # 20..24 never appended
    async with trio.open_nursery() as nursery:
        port, _connections = await serve_retrieval(nursery, pki, log, reason="not appended")
        receiver = Receiver(config(out, fetch=wanted, **retrieval_options(pki, port)))
        with trio.fail_after(10):
            result = await receiver.run()  # returns by itself once answered
        nursery.cancel_scope.cancel()
    assert result.reason == "fetch complete; 5 never available" and result.failed is None
    assert raw_sequences(out / HANDLE / "cmcc.raw") == [5, 6, 7, 8, 9, 18, 19]
    cc = gaps(out)["streams"]["cmCC"]
    assert cc["retrieved"] == 7
    assert cc["unavailable"] == [{"first": 20, "last": 24, "reason": "not appended"}]


async def test_fetch_from_an_unreachable_server_fails_with_one_line(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))  # bound, never listening: refused
    port = listener.getsockname()[1]
    receiver = Receiver(
        config(tmp_path / "out", fetch=(FetchRange(CMCC, 0, 1),), **retrieval_options(pki, port))
    )
    with trio.fail_after(10):
        result = await receiver.run()
    listener.close()
    assert result.failed is not None and result.failed.startswith("--retrieve-from: 127.0.0.1:")
    assert "\n" not in result.failed


async def test_retrieval_can_go_by_a_pin_alone_and_refuses_another_server(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    right = fingerprint_pem_file(pki.server_cert, "--server-fingerprint")
    log = {CMCC: {n: record_for(CMCC, n) for n in range(3)}}
    wanted = (FetchRange(CMCC, 0, 2),)
    async with trio.open_nursery() as nursery:
        port, _connections = await serve_retrieval(nursery, pki, log)
        results = []
        for name, pin in (("right", right), ("wrong", "0" * 64)):
            options = retrieval_options(pki, port, server_ca=None, server_fingerprint=pin)
            receiver = Receiver(config(tmp_path / name, fetch=wanted, **options))
            with trio.fail_after(10):
                results.append(await receiver.run())
        nursery.cancel_scope.cancel()
    assert results[0].failed is None
    assert raw_sequences(tmp_path / "right" / HANDLE / "cmcc.raw") == [0, 1, 2]
    assert results[1].failed is not None and "not the pinned server" in results[1].failed
    assert not (tmp_path / "wrong" / HANDLE).exists()


async def test_datagrams_dropped_at_a_full_socket_buffer_are_counted_exactly(
    tmp_path: Path,
) -> None:
    """SO_RXQ_OVFL: what the kernel dropped plus what was read is what was sent."""
    sock, address, _granted = await udp.bind("127.0.0.1", 0, 65536)  # small: it overflows
    state = ReceiverState(tmp_path / "intercepts")
    delivery = UdpDelivery(sock, state, 1.0, [UDP_KEY])
    counters = state.counters
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(1000):  # nobody reads yet: most of these cannot be queued
            sender.sendto(bytes(1400), address)
            sent += 1

        def seen() -> int:
            return counters.unauthenticated.total() + counters.socket_drops

        async with trio.open_nursery() as nursery:
            nursery.start_soon(delivery.reader)
            await wait_until(lambda: counters.unauthenticated.total() > 0, "the queue read")
            await trio.sleep(0.05)
            # The counter rides on the next datagram queued: one more tells the total.
            sender.sendto(bytes(1400), address)
            sent += 1
            await wait_until(lambda: seen() == sent, f"{sent} read or counted as dropped")
            nursery.cancel_scope.cancel()
    sock.close()
    assert counters.socket_drops > 0
    assert counters.unauthenticated.total() + counters.socket_drops == sent


async def test_the_receive_buffer_is_what_the_kernel_granted_and_a_cap_is_warned_of(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ceiling = int(Path("/proc/sys/net/core/rmem_max").read_text())
    monkeypatch.setattr(udpbuffer, "SO_RCVBUFFORCE", -1)  # as without CAP_NET_ADMIN: refused
    wanted = 4 * ceiling + 65536
    with caplog.at_level(logging.INFO, logger="mediation.lea"):
        sock, _address, granted = await udp.bind("127.0.0.1", 0, wanted)
    with sock:
        assert granted == sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < 2 * wanted
    assert "net.core.rmem_max" in caplog.text and f"asked {wanted}" in caplog.text


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_RCVBUFFORCE needs CAP_NET_ADMIN")
async def test_as_root_the_buffer_asked_for_is_granted_past_rmem_max(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ceiling = int(Path("/proc/sys/net/core/rmem_max").read_text())
    with caplog.at_level(logging.INFO, logger="mediation.lea"):
        sock, _address, granted = await udp.bind("127.0.0.1", 0, 2 * ceiling)
    sock.close()
    assert granted >= 4 * ceiling  # Linux reports twice what it holds for data
    assert f"udp: receive buffer {granted} bytes (asked {2 * ceiling})" in caplog.text
