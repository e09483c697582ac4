"""TLS delivery on loopback: cut 20 times, nothing lost, nothing stored twice, in order."""

from __future__ import annotations

from pathlib import Path

import trio
from delivery_agency import TlsAgency
from delivery_support import Site, cc_pdu, make_cert, tls_endpoint, wait_until

from mediation import pdu as P
from mediation.warrants.model import Stream

N = 50_000
CUTS = 20


def payload_number(envelope: P.Envelope) -> int:
    """The ``n`` that :func:`cc_pdu` wrote into the packet."""
    return int.from_bytes(envelope.content.payload[1:9], "big")


async def test_twenty_cuts_during_fifty_thousand_pdus_lose_nothing(tmp_path: Path) -> None:
    site = Site(tmp_path)
    cert = make_cert(tmp_path / "certs", "agency receiver")  # self-signed, pinned
    cuts = [N * (i + 1) // (CUTS + 1) for i in range(CUTS)]
    agency = TlsAgency(cert, site.server_ca, cut_at=cuts)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(agency.serve)
        endpoint = tls_endpoint(port, fingerprint=cert.fingerprint, streams=(Stream.CMCC,))
        handle = site.agency("AGENCY-A", endpoint)
        warrant = site.warrant(handle)
        sid = P.StreamId(warrant.handle, P.StreamKind.CMCC)
        async with site.server() as server:
            for n in range(N):
                assert await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n)) is not None
                if n % 2000 == 1999:
                    await trio.sleep(0.02)  # a stream, not one burst: cuts land mid-flow
            await wait_until(lambda: len(agency.stored.get(sid, ())) >= N, seconds=90)
            worker = server.delivery.workers[0]
            await wait_until(lambda: worker.rows()[0].acknowledged == N, seconds=10)
            row = worker.rows()[0]
        nursery.cancel_scope.cancel()
    assert agency.stored[sid] == list(range(N))  # every PDU, once, in order
    assert [payload_number(e) for e in agency.contents[sid]] == list(range(N))
    assert agency.connections == CUTS + 1
    assert agency.unmarked_duplicates == 0  # whatever came twice was marked redelivered
    assert (row.appended, row.delivered, row.acknowledged, row.backlog) == (N, N, N, 0)


async def test_delivery_resumes_after_a_restart_from_the_saved_position(tmp_path: Path) -> None:
    site = Site(tmp_path)
    ca = make_cert(tmp_path / "certs", "test agency CA", ca=True)
    cert = make_cert(tmp_path / "certs", "agency receiver", issuer=ca)
    agency = TlsAgency(cert, site.server_ca)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(agency.serve)
        handle = site.agency("AGENCY-A", tls_endpoint(port, ca=ca, streams=(Stream.CMCC,)))
        warrant = site.warrant(handle)
        sid = P.StreamId(warrant.handle, P.StreamKind.CMCC)
        for first in (0, 500):
            async with site.server() as server:
                for n in range(first, first + 500):
                    await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n))
                await wait_until(lambda n=first + 500: len(agency.stored.get(sid, ())) >= n)
                worker = server.delivery.workers[0]
                await wait_until(lambda n=first + 500, w=worker: w.rows()[0].acknowledged == n)
            # Leaving the block stopped the server: the saved position is the last ack.
        nursery.cancel_scope.cancel()
    assert agency.stored[sid] == list(range(1000))
    assert agency.connections == 2 and agency.unmarked_duplicates == 0


class HungAgency(TlsAgency):
    """Completes the TLS handshake, then never reads or answers anything."""

    async def _connection(self, tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, self.context, server_side=True)
        await stream.do_handshake()
        self.connections += 1
        try:
            await trio.sleep_forever()
        finally:
            await trio.aclose_forcefully(stream)


async def test_keepalives_hold_an_idle_connection_and_drop_a_hung_one(
    tmp_path: Path, autojump_clock
) -> None:
    site = Site(tmp_path)
    cert = make_cert(tmp_path / "certs", "agency receiver")
    alive, hung = TlsAgency(cert, site.server_ca), HungAgency(cert, site.server_ca)
    async with trio.open_nursery() as nursery:
        for name, agency in (("AGENCY-A", alive), ("AGENCY-H", hung)):
            port = await nursery.start(agency.serve)
            handle = site.agency(name, tls_endpoint(port, fingerprint=cert.fingerprint))
            site.warrant(handle)
        async with site.server() as server:
            await trio.sleep(100)  # of mock time: idle but for the warrantActive notices
            states = {w.ref.agency: (w.connections, w.state) for w in server.delivery.workers}
        nursery.cancel_scope.cancel()
    assert alive.connections == 1  # keepalives every 10 s, answered: one connection
    # The hung agency never answers: dropped 40 s into each connection, then reconnected.
    assert hung.connections in (2, 3)
    assert sorted(states.values())[0][0] == 1 and sorted(states.values())[1][0] == hung.connections
