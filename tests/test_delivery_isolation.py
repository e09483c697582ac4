"""Two agencies watching one target: each gets only its own case; wrong certificates get nothing."""

from __future__ import annotations

from pathlib import Path

import trio
from delivery_agency import TlsAgency, UdpAgency, finished, retrieve
from delivery_support import Site, cc_pdu, make_cert, tls_endpoint, udp_endpoint, wait_until

from mediation import pdu as P
from mediation.protocol import SequenceTracker

K = 200
CASE_A, CASE_B = "CASE-A-0001", "CASE-B-0002"


def cases(envelopes: list[P.Envelope]) -> set[str]:
    """The case identities inside CC envelopes (notices carry none)."""
    return {
        e.content.header.correlation_info.case_id
        for e in envelopes
        if e.stream.kind.value == "cmCC"
    }


async def test_each_agency_receives_only_its_own_case(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    site = Site(tmp_path)
    ca_a = make_cert(certs, "agency A CA", ca=True)
    cert_a = make_cert(certs, "agency A receiver", issuer=ca_a)
    cert_b = make_cert(certs, "agency B receiver")  # self-signed, pinned
    tls_a, tls_b = TlsAgency(cert_a, site.server_ca), TlsAgency(cert_b, site.server_ca)
    udp_a = UdpAgency(interval=0.1)
    async with trio.open_nursery() as agencies:
        port_a, port_b = await agencies.start(tls_a.serve), await agencies.start(tls_b.serve)
        a = site.agency("AGENCY-A", tls_endpoint(port_a, ca=ca_a), udp_endpoint(await udp_a.bind()))
        b = site.agency("AGENCY-B", tls_endpoint(port_b, fingerprint=cert_b.fingerprint))
        w_a, w_b = site.warrant(a, CASE_A), site.warrant(b, CASE_B)  # the same target
        agencies.start_soon(udp_a.run)
        async with site.server() as server:
            for n in range(K):
                await server.ingest(w_a.handle, "cmCC", cc_pdu(CASE_A, n=n))
                await server.ingest(w_b.handle, "cmCC", cc_pdu(CASE_B, n=n))
            cc_a, cc_b = (
                P.StreamId(w_a.handle, P.StreamKind.CMCC),
                P.StreamId(w_b.handle, P.StreamKind.CMCC),
            )
            await wait_until(lambda: len(tls_a.stored.get(cc_a, ())) == K)
            await wait_until(lambda: len(tls_b.stored.get(cc_b, ())) == K)
            await wait_until(lambda: len([e for e in udp_a.envelopes if e.stream == cc_a]) == K)

            # Agency A's certificate cannot fetch agency B's stream: the
            # connection is closed and not one envelope of it arrives.
            tracker = SequenceTracker()
            tracker.add(K - 1)  # "missing" 0..K-2
            cross = await retrieve(
                site.retrieval_address(server), cert_a, site.server_ca, {cc_b: tracker}, [cc_b]
            )
            assert cross.closed_by_server and cross.envelopes == []
            # ... while its own stream it can.
            own = SequenceTracker()
            own.add(K - 1)
            mine = await retrieve(
                site.retrieval_address(server), cert_a, site.server_ca, {cc_a: own}, [cc_a]
            )
            assert not mine.closed_by_server and len(mine.envelopes) == K - 1
            assert [r.delivered for r in finished(mine)] == [K - 1]
            # B's pinned certificate was seen on its live connection: it may fetch too.
            pinned = SequenceTracker()
            pinned.add(K - 1)
            b_own = await retrieve(
                site.retrieval_address(server), cert_b, site.server_ca, {cc_b: pinned}, [cc_b]
            )
            assert not b_own.closed_by_server and cases(b_own.envelopes) == {CASE_B}
        agencies.cancel_scope.cancel()

    a_streams = {s.warrant_handle for s in tls_a.stored} | {
        e.stream.warrant_handle for e in udp_a.envelopes
    }
    assert a_streams == {w_a.handle}
    assert set(tls_b.stored) <= {P.StreamId(w_b.handle, k) for k in P.StreamKind}
    assert cases(tls_a.contents[cc_a]) == cases(udp_a.envelopes) == {CASE_A}
    assert cases(tls_b.contents[cc_b]) == {CASE_B}
    assert cases(mine.envelopes) == {CASE_A}


async def test_wrong_certificates_get_nothing_at_all(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    site = Site(tmp_path)
    ca_c = make_cert(certs, "agency C CA", ca=True)
    other_ca = make_cert(certs, "someone else's CA", ca=True)
    impostor_c = make_cert(certs, "not C", issuer=other_ca)  # C's endpoint, wrong CA
    registered_d = make_cert(certs, "agency D receiver")
    impostor_d = make_cert(certs, "not D")  # D's endpoint, not the pinned certificate
    wrong_c, wrong_d = TlsAgency(impostor_c, site.server_ca), TlsAgency(impostor_d, site.server_ca)
    async with trio.open_nursery() as agencies:
        port_c, port_d = await agencies.start(wrong_c.serve), await agencies.start(wrong_d.serve)
        c = site.agency("AGENCY-C", tls_endpoint(port_c, ca=ca_c))
        d = site.agency("AGENCY-D", tls_endpoint(port_d, fingerprint=registered_d.fingerprint))
        w_c, w_d = site.warrant(c, "CASE-C-0003"), site.warrant(d, "CASE-D-0004")
        async with site.server() as server:
            for n in range(20):
                await server.ingest(w_c.handle, "cmCC", cc_pdu("CASE-C-0003", n=n))
                await server.ingest(w_d.handle, "cmCC", cc_pdu("CASE-D-0004", n=n))
            workers = server.delivery.workers
            # Refused more than once: the server keeps retrying, and keeps refusing.
            await wait_until(lambda: all(w.refused >= 2 for w in workers))
            # Between two refusals a worker is `connecting` again (its retry): never anything
            # that delivered, and its last error stays the refusal.
            assert {r.state for r in server.delivery_rows()} <= {"refused", "connecting"}
            errors = {r.last_error for r in server.delivery_rows()}
            assert {(e or "").partition(":")[0] for e in errors} == {"certificate refused"}
            assert {r.acknowledged for r in server.delivery_rows()} == {0}

            # Retrieval with a certificate of no registered agency: refused in the handshake.
            tracker = SequenceTracker()
            tracker.add(19)
            cc_d = P.StreamId(w_d.handle, P.StreamKind.CMCC)
            stranger = await retrieve(
                site.retrieval_address(server), impostor_c, site.server_ca, {cc_d: tracker}, [cc_d]
            )
            assert stranger.closed_by_server and stranger.envelopes == []
            assert server.retrieval.refused >= 1
        agencies.cancel_scope.cancel()
    for agency in (wrong_c, wrong_d):
        assert agency.plaintext_bytes == 0 and agency.stored == {}


async def test_a_self_signed_receiver_registered_as_its_own_ca(tmp_path: Path) -> None:
    """``agency add --tls ... --ca receiver.pem``: live delivery and retrieval both accept it."""
    site = Site(tmp_path)
    cert = make_cert(tmp_path / "certs", "self-signed receiver")
    agency = TlsAgency(cert, site.server_ca)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(agency.serve)
        handle = site.agency("AGENCY-S", tls_endpoint(port, ca=cert))
        warrant = site.warrant(handle)
        sid = P.StreamId(warrant.handle, P.StreamKind.CMCC)
        async with site.server() as server:
            for n in range(10):
                await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n))
            await wait_until(lambda: len(agency.stored.get(sid, ())) == 10)
            tracker = SequenceTracker()
            tracker.add(9)
            fetched = await retrieve(
                site.retrieval_address(server), cert, site.server_ca, {sid: tracker}, [sid]
            )
        nursery.cancel_scope.cancel()
    assert not fetched.closed_by_server
    assert [e.sequence_number for e in fetched.envelopes] == list(range(9))
