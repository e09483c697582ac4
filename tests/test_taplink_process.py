"""The tap link end to end: `mediate tap run` into a real `mediate serve` process."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from delivery_agency import free_port
from taplink_support import (
    CONFIG,
    add_tapped_warrant,
    expected,
    long_capture,
    run_tap,
    serve,
    stored,
    tap_command,
    tap_port,
)
from test_control_live import wait_for
from test_serve_process import Serve
from test_warrants_support import Carrier

from mediation.pdu import StreamKind


@pytest.fixture
def carrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Carrier:
    carrier = Carrier(tmp_path, monkeypatch)
    carrier.setup()
    return carrier


def test_sample_through_the_tap_link_is_what_in_process_ingest_stores(carrier: Carrier) -> None:
    handle = add_tapped_warrant(carrier)
    server = serve(carrier)
    try:
        address = tap_port(server)
        output = run_tap(carrier, address)
        assert "0 refused by a full spool" in output
        status = server.status() or {}
        assert status["taps"]["refused_pdus"] == {}
    finally:
        server.stop()
    want = expected(carrier, handle)
    assert len(want[StreamKind.CMII]) > 20 and len(want[StreamKind.CMCC]) > 10
    assert stored(carrier, handle) == want
    # The router's disk never held the case in clear (its spool is encrypted).
    spooled = [p for p in (carrier.tmp / "edge-1.tap.spool").rglob("*") if p.is_file()]
    assert spooled and not any(b"CASE-TEST" in p.read_bytes() for p in spooled)


def _batches(server: Serve) -> int:
    status = server.status() or {}
    return status.get("taps", {}).get("batches", 0)


def test_server_sigkilled_mid_stream_stores_every_pdu_exactly_once(
    carrier: Carrier, tmp_path: Path
) -> None:
    """Three SIGKILLs while the tap streams: nothing lost, nothing twice (TLS, spool, journal)."""
    handle = add_tapped_warrant(carrier)
    capture = long_capture(tmp_path / "long.pcap", repeat=150)  # 4800 frames over ~2 s
    port = free_port()
    config = tmp_path / "killed.toml"
    config.write_text(
        CONFIG.replace('tls_listen = "127.0.0.1:0"', f'tls_listen = "127.0.0.1:{port}"')
    )
    server = Serve(carrier, config, "serve-0.log")
    command = tap_command(
        carrier, f"127.0.0.1:{port}", "--read", str(capture), "--speed", "recorded", "--batch", "16"
    )
    tap = subprocess.Popen(
        command, env={**os.environ, **carrier.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        for round in range(1, 4):
            wait_for(lambda s=server: _batches(s) >= 10, "batches before the kill", 30)
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(timeout=10)
            server = Serve(carrier, config, f"serve-{round}.log")
        out, _ = tap.communicate(timeout=120)
        assert tap.returncode == 0, out
    finally:
        if tap.poll() is None:
            tap.kill()
        server.stop()
    got, want = stored(carrier, handle), expected(carrier, handle, capture)
    assert len(got[StreamKind.CMII]) == len(want[StreamKind.CMII]) > 3000
    assert got == want
