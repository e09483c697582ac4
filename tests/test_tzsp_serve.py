"""TZSP into a real `mediate serve`: a router's mirrored frames, tapped by the server itself."""

from __future__ import annotations

import datetime as dt
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from taplink_support import SAMPLE, START, TARGET_MAC, notices, stored
from test_control_live import wait_for
from test_serve_process import Serve
from test_warrants_support import AGENCY, Carrier

from mediation.evidence.pcap import PcapReader
from mediation.pdu import StreamKind
from mediation.pdu.codec import decode_notice
from mediation.protocol.tzsp import encode_tzsp
from mediation.server.tap_gate import cc_payload
from mediation.tap.replay import replay_pcap
from mediation.warrants.access import KeyNeed, KeyOptions, open_registry
from mediation.warrants.keys import read_key_file
from mediation.warrants.model import CaseDetails, ContentLevel, Source, Target, TargetKind
from mediation.warrants.operations import add_warrant
from mediation.warrants.registry import load_snapshot

ROOT = Path(__file__).resolve().parents[1]
ROUTER = "127.0.0.1"  # the registered source; 127.0.0.2 is a stranger on the same loopback
CONFIG = (
    '[retrieval]\nlisten = ""\n[status]\nlog_interval = 30\n[taps]\ntls_listen = ""\n'
    '[tzsp]\nlisten = "127.0.0.1:0"\nidle_after = 1.0\n'
)


@pytest.fixture
def carrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Carrier:
    carrier = Carrier(tmp_path, monkeypatch)
    carrier.setup()
    return carrier


def add_tzsp_warrant(
    carrier: Carrier, case_id: str, target: Target, content: ContentLevel, router: str = ROUTER
) -> str:
    details = CaseDetails(case_id, (target,), (Source("tzsp", router),), "IAP-TEST")
    now = dt.datetime.now(dt.UTC)
    with open_registry(carrier.data, KeyOptions(str(carrier.key)), KeyNeed.REQUIRED) as registry:
        return add_warrant(
            registry, AGENCY, details, content, START, now + dt.timedelta(days=1), now
        ).handle


def serve(carrier: Carrier) -> tuple[Serve, tuple[str, int]]:
    config = carrier.tmp / "mediation.toml"
    config.write_text(CONFIG)
    server = Serve(carrier, config)

    def listening() -> str | None:
        return ((server.status() or {}).get("tzsp") or {}).get("listening")

    host, port = wait_for(listening, "the TZSP listener").rsplit(":", 1)  # type: ignore[union-attr]
    return server, (host, int(port))


def stop(server: Serve) -> None:
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0, server.log.read_text()


def tzsp_status(server: Serve) -> dict:
    return (server.status() or {})["tzsp"]


def want_from_sample(carrier: Carrier, handle: str) -> dict[StreamKind, list[bytes]]:
    """What the tap core makes of the sample for this warrant (times and ids aside)."""
    key = read_key_file(carrier.key)
    [warrant] = [w for w in load_snapshot(carrier.data, key).warrants if w.handle == handle]
    out: dict[StreamKind, list[bytes]] = {StreamKind.CMII: [], StreamKind.CMCC: []}
    for item in replay_pcap(SAMPLE, [warrant]):
        out[StreamKind(item.kind)].append(item.der)
    return out


def send_sample(address: tuple[str, int]) -> int:
    """The sample through fixtures/tzsp_send.py, as a MikroTik router sends it."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "fixtures" / "tzsp_send.py"), str(SAMPLE), address[0],
         "--port", str(address[1]), "--interval", "0.0005"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return int(done.stdout)


def test_router_frames_reach_exactly_the_targets_warrants(carrier: Carrier) -> None:
    full = add_tzsp_warrant(
        carrier, "CASE-TEST-0001", Target(TargetKind.MAC, TARGET_MAC), ContentLevel.FULL
    )
    with PcapReader.open(SAMPLE) as reader:
        frames = [p.data for p in reader]
    server, address = serve(carrier)
    try:
        sent = send_sample(address)
        assert sent == len(frames)
        wait_for(lambda: tzsp_status(server)["frames"] == sent or None, "every frame taken")
        want = want_from_sample(carrier, full)
        wait_for(
            lambda: tzsp_status(server)["pdus"]["cmCC"] == len(want[StreamKind.CMCC]) or None,
            "the target's content built",
        )
        status = tzsp_status(server)
        assert status["refused_datagrams"] == {} and status["refused_pdus"] == {}
        assert status["feeding"] == 1 and status["socket_drops"] == 0
        # Silent for idle_after (1 s): the source stopped feeding, and the agency is told.
        wait_for(lambda: tzsp_status(server)["feeding"] == 0 or None, "the source idle")
        stop(server)  # SIGTERM: everything appended is flushed
    finally:
        server.stop()
    got = stored(carrier, full)
    # Exactly the target's packets, in order: the same CC payloads as a tap builds.
    assert [cc_payload(d) for d in got[StreamKind.CMCC]] == [
        cc_payload(d) for d in want[StreamKind.CMCC]
    ]
    assert len(got[StreamKind.CMII]) == len(want[StreamKind.CMII]) > 20
    told = [decode_notice(der) for der in notices(carrier, full)]
    told = [n for n in told if not n.event.value.startswith("clock")]  # the host's own clock
    events = [(n.event.value, n.source) for n in told]
    assert events == [
        ("warrantActive", None),
        ("tapRestored", "tzsp:127.0.0.1"),
        ("tapLost", "tzsp:127.0.0.1"),
    ]
    assert "cannot be counted" in (told[1].detail or "")


def test_one_router_feeds_several_warrants_each_at_its_level(carrier: Carrier) -> None:
    full = add_tzsp_warrant(
        carrier, "CASE-TEST-0001", Target(TargetKind.MAC, TARGET_MAC), ContentLevel.FULL
    )
    headers = add_tzsp_warrant(
        carrier, "CASE-TEST-0002", Target(TargetKind.MAC, TARGET_MAC), ContentLevel.HEADERS
    )
    elsewhere = add_tzsp_warrant(
        carrier, "CASE-TEST-0003", Target(TargetKind.MAC, TARGET_MAC), ContentLevel.FULL,
        router="192.0.2.1",
    )  # fmt: skip
    server, address = serve(carrier)
    try:
        assert tzsp_status(server)["sources"] == 2
        sent = send_sample(address)
        want = want_from_sample(carrier, full)
        wait_for(lambda: tzsp_status(server)["frames"] == sent or None, "every frame taken")
        cc = len(want[StreamKind.CMCC])
        wait_for(lambda: tzsp_status(server)["pdus"]["cmCC"] == cc or None, "content built")
    finally:
        server.stop()
    got_full, got_headers = stored(carrier, full), stored(carrier, headers)
    assert len(got_full[StreamKind.CMCC]) == cc
    assert len(got_headers[StreamKind.CMII]) == len(got_full[StreamKind.CMII])
    assert got_headers[StreamKind.CMCC] == []
    # A warrant fed by another router gets nothing from this one.
    assert stored(carrier, elsewhere) == {StreamKind.CMII: [], StreamKind.CMCC: []}


def test_strangers_and_malformed_datagrams_are_counted_never_stored(carrier: Carrier) -> None:
    handle = add_tzsp_warrant(
        carrier, "CASE-TEST-0001", Target(TargetKind.MAC, TARGET_MAC), ContentLevel.FULL
    )
    with PcapReader.open(SAMPLE) as reader:
        frame = next(p.data for p in reader if p.data[6:12] == bytes.fromhex("02005e005301"))
    server, address = serve(carrier)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.bind(("127.0.0.2", 0))
            for _ in range(5):
                stranger.sendto(encode_tzsp(frame), address)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as router:
            router.sendto(b"\x01\x00", address)  # truncated
            router.sendto(b"\x02\x00\x00\x01\x01" + frame, address)  # version 2
            router.sendto(encode_tzsp(frame, encapsulation=18), address)  # 802.11
            router.sendto(b"\x01\x00\x00\x01\x05\xff" + frame[:40], address)  # tag overruns
            router.sendto(encode_tzsp(frame) + bytes(20000), address)  # over max_datagram
        expected = {
            "unregistered-sender": 5, "truncated": 1, "bad-version": 1,
            "unknown-encapsulation": 1,
        }  # fmt: skip

        def counted() -> dict | None:
            status = tzsp_status(server)
            refused = status["refused_datagrams"]
            done = status["oversize"] == 1 and sum(refused.values()) == 9
            return status if done else None

        status = wait_for(counted, "every datagram counted")
        assert status["datagrams"] == 10 and status["frames"] == 0
        refused = status["refused_datagrams"]
        assert {k: refused.get(k) for k in expected} == expected
        assert refused["tag-overrun"] == 1 and status["feeding"] == 0
        assert server.logged("tzsp: refused 127.0.0.2: unregistered-sender")
        # What the kernel granted is said (or that it was capped, naming the sysctl).
        assert server.logged("tzsp: receive buffer")
        shown = subprocess.run(
            [sys.executable, "-m", "mediation", "status"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        assert "tzsp: udp 127.0.0.1:" in shown and "datagrams 10, frames 0" in shown
        assert (
            "tzsp refused: datagrams: oversize 1, bad-version 1, tag-overrun 1, truncated 1"
            in shown
        )
    finally:
        server.stop()
    assert stored(carrier, handle) == {StreamKind.CMII: [], StreamKind.CMCC: []}
    events = [decode_notice(d).event.value for d in notices(carrier, handle)]
    assert [e for e in events if not e.startswith("clock")] == ["warrantActive"]
