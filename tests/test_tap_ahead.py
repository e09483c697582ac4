"""A batch goes on the link while the spool writes it (mediation/tap/spool.py, "Sending ahead").

The spool's write and its fdatasync (1-4 ms, more on a busy disk) were on
the path from capture to the server; now a batch whose id the spool has
reserved is sent at once, and only its acknowledgement waits for the
write. The connection half runs over a TCP socket on loopback against a
server side driven by the protocol machine (as in tests/test_tap_window.py).
"""

from __future__ import annotations

import datetime as dt
import threading
import types

import trio
from tapspool_support import MemorySpool, acking_server

from mediation.pdu import taplink as T
from mediation.tap.link import TapClient

WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


class SlowSpool(MemorySpool):
    """A spool that sends ahead, whose append, once ``slow``, waits until the server has
    read the batch (10 s at most)."""

    def __init__(self) -> None:
        super().__init__(ahead=True)
        self.slow = False
        self.read_by_server = threading.Event()

    def append(self, payload: bytes, first: dt.datetime, last: dt.datetime) -> int:
        if self.slow:
            self.read_by_server.wait(10)
        return super().append(payload, first, last)


async def test_a_batch_is_sent_while_spooled_and_acknowledged_after() -> None:
    spool = SlowSpool()
    credentials = types.SimpleNamespace(name="edge-test")
    tap = TapClient(credentials, spool, ("127.0.0.1", 0), None)  # type: ignore[arg-type]
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    while_appending: list[int] = []

    def on_batch(batch: T.PduBatch) -> None:
        if spool.slow:
            # The append waits for this read (10 s at most), so a batch sent
            # ahead is read with its append still unfinished; a batch sent
            # after its append is read with two batches spooled.
            while_appending.append(len(spool.batches))
            spool.read_by_server.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(acking_server, listeners[0], on_batch)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        nursery.start_soon(tap._speak, stream)
        with trio.fail_after(30):
            await tap._acked.wait()  # the server's hello: connected
            tap._acked = trio.Event()
            for n, der in enumerate((b"\x04\x01a", b"\x04\x01b"), 1):
                spool.slow = n == 2  # the first goes as ever: the sender reads the spool first
                await tap.add("cmCC", WHEN, der)
                await tap.flush()
                while spool.acked < n:
                    await tap._acked.wait()
                    tap._acked = trio.Event()
        nursery.cancel_scope.cancel()
    assert while_appending == [1]  # on the link before its append returned
    assert len(spool.batches) == 2 and spool.acked == 2
