"""What a misconfigured or compromised tap cannot do: every PDU checked, refused, counted.

A rogue tap here is a client in the test speaking the tap link with a
registered tap's real credentials, so only the server's checks stand in
its way.
"""

from __future__ import annotations

import ipaddress
import signal
from pathlib import Path

import pytest
import trio
from taplink_support import SAMPLE, TAP, add_tapped_warrant, notices, serve, stored, tap_port
from test_control_live import wait_for
from test_warrants_support import AGENCY, Carrier

from mediation.evidence.pcap import PcapReader
from mediation.pdu import CompletenessEvent as E
from mediation.pdu import StreamKind
from mediation.pdu import taplink as T
from mediation.pdu.fast import decode_content
from mediation.protocol.taplink import TapLinkTap
from mediation.tap.builder import PDUBuilder
from mediation.tap.link import client_context
from mediation.tap.packet import parse_frame
from mediation.tap.targets import FROM_SUBJECT
from mediation.warrants.authority import read_bundle
from mediation.warrants.model import ContentLevel, Target, TargetKind

TARGET_IP = "192.0.2.10"  # the sample target's IPv4 address (fixtures/sample/sample.json)


@pytest.fixture
def carrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Carrier:
    carrier = Carrier(tmp_path, monkeypatch)
    carrier.setup()
    carrier.ok("tap", "register", "edge-2", "--out", str(tmp_path / "edge-2.tap"))
    return carrier


async def speak(carrier: Carrier, address: str, pdus: list[tuple[str, object, bytes]]) -> list:
    """Connect as edge-1, take the warrant set, send one batch; the messages received."""
    credentials = read_bundle(carrier.tmp / f"{TAP}.tap")
    host, port = address.rsplit(":", 1)
    tcp = await trio.open_tcp_stream(host, int(port))
    stream = trio.SSLStream(tcp, client_context(credentials), server_hostname=host)
    machine = TapLinkTap(T.TapHello(TAP, 1, 0), trio.current_time())
    received: list = []
    with trio.fail_after(10):
        await stream.send_all(machine.data_to_send())
        while not any(isinstance(m, T.WarrantSet) for m in received):
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # refused: the server closed without a word
                return received
            if not data:
                return received
            received += machine.receive_data(data, trio.current_time())
        machine.send_batch(1, T.encode_pdus(pdus), trio.current_time())  # type: ignore[arg-type]
        await stream.send_all(machine.data_to_send())
        while not any(isinstance(m, T.BatchAck) for m in received):
            received += machine.receive_data(await stream.receive_some(65536), trio.current_time())
    await stream.aclose()
    return received


def frames() -> list:
    with PcapReader.open(SAMPLE) as reader:
        return list(reader)


def test_a_tap_cannot_feed_a_bystander_or_another_taps_case(carrier: Carrier) -> None:
    ours = add_tapped_warrant(
        carrier, targets=(Target(TargetKind.ADDRESS, TARGET_IP),), content=ContentLevel.FULL
    )
    theirs = add_tapped_warrant(carrier, case_id="CASE-TEST-0002", tap="edge-2")
    packets = frames()
    target, bystander = packets[6], packets[4]  # the target's DNS query; a neighbour's
    builder = PDUBuilder("CASE-TEST-0001", "IAP-TEST", ContentLevel.FULL)
    good = builder.packet(target.data, parse_frame(target.data), FROM_SUBJECT, target.time)
    assert ipaddress.ip_address(TARGET_IP).packed not in (
        parse_frame(bystander.data).src_raw,
        parse_frame(bystander.data).dst_raw,
    )
    bad = builder.packet(bystander.data, parse_frame(bystander.data), FROM_SUBJECT, target.time)
    other = PDUBuilder("CASE-TEST-0002", "IAP-TEST", ContentLevel.FULL).packet(
        target.data, parse_frame(target.data), FROM_SUBJECT, target.time
    )
    batch = [(p.kind, p.time, p.der) for p in good]
    batch += [(bad[1].kind, bad[1].time, bad[1].der)]  # the bystander's content
    batch += [(p.kind, p.time, p.der) for p in other]  # a case this tap does not serve
    batch += [("cmII", target.time, b"\x30\x03\x02\x01\x00")]  # no case identity at all
    server = serve(carrier)
    try:
        received = trio.run(speak, carrier, tap_port(server), batch)
        status = server.status() or {}
        shown = carrier.ok("status")
    finally:
        server.stop()
    [warrants] = [m for m in received if isinstance(m, T.WarrantSet)]
    assert [w.handle for w in warrants.warrants] == [ours]  # edge-2's warrant never reaches it
    [ack] = [m for m in received if isinstance(m, T.BatchAck)]
    assert ack.accepted == 2
    assert dict(ack.refused) == {"not_target": 1, "not_served": 2, "malformed": 1}
    assert status["taps"]["refused_pdus"] == {"not_target": 1, "not_served": 2, "malformed": 1}
    assert "taps refused: PDUs: malformed 1, not_served 2, not_target 1;" in shown
    assert stored(carrier, ours) == {
        StreamKind.CMII: [good[0].der],
        StreamKind.CMCC: [good[1].der],
    }
    assert stored(carrier, theirs) == {StreamKind.CMII: [], StreamKind.CMCC: []}


def test_a_revoked_tap_is_refused_and_counted(carrier: Carrier) -> None:
    handle = add_tapped_warrant(carrier)
    carrier.ok("tap", "revoke", TAP)
    server = serve(carrier)
    try:
        received = trio.run(speak, carrier, tap_port(server), [])
        status = server.status() or {}
    finally:
        server.stop()
    assert received == []  # not even a hello: no warrant set, no case identity
    assert status["taps"]["refused_links"] == {"revoked tap": 1}
    assert status["taps_connected"] == []
    assert stored(carrier, handle) == {StreamKind.CMII: [], StreamKind.CMCC: []}


def test_add_says_which_connected_taps_accepted_the_warrant(carrier: Carrier) -> None:
    """`mediate add`'s "taps accepted" line: the taps that are sent the warrant, at once."""
    add_tapped_warrant(carrier)  # so that edge-1 has something to serve from the start
    server = serve(carrier)

    async def connected_then_add() -> tuple[str, list]:
        credentials = read_bundle(carrier.tmp / f"{TAP}.tap")
        host, port = tap_port(server).rsplit(":", 1)
        tcp = await trio.open_tcp_stream(host, int(port))
        context = client_context(credentials)
        stream = trio.SSLStream(tcp, context, server_hostname=host)
        machine = TapLinkTap(T.TapHello(TAP, 1, 0), trio.current_time())
        await stream.send_all(machine.data_to_send())
        sets: list = []
        with trio.fail_after(10):
            while not sets:
                data = await stream.receive_some(65536)
                sets += [
                    m
                    for m in machine.receive_data(data, trio.current_time())
                    if isinstance(m, T.WarrantSet)
                ]
            out = await trio.to_thread.run_sync(
                lambda: carrier.ok(
                    "add", "--case-id", "CASE-TEST-0009", "--agency", AGENCY,
                    "--target", TARGET_IP, "--content", "headers", "--tap", TAP,
                )
            )  # fmt: skip
            while len(sets) < 2:  # the new set follows without waiting for a poll
                data = await stream.receive_some(65536)
                sets += [
                    m
                    for m in machine.receive_data(data, trio.current_time())
                    if isinstance(m, T.WarrantSet)
                ]
        await stream.aclose()
        return out, sets

    try:
        out, sets = trio.run(connected_then_add)
    finally:
        server.stop()
    handle = out.split()[0]
    assert f"taps accepted: {TAP}" in out
    assert handle in [w.handle for w in sets[-1].warrants]


def test_revoking_a_connected_tap_cuts_its_link(carrier: Carrier) -> None:
    add_tapped_warrant(carrier)
    server = serve(carrier)

    async def connected_then_revoked() -> bool:
        credentials = read_bundle(carrier.tmp / f"{TAP}.tap")
        host, port = tap_port(server).rsplit(":", 1)
        tcp = await trio.open_tcp_stream(host, int(port))
        stream = trio.SSLStream(tcp, client_context(credentials), server_hostname=host)
        machine = TapLinkTap(T.TapHello(TAP, 1, 0), trio.current_time())
        await stream.send_all(machine.data_to_send())
        with trio.fail_after(10):
            while machine.last_stored is None:
                machine.receive_data(await stream.receive_some(65536), trio.current_time())
            await trio.to_thread.run_sync(lambda: carrier.ok("tap", "revoke", TAP))
            while True:  # the server ends the link: end of stream, or a broken one
                try:
                    if not await stream.receive_some(65536):
                        return True
                except trio.BrokenResourceError:
                    return True

    try:
        assert trio.run(connected_then_revoked)
        status = server.status() or {}
    finally:
        server.stop()
    assert status["taps_connected"] == []


def test_tap_lost_and_back_follow_the_link(carrier: Carrier) -> None:
    handle = add_tapped_warrant(carrier)
    server = serve(carrier)

    def connected() -> bool:
        return TAP in (server.status() or {}).get("taps_connected", [])

    try:
        for _ in range(2):  # connect, take the warrant set, hang up
            received = trio.run(speak, carrier, tap_port(server), [])
            assert any(isinstance(m, T.BatchAck) for m in received)
            wait_for(lambda: not connected(), "the link to be gone")
        server.proc.send_signal(signal.SIGTERM)  # a clean stop: the last notice is flushed
        server.proc.wait(timeout=30)
    finally:
        server.stop()
    events = [decode_content("notice", der).event for der in notices(carrier, handle)]
    link = [e for e in events if e in (E.TAP_LOST, E.TAP_RESTORED)]
    assert link == [E.TAP_LOST, E.TAP_RESTORED, E.TAP_LOST]
