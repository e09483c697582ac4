"""`mediate tap run -i IFACE` on a veth pair into a real `mediate serve`: the carrier's path."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from netns_support import veth_pair_or_skip
from taplink_support import (
    SAMPLE,
    add_tapped_warrant,
    expected,
    serve,
    stored,
    tap_command,
    tap_port,
)
from test_control_live import wait_for
from test_warrants_support import Carrier

from mediation.evidence.pcap import PcapReader
from mediation.pdu import StreamKind
from mediation.pdu.fast import decode_cc

pytestmark = pytest.mark.netns


@pytest.fixture
def carrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Carrier:
    carrier = Carrier(tmp_path, monkeypatch)
    carrier.setup()
    return carrier


@pytest.mark.parametrize("workers", [1, 2])
def test_live_tap_feeds_the_server_what_the_target_sent(carrier: Carrier, workers: int) -> None:
    handle = add_tapped_warrant(carrier)
    with PcapReader.open(SAMPLE) as reader:
        frames = [packet.data for packet in reader]
    want = expected(carrier, handle)
    total = len(want[StreamKind.CMII]) + len(want[StreamKind.CMCC])
    server = serve(carrier)
    errors = carrier.tmp / "tap.err"
    with veth_pair_or_skip("l") as pair, errors.open("w") as err:
        tap = subprocess.Popen(
            tap_command(carrier, tap_port(server), "-i", pair.capture, "--workers", str(workers)),
            env={**os.environ, **carrier.env},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            wait_for(lambda: "capturing on" in errors.read_text(), "the capture", 30)
            assert pair.send(frames) == len(frames)

            def accepted() -> int:
                return (server.status() or {}).get("ingest", {}).get("accepted", 0)

            wait_for(lambda: accepted() >= total, f"{total} PDUs in the log", 30)
            tap.send_signal(signal.SIGTERM)
            assert tap.wait(timeout=30) == 0, errors.read_text()
        finally:
            if tap.poll() is None:
                tap.kill()
            server.stop()
    got = stored(carrier, handle)
    assert len(got[StreamKind.CMII]) == len(want[StreamKind.CMII])
    # Capture times are the kernel's now, so compare what the content carries: the packets.
    got_cc = [decode_cc(d).payload for d in got[StreamKind.CMCC]]
    want_cc = [decode_cc(d).payload for d in want[StreamKind.CMCC]]
    if workers > 1:  # workers keep each conversation's order, not the order between them
        got_cc, want_cc = sorted(got_cc), sorted(want_cc)
    assert got_cc == want_cc
    if workers > 1:
        assert "2 workers" in errors.read_text()
