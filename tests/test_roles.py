"""Each TLS party trying to be another, over real loopback TLS; refusals counted, not logged each.

The parties: a tap (credentials from ``TapAuthority.issue_tap``, as
``mediate tap register`` makes them), the mediation server (its identity
from the server CA), and agency receivers. Before the CAs were split, the
tap CA also issued the server's identity, so an agency trusting it took a
tap for the server and stored what it sent.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from delivery_agency import TlsAgency, free_port, retrieve
from delivery_support import Cert, Site, cc_pdu, make_cert, tls_endpoint
from delivery_support import wait_until as wait_for
from test_lea_serverside import ServerConnection, connect_out
from test_lea_support import (
    CMCC,
    HANDLE,
    Pki,
    Receiver,
    config,
    make_pki,
    start,
    tls_config,
    wait_until,
)
from test_lea_tls import attempt, envelopes
from test_pki import old_style_server
from test_warrants_support import Carrier

from mediation import pdu as P
from mediation.cli.main import main
from mediation.cli.status import _summary as status_summary
from mediation.errors import UsageError
from mediation.lea.retrieve import ConnectError, connect
from mediation.lea.tls import ServerCheck, TrustSettings, live_server_context
from mediation.lea.tls import retrieval_client_context as client_context
from mediation.pki import Role, RoleRefused, check_role, fingerprint, fingerprint_pem, issued_by
from mediation.protocol import SequenceTracker, StreamSender
from mediation.refusals import BUSY, MAX_CONNECTIONS
from mediation.server.tls import check_tap_peer, ensure_identity
from mediation.warrants.authority import ServerAuthority, TapAuthority
from mediation.warrants.keys import RegistryKey

TAP_AS_SERVER = "a mediation-tap certificate, not mediation-server"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# The agency's receiver ------------------------------------------------------------------


async def test_a_tap_posing_as_the_server_is_refused_and_nothing_stored(
    tmp_path: Path, pki: Pki
) -> None:
    out = tmp_path / "intercepts"
    tap = (pki.tap_cert, pki.tap_key)
    # The old instructions: trust ca.pem, the CA that also signs taps. OpenSSL
    # lets the tap through; the role check must not.
    old_trust = pki.trust(server_ca=pki.tap_ca)
    misled = config(
        out / "misled",
        tls=("127.0.0.1", 0),
        tls_context=live_server_context(old_trust),
        server_check=ServerCheck((certificate(pki.tap_ca),), None),
    )
    async with trio.open_nursery() as nursery:
        right = await start(nursery, Receiver(tls_config(out / "right", pki)))
        wrong = await start(nursery, Receiver(misled))
        await attempt(right.bound.tls[1], pki.server_client_context(identity=tap))
        await attempt(wrong.bound.tls[1], pki.server_client_context(identity=tap))
        for running in (right, wrong):
            counters = running.receiver.state.counters
            await wait_until(lambda c=counters: c.refused_connections == 1, "the tap refused")
        assert wrong.receiver.state.counters.refused_reasons == {TAP_AS_SERVER: 1}

        # The genuine server still delivers.
        sender = StreamSender({CMCC: 0})
        stream = await connect_out(right.bound.tls[1], pki.server_client_context())
        sender.resume(trio.current_time())
        connection = ServerConnection(sender, stream)
        nursery.start_soon(connection.run)
        await connection.write(envelopes(sender, CMCC, 0, 2))
        await connection.wait_acked(CMCC, 3)
        await right.stop()
        await wrong.stop()
        nursery.cancel_scope.cancel()
    assert not (out / "misled").exists() or list((out / "misled").iterdir()) == []
    assert (out / "right" / HANDLE / "cmcc.raw").stat().st_size > 0


def test_the_tap_ca_is_refused_as_the_server_ca(tmp_path: Path, pki: Pki, capsys) -> None:
    with pytest.raises(UsageError, match=r"--server-ca: .* mediation-tap-ca certificate"):
        pki.trust(server_ca=pki.tap_ca).server_check()
    options = ["--cert", str(pki.agency_cert), "--key", str(pki.agency_key)]
    options += ["--server-ca", str(pki.tap_ca), "--out", str(tmp_path / "o")]
    code = main(["receive", "--tls", "127.0.0.1:0", *options])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mediate: error: --server-ca: ")
    assert "mediate server-ca" in err


async def _serve_once(identity: tuple[Path, Path], pki: Pki, nursery: trio.Nursery) -> int:
    """A retrieval listener presenting ``identity``: only the handshake matters here."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def handle(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, pki.server_listen_context(identity), server_side=True)
        try:
            await stream.do_handshake()
            await stream.receive_some(1)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    nursery.start_soon(trio.serve_listeners, handle, listeners)
    return listeners[0].socket.getsockname()[1]


@pytest.mark.parametrize("who", ["tap", "agency"])
async def test_retrieval_refuses_a_pinned_certificate_that_is_not_the_server(
    pki: Pki, who: str
) -> None:
    """Even pinned, a certificate must be the server's role to be talked to as the server."""
    cert, key = (pki.tap_cert, pki.tap_key) if who == "tap" else (pki.agency_cert, pki.agency_key)

    def pinned_to(path: Path) -> tuple[ssl.SSLContext, ServerCheck]:
        pin = fingerprint_pem(path.read_text())
        trust = TrustSettings(pki.agency_cert, pki.agency_key, None, pin)
        return client_context(trust), trust.server_check()

    async with trio.open_nursery() as nursery:
        port = await _serve_once((cert, key), pki, nursery)
        with pytest.raises(ConnectError, match=r"server refused: .*not mediation-server"):
            await connect(("127.0.0.1", port), *pinned_to(cert), 5.0)
        # The genuine server, pinned the same way, passes.
        port = await _serve_once((pki.server_cert, pki.server_key), pki, nursery)
        stream = await connect(("127.0.0.1", port), *pinned_to(pki.server_cert), 5.0)
        await trio.aclose_forcefully(stream)
        nursery.cancel_scope.cancel()


async def test_a_burst_of_refused_connections_is_counted_not_logged_each(
    tmp_path: Path, pki: Pki, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="mediation.lea")
    async with trio.open_nursery() as nursery:
        running = await start(nursery, Receiver(tls_config(tmp_path / "out", pki)))
        counters = running.receiver.state.counters
        for _ in range(200):  # bounded: connect and hang up before any handshake
            tcp = await trio.open_tcp_stream("127.0.0.1", running.bound.tls[1])
            await tcp.aclose()
        await wait_until(lambda: counters.refused_connections == 200, "200 refusals", 30)
        await running.stop()
        nursery.cancel_scope.cancel()
    assert sum(counters.refused_reasons.values()) == 200
    lines = [r for r in caplog.records if "tls: refused" in r.getMessage()]
    assert 1 <= len(lines) <= 4, [r.getMessage() for r in lines]
    assert any("more" in r.getMessage() for r in lines)  # the summary, at the end of the run


# The mediation server ---------------------------------------------------------------------


def tap_cert(site: Site, directory: Path) -> Cert:
    """A tap's credentials, as ``mediate tap register`` issues them."""
    server_ca, now = site.server_ca.read_text(), dt.datetime.now(dt.UTC)
    creds = site.tap_authority.issue_tap("TAP-TEST-1", now, server_ca_pem=server_ca)
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "tap.pem", directory / "tap.key"
    cert.write_text(creds.certificate_pem)
    key.write_text(creds.private_key_pem)
    return Cert(creds.certificate_pem, creds.private_key_pem, cert, key)


def server_cert(site: Site) -> Cert:
    pem, key = site.data / "tls" / "server.pem", site.data / "tls" / "server.key"
    return Cert(pem.read_text(), key.read_text(), pem, key)


def ca_cert(path: Path) -> Cert:
    """A CA certificate as a registered agency CA (no key needed)."""
    return Cert(path.read_text(), "", path, path)


async def test_retrieval_refuses_a_tap_and_the_servers_own_certificate(tmp_path: Path) -> None:
    site = Site(tmp_path)
    tap = tap_cert(site, tmp_path / "tap")
    genuine_ca = make_cert(tmp_path / "certs", "agency G CA", ca=True)
    genuine = make_cert(tmp_path / "certs", "agency G receiver", issuer=genuine_ca)
    # Carrier mistakes: the agency's CA registered as the tap CA, or the server CA.
    by_tap_ca = site.agency("AGENCY-T", tls_endpoint(free_port(), ca=ca_cert(site.tap_ca)))
    by_server_ca = site.agency("AGENCY-S", tls_endpoint(free_port(), ca=ca_cert(site.server_ca)))
    good = site.agency("AGENCY-G", tls_endpoint(free_port(), ca=genuine_ca))
    agencies = (by_tap_ca, by_server_ca, good)
    warrants = {h: site.warrant(h, f"CASE-TEST-000{n}") for n, h in enumerate(agencies)}
    async with site.server() as server:
        for n, warrant in enumerate(warrants.values()):
            appended = await server.ingest(warrant.handle, "cmCC", cc_pdu(f"CASE-TEST-000{n}", n=0))
            assert appended is not None
            await appended.durable()  # retrieval serves durable records only
        address = site.retrieval_address(server)

        async def fetch(cert: Cert, agency: str):
            sid = P.StreamId(warrants[agency].handle, P.StreamKind.CMCC)
            tracker = SequenceTracker()
            tracker.add(1)  # 0 is missing
            return await retrieve(address, cert, site.server_ca, {sid: tracker}, [sid])

        as_tap = await fetch(tap, by_tap_ca)
        as_server = await fetch(server_cert(site), by_server_ca)
        assert as_tap.closed_by_server and as_tap.envelopes == []
        assert as_server.closed_by_server and as_server.envelopes == []
        assert server.retrieval.status()["refused_by_reason"] == {
            "a mediation-server certificate, not an agency's": 1,
            "a mediation-tap certificate, not an agency's": 1,
        }
        fetched = await fetch(genuine, good)  # the genuine agency still retrieves
        assert [e.sequence_number for e in fetched.envelopes] == [0]


async def test_retrieval_counts_an_agency_asking_for_another_agencys_stream(
    tmp_path: Path,
) -> None:
    site = Site(tmp_path)
    certs = {n: make_cert(tmp_path / "certs", f"agency {n} receiver") for n in "AB"}
    handles = {
        n: site.agency(f"AGENCY-{n}", tls_endpoint(free_port(), ca=c)) for n, c in certs.items()
    }
    warrant = site.warrant(handles["A"], "CASE-TEST-0001")
    async with site.server() as server:
        await server.ingest(warrant.handle, "cmCC", cc_pdu("CASE-TEST-0001", n=0))
        sid = P.StreamId(warrant.handle, P.StreamKind.CMCC)
        tracker = SequenceTracker()
        tracker.add(1)  # 0 is missing
        address = site.retrieval_address(server)
        got = await retrieve(address, certs["B"], site.server_ca, {sid: tracker}, [sid])
        assert got.closed_by_server and got.envelopes == []
        # Authenticated, then refused: counted like a refused certificate.
        await wait_for(lambda: server.retrieval.refused == 1)
        assert server.retrieval.status()["refused_by_reason"] == {"protocol error": 1}


async def test_retrieval_refuses_connections_past_the_limit_as_busy(tmp_path: Path) -> None:
    """Idle connections hold a slot each (and OpenSSL's buffers): at most 64, the rest busy."""
    site = Site(tmp_path)
    cert = make_cert(tmp_path / "certs", "agency G receiver")
    handle = site.agency("AGENCY-G", tls_endpoint(free_port(), ca=cert))
    warrant = site.warrant(handle, "CASE-TEST-0001")
    extra = 5
    async with site.server() as server:
        await server.ingest(warrant.handle, "cmCC", cc_pdu("CASE-TEST-0001", n=0))
        address = site.retrieval_address(server)
        idle = [await trio.open_tcp_stream(*address) for _ in range(MAX_CONNECTIONS + extra)]
        await wait_for(lambda: server.retrieval.refused == extra)
        assert server.retrieval.status()["refused_by_reason"] == {BUSY: extra}
        for stream in idle:
            await stream.aclose()
        sid = P.StreamId(warrant.handle, P.StreamKind.CMCC)
        tracker = SequenceTracker()
        tracker.add(1)  # 0 is missing
        fetched = await retrieve(address, cert, site.server_ca, {sid: tracker}, [sid])
        assert [e.sequence_number for e in fetched.envelopes] == [0]  # slots came back


async def test_delivery_refuses_a_tap_posing_as_an_agency_receiver(tmp_path: Path) -> None:
    site = Site(tmp_path)
    tap = tap_cert(site, tmp_path / "tap")
    impostor = TlsAgency(tap, site.server_ca)
    async with trio.open_nursery() as agencies:
        port = await agencies.start(impostor.serve)
        handle = site.agency("AGENCY-P", tls_endpoint(port, fingerprint=tap.fingerprint))
        warrant = site.warrant(handle, "CASE-TEST-0009")
        async with site.server() as server:
            await server.ingest(warrant.handle, "cmCC", cc_pdu("CASE-TEST-0009", n=0))
            await wait_for(lambda: {r.state for r in server.delivery_rows()} == {"refused"})
            assert {r.last_error for r in server.delivery_rows()} == {
                "certificate refused: a mediation-tap certificate, not an agency's"
            }
        agencies.cancel_scope.cancel()
    assert impostor.stored == {} and impostor.plaintext_bytes == 0


async def test_retrieval_counts_a_burst_of_refusals_in_a_few_log_lines(
    tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="mediation.server.retrieval")
    site = Site(tmp_path)
    async with site.server() as server:
        host, port = site.retrieval_address(server)
        for _ in range(200):  # bounded: connect and hang up before any handshake
            tcp = await trio.open_tcp_stream(host, port)
            await tcp.aclose()
        await wait_for(lambda: server.retrieval.refused == 200, 30)
        status = server.retrieval.status()
    assert sum(status["refused_by_reason"].values()) == 200
    lines = [r for r in caplog.records if "client refused" in r.getMessage()]
    assert 1 <= len(lines) <= 3, [r.getMessage() for r in lines]


# Data directories from before the split ---------------------------------------------------


def test_an_old_identity_is_reissued_by_a_new_server_ca_once(tmp_path: Path, caplog) -> None:
    data, key, now = tmp_path / "data", RegistryKey.generate(), dt.datetime.now(dt.UTC)
    tap_ca = TapAuthority.create(data / "ca", key, now)
    (data / "tls").mkdir(parents=True)
    old = old_style_server(tap_ca)  # what the old `mediate serve` issued, by the tap CA
    (data / "tls" / "server.pem").write_bytes(old.public_bytes(Encoding.PEM))
    (data / "tls" / "server.key").write_text("old key")
    caplog.set_level(logging.INFO, logger="mediation.server.tls")

    files = ensure_identity(data, key, (), now)
    server_ca = ServerAuthority.load(data / "ca", key).certificate
    new = certificate(files.certificate)
    assert issued_by(new, server_ca) and not issued_by(new, tap_ca.certificate)
    check_role(new.public_bytes(Encoding.DER), Role.SERVER, [server_ca])
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 2
    assert "created the server CA" in said[0] and "not issued by the server CA" in said[1]
    assert files.own_cas == (tap_ca.certificate, server_ca)

    caplog.clear()
    again = ensure_identity(data, key, (), now)  # the next start: nothing to do, nothing said
    assert fingerprint(certificate(again.certificate)) == fingerprint(new)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_mediate_server_ca_prints_it_and_makes_it_in_an_old_data_directory(
    tmp_path: Path, monkeypatch
) -> None:
    carrier = Carrier(tmp_path, monkeypatch)
    made = carrier.ok("init")
    assert "server CA: " in made and "mediate server-ca" in made
    server_ca = carrier.data / "ca" / "server-ca.pem"
    run = carrier("server-ca")
    assert run.code == 0 and run.out == server_ca.read_text()
    assert f"sha256: {fingerprint_pem(run.out)}" in run.err
    assert run.out != (carrier.data / "ca" / "ca.pem").read_text()

    server_ca.unlink()  # a data directory from before the server CA
    (carrier.data / "ca" / "server-ca.key").unlink()
    run = carrier("server-ca")
    assert run.code == 0 and run.out == server_ca.read_text()
    assert "created the server CA" in run.err and "restart `mediate serve`" in run.err


def test_the_tap_listener_check_takes_only_this_servers_taps(tmp_path: Path, pki: Pki) -> None:
    data, key, now = tmp_path / "data", RegistryKey.generate(), dt.datetime.now(dt.UTC)
    tap_ca = TapAuthority.create(data / "ca", key, now)
    identity = ensure_identity(data, key, (), now)
    server_ca = (data / "ca" / "server-ca.pem").read_text()
    tap = tap_ca.issue_tap("TAP-TEST-2", now, server_ca_pem=server_ca)
    accepted = check_tap_peer(certificate_der(tap.certificate_pem), identity)
    assert fingerprint(accepted) == tap.fingerprint
    others = {
        "a mediation-server certificate, not mediation-tap": identity.certificate.read_text(),
        "no role marked, not mediation-tap": pki.agency_cert.read_text(),
        "not issued by the mediation-tap CA": pki.tap_cert.read_text(),  # another carrier's tap
    }
    for reason, pem in others.items():
        with pytest.raises(RoleRefused, match=reason):
            check_tap_peer(certificate_der(pem), identity)
    with pytest.raises(RoleRefused, match="no certificate presented"):
        check_tap_peer(None, identity)


def certificate_der(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)


def test_mediate_status_shows_retrieval_refusals_by_reason() -> None:
    retrieval = {
        "listening": "127.0.0.1:37001",
        "error": None,
        "connections": 2,
        "refused": 201,
        "refused_by_reason": {"no acceptable certificate": 200, TAP_AS_SERVER: 1},
    }
    [line] = status_summary({"pid": 1, "retrieval": retrieval})[1:]
    assert line == (
        "retrieval: 127.0.0.1:37001; connections 2, refused 201 "
        f"(no acceptable certificate 200, {TAP_AS_SERVER} 1)"
    )


@pytest.mark.parametrize("own", ["ca.pem", "server-ca.pem"])
def test_the_carriers_own_cas_are_refused_as_an_agencys(tmp_path: Path, monkeypatch, own) -> None:
    carrier = Carrier(tmp_path, monkeypatch)
    carrier.ok("init")
    path = carrier.data / "ca" / own
    run = carrier("agency", "add", "AGENCY-TEST-9", "--tls", "203.0.113.5:6543", "--ca", str(path))
    assert run.code == 2 and run.err.startswith("mediate: error: --ca: ")
    assert "certificate of the mediation server, not the agency's" in run.err
    assert "AGENCY-TEST-9" not in carrier.ok("agency", "list")
