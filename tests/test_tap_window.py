"""The tap link's window, counted in octets, observed on a real loopback connection.

The tap's connection half (:meth:`LinkSession._speak`) runs over a TCP
socket on loopback against a server side driven by the protocol machine
(:class:`TapLinkServer`), which holds its acknowledgements back: the tap
never has more than ``window_bytes`` sent and unacknowledged, and fills
the window (it does not wait for one batch's acknowledgement before the
next). TLS is left out: the window is above it.
"""

from __future__ import annotations

import datetime as dt
import types

import trio
import trio.testing
from tapspool_support import MemorySpool

from mediation.pdu import taplink as T
from mediation.protocol.taplink import TapLinkServer
from mediation.tap.link import TapClient

BATCH = 10_000  # octets a batch
WINDOW = 45_000  # four batches fit, not five


def batch() -> bytes:
    """About ``BATCH`` octets of encoded PDUs."""
    record = T.encode_pdu("cmCC", dt.datetime(2026, 1, 2, tzinfo=dt.UTC), b"\x04\x01a")
    return record * (BATCH // len(record))


async def test_the_tap_keeps_at_most_the_window_unacknowledged_and_fills_it() -> None:
    batches = [batch() for _ in range(12)]
    size = len(batches[0])
    spool = MemorySpool(batches)
    credentials = types.SimpleNamespace(name="edge-test")  # only its name is said
    tap = TapClient(credentials, spool, ("127.0.0.1", 0), None)  # type: ignore[arg-type]
    tap.window_bytes = WINDOW
    fits = WINDOW // size
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    seen: list[int] = []  # octets unacknowledged at the server after each read

    async def server() -> None:
        stream = await listeners[0].accept()
        machine = TapLinkServer(trio.current_time())
        unacked: list[int] = []  # batch ids

        async def reader() -> None:
            while data := await stream.receive_some(1 << 20):
                for message in machine.receive_data(data, trio.current_time()):
                    if isinstance(message, T.TapHello):
                        machine.accept(0, trio.current_time())
                    elif isinstance(message, T.PduBatch):
                        unacked.append(message.batch_id)
                seen.append(len(unacked) * size)  # every batch is `size` octets
                await stream.send_all(machine.data_to_send())

        async with trio.open_nursery() as inner:
            inner.start_soon(reader)
            for acked in range(len(batches)):
                # Every task blocked: the reader has read all the tap sent, and the tap
                # waits for the window (or has nothing left).
                await trio.testing.wait_all_tasks_blocked(0.02)
                if len(batches) - acked >= fits:  # more to send: the window must be full
                    assert len(unacked) == fits, unacked
                oldest = unacked.pop(0)
                machine.send_ack(T.BatchAck(oldest, 1), trio.current_time())
                await stream.send_all(machine.data_to_send())
            await trio.sleep_forever()  # the connection stays up until the test ends

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        nursery.start_soon(tap._speak, stream)
        with trio.fail_after(30):
            while spool.acked < len(batches):
                await tap._acked.wait()
                tap._acked = trio.Event()
        nursery.cancel_scope.cancel()
    assert max(seen) <= WINDOW
    assert max(seen) == fits * size  # filled, not one batch at a time


async def test_a_keepalive_while_the_sender_waits_on_a_slow_server_keeps_the_link() -> None:
    """The receiver answers a keepalive while the sender's write waits for the
    server to read: the two take turns on the stream (once, trio raised
    BusyResourceError and the tap dropped the connection and sent it all again)."""
    record = T.encode_pdu("cmCC", dt.datetime(2026, 1, 2, tzinfo=dt.UTC), bytes(65000))
    big = record * 16  # ~1 MB a batch in few PDUs: a dozen fill loopback's socket buffers
    spool = MemorySpool([big for _ in range(12)])
    credentials = types.SimpleNamespace(name="edge-test")
    tap = TapClient(credentials, spool, ("127.0.0.1", 0), None)  # type: ignore[arg-type]
    tap.window_bytes = 64 * len(big)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    received: list[int] = []
    answered: list[int] = []

    async def server() -> None:
        stream = await listeners[0].accept()
        machine = TapLinkServer(trio.current_time())
        while machine.state.value != "ready":
            for message in machine.receive_data(await stream.receive_some(1 << 16), 0.0):
                if isinstance(message, T.TapHello):
                    machine.accept(0, trio.current_time())
            await stream.send_all(machine.data_to_send())
        await trio.testing.wait_all_tasks_blocked(0.05)  # the tap's sender waits on a full socket
        await stream.send_all(T.encode(T.Keepalive(7)))  # the tap's receiver answers it
        await trio.testing.wait_all_tasks_blocked(0.05)
        # Now read everything: the batches and the answer, which may come after the last
        # batch (the sender's one write of every batch holds the stream meanwhile).
        while len(received) < len(spool.batches) or not answered:
            for message in machine.receive_data(await stream.receive_some(1 << 20), 0.0):
                if isinstance(message, T.PduBatch):
                    received.append(message.batch_id)
                    machine.send_ack(T.BatchAck(message.batch_id, 1), 0.0)
                elif isinstance(message, T.KeepaliveAnswer):
                    answered.append(message.id)
            await stream.send_all(machine.data_to_send())
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        nursery.start_soon(tap._speak, stream)
        with trio.fail_after(30):
            while spool.acked < len(spool.batches):
                await tap._acked.wait()
                tap._acked = trio.Event()
        nursery.cancel_scope.cancel()
    assert received == list(range(1, 13)) and answered == [7]
