"""The tap's batch trace (mediation/tap/trace.py): off by default; when on, every batch's
sealing, spooling, send and acknowledgement, as numbers only.

The connection half runs over a TCP socket on loopback against a server
side driven by the protocol machine (as in tests/test_tap_window.py),
which acknowledges every batch it reads.
"""

from __future__ import annotations

import datetime as dt
import io
import types
from typing import Any

import pytest
import trio
from tapspool_support import MemorySpool, acking_server

from mediation.tap.link import TapClient
from mediation.tap.trace import ENVIRONMENT, BatchTrace

WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
WHEN_US = 1767323045678901


def test_the_trace_is_off_unless_the_environment_names_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv(ENVIRONMENT, raising=False)
    assert BatchTrace.from_environment() is None
    monkeypatch.setenv(ENVIRONMENT, str(tmp_path / "trace"))
    trace = BatchTrace.from_environment()
    assert trace is not None
    trace.acked(3)
    trace.close()
    kind, upto, _when = (tmp_path / "trace").read_text().split()
    assert (kind, upto) == ("A", "3")


async def test_each_batch_is_traced_sealed_sent_and_acknowledged() -> None:
    spool, out = MemorySpool(), io.StringIO()
    credentials = types.SimpleNamespace(name="edge-test")
    tap = TapClient(credentials, spool, ("127.0.0.1", 0), None, trace=BatchTrace(out))  # type: ignore[arg-type]
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(acking_server, listeners[0])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        nursery.start_soon(tap._speak, stream)
        for der in (b"\x04\x01a", b"\x04\x01b", b"\x04\x01c"):
            await tap.add("cmCC", WHEN, der)
            await tap.flush()
        with trio.fail_after(30):
            while spool.acked < 3:
                await tap._acked.wait()
                tap._acked = trio.Event()
        nursery.cancel_scope.cancel()
    lines = [line.split() for line in out.getvalue().splitlines()]
    assert all(field.isdigit() for line in lines for field in line[1:])  # numbers only
    sealed = [line for line in lines if line[0] == "B"]
    assert [line[1:5] for line in sealed] == [
        [str(b), "1", str(WHEN_US), str(WHEN_US)] for b in (1, 2, 3)
    ]
    assert all(int(line[5]) <= int(line[6]) for line in sealed)  # sealed, then spooled
    assert sorted(int(line[1]) for line in lines if line[0] == "S") == [1, 2, 3]
    assert max(int(line[1]) for line in lines if line[0] == "A") == 3
