"""Signed checkpoints travel with the envelopes (UDP and TLS) and prove what arrived.

Each agency's envelopes and checkpoints are written out as the receiver
would hold them and checked with :mod:`mediation.lea.verify` against the
server's public key; another agency's checkpoints never reach it.
"""

from __future__ import annotations

import dataclasses
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
from mediation.lea.verify import check_case
from mediation.log import LogConfig, load_public_key
from mediation.log.keys import public_key_path
from mediation.protocol.envelope import encode_message
from mediation.warrants.model import Stream

K = 45  # signed after 9, 19, 29, 39 (every 10), and 44 by the 1 s timer


def _check(tmp: Path, handle: str, envelopes: list[P.Envelope], cps: list) -> list:
    case = tmp / handle
    case.mkdir(parents=True)
    (case / "cmcc.raw").write_bytes(b"".join(P.encode(e) for e in envelopes))
    (case / "checkpoints.raw").write_bytes(b"".join(encode_message(cp) for cp in cps))
    return check_case(case, load_public_key(public_key_path(tmp.parent / "data")))


async def test_checkpoints_reach_each_agency_over_udp_and_tls_and_verify(tmp_path: Path) -> None:
    site = Site(tmp_path)
    cert = make_cert(tmp_path / "certs", "agency A receiver")
    # A cut mid-stream: after the resume, checkpoints come again with the records.
    tls = TlsAgency(cert, site.server_ca, cut_at=(17,))
    udp_a, udp_b = UdpAgency(interval=0.1), UdpAgency(interval=0.1)
    config = dataclasses.replace(
        fast_config(), log=LogConfig(checkpoint_records=10, checkpoint_interval=1.0)
    )
    async with trio.open_nursery() as agencies:
        port = await agencies.start(tls.serve)
        a = site.agency(
            "AGENCY-A",
            tls_endpoint(port, fingerprint=cert.fingerprint, streams=(Stream.CMCC,)),
            udp_endpoint(await udp_a.bind(), streams=(Stream.CMCC,)),
        )
        b = site.agency("AGENCY-B", udp_endpoint(await udp_b.bind(), streams=(Stream.CMCC,)))
        w_a, w_b = site.warrant(a, "CASE-A"), site.warrant(b, "CASE-B")
        cc_a = P.StreamId(w_a.handle, P.StreamKind.CMCC)
        cc_b = P.StreamId(w_b.handle, P.StreamKind.CMCC)
        agencies.start_soon(udp_a.run)
        agencies.start_soon(udp_b.run)
        async with site.server(config) as server:
            for n in range(K):
                await server.ingest(w_a.handle, "cmCC", cc_pdu("CASE-A", n=n))
                await server.ingest(w_b.handle, "cmCC", cc_pdu("CASE-B", n=n))

            def signed_to_end(cps: list[P.ChainCheckpoint]) -> bool:
                return any(cp.last_sequence == K - 1 for cp in cps)

            await wait_until(lambda: len(tls.stored.get(cc_a, ())) == K)
            await wait_until(lambda: signed_to_end(tls.checkpoints))
            await wait_until(lambda: signed_to_end(udp_a.checkpoints))
            await wait_until(lambda: signed_to_end(udp_b.checkpoints))
        agencies.cancel_scope.cancel()

    assert tls.connections == 2  # the cut happened, and delivery resumed
    for agency, stream in ((tls, cc_a), (udp_a, cc_a), (udp_b, cc_b)):
        assert {cp.stream for cp in agency.checkpoints} == {stream}  # never another case's
        assert {cp.last_sequence for cp in agency.checkpoints} >= {9, 19, 29, 39, K - 1}
    tls_envelopes = tls.contents[cc_a]
    for name, envelopes, cps, stream in (
        ("tls", tls_envelopes, tls.checkpoints, cc_a),
        ("udp-a", udp_a.envelopes, udp_a.checkpoints, cc_a),
        ("udp-b", udp_b.envelopes, udp_b.checkpoints, cc_b),
    ):
        [check] = _check(tmp_path / name, stream.warrant_handle, envelopes, cps)
        assert check.ok, check.line()
        assert (check.records, check.verified, check.after_last) == (K, K, 0), check.line()
