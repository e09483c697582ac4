"""A TLS endpoint's streams are queued by one writer task: a commit of several is one turn."""

from __future__ import annotations

from pathlib import Path

import trio
from delivery_agency import TlsAgency
from delivery_support import Site, cc_pdu, fast_config, make_cert, tls_endpoint, wait_until

from mediation import pdu as P
from mediation.warrants.model import Stream

PER_STREAM = 40


class _Tasks(trio.abc.Instrument):
    """The link's tasks (reader, timers, flusher and the writers) that ran."""

    def __init__(self) -> None:
        self.seen: set[trio.lowlevel.Task] = set()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("Link.run.<locals>.guarded"):
            self.seen.add(task)


async def test_one_writer_delivers_every_stream_of_the_endpoint_in_order(tmp_path: Path) -> None:
    site = Site(tmp_path)
    cert = make_cert(tmp_path / "certs", "agency receiver")
    tls = TlsAgency(cert, site.server_ca)
    # A small window: the writer also has to wait for acks, for each stream.
    config = fast_config(window=8, batch=4)
    tasks = _Tasks()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(tls.serve)
        handle = site.agency(
            "AGENCY-A", tls_endpoint(port, fingerprint=cert.fingerprint, streams=(Stream.CMCC,))
        )
        warrants = [site.warrant(handle, case_id=f"CASE-000{i}") for i in (1, 2, 3)]
        sids = [P.StreamId(w.handle, P.StreamKind.CMCC) for w in warrants]
        async with site.server(config) as server:
            await tls.connected.wait()
            trio.lowlevel.add_instrument(tasks)
            for n in range(PER_STREAM):
                for warrant in warrants:
                    assert await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n)) is not None
            await wait_until(lambda: all(len(tls.stored.get(s, ())) >= PER_STREAM for s in sids))
            trio.lowlevel.remove_instrument(tasks)
        nursery.cancel_scope.cancel()
    assert all(tls.stored[s] == list(range(PER_STREAM)) for s in sids)
    assert tls.duplicates == 0
    # At most the reader, the timers, the flusher and one writer (a writer per stream: 6).
    assert len(tasks.seen) <= 4
