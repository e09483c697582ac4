"""A tap link's acks: a batch durable at once (written in the loop) is acked by the reader.

The real server in this process, its TLS tap listener, and a tap speaking
the link with registered credentials: every batch is acknowledged, in
order, and when the log wrote the batch in the loop (light load) the ack
goes out with the reader's own flush, without a turn of the acker task.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from delivery_agency import UdpAgency
from delivery_support import Site, udp_endpoint
from test_tap_ingest import NOW, cc

from mediation.log import inline as inline_module
from mediation.log.writer import WriterPool
from mediation.pdu import taplink as T
from mediation.protocol.taplink import TapLinkTap
from mediation.server.tap_connection import TapConnection
from mediation.tap.link import client_context
from mediation.warrants.authority import read_bundle
from mediation.warrants.operations import register_tap

TAP = "edge-1"


class _AckerSteps(trio.abc.Instrument):
    """Task steps of every tap link's acker task."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("TapConnection._acker"):
            self.steps += 1


async def _pool_quiet(pool: WriterPool) -> None:
    """Until every writer thread waits for work, with no report on its way and no retry.

    A thread that wrote the warrant's notices may not be back at its wait
    yet on a loaded machine; a batch held meanwhile goes to a thread, as it
    should (threads at work: under load), and its ack to the acker.
    """
    while True:
        with pool._cond:
            if pool._idle == len(pool._threads) and not pool._reports_queued and not pool._retry:
                return
        await trio.sleep(0.005)  # a thread's state, no event to wait on; bounded by fail_after


async def test_each_batch_is_acked_in_order_and_the_acker_sleeps_through_inline_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Written in the loop whatever this machine's disk does meanwhile.
    monkeypatch.setattr(inline_module, "INLINE_SLOW", 60.0)
    monkeypatch.setattr(inline_module, "INLINE_SHARE", 1.0)
    site = Site(tmp_path)
    agency = site.agency("AGENCY-A", udp_endpoint(await UdpAgency().bind()))
    site.warrant(agency, "CASE-0001")  # no source: every tap serves it
    credentials_file = tmp_path / f"{TAP}.tap"
    with site._registry() as registry:
        register_tap(
            registry, site.tap_authority, TAP, credentials_file, "127.0.0.1:0", NOW,
            site.server_ca.read_text(),
        )  # fmt: skip
    credentials = read_bundle(credentials_file)
    acker = _AckerSteps()
    async with site.server() as server:
        assert server.taps is not None and server.taps.tls_listening is not None
        tcp = await trio.open_tcp_stream(*server.taps.tls_listening)
        stream = trio.SSLStream(tcp, client_context(credentials), server_hostname="127.0.0.1")
        machine = TapLinkTap(T.TapHello(TAP, 1, 0), trio.current_time())
        await stream.send_all(machine.data_to_send())
        with trio.fail_after(10):
            while machine.last_stored is None:
                machine.receive_data(await stream.receive_some(65536), trio.current_time())
            acks: list[T.BatchAck] = []
            for batch_id in range(1, 7):  # one at a time, as a tap at light load
                if batch_id == 2:  # the first may meet the warrant's notices at a thread
                    await _pool_quiet(server.intake.evidence.pool)
                    trio.lowlevel.add_instrument(acker)
                pdus = [("cmCC", NOW, cc(batch_id * 10 + n)) for n in range(3)]
                machine.send_batch(batch_id, T.encode_pdus(pdus), trio.current_time())
                await stream.send_all(machine.data_to_send())
                while len(acks) < batch_id:
                    data = await stream.receive_some(65536)
                    got = machine.receive_data(data, trio.current_time())
                    acks += [m for m in got if isinstance(m, T.BatchAck)]
            trio.lowlevel.remove_instrument(acker)
        await stream.aclose()
    assert [(a.batch_id, a.accepted) for a in acks] == [(n, 3) for n in range(1, 7)]
    assert acker.steps == 0  # every batch was written in the loop and acked by the reader
    assert TapConnection._acker.__qualname__ == "TapConnection._acker"  # the name counted
