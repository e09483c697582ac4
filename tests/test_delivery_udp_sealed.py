"""The server's UDP delivery, sealed: forged reports change nothing; an endpoint without a key
gets nothing until it has one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from pathlib import Path

import pytest
import trio
from delivery_agency import UdpAgency
from delivery_support import HOST, Site, cc_pdu, fast_config, udp_endpoint, wait_until

from mediation import pdu as P
from mediation.cli.status import _summary
from mediation.protocol.envelope import encode_message
from mediation.protocol.sealed import DatagramOpener, DatagramSealer, Direction, SealKey
from mediation.warrants.audit import AuditEvent
from mediation.warrants.model import Agency, AgencyDetails, Endpoint, Stream
from mediation.warrants.operations import udp_key_for

N = 20
DROPPED = {3, 7}


async def test_forged_and_replayed_reports_are_counted_and_change_no_loss_figure(
    tmp_path: Path,
) -> None:
    site = Site(tmp_path)
    udp = UdpAgency(drop=lambda e: e.sequence_number in DROPPED, interval=0.1)
    handle = site.agency("AGENCY-A", udp_endpoint(await udp.bind(), streams=(Stream.CMCC,)))
    warrant = site.warrant(handle)
    sid = P.StreamId(warrant.handle, P.StreamKind.CMCC)
    async with trio.open_nursery() as agency:
        agency.start_soon(udp.run)
        async with site.server(fast_config(report_interval=0.1)) as server:
            for n in range(N):
                await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n))
            worker = next(w for w in server.delivery.workers if w.transport == "udp")
            await wait_until(
                lambda: worker.loss(sid).unreported == 0 and worker.loss(sid).sent == N
            )
            assert worker.loss(sid).lost == 2
            # A forger who can send from the agency's own address (spoofed), claiming all arrived.
            all_in = encode_message(
                P.ReceiverReport(sid, dt.datetime.now(dt.UTC), N, (), N - 1, None)
            )
            wrong = SealKey(udp.sealer.key.key_id, bytes(32))
            missing = (P.SequenceRange(3, 3), P.SequenceRange(7, 7))
            honest = encode_message(
                P.ReceiverReport(sid, dt.datetime.now(dt.UTC), N - 2, missing, N - 1, None)
            )
            once = udp.sealer.seal(honest)
            for datagram in (
                all_in,
                DatagramSealer(wrong, Direction.AGENCY_TO_SERVER, time.time_ns() // 1000).seal(
                    all_in
                ),
                once,
                once,  # the same datagram again: replayed
            ):
                await udp.sock.sendto(datagram, udp.peer)
            await wait_until(lambda: sum(worker.opener.refused.values()) == 3)
            assert worker.refusals() == {"bad magic": 1, "bad tag": 1, "replayed": 1}
            await trio.sleep(0.3)  # genuine reports keep coming
            loss = worker.loss(sid)
            assert (loss.lost, loss.exact, loss.sent) == (2, True, N)
            status = await server.handle_request({"op": "status"})
            refused = status["udp_refused"]
            assert refused == {f"{handle} udp#1": {"bad magic": 1, "bad tag": 1, "replayed": 1}}
            assert f"udp {handle} udp#1: datagrams refused: bad magic 1" in "\n".join(
                _summary(status)
            )
        agency.cancel_scope.cancel()
    assert udp.refused == 0  # everything the server sent opened at the agency


async def test_an_endpoint_without_a_key_gets_nothing_until_it_has_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "mediation.server.delivery")
    site = Site(tmp_path)
    udp = UdpAgency(interval=0.1)
    port = await udp.bind()
    # As a registry from before sealing holds it: a UDP endpoint with no key.
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with site._registry() as registry:
        handle = registry.new_handle("a")
        old = Endpoint("udp", HOST, port, (Stream.CMII,))
        agency = Agency(handle, now, None, AgencyDetails("AGENCY-OLD", (old,)))
        registry.save_agency(agency, AuditEvent("agency add", handle))
    warrant = site.warrant(handle)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(udp.run)
        async with site.server(fast_config(report_interval=0.1)) as server:
            worker = server.delivery.workers[0]
            await wait_until(lambda: worker.rows() and worker.rows()[0].state == "no key")
            row = worker.rows()[0]
            assert f"mediate agency udp-key {handle} --out FILE" in (row.last_error or "")
            server.notice(warrant.handle, "tapLost", source="edge-1")
            await trio.sleep(0.3)
            assert udp.envelopes == [] and udp.refused == 0  # nothing sent, sealed or not
            with site._registry() as registry:
                _agency, endpoint, made = udp_key_for(registry, handle, None, renew=False)
            assert made and endpoint.udp_key is not None
            key = SealKey(endpoint.udp_key_id, endpoint.udp_key)  # type: ignore[arg-type]
            udp.opener = DatagramOpener([key], Direction.SERVER_TO_AGENCY)
            udp.sealer = DatagramSealer(key, Direction.AGENCY_TO_SERVER, time.time_ns() // 1000)
            # The server rereads the registry within seconds and delivers, sealed.
            await wait_until(
                lambda: server.delivery.workers and server.delivery.workers[0].state != "no key"
            )
            server.notice(warrant.handle, "tapLost", source="edge-2")
            await wait_until(lambda: udp.envelopes, seconds=10)
        nursery.cancel_scope.cancel()
    assert udp.refused == 0
    assert any("not delivering: no UDP key" in r.getMessage() for r in caplog.records)
    assert dataclasses.replace(endpoint, udp_key=None, udp_key_id=None) == old
