"""A tap that sends batches ahead of its spool's write, SIGKILLed and started again.

`mediate tap run` sends each batch while its spool writes it, with ids the
spool reserved beforehand (mediation/tap/spool.py, "Sending ahead"). A tap
killed mid-stream and started again on the same spool goes on after every
reserved id: the server never sees its ids go back (which it would take
for a lost spool), takes the gap, and acknowledges what the first process
left unacknowledged along with the new batches.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from delivery_agency import free_port
from taplink_support import CONFIG, add_tapped_warrant, long_capture, run_tap, tap_command
from test_control_live import wait_for
from test_serve_process import Serve
from test_warrants_support import Carrier


@pytest.fixture
def carrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Carrier:
    carrier = Carrier(tmp_path, monkeypatch)
    carrier.setup()
    return carrier


def test_a_tap_killed_mid_stream_goes_on_after_its_reserved_ids(
    carrier: Carrier, tmp_path: Path
) -> None:
    add_tapped_warrant(carrier)
    capture = long_capture(tmp_path / "long.pcap", repeat=150)  # 4800 frames over ~2 s
    port = free_port()
    config = tmp_path / "ahead.toml"
    config.write_text(
        CONFIG.replace('tls_listen = "127.0.0.1:0"', f'tls_listen = "127.0.0.1:{port}"')
    )
    server = Serve(carrier, config)
    command = tap_command(
        carrier, f"127.0.0.1:{port}", "--read", str(capture), "--speed", "recorded", "--batch", "16"
    )
    tap = subprocess.Popen(
        command, env={**os.environ, **carrier.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for(lambda: _batches(server) >= 20, "batches before the kill", 30)
        tap.send_signal(signal.SIGKILL)
        tap.wait(timeout=10)
        before = _batches(server)
        out = run_tap(carrier, f"127.0.0.1:{port}")  # the same spool: its leftovers, then more
        assert "0 refused by a full spool" in out
        assert _batches(server) > before
        assert not server.logged("went back"), server.log.read_text()
    finally:
        if tap.poll() is None:
            tap.kill()
        server.stop()


def _batches(server: Serve) -> int:
    status = server.status() or {}
    return status.get("taps", {}).get("batches", 0)
