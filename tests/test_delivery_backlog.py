"""An agency down for a minute of traffic (trio's mock clock): disk grows, memory does not."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import trio
from delivery_agency import TlsAgency, free_port
from delivery_support import Site, cc_pdu, make_cert, tls_endpoint, wait_until

from mediation import pdu as P
from mediation.log import LogConfig
from mediation.server.config import DeliveryConfig, RetrievalConfig, ServerConfig
from mediation.warrants.model import Stream

RATE = 500  # PDUs per second of mock time
STEP = 0.1  # seconds of mock time between bursts
OUTAGE = 60.0
PAYLOAD = 1000
MIB = 1024 * 1024


async def test_an_absent_agency_costs_disk_not_memory(tmp_path: Path, autojump_clock) -> None:
    site = Site(tmp_path)
    cert = make_cert(tmp_path / "certs", "agency receiver")
    port = free_port()
    handle = site.agency(
        "AGENCY-A", tls_endpoint(port, fingerprint=cert.fingerprint, streams=(Stream.CMCC,))
    )
    warrant = site.warrant(handle)
    sid = P.StreamId(warrant.handle, P.StreamKind.CMCC)
    config = ServerConfig(
        log=LogConfig(ring_bytes=MIB // 2),
        delivery=DeliveryConfig(reconnect_min=0.5, reconnect_max=5.0),
        retrieval=RetrievalConfig(listen="127.0.0.1:0"),
    )
    per_step = int(RATE * STEP)
    steps = int(OUTAGE / STEP)
    samples: dict[int, int] = {}
    async with site.server(config) as server:
        tracemalloc.start()
        try:
            for step in range(steps):
                for n in range(step * per_step, (step + 1) * per_step):
                    await server.ingest(warrant.handle, "cmCC", cc_pdu(payload=PAYLOAD, n=n))
                if step in (steps // 4, steps - 1):
                    await trio.sleep(0)
                    samples[step] = tracemalloc.get_traced_memory()[0]
                await trio.sleep(STEP)
        finally:
            tracemalloc.stop()
        total = steps * per_step
        row = server.delivery_rows()[0]
        assert (row.appended, row.acknowledged, row.backlog) == (total, 0, total)
        assert row.state in ("down", "connecting") and row.last_error == "ECONNREFUSED"
        # Three quarters of the traffic (22 MB of PDUs) arrived between the
        # samples; what the server holds in memory did not grow with it.
        early, late = samples[steps // 4], samples[steps - 1]
        assert late - early < 2 * MIB, (early, late)
        stored = sum(f.stat().st_size for f in (tmp_path / "data" / "log").rglob("*.seg"))
        assert stored > total * PAYLOAD

        agency = TlsAgency(cert, site.server_ca)
        async with trio.open_nursery() as nursery:
            await nursery.start(agency.serve, port)  # the agency is back
            await wait_until(lambda: len(agency.stored.get(sid, ())) == total, seconds=600)
            nursery.cancel_scope.cancel()
    assert agency.stored[sid] == list(range(total))
    assert agency.unmarked_duplicates == 0
