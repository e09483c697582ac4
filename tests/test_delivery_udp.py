"""UDP delivery on loopback: loss counted as the receiver counts it, gaps fetched by retrieval."""

from __future__ import annotations

from pathlib import Path

import trio
from delivery_agency import TlsAgency, UdpAgency, finished, retrieve
from delivery_support import (
    Site,
    cc_pdu,
    fast_config,
    make_cert,
    tls_endpoint,
    udp_endpoint,
    wait_until,
)

from mediation import pdu as P
from mediation.protocol import SequenceTracker
from mediation.warrants.model import ContentLevel, Stream

N = 600
DROPPED_RUN = range(200, 215)


def dropped_on_purpose(seq: int) -> bool:
    """Every 7th datagram and a run of 15; never the last (it ends the gaps)."""
    return (seq % 7 == 3 or seq in DROPPED_RUN) and seq < N - 1


async def test_loss_equals_the_receivers_count_and_retrieval_fills_every_gap(
    tmp_path: Path,
) -> None:
    site = Site(tmp_path)
    ca = make_cert(tmp_path / "certs", "test agency CA", ca=True)
    cert = make_cert(tmp_path / "certs", "agency receiver", issuer=ca)
    udp = UdpAgency(drop=lambda e: dropped_on_purpose(e.sequence_number), interval=0.1)
    udp.sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4 * 1024 * 1024)
    tls = TlsAgency(cert, site.server_ca)
    config = fast_config(report_interval=0.1)
    async with trio.open_nursery() as agency:
        port = await agency.start(tls.serve)
        handle = site.agency(
            "AGENCY-A",
            udp_endpoint(await udp.bind(), streams=(Stream.CMCC,)),
            tls_endpoint(port, ca=ca, streams=(Stream.CMII,)),
        )
        warrant = site.warrant(handle)
        sid = P.StreamId(warrant.handle, P.StreamKind.CMCC)
        agency.start_soon(udp.run)
        async with site.server(config) as server:
            for n in range(N):
                assert await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n)) is not None
                if n % 50 == 49:
                    await trio.sleep(0.005)  # keep within the receiver's socket buffer
            worker = next(w for w in server.delivery.workers if w.transport == "udp")
            await wait_until(
                lambda: worker.loss(sid).unreported == 0 and worker.loss(sid).sent == N
            )

            loss = worker.loss(sid)
            expected = {s for s in range(N) if dropped_on_purpose(s)}
            assert udp.dropped[sid] == expected
            assert loss.lost == udp.missing(sid, 0, N - 1) == len(expected)
            assert loss.exact and loss.received == N - len(expected)
            row = next(r for r in server.delivery_rows() if r.stream == "cmCC")
            assert (row.lost, row.delivered, row.appended, row.backlog) == (len(expected), N, N, 0)

            retrieved = await retrieve(
                site.retrieval_address(server), cert, site.server_ca, udp.receiver.trackers, [sid]
            )
            assert not retrieved.closed_by_server
            assert all(e.redelivered for e in retrieved.envelopes)
            results = finished(retrieved)
            assert sum(r.delivered for r in results) == len(expected)
            assert all(r.unavailable == () and r.still_missing == 0 for r in results)
            assert udp.missing(sid, 0, N - 1) == 0
            # The next report says so, and the server's figure follows.
            await wait_until(lambda: worker.loss(sid).lost == 0)
            # A range beyond what was ever stored is "not yet", not sent, and
            # not "unavailable": it may be stored later, so it is asked again.
            beyond = SequenceTracker()
            beyond.add_range(0, N - 1)
            beyond.add(N + 4)
            later = await retrieve(
                site.retrieval_address(server), cert, site.server_ca, {sid: beyond}, [sid]
            )
            [result] = finished(later)
            assert (result.delivered, result.unavailable) == (0, ())
            assert result.not_yet == ((N, N + 3),) and later.envelopes == []
            assert result.reason == f"beyond the stream's end (stored up to {N - 1})"
            assert beyond.retrievable() == [(N, N + 3)]
            assert server.retrieval.connections == 2 and server.retrieval.refused == 0
        agency.cancel_scope.cancel()


async def test_an_endpoint_without_reports_turns_silent_and_back(tmp_path: Path) -> None:
    site = Site(tmp_path)
    udp = UdpAgency(interval=0.1)
    handle = site.agency("AGENCY-A", udp_endpoint(await udp.bind(), streams=(Stream.CMII,)))
    warrant = site.warrant(handle, content=ContentLevel.HEADERS)
    async with site.server(fast_config(report_interval=0.1)) as server:
        # The warrantActive notice went out; nobody reports: silent after 3 intervals.
        worker = server.delivery.workers[0]
        await wait_until(lambda: worker.rows()[0].state == "silent", seconds=5)
        async with trio.open_nursery() as agency:
            agency.start_soon(udp.run)
            server.notice(warrant.handle, "tapLost", source="edge-1")  # one more datagram
            await wait_until(lambda: worker.rows()[0].state == "receiving", seconds=5)
            agency.cancel_scope.cancel()
