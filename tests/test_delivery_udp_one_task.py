"""A UDP endpoint's streams are read by one task: a commit of several streams is one turn."""

from __future__ import annotations

import collections
from pathlib import Path

import trio
from delivery_agency import UdpAgency
from delivery_support import Site, cc_pdu, fast_config, udp_endpoint, wait_until

from mediation import pdu as P
from mediation.warrants.model import Stream

PER_STREAM = 30


class _Steps(trio.abc.Instrument):
    """Steps of UdpWorker._deliver tasks, by task."""

    def __init__(self) -> None:
        self.by: collections.Counter[trio.lowlevel.Task] = collections.Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("UdpWorker._deliver"):
            self.by[task] += 1


async def test_one_task_delivers_every_stream_of_the_endpoint_in_full(tmp_path: Path) -> None:
    site = Site(tmp_path)
    udp = UdpAgency(interval=1.0)
    steps = _Steps()
    trio.lowlevel.add_instrument(steps)
    async with trio.open_nursery() as nursery:
        port = await udp.bind()
        nursery.start_soon(udp.run)
        handle = site.agency("AGENCY-A", udp_endpoint(port, streams=(Stream.CMCC,)))
        warrants = [site.warrant(handle, case_id=f"CASE-000{i}") for i in (1, 2, 3)]
        sids = [P.StreamId(w.handle, P.StreamKind.CMCC) for w in warrants]
        async with site.server(fast_config()) as server:
            for n in range(PER_STREAM):
                for warrant in warrants:
                    assert await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n)) is not None
            worker = next(w for w in server.delivery.workers if w.transport == "udp")
            await wait_until(lambda: all(worker.loss(s).sent == PER_STREAM for s in sids))
            # A stream removed while delivering stops; the others go on.
            logs = server.streams_of_agency(handle)
            worker.set_streams({s: logs[s] for s in sids[:2]})
            for warrant in warrants[:2]:
                await server.ingest(warrant.handle, "cmCC", cc_pdu(n=PER_STREAM))
            await wait_until(lambda: all(worker.loss(s).sent == PER_STREAM + 1 for s in sids[:2]))
        nursery.cancel_scope.cancel()
    trio.lowlevel.remove_instrument(steps)
    assert len(steps.by) == 1  # three streams, one task
    assert all(udp.missing(s, 0, PER_STREAM - 1) == 0 for s in sids)
    assert all(udp.missing(s, PER_STREAM, PER_STREAM) == 0 for s in sids[:2])
