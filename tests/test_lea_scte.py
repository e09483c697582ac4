"""`mediate receive --format scte`: SCTE CC datagrams from a real server, end to end.

The server (in this trio run, as in test_delivery_scte) delivers CC as SCTE
datagrams to a relay that drops one; a real `mediate receive` subprocess
takes them. Proves: the pcap holds exactly the packets sent but the dropped
one (read back by tcpdump and by our reader), the dropped one is a gap in
gaps.json, forged datagrams are refused and counted, hash files check.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import trio
from delivery_support import HOST, T0, TEST_UDP_KEY, Site, make_cert, tls_endpoint
from test_lea_support import config, start, wait_until
from test_protocol_scte import udp_in_ip

from mediation import pdu as P
from mediation.evidence.pcap import PcapReader
from mediation.lea.outputs import CaseOutputs
from mediation.lea.receiver import Receiver
from mediation.lea.scte import ScteDelivery
from mediation.lea.state import ReceiverState
from mediation.lea.tls import TrustSettings, retrieval_client_context
from mediation.lea.verify_scte import check_scte
from mediation.log.keys import public_key_path
from mediation.protocol import scte
from mediation.warrants.model import Endpoint, Stream
from mediation.warrants.udpkey import write_key_file

LAUNCH = "import sys; from mediation.cli import main as m; sys.exit(m.main(sys.argv[1:]))"
SENT = 12
DROPPED = 5  # the relay drops the datagram of this sequence number


def cc_ip(n: int) -> bytes:
    """DER of a CC APDU whose payload is a real IPv4/UDP packet numbered ``n``."""
    info = P.CorrelationInfo(P.ContentIdentifier.correlation(b"\x01"), "CASE-TEST-0001", "IAP-1")
    header = P.CCDeliveryHeader(info, T0, P.PacketDirection.TO_SUBJECT, 9)
    return P.encode(P.CCApdu(payload=udp_in_ip(b"packet %d" % n), header=header))


async def _line(stream, contains: str) -> str:
    """The first line of a subprocess pipe holding ``contains`` (read in a thread)."""
    with trio.fail_after(20):
        while True:
            line = await trio.to_thread.run_sync(stream.readline)
            assert line, f"output ended before {contains!r}"
            if contains in line:
                return line


async def test_scte_from_a_real_server_to_a_real_receiver(tmp_path: Path) -> None:
    site = Site(tmp_path)
    relay = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await relay.bind((HOST, 0))
    endpoint = Endpoint(
        "udp", HOST, relay.getsockname()[1], (Stream.CMCC,),
        udp_key_id=TEST_UDP_KEY.key_id, udp_key=TEST_UDP_KEY.key, udp_format="scte",
    )  # fmt: skip
    warrant = site.warrant(site.agency("AGENCY-TEST-SCTE", endpoint), case_id="CASE-TEST-0001")
    key_file = tmp_path / "udp-key.toml"
    write_key_file(key_file, "a-1b2c3d", TEST_UDP_KEY.key_id, TEST_UDP_KEY.key, "--out")
    out = tmp_path / "intercepts"
    argv = ["receive", "--udp", f"{HOST}:0", "--format", "scte", "--handle", warrant.handle,
            "--udp-key", str(key_file), "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        port = int((await _line(proc.stderr, "listening: udp")).rsplit(":", 1)[1])
        target = (HOST, port)
        key = scte.scte_key(TEST_UDP_KEY.key)
        ccc = scte.ccc_id(key, warrant.handle)
        # Forgeries first: the genuine datagrams after them on the same socket prove them read.
        genuine = scte.frame(key, ccc, SENT, T0, udp_in_ip(b"forged"))
        forged = genuine[:-1] + bytes([genuine[-1] ^ 1])  # right CCC id, wrong tag
        await relay.sendto(forged, target)
        await relay.sendto(b"\x00" * 64, target)  # a CCC id of no warrant expected
        await relay.sendto(genuine[: scte.HEADER], target)  # too short
        sent = [cc_ip(n) for n in range(SENT)]
        async with site.server() as server:
            for der in sent:
                assert await server.ingest(warrant.handle, "cmCC", der)
            with trio.fail_after(20):
                for _ in range(SENT):
                    data = await relay.recv(65536)
                    if scte.open_datagram(key, data).sequence != DROPPED:
                        await relay.sendto(data, target)
        scte_file = out / warrant.handle / "cmcc.scte"
        with trio.fail_after(20):  # flushed within 0.5 s
            while _records(scte_file) < SENT - 1:
                await trio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = await trio.to_thread.run_sync(lambda: proc.communicate(timeout=20))
    finally:
        relay.close()
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "scte: tag does not verify 1" in stdout, stdout
    assert "scte: unknown CCC id 1" in stdout and "scte: too short 1" in stdout
    assert stderr.count("scte: datagram refused") == 3  # one line per reason
    kept = [P.decode(der).payload for n, der in enumerate(sent) if n != DROPPED]
    frames = [record.data for record in PcapReader.open(out / warrant.handle / "cmcc.pcap")]
    assert frames == kept
    assert all(record.time == T0 for record in PcapReader.open(out / warrant.handle / "cmcc.pcap"))
    report = json.loads((out / warrant.handle / "gaps.json").read_text())
    stream = report["streams"]["cmCC"]
    assert stream["missing"] == [[DROPPED, DROPPED]] and stream["held"] == SENT - 1
    assert stream["transports"] == ["scte"]
    check = subprocess.run(["sha256sum", "-c"], input=stdout, capture_output=True, text=True)
    assert check.returncode == 0 and "cmcc.scte: OK" in check.stdout, check.stdout + check.stderr
    if shutil.which("tcpdump"):
        done = subprocess.run(
            ["tcpdump", "-nn", "-r", str(out / warrant.handle / "cmcc.pcap")],
            capture_output=True,
            text=True,
        )
        lines = done.stdout.splitlines()
        assert len(lines) == SENT - 1 and all(
            "198.51.100.1.50000 > 203.0.113.5" in x for x in lines
        )
    # `receive verify`: no checkpoints in SCTE, but every kept datagram's tag is checked again.
    verify = [sys.executable, "-c", LAUNCH, "receive", "verify", str(out),
              "--log-key", str(public_key_path(site.data)), "--udp-key", str(key_file)]  # fmt: skip
    done = subprocess.run(verify, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    line = (
        f"{warrant.handle}/cmcc.scte: {SENT - 1} SCTE datagrams 0..{SENT - 1}, every tag verifies"
    )
    assert line in done.stdout, done.stdout
    edited = bytearray(scte_file.read_bytes())
    edited[4 + scte.HEADER + 30] ^= 1  # one octet of the first packet
    scte_file.write_bytes(bytes(edited))
    done = subprocess.run(verify, capture_output=True, text=True)
    assert done.returncode == 1 and "record at octet 0: tag does not verify" in done.stdout
    scte_file.write_bytes(bytes(edited[: -scte.TAG]))
    # A restart reads back what is held (neither stored nor fetched again).
    case = CaseOutputs(out, warrant.handle)
    held = case.resume()[P.StreamKind.CMCC]
    assert held == [n for n in range(SENT) if n != DROPPED][:-1]  # the torn last one cut


def _records(path: Path) -> int:
    """Whole length-prefixed records in ``cmcc.scte`` so far (read only: it is being written)."""
    data = path.read_bytes() if path.exists() else b""
    count = offset = 0
    while offset + 4 <= len(data):
        offset += 4 + int.from_bytes(data[offset : offset + 4], "big")
        count += offset <= len(data)
    return count


async def test_duplicates_are_counted_not_stored_and_a_torn_tail_is_cut(tmp_path: Path) -> None:
    state = ReceiverState(tmp_path)
    key = scte.scte_key(TEST_UDP_KEY.key)
    handle = "w-5c7e01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        delivery = ScteDelivery(sock, state, [TEST_UDP_KEY], frozenset({handle, "w-000001"}))
        ccc = scte.ccc_id(key, handle)
        datagrams = [scte.frame(key, ccc, n, T0, udp_in_ip(b"%d" % n)) for n in (0, 1, 3)]
        for data in [*datagrams, datagrams[1]]:
            delivery.receive(data, ("192.0.2.1", 5000), 0.0)
        stream = P.StreamId(handle, P.StreamKind.CMCC)
        stats = state.stream_stats(stream)
        assert (stats.received, stats.duplicates, stats.gaps_opened) == (3, 1, 1)
        assert state.tracker(stream).missing(10) == [(2, 2)]
        late = scte.frame(key, ccc, 2, T0, udp_in_ip(b"2"))
        delivery.receive(late, ("192.0.2.1", 5000), 0.0)
    state.close(sort=True)  # --sort: the pcap in sequence order, from cmcc.scte
    pcap = [r.data for r in PcapReader.open(tmp_path / handle / "cmcc.pcap")]
    assert pcap == [udp_in_ip(b"%d" % n) for n in range(4)]
    check = subprocess.run(["sha256sum", "-c", "cmcc.pcap.sha256"], cwd=tmp_path / handle)
    assert check.returncode == 0
    datagrams.append(late)
    path = tmp_path / handle / "cmcc.scte"
    assert path.read_bytes() == b"".join(len(d).to_bytes(4, "big") + d for d in datagrams)
    with path.open("ab") as handle_file:  # a run killed half-way through a record
        handle_file.write(b"\x00\x00\x01\x00partial")
    torn = check_scte(tmp_path / handle, [TEST_UDP_KEY.key])
    assert torn is not None and torn.records == 4 and not torn.ok
    assert torn.fault == f"cmcc.scte: torn record at octet {sum(4 + len(d) for d in datagrams)}"
    case = CaseOutputs(tmp_path, handle)
    assert case.resume()[P.StreamKind.CMCC] == [0, 1, 3, 2]
    assert case.torn == {"cmcc.scte": 11}
    assert path.stat().st_size == sum(4 + len(d) for d in datagrams)


async def test_a_dropped_scte_datagram_is_fetched_by_retrieval(tmp_path: Path) -> None:
    """The SCTE trailer's sequence number is the log's: retrieval fills the gap as usual."""
    site = Site(tmp_path)
    cert = make_cert(tmp_path / "certs", "agency receiver")  # self-signed: its own CA
    relay = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await relay.bind((HOST, 0))
    endpoint = Endpoint(
        "udp", HOST, relay.getsockname()[1], (Stream.CMCC,),
        udp_key_id=TEST_UDP_KEY.key_id, udp_key=TEST_UDP_KEY.key, udp_format="scte",
    )  # fmt: skip
    agency = site.agency(
        "AGENCY-TEST-SCTE", endpoint, tls_endpoint(9, ca=cert, streams=(Stream.CMII,))
    )
    warrant = site.warrant(agency, case_id="CASE-TEST-0001")
    key = scte.scte_key(TEST_UDP_KEY.key)
    trust = TrustSettings(cert.cert_file, cert.key_file, site.server_ca, None)
    out = tmp_path / "intercepts"
    stream = P.StreamId(warrant.handle, P.StreamKind.CMCC)
    async with site.server() as server, trio.open_nursery() as nursery:
        options = {
            "udp": (HOST, 0),
            "udp_format": "scte",
            "udp_keys": (TEST_UDP_KEY,),
            "handles": frozenset({warrant.handle}),
            "retrieve_from": site.retrieval_address(server),
            "retrieval_context": retrieval_client_context(trust),
            "server_check": trust.server_check(),
            "sort": True,
        }
        running = await start(nursery, Receiver(config(out, **options)))
        for n in range(SENT):
            assert await server.ingest(warrant.handle, "cmCC", cc_ip(n))
        with trio.fail_after(20):
            for _ in range(SENT):
                data = await relay.recv(65536)
                if scte.open_datagram(key, data).sequence != DROPPED:
                    await relay.sendto(data, running.bound.udp)
        tracker = running.receiver.state.trackers
        await wait_until(
            lambda: stream in tracker and tracker[stream].received_count == SENT, "all"
        )
        await running.stop()
        nursery.cancel_scope.cancel()
    relay.close()
    report = json.loads((out / warrant.handle / "gaps.json").read_text())["streams"]["cmCC"]
    assert report["missing"] == [] and (report["received"], report["retrieved"]) == (SENT - 1, 1)
    assert report["transports"] == ["retrieval", "scte"]
    # The fetched record is an envelope in cmcc.raw; --sort puts every packet in order.
    pcap = [r.data for r in PcapReader.open(out / warrant.handle / "cmcc.pcap")]
    assert pcap == [P.decode(cc_ip(n)).payload for n in range(SENT)]
