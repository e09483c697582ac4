"""The tap link end to end: `mediate tap run` into a real `mediate serve` process."""

from __future__ import annotations

from pathlib import Path

import pytest
from taplink_support import add_tapped_warrant, expected, run_tap, serve, stored, tap_port
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
