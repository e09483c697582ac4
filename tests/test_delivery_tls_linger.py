"""TLS delivery at light traffic: writes at least ``write_linger`` apart, nothing held back."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from delivery_agency import TlsAgency
from delivery_support import Site, cc_pdu, fast_config, make_cert, tls_endpoint, wait_until

from mediation import pdu as P
from mediation.warrants.model import Stream

N = 40
SPACING = 0.005  # one PDU every 5 ms: each is its own commit of the log


@pytest.mark.parametrize("linger", [0.05, 0.0001])
async def test_light_traffic_is_written_a_few_envelopes_at_a_time(
    tmp_path: Path, linger: float
) -> None:
    site = Site(tmp_path)
    cert = make_cert(tmp_path / "certs", "agency receiver")
    agency = TlsAgency(cert, site.server_ca)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(agency.serve)
        endpoint = tls_endpoint(port, fingerprint=cert.fingerprint, streams=(Stream.CMCC,))
        warrant = site.warrant(site.agency("AGENCY-A", endpoint))
        sid = P.StreamId(warrant.handle, P.StreamKind.CMCC)
        async with site.server(fast_config(write_linger=linger)) as server:
            await agency.connected.wait()
            worker = server.delivery.workers[0]
            started = trio.current_time()
            for n in range(N):
                assert await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n)) is not None
                await trio.sleep(SPACING)
            # The last one comes at most one linger after its commit.
            await wait_until(lambda: len(agency.stored.get(sid, ())) == N)
            elapsed = trio.current_time() - started
        nursery.cancel_scope.cancel()
    assert agency.stored[sid] == list(range(N))
    if linger >= SPACING:
        assert worker.writes <= elapsed / linger + 2
    else:  # the contrast: without a linger, about one write per commit
        assert worker.writes > N / 2


async def test_streams_of_one_endpoint_share_a_write(tmp_path: Path) -> None:
    """Two streams committed within one linger go out in one send, not one per stream."""
    site = Site(tmp_path)
    cert = make_cert(tmp_path / "certs", "agency receiver")
    agency = TlsAgency(cert, site.server_ca)
    rounds, linger = 8, 0.05
    async with trio.open_nursery() as nursery:
        port = await nursery.start(agency.serve)
        endpoint = tls_endpoint(port, fingerprint=cert.fingerprint, streams=(Stream.CMCC,))
        handle = site.agency("AGENCY-A", endpoint)
        warrants = [site.warrant(handle, case_id=f"CASE-000{i}") for i in (1, 2)]
        sids = [P.StreamId(w.handle, P.StreamKind.CMCC) for w in warrants]
        async with site.server(fast_config(write_linger=linger)) as server:
            await agency.connected.wait()
            worker = server.delivery.workers[0]
            before = worker.writes
            for n in range(rounds):
                for warrant in warrants:
                    assert await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n)) is not None
                await wait_until(lambda n=n: all(len(agency.stored.get(s, ())) > n for s in sids))
            writes = worker.writes - before
        nursery.cancel_scope.cancel()
    assert all(agency.stored[s] == list(range(rounds)) for s in sids)
    assert writes <= rounds + 1  # one per round (each stream alone would make two)
