"""One encoding per record for every endpoint that delivers the stream (a real server)."""

from __future__ import annotations

from pathlib import Path

import trio
from delivery_agency import TlsAgency, UdpAgency
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
from mediation.server.delivery import ENVELOPE_BUDGET, MAX_GENERATION, DeliveryManager
from mediation.warrants.model import Stream

N = 300


async def test_udp_and_tls_endpoints_of_a_stream_share_each_envelope(tmp_path: Path) -> None:
    site = Site(tmp_path)
    ca = make_cert(tmp_path / "certs", "test agency CA", ca=True)
    cert = make_cert(tmp_path / "certs", "agency receiver", issuer=ca)
    udp = UdpAgency(interval=0.1)
    udp.sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4 * 1024 * 1024)
    tls = TlsAgency(cert, site.server_ca)
    async with trio.open_nursery() as agency:
        port = await agency.start(tls.serve)
        handle = site.agency(
            "AGENCY-A",
            udp_endpoint(await udp.bind(), streams=(Stream.CMCC,)),
            tls_endpoint(port, ca=ca, streams=(Stream.CMCC,)),
        )
        warrant = site.warrant(handle)
        sid = P.StreamId(warrant.handle, P.StreamKind.CMCC)
        agency.start_soon(udp.run)
        async with site.server(fast_config(report_interval=0.1)) as server:
            await tls.connected.wait()
            for n in range(N):
                assert await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n)) is not None
                if n % 50 == 49:
                    await trio.sleep(0.005)  # keep within the receiver's socket buffer
            await wait_until(lambda: len(tls.stored.get(sid, ())) == N)
            await wait_until(lambda: len([e for e in udp.envelopes if e.stream == sid]) == N)
            shared = server.delivery.shared_envelopes[sid]
            assert shared.consumers == 2
            assert shared.generation_bytes == MAX_GENERATION  # two streams: far below the budget
            # Both endpoints were live at the same records: each encoded once
            # (a few at the edges may be encoded twice, never every one).
            assert shared.encoded < N * 1.2
            assert shared.held == 0
            udp_got = sorted(
                (e for e in udp.envelopes if e.stream == sid), key=lambda e: e.sequence_number
            )
            assert udp_got == tls.contents[sid]  # the same envelopes, field for field
            agency.cancel_scope.cancel()


def test_the_envelope_caches_of_all_streams_share_one_budget() -> None:
    """Two generations a stream, each its share of the budget: memory does not grow with
    warrants (the manager's bookkeeping alone: it needs no worker for this)."""
    manager = DeliveryManager.__new__(DeliveryManager)
    manager._envelopes = {}

    def streams(count: int) -> dict:
        return {P.StreamId(f"w-{i:06d}", P.StreamKind.CMCC): None for i in range(count)}

    few = manager._share_envelopes([streams(2)])
    assert [e.generation_bytes for e in few.values()] == [MAX_GENERATION] * 2
    many = manager._share_envelopes([streams(2000)])
    assert len(many) == 2000
    assert sum(2 * e.generation_bytes for e in many.values()) <= ENVELOPE_BUDGET
    again = manager._share_envelopes([streams(2)])  # the others' streams closed
    assert [e.generation_bytes for e in again.values()] == [MAX_GENERATION] * 2
